"""The import graph of greenmim (and greenmim_det) has one direction: no cycles, floors respected.

Imports are read with `ast` from the source, function-level ones included: a lazy import still
ties two modules together, it only hides the knot until run time.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"greenmim": os.path.join(REPO, "pretrain", "greenmim"),
            "greenmim_det": os.path.join(REPO, "projects", "GreenMIM", "greenmim_det")}
# Modules that only the standard library and torch may sit under (besides each other).
GROUND = ("greenmim.config", "greenmim.faults", "greenmim.file_io", "greenmim.json_files")
# greenmim's floors, bottom up: a module imports its own floor and the floors below, never above.
# (`greenmim` itself only re-exports the model factory, so it stands with the models.)
FLOORS = (("ground", GROUND), ("data", ("greenmim.data",)), ("models", ("greenmim.models", "greenmim")),
          ("weights", ("greenmim.weights",)), ("engine", ("greenmim.engine",)), ("cli", ("greenmim.cli",)))


def _floor(module: str) -> int:
    """Index in FLOORS of a greenmim module (the longest matching name decides)."""
    best, found = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, found = len(n), i
    assert found is not None, f"{module} is on no floor: add it to FLOORS"
    return found


def _modules() -> Dict[str, str]:
    """Dotted module name -> file, for every .py file of PACKAGES (a package is its __init__)."""
    out = {}
    for top, root in PACKAGES.items():
        for folder, _, files in os.walk(root):
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([top, *rel])] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The modules of `modules` that `name` imports anywhere in its file."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module itself
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif target in modules:
                    found.add(target)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: Dict[str, int] = {}  # 1 on the current path, 2 done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_parser_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "greenmim" / "engine" / "a.py"
    source.parent.mkdir(parents=True)
    source.write_text("from . import b\nfrom ..weights import x\nimport greenmim.data.c\n"
                      "def f():\n    from .d import y\n")
    modules = {n: "" for n in ("greenmim.engine.a", "greenmim.engine.b", "greenmim.engine.d",
                               "greenmim.weights", "greenmim.data.c")}
    found = _imports("greenmim.engine.a", str(source), modules)
    # package-relative, relative, absolute and function-level imports all count
    assert found == {"greenmim.engine.b", "greenmim.weights", "greenmim.data.c", "greenmim.engine.d"}


def test_no_import_cycles(graph):
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_weights_sit_below_the_engine(graph):
    up = {m: sorted(d for d in deps if d.startswith("greenmim.engine"))
          for m, deps in graph.items() if m.startswith("greenmim.weights")}
    assert not any(up.values()), {m: d for m, d in up.items() if d}


def test_every_import_goes_down_or_sideways(graph):
    # file I/O at the ground floor, data below the models, weights below the engine
    up = sorted(f"{m} ({FLOORS[_floor(m)][0]}) imports {d} ({FLOORS[_floor(d)][0]})"
                for m, deps in graph.items() if m.startswith("greenmim.") or m == "greenmim"
                for d in deps if d.startswith("greenmim") and not d.startswith("greenmim_det")
                and _floor(d) > _floor(m))
    assert not up, "imports that go up a floor:\n" + "\n".join(up)


def test_the_ground_floor_imports_only_the_ground_floor(graph):
    for m in GROUND:
        assert graph[m] <= set(GROUND), f"{m} imports {sorted(graph[m] - set(GROUND))}"


def test_greenmim_never_imports_its_detectron2_project(graph):
    bad = {m: sorted(d for d in deps if d.startswith("greenmim_det"))
           for m, deps in graph.items() if m.startswith("greenmim.")}
    assert not any(bad.values()), {m: d for m, d in bad.items() if d}
