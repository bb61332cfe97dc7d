"""The package layering of docs/architecture.md, over every module of esreid and every import in it: those at the top
of a module and those made inside functions (a lazy import is still a dependency).

Rules (each checker is also run on a planted violation below, so each can fail):

1. a module imports only from its own layer or the layers below it (:data:`LAYERS`), at the top level or inside a
   function; the only upward imports are the registries' own (:mod:`esreid.registry` imports a registry's modules by
   name on the first lookup, which is not an import statement) and the short documented list :data:`UPWARD`;
2. no module below ``esreid.commands`` imports ``argparse`` or ``esreid.cli`` (library code never sees a command line;
   ``esreid.launch``, torchrun's launcher of an esreid command line, sits above the cli);
3. ``esreid.viz`` imports nothing from ``esreid.engine`` (viz only draws what the engine computed);
4. no import circle among esreid modules (the graph over top-level and function-level imports).
"""

import ast
import os
from typing import Dict, List, Set, Tuple

import esreid

PACKAGE = os.path.dirname(esreid.__file__)

# lowest first; a module may import its own layer and those below. The first part of a module's name below esreid
# names its layer ("esreid" itself: the package's __init__, version and lazy names).
LAYERS: List[Set[str]] = [
    {"esreid", "errors", "paper"},
    {"registry"},
    {"files"},
    {"console"},
    {"config"},
    {"losses", "erasing", "evaluation"},
    {"data"},
    {"models"},
    {"viz"},
    {"engine"},
    {"export", "inference", "ablate", "demo"},
    {"commands"},
    {"cli"},
    {"launch"},
]
# (importing module, imported module) pairs allowed to reach up, each inside a function; keep this list short
UPWARD: Set[Tuple[str, str]] = set()


def module_name(path: str, root: str, package: str) -> str:
    rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    if rel == "__init__":
        return package
    return f"{package}.{rel[: -len('.__init__')]}" if rel.endswith(".__init__") else f"{package}.{rel}"


def package_modules(root: str, package: str) -> Dict[str, str]:
    """Module name -> file of every module under the package folder ``root``."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[module_name(path, root, package)] = path
    return found


def imports(path: str, modules: Dict[str, str], package: str) -> List[Tuple[str, str]]:
    """``(imported module, "top" | "function")`` for every import statement in ``path`` naming ``package`` or
    ``argparse`` (``from pkg import name`` counts as an import of ``pkg.name`` when that is a module). Imports under
    ``if TYPE_CHECKING:`` are skipped (they never run)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    found = []

    def visit(node, where):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            where = "function"
        if isinstance(node, ast.Import):
            found.extend((a.name, where) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in modules else node.module, where))
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    visit(tree, "top")
    return [(m, w) for m, w in found if m == "argparse" or m == package or m.startswith(package + ".")]


