#!/usr/bin/env python
"""The import graph of the pycohere package, read from the source with ``ast`` (nothing is imported).

    python tools/import_graph.py            # print every upward import and every cycle (exit 1 if any)

Used by ``tests/test_layout.py`` (the layering rules of ``pycohere/layout.py``) and by
``tools/draw_layout.py`` (the layer diagram of ``docs/architecture.md``). Every ``import`` statement
counts, at module level or inside a function: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pycohere"


def load_layout():
    """pycohere/layout.py, executed alone (it is data only): no package import, no side effects."""
    spec = importlib.util.spec_from_file_location("pycohere_layout", PACKAGE / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the pycohere modules it imports (``from x import y`` counts y when y is a module)."""
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in known:  # "pycohere.spec.layers.tap" -> "pycohere.spec.layers"
                    t = t.rpartition(".")[0]
                if t and t != name and t.split(".")[0] == "pycohere":
                    deps.add(t)
        graph[name] = deps
    return graph


def upward_edges(graph: dict[str, set[str]], layout) -> list[str]:
    """Imports that break the layer order (a lower layer importing a higher one, anything importing the
    facade or the cli), as readable lines."""
    bad = []
    for src, deps in sorted(graph.items()):
        src_layer = layout.layer_of(src)
        for dst in sorted(deps):
            if dst == layout.FACADE:
                if src != layout.FACADE:
                    bad.append(f"{src} imports the facade {dst} (import from the subpackage instead)")
                continue
            dst_layer = layout.layer_of(dst)
            if src == layout.FACADE:
                continue
            if src_layer is None or dst_layer is None:
                bad.append(f"{src} -> {dst}: {'the importer' if src_layer is None else 'the imported module'} is in "
                           "no layer of pycohere/layout.py")
            elif layout.layer_index(dst_layer) > layout.layer_index(src_layer):
                bad.append(f"{src} ({src_layer}) imports {dst} ({dst_layer}): a lower layer may not import a higher one")
            elif dst_layer == layout.CLI_LAYER and src_layer != layout.CLI_LAYER:
                bad.append(f"{src} imports the command line {dst}")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of modules larger than one (Tarjan), each as a cycle path."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(_cycle_path(graph, sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_path(graph, comp: list[str]) -> list[str]:
    """One closed path through a strongly connected set, starting at its first module."""
    members, start = set(comp), comp[0]
    path, seen = [start], {start}
    while True:
        nxt = next((w for w in sorted(graph[path[-1]]) if w in members and (w == start or w not in seen)), None)
        if nxt is None or nxt == start:
            return path + [start]
        path.append(nxt)
        seen.add(nxt)


def layer_edges(graph: dict[str, set[str]], layout) -> dict[tuple[str, str], int]:
    """(importer's layer, imported layer) -> number of module imports, between different layers."""
    out: dict[tuple[str, str], int] = {}
    for src, deps in graph.items():
        a = layout.layer_of(src)
        for dst in deps:
            b = layout.layer_of(dst)
            if a and b and a != b:
                out[(a, b)] = out.get((a, b), 0) + 1
    return out


def main() -> int:
    layout = load_layout()
    graph = imports(modules())
    problems = upward_edges(graph, layout) + [" -> ".join(c) + " (cycle)" for c in cycles(graph)]
    for p in problems:
        print(p)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
