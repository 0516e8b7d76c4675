"""biozoo's modules import in one direction: the graph of every import (module level, function-local and
TYPE_CHECKING ones alike), read with ast, has no cycle, and the runtime never imports the zoo or the exporters."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"runtime": "biozoo.runtime", "zoo": "biozoo.zoo", "exporters": "biozoo.exporters", "specs": "biozoo.specs"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder, dotted in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((dotted, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            candidates = [f"{base}.{a.name}" for a in node.names]  # a name, else the module it is taken from
        else:
            continue
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                targets.add(c)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 50 and graph["biozoo.runtime.model"], "the graph must see biozoo's modules"
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_imports_neither_the_zoo_nor_the_exporters():
    graph = _graph()
    wrong = {m: sorted(t for t in targets if t.startswith(("biozoo.zoo", "biozoo.exporters")))
             for m, targets in graph.items() if m.startswith("biozoo.runtime")}
    assert {m: t for m, t in wrong.items() if t} == {}


# the runtime's layers, top to bottom: a module imports its own layer or the ones below it, never one above
RUNTIME_LAYERS = ("cli", "commands", "model", "checks", "engine", "ops", "format", "errors")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["biozoo", "runtime"] or len(parts) < 3:
        return None  # biozoo.runtime itself: the lazy public face over every layer
    return RUNTIME_LAYERS.index(parts[2])


def test_the_runtime_layers_import_downward_only():
    graph = _graph()
    runtime = [m for m in graph if _layer(m) is not None]
    assert {m.split(".")[2] for m in runtime} == set(RUNTIME_LAYERS), "every runtime module lies in a layer"
    upward = {m: sorted(t for t in graph[m] if _layer(t) is not None and _layer(t) < _layer(m)) for m in runtime}
    assert {m: t for m, t in upward.items() if t} == {}