def layer(module: str, package: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else package


def rank(name: str, layers: List[Set[str]]) -> int:
    return next(i for i, group in enumerate(layers) if name in group)


def layer_problems(root: str, package: str, layers: List[Set[str]], upward: Set[Tuple[str, str]]) -> List[str]:
    """Rule 1: imports reaching a higher layer (any level), except the ``upward`` pairs."""
    modules = package_modules(root, package)
    problems = []
    for name, path in sorted(modules.items()):
        own = layer(name, package)
        for target, where in imports(path, modules, package):
            if target == "argparse":
                continue
            other = layer(target, package)
            if rank(other, layers) > rank(own, layers) and (name, target) not in upward:
                problems.append(f"{name} imports {target} ({where} level: {own} -> {other})")
    return problems


def command_line_problems(root: str, package: str) -> List[str]:
    """Rule 2: modules outside ``<package>.commands``, ``<package>.cli`` and ``<package>.launch`` importing argparse
    or the cli."""
    modules = package_modules(root, package)
    commands, cli = f"{package}.commands", f"{package}.cli"
    problems = []
    for name, path in sorted(modules.items()):
        if name in (commands, cli, f"{package}.launch") or name.startswith(commands + "."):
            continue
        problems += [f"{name} imports {t} ({w} level)" for t, w in imports(path, modules, package)
                     if t in ("argparse", cli)]
    return problems


def viz_engine_problems(root: str, package: str) -> List[str]:
    """Rule 3: ``<package>.viz`` modules importing ``<package>.engine``."""
    modules = package_modules(root, package)
    return [f"{name} imports {t} ({w} level)" for name, path in sorted(modules.items())
            if layer(name, package) == "viz" for t, w in imports(path, modules, package)
            if layer(t, package) == "engine" and t != "argparse"]


def import_cycles(root: str, package: str) -> List[List[str]]:
    """Rule 4: the strongly connected components of more than one module (or a module importing itself) of the
    import graph (Tarjan), each sorted."""
    modules = package_modules(root, package)
    graph = {name: sorted({t for t, _ in imports(path, modules, package) if t in modules})
             for name, path in modules.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles = []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(cycles)


# --- the rules on esreid ---------------------------------------------------------------------------------------------
def test_every_package_has_a_layer():
    names = {layer(m, "esreid") for m in package_modules(PACKAGE, "esreid")}
    assert names - set().union(*LAYERS) == set()
    assert {"commands", "viz", "engine", "cli"} <= names


def test_no_module_imports_a_higher_layer():
    assert layer_problems(PACKAGE, "esreid", LAYERS, UPWARD) == []


def test_only_the_commands_see_the_command_line():
    assert command_line_problems(PACKAGE, "esreid") == []


def test_viz_imports_nothing_from_the_engine():
    assert viz_engine_problems(PACKAGE, "esreid") == []


def test_no_import_circle():
    assert import_cycles(PACKAGE, "esreid") == []


def test_the_upward_exceptions_are_still_needed():
    """An exception no longer taken is removed from UPWARD (the list only shrinks)."""
    modules = package_modules(PACKAGE, "esreid")
    taken = {(name, t) for name, path in modules.items() for t, _ in imports(path, modules, "esreid")}
    assert UPWARD - taken == set()


# --- each checker on planted violations ------------------------------------------------------------------------------
def plant(tmp_path, files: Dict[str, str]) -> str:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return str(root)


LOW_HIGH = [{"pkg", "low"}, {"high"}, {"viz"}, {"engine"}, {"commands"}, {"cli"}]


def test_the_layer_checker_sees_upward_imports_at_any_level(tmp_path):
    root = plant(tmp_path, {"low/a.py": "import pkg.low.c\ndef f():\n    from pkg.high import b\n",
                            "high/b.py": "from pkg.low import a\n",
                            "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.high.b\n"})
    assert layer_problems(root, "pkg", LOW_HIGH, set()) == ["pkg.low.a imports pkg.high.b (function level: low -> "
                                                            "high)"]
    assert layer_problems(root, "pkg", LOW_HIGH, {("pkg.low.a", "pkg.high.b")}) == []


def test_the_command_line_checker_sees_argparse_and_the_cli(tmp_path):
    root = plant(tmp_path, {"low/a.py": "def f():\n    import argparse\n", "high/b.py": "from pkg import cli\n",
                            "commands/c.py": "import argparse\n", "cli.py": "import argparse\n",
                            "launch.py": "from pkg.cli import build_parser\n"})
    assert command_line_problems(root, "pkg") == ["pkg.high.b imports pkg.cli (top level)",
                                                  "pkg.low.a imports argparse (function level)"]


def test_the_viz_checker_sees_an_engine_import(tmp_path):
    root = plant(tmp_path, {"viz/a.py": "def f():\n    from pkg.engine.b import x\n", "engine/b.py": "x = 1\n"})
    assert viz_engine_problems(root, "pkg") == ["pkg.viz.a imports pkg.engine.b (function level)"]


def test_the_cycle_checker_sees_a_circle_through_a_function_level_import(tmp_path):
    root = plant(tmp_path, {"low/a.py": "from pkg.high import b\n",
                            "high/b.py": "def f():\n    from pkg.low import c\n",
                            "low/c.py": "import pkg.low.a\n", "low/d.py": "from pkg.low import a\n"})
    assert import_cycles(root, "pkg") == [["pkg.high.b", "pkg.low.a", "pkg.low.c"]]
