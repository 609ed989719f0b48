"""The package layout: every module's imports (read with ast, nothing imported) follow the layer order of
pycohere/layout.py, no import cycle exists, and each subpackage says what it holds and may import."""
import ast

import pytest

import import_graph as G

LAYOUT = G.load_layout()
MODULES = G.modules()
GRAPH = G.imports(MODULES)


def test_every_module_is_in_a_layer():
    unplaced = [m for m in MODULES if m != LAYOUT.FACADE and LAYOUT.layer_of(m) is None]
    assert not unplaced, f"modules in no layer of pycohere/layout.py: {unplaced}"


def test_no_upward_import():
    bad = G.upward_edges(GRAPH, LAYOUT)
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    found = G.cycles(GRAPH)
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checks_name_the_offending_edge():
    # the same checks on a graph with one upward import and one cycle
    graph = {name: set(deps) for name, deps in GRAPH.items()}
    graph["pycohere.spec.layers"].add("pycohere.model.modeling")       # spec -> model: upward
    graph["pycohere.io.hub"].add("pycohere.io.gguf")
    graph["pycohere.io.gguf"].add("pycohere.io.hub")                   # a cycle inside one layer
    bad = G.upward_edges(graph, LAYOUT)
    assert any("pycohere.spec.layers (spec) imports pycohere.model.modeling (model)" in b for b in bad), bad
    assert ["pycohere.io.gguf", "pycohere.io.hub", "pycohere.io.gguf"] in G.cycles(graph)


def test_relative_imports_resolve_to_modules():
    # ``from ..spec import layers as L`` names the module pycohere.spec.layers, not the package
    assert "pycohere.spec.layers" in GRAPH["pycohere.model.engine"]
    assert "pycohere.kernels.attention" in GRAPH["pycohere.model.engine"]
    assert "pycohere.checkpoints.probe" in GRAPH["pycohere.model.modeling"]


def test_nothing_imports_the_facade_or_the_cli():
    for src, deps in GRAPH.items():
        layer = LAYOUT.layer_of(src)
        assert LAYOUT.FACADE not in deps or src == LAYOUT.FACADE, src
        if layer != LAYOUT.CLI_LAYER and src != LAYOUT.FACADE:
            assert not any(LAYOUT.layer_of(d) == LAYOUT.CLI_LAYER for d in deps), src


@pytest.mark.parametrize("package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py"
                                           and m.count(".") == 1 and m != "pycohere.demo"))
def test_each_subpackage_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text(encoding="utf-8")))
    assert doc and "May import" in doc, f"{package}/__init__.py needs a docstring saying what it holds and may import"


def test_the_spec_calls_no_kernel():
    spec = [m for m in GRAPH if LAYOUT.layer_of(m) == "spec"]
    assert spec and all(not any(LAYOUT.layer_of(d) == "kernels" for d in GRAPH[m]) for m in spec)


def test_no_private_helper_is_imported_across_modules():
    leaks = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                leaks += [f"{name} imports {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not leaks, "\n".join(leaks)


def test_the_layout_diagram_of_the_docs_is_current():
    import draw_layout
    text = draw_layout.DOC.read_text(encoding="utf-8")
    block = text[text.index(draw_layout.BEGIN):text.index(draw_layout.END) + len(draw_layout.END)]
    assert block == draw_layout.render(), "docs/architecture.md: run python tools/draw_layout.py"
