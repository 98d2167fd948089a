"""The shape of the flowlib package itself: no import cycle, lowest modules at the bottom, short
files, and every docstring example true.

The import graph is read from the source with :mod:`ast`, not from ``sys.modules``: every
``import`` statement counts, at module level and inside functions (a function-level import is
a dependency too, only a later one), except those under ``if TYPE_CHECKING:``, which never run.
An edge goes to the module named in the statement (``from flowlib.a import b`` reaches
``flowlib.a.b`` when that is a module, else ``flowlib.a``); the parent packages that Python
also initialises on the way are not counted, or every module would depend on ``flowlib``.
"""

from __future__ import annotations

import ast
import doctest
import graphlib
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "flowlib"
MAX_LINES = 400
#: The bottom of the package: they import no flowlib module outside this set.
LOWEST = {"flowlib._checks", "flowlib._modules", "flowlib._io", "flowlib._doors", "flowlib.core"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    """The flowlib modules named by the import statements of ``tree`` (type-only ones excluded)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .a import b
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # A submodule imported by name is the dependency; any other name comes from the package.
            found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target
                         for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(ast.parse(path.read_text(), str(path)), package) - {name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph[todo.pop()]:
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_graph_sees_function_level_imports():
    tree = ast.parse("def f():\n    from flowlib import core\n    import flowlib._io\n"
                     "if TYPE_CHECKING:\n    from flowlib.models import glow\n")
    assert _imports(tree, "flowlib") == {"flowlib.core", "flowlib._io"}
    assert _imports(ast.parse("from flowlib import Flow, core\n"), "flowlib") == {"flowlib", "flowlib.core"}
    relative = ast.parse("from . import toys\nfrom .._io import atomic_write\n")
    assert _imports(relative, "flowlib.data") == {"flowlib.data.toys", "flowlib._io"}


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 10 and graph["flowlib"], "the graph of flowlib's imports came out empty"
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle in flowlib: {' -> '.join(err.args[1])}")
    assert set(order) == set(graph)


@pytest.mark.parametrize("module", sorted(LOWEST))
def test_lowest_modules_import_nothing_higher(module):
    higher = _reachable(import_graph(), module) - LOWEST
    assert not higher, f"{module} imports higher flowlib modules: {sorted(higher)}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_file_longer_than_400_lines(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT.parent)} has {lines} lines (at most {MAX_LINES})"


#: Modules whose examples read the MNIST files (the data folder of tests/conftest.py).
NEEDS_MNIST = {"flowlib.data.images"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_doctests(name, request):
    """The examples in flowlib's docstrings run and print what they say (as --doctest-modules)."""
    if name in NEEDS_MNIST:
        request.getfixturevalue("data_dir")  # skips, with the reason, where no MNIST copy is at hand
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=False, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctests of {name} failed " \
                               f"(run python -m doctest -v {MODULES[name]})"


def test_public_api_has_examples():
    """Guard against the doctest run silently testing nothing."""
    finder = doctest.DocTestFinder()
    total = sum(len(t.examples) for name in ("flowlib._checks", "flowlib._modules", "flowlib.core")
                for t in finder.find(importlib.import_module(name)))
    assert total >= 10


#: The public doors that must carry a runnable example: the builders, the layers, fit, the loaders.
DOCUMENTED = {
    "flowlib.models": ["nice", "realnvp", "glow", "nice_vector", "realnvp_vector", "glow_vector", "maf",
                       "iaf", "nsf", "planar_flow", "radial_flow"],
    "flowlib.image_models": ["nice_image", "realnvp_image", "glow_image"],
    "flowlib.field_models": ["glow_field"],
    "flowlib.tarflow": ["tarflow_image", "TransformerAutoregressive"],
    "flowlib.core": ["Compose", "Inverse", "FlowModel"],
    "flowlib.actnorm": ["ActNorm"],
    "flowlib.linear": ["InvertibleLinear", "InvertibleLinearLU"],
    "flowlib.coupling": ["Coupling", "AdditiveCoupling", "AffineCoupling", "Scaling", "half_mask",
                         "checkerboard_mask", "channel_mask"],
    "flowlib.autoregressive": ["MADE", "MaskedAutoregressive", "InverseAutoregressive"],
    "flowlib.splines": ["RationalQuadraticSpline"],
    "flowlib.transformers": ["Additive", "Affine"],
    "flowlib.elementwise": ["Affine", "SinhArcsinh", "MixtureLogisticCDF"],
    "flowlib.planar": ["Planar", "Radial"],
    "flowlib.permutations": ["ReversePermutation", "RandomPermutation"],
    "flowlib.multiscale": ["squeeze", "Squeeze", "GaussianSplitPrior"],
    "flowlib.dequantize": ["UniformDequantization", "VariationalDequantization", "LogitPreprocess"],
    "flowlib.reversible": ["MemorySavingCompose", "memory_saving"],
    "flowlib.nets": ["MLP"],
    "flowlib.convnets": ["ResNetConditioner", "GlowConditioner"],
    "flowlib.train.loop": ["fit"],
    "flowlib.data.images": ["load_digits", "load_mnist", "load_fashion_mnist", "load_images", "pad_to"],
    "flowlib.data.toys": ["get_toy"],
}


@pytest.mark.parametrize("module_name", sorted(DOCUMENTED))
def test_public_doors_carry_examples(module_name):
    module = importlib.import_module(module_name)
    bare = [name for name in DOCUMENTED[module_name]
            if ">>>" not in (getattr(module, name).__doc__ or "")]
    assert not bare, f"{module_name}: no example (>>>) in the docstring of {bare}"


def _readme_module_map() -> set[str]:
    """The entries of the module map in README.md: the first column of the block under ``flowlib/``."""
    text = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = text.split("```\nflowlib/\n", 1)[1].split("```", 1)[0]
    # Entries start two spaces in; continuation lines of a description are indented further.
    return {line.split()[0] for line in block.splitlines() if line.startswith("  ") and line[2] != " "}


def test_readme_module_map_matches_the_tree() -> None:
    on_disk = {p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"}
    on_disk |= {p.name + "/" for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    listed = _readme_module_map()
    assert listed == on_disk, (f"README.md's module map lists {sorted(listed - on_disk)} that do not "
                               f"exist and misses {sorted(on_disk - listed)}")
