"""The registries fill themselves: a fresh interpreter that imports only the module defining a registry finds every
name registered anywhere in the package, and nothing is imported before the first lookup."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esreid.registry import Registry, RegistryRef

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# every Registry defined in esreid (named by the module whose source assigns it), with all its names, once every
# module of the package is imported
DISCOVER = """
import importlib, inspect, json, pkgutil, esreid
from esreid.registry import Registry
for info in pkgutil.walk_packages(esreid.__path__, "esreid."):
    importlib.import_module(info.name)
found = {}
for name, module in sorted(__import__("sys").modules.items()):
    if name.startswith("esreid"):
        for attr, obj in vars(module).items():
            if isinstance(obj, Registry) and f"{attr} = Registry(" in inspect.getsource(module):
                found.setdefault(id(obj), (f"{name}:{attr}", sorted(obj._objs)))
print(json.dumps(sorted(found.values())))
"""

# names of one registry in an interpreter that imports nothing but its module
LOOKUP = """
import json, sys
from esreid.registry import RegistryRef
print(json.dumps(RegistryRef(sys.argv[1]).names()))
"""


def python(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def registries():
    return json.loads(python(DISCOVER))


def test_discovery_finds_the_lazy_registries(registries):
    paths = {path for path, _ in registries}
    assert {"esreid.models:MODELS", "esreid.data.base:DATASETS", "esreid.models.backbones:BACKBONES",
            "esreid.models.pooling:POOLING", "esreid.evaluation.protocols:PROTOCOLS",
            "esreid.engine.schedule:OPTIMIZERS", "esreid.engine.hooks:HOOKS"} <= paths


@pytest.mark.slow
def test_a_fresh_interpreter_finds_every_registered_name(registries):
    """Catches a registry whose entries live in modules it does not list in ``locations`` (a method file, a dataset
    loader, a diagnostic hook that only an explicit import would register)."""
    for path, names in registries:
        assert json.loads(python(LOOKUP, path)) == names, path


def test_nothing_is_imported_before_the_first_lookup():
    out = python("""
import sys
from esreid.models import MODELS
from esreid.data.base import DATASETS
before = [m for m in ("esreid.models.esnet", "esreid.models.backbones.resnet", "esreid.data.datasets.market1501")
          if m in sys.modules]
assert MODELS.get("esnet").__module__ == "esreid.models.esnet"
assert "market1501" in DATASETS
print(before, "esreid.models.backbones.resnet" in sys.modules, "esreid.data.datasets.market1501" in sys.modules)
""")
    assert out.split() == ["[]", "True", "True"]


def test_load_imports_each_location_once(tmp_path, monkeypatch):
    pkg = tmp_path / "regpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from esreid.registry import Registry\nR = Registry('thing', ['regpkg'])\n")
    (pkg / "a.py").write_text("from regpkg import R\nR.register('a')(1)\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from regpkg import R\nR.register('b')(2)\nimport regpkg\nregpkg.loads = "
                                      "getattr(regpkg, 'loads', 0) + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import regpkg

    assert regpkg.R._objs == {}
    assert regpkg.R.names() == ["a", "b"] and RegistryRef("regpkg:R").get("b") == 2
    regpkg.R.names()
    assert regpkg.loads == 1
    with pytest.raises(KeyError, match="unknown thing 'c'; expected one of: a, b"):
        regpkg.R.get("c")
    for name in [m for m in sys.modules if m.startswith("regpkg")]:
        del sys.modules[name]


def test_an_eager_registry_needs_no_location():
    r = Registry("x")
    r.register("k", flag=True)(len)
    assert r.get("k") is len and r.meta("k") == {"flag": True} and "k" in r
    with pytest.raises(KeyError, match="already registered"):
        r.register("k")(max)
