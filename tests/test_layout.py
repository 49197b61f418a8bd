"""The package's layout: no import circle anywhere in ``oad/``, ``oad/data`` never imports ``oad/models``,
the library never imports the benchmarks. Imports are read from the source (``ast``), module-level and
inside functions alike: a lazy import that closes a circle is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "oad"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ``oad`` modules ``path`` imports (``from oad.x import y`` counts ``oad.x.y`` when that is a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = here.split(".")[: len(here.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            # the module itself, or the nearest enclosing module of oad
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    # a package's __init__ is imported with any of its modules: leave that edge out (it is not a circle
    # unless __init__ imports back, which its own edges show)
    return {module_name(p): imports_of(p, modules) for p in files}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_and_an_import_reader_reads_imports(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    src = tmp_path / "oad" / "x" / "m.py"
    src.parent.mkdir(parents=True)
    src.write_text("import os\nfrom oad.y import z\n\ndef f():\n    from . import n\n    import oad.y.w as q\n")
    mods = {"oad.x.m", "oad.x.n", "oad.y", "oad.y.w"}
    import tests.test_layout as me

    old = me.REPO
    me.REPO = tmp_path
    try:
        assert imports_of(src, mods) == {"oad.y", "oad.x.n", "oad.y.w"}
    finally:
        me.REPO = old


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert find_cycles(graph) == []


@pytest.mark.parametrize("low, high", [("oad.data", "oad.models"), ("oad.models", "oad.tasks"),
                                       ("oad.online", "oad.tasks"), ("oad.data", "oad.online")])
def test_lower_layers_do_not_import_higher_ones(low, high):
    graph = import_graph()
    bad = {m: sorted(i for i in deps if i == high or i.startswith(high + "."))
           for m, deps in graph.items() if m == low or m.startswith(low + ".")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_library_does_not_import_the_benchmarks():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("oad.bench"))
           for m, deps in graph.items() if not m.startswith("oad.bench")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_streaming_starts_without_lightning():
    """tools/stream.py (and the live tools on top of it) import no training stack: Lightning and its metrics
    take seconds to import and streaming needs neither."""
    import subprocess
    import sys

    code = ("import sys, oad.tasks.streaming, oad.cli; "
            "print(sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_lazy_task_exports_resolve():
    """``oad.tasks`` names its exports three times (the lazy map, ``__all__`` for linters, the type checkers'
    imports): they must stay the same names, each found in its module."""
    import oad.tasks as tasks

    assert sorted(tasks.__all__) == sorted(tasks._HOMES)
    for name in tasks.__all__:
        assert callable(getattr(tasks, name)), name
    with pytest.raises(AttributeError):
        tasks.not_a_task  # noqa: B018
