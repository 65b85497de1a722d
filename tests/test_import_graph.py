"""The package's layers, read from its source: every ``import`` of an ``nfopt`` module (at module
level or inside a function: a lazy import must not hide a cycle) is an edge between the top-level
units it joins (``nfopt/lopt/...`` is ``lopt``, ``nfopt/track.py`` is ``track``)."""

import ast
from collections import defaultdict
from pathlib import Path

import nfopt

ROOT = Path(nfopt.__file__).resolve().parent

#: The library: none of it may import the Ray adapter, the recipes or the CLI.
LIBRARY = {"weightspace", "nn", "lopt", "meta", "tasks", "evaluation", "data", "specs", "inr", "testing", "jobs"}
ABOVE_LIBRARY = {"cluster", "recipes", "cli"}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nfopt"


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if node.module == "nfopt":  # from nfopt import lopt: the unit is the imported name
                    names = [f"nfopt.{a.name}" for a in node.names if (ROOT / a.name).exists()] or names
            else:
                continue
            for name in names:
                if name == "nfopt" or name.startswith("nfopt."):
                    a, b = _unit(module), _unit(name)
                    if a != b:
                        edges[a].add(b)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_units():
    edges = import_graph()
    assert edges["cli"] and edges["recipes"]  # the graph was read
    assert _cycles(edges) == []


def test_layers_point_down():
    edges = import_graph()
    for unit in LIBRARY:
        assert not edges.get(unit, set()) & ABOVE_LIBRARY, (unit, edges.get(unit))
    assert not edges["cluster"] & {"recipes", "cli", "jobs", "track"}, edges["cluster"]  # the adapter only
    assert not edges["recipes"] & {"cli"}
    assert "cli" not in set().union(*edges.values())


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
