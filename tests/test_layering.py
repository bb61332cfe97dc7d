"""The package layering of docs/architecture.md: a module imports (at import time, i.e. at its top level) only from
its own layer or the layers below it. Imports inside functions are the sanctioned way to reach up lazily (the config
checks reach the registries of models and data only when a config is checked)."""

import ast
import os

import esreid

PACKAGE = os.path.dirname(esreid.__file__)
# layer -> the esreid packages / modules it may import at its top level (besides itself)
ALLOWED = {
    "errors": set(),
    "registry": set(),
    "files": {"errors"},
    "console": {"errors", "files"},
    "config": {"errors", "registry", "files"},
    "losses": {"errors", "registry", "config"},
    "evaluation": {"errors", "registry", "files"},
    "erasing": {"errors", "registry", "config"},
    "data": {"errors", "registry", "files", "console", "config"},
    "models": {"errors", "registry", "files", "config", "losses", "erasing", "evaluation"},
    "engine": {"errors", "registry", "files", "console", "config", "losses", "erasing", "evaluation", "data",
               "models"},
}


def top_level_imports(path):
    """esreid modules imported at the top level of ``path`` (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("esreid"):
                found.append(sub.module)
            elif isinstance(sub, ast.Import):
                found += [a.name for a in sub.names if a.name.startswith("esreid")]
    return found


def layer_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "esreid"


def test_no_module_imports_a_higher_layer():
    problems = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
            own = layer_of(rel.replace(".__init__", ""))
            if own not in ALLOWED:
                continue  # top layers (engine's callers: viz, export, cli, demo) may import anything below
            for imported in top_level_imports(path):
                target = layer_of(imported)
                if target != own and target not in ALLOWED[own]:
                    problems.append(f"{rel} imports {imported} ({own} -> {target})")
    assert problems == []


def test_the_checker_sees_a_violation(tmp_path):
    """The AST walk finds top-level imports and skips function-level and TYPE_CHECKING ones."""
    path = tmp_path / "m.py"
    path.write_text("from typing import TYPE_CHECKING\nimport esreid.engine\nif TYPE_CHECKING:\n"
                    "    from esreid.viz import plots\ndef f():\n    from esreid import cli\n")
    assert top_level_imports(str(path)) == ["esreid.engine"]
