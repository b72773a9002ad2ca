"""The layers of docs/architecture.md, checked by walking every import of the package.

Every `import` and `from ... import` counts, also those inside functions: a deferred import is
still an arrow between two modules.
"""

import ast
from pathlib import Path

import networkx as nx
import pytest

import crckd

PACKAGE = Path(crckd.__file__).parent

# Lowest first. A module may import its own package, base modules and any lower layer; the
# three packages of layer 1 know nothing of each other.
LAYERS = {
    "base": 0,
    "data": 1,
    "models": 1,
    "losses": 1,
    "methods": 2,
    "engine": 3,
    "tools": 4,
    "cli": 5,
}
BASE_MODULES = {"crckd", "crckd.config", "crckd.errors", "crckd.dist", "crckd.transfer"}
TOP_MODULES = {"crckd.cli", "crckd.cli_check", "crckd.cli_results", "crckd.demo", "crckd.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The crckd modules `path` imports (a `from a import b` names module a.b when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""  # absolute: ruff bans relative imports (TID252)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name in modules}


def _layer(module: str) -> str:
    if module in BASE_MODULES:
        return "base"
    if module in TOP_MODULES:
        return "cli"
    package = module.split(".")[1]
    assert package in LAYERS, f"{module} is in no layer of docs/architecture.md"
    return package


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in _imports(path, modules))
    return graph


def test_every_module_is_in_a_layer(graph):
    for module in graph:
        _layer(module)


def test_no_module_imports_a_higher_layer_or_a_sibling_package(graph):
    wrong = []
    for source, target in graph.edges:
        own, other = _layer(source), _layer(target)
        if own == other:
            continue
        if LAYERS[other] >= LAYERS[own]:
            wrong.append(f"{source} -> {target}")
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_base_modules_import_no_layer(graph):
    for module in BASE_MODULES:
        assert all(_layer(t) == "base" for t in graph.successors(module)), module
    assert set(graph.successors("crckd.config")) <= {"crckd.errors"}


def test_no_import_cycle(graph):
    # a package's __init__ re-exporting its own modules is not a cycle between modules
    edges = [
        (s, t)
        for s, t in graph.edges
        if not (_modules()[s].name == "__init__.py" and t.startswith(s + "."))
    ]
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_the_walker_sees_deferred_imports(tmp_path):
    """A guard on the test itself: an import inside a function is found."""
    module = PACKAGE / "config.py"
    found = _imports(module, _modules())
    assert "crckd.errors" in found
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from crckd.engine import trainer\n")
    assert _imports(source, _modules()) == {"crckd.engine.trainer"}
