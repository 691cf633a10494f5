"""The package's import graph: no cycles, inference independent of training, a Qt-free core.

Imports are read from the source with ``ast`` (module level and inside functions alike), so a lazy
import cannot hide a cycle or an upward edge. ``if TYPE_CHECKING:`` blocks never run: the direct
edge tests leave them out, but the cycle test and the transitive tests count them, so a circle
or a side door hidden behind type annotations fails too. The transitive tests follow every path
(inference -> evaluation -> training.metrics was one such side door).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import schism_napari

PACKAGE = "schism_napari"
ROOT = Path(schism_napari.__file__).parent
GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt")
# Modules that exist to talk to napari: the widgets, the reader/writer/sample hooks, the main job.
NAPARI_SIDE = (f"{PACKAGE}._widgets", f"{PACKAGE}._napari", f"{PACKAGE}.cli.screenshots", f"{PACKAGE}.cli.launch")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (ROOT.parent / name.replace(".", "/") / "__init__.py").is_file()


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, type_checking: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The imports of ``tree``; those under ``if TYPE_CHECKING:`` only when ``type_checking``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not type_checking and isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def imports_of(path: Path, type_checking: bool = False) -> set[str]:
    """Absolute names of the modules ``path`` imports (a package's submodule when named by ``from . import x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), type_checking):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        for alias in node.names:
            candidate = f"{origin}.{alias.name}"
            inside = candidate.startswith(PACKAGE)
            is_module = (ROOT.parent / (candidate.replace(".", "/") + ".py")).is_file() or is_package(candidate)
            targets.add(candidate if inside and is_module else origin)
    return targets


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the names it imports; ``type_checking`` adds the ``if TYPE_CHECKING:`` imports."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        graph[module_name(path)] = imports_of(path, type_checking)
    return graph


def internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` reaches through one import or a chain of them (itself excluded)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen and target != start:
                seen.add(target)
                todo.append(target)
    return seen


def side_doors(graph: dict[str, set[str]], sources: str, targets: str) -> set[tuple[str, str]]:
    """(module under ``sources``, module under ``targets`` it reaches, directly or not)."""
    return {
        (module, target)
        for module in graph
        if _under(module, sources)
        for target in reachable(graph, module)
        if _under(target, targets)
    }


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_reader_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert f"{PACKAGE}.plumbing.devices" in graph[f"{PACKAGE}.inference.predictor"]
    assert f"{PACKAGE}.errors" in graph[PACKAGE]
    assert f"{PACKAGE}.events" in graph[f"{PACKAGE}.cli.progress"]  # from . import events
    assert f"{PACKAGE}.cli.demo" in graph[f"{PACKAGE}.cli"]  # imported inside a function
    assert "napari.layers" in graph[f"{PACKAGE}._widgets.dataset"]


def test_the_graph_reader_sees_type_checking_imports_when_asked():
    assert f"{PACKAGE}.config" in import_graph(type_checking=True)[f"{PACKAGE}.models"]
    assert f"{PACKAGE}.config" not in import_graph()[f"{PACKAGE}.models"]


def test_reachable_follows_chains():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert reachable(graph, "a") == {"b", "c"}
    assert reachable(graph, "d") == set()
    assert side_doors({"x.one": {"m"}, "m": {"y.two"}, "y.two": set()}, "x", "y") == {("x.one", "y.two")}


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(internal(import_graph()))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_package_has_no_import_cycle_counting_type_checking_imports():
    """A circle through ``if TYPE_CHECKING:`` imports still ties the modules together (config
    once imported the model registry, which imported config for its annotations)."""
    cycle = find_cycle(internal(import_graph(type_checking=True)))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_registries_are_a_leaf():
    """The configuration validates names from them without importing torch, smp or itself back."""
    graph = import_graph(type_checking=True)
    registries = f"{PACKAGE}.registries"
    assert internal(graph)[registries] == set()
    assert not {t for t in graph[registries] if t.split(".")[0] in ("torch", "segmentation_models_pytorch")}
    assert internal(graph)[f"{PACKAGE}.config"] <= {
        registries,
        f"{PACKAGE}.errors",
        f"{PACKAGE}.plumbing.atomic",
        PACKAGE,
    }


def test_inference_does_not_depend_on_training():
    graph = internal(import_graph())
    upward = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith(f"{PACKAGE}.inference")
        for target in targets
        if target.startswith(f"{PACKAGE}.training")
    }
    assert not upward


def test_inference_never_reaches_training():
    """Not even through another module (inference.ensemble -> evaluation -> metrics)."""
    graph = internal(import_graph(type_checking=True))
    assert not side_doors(graph, f"{PACKAGE}.inference", f"{PACKAGE}.training")


@pytest.mark.parametrize(
    "low",
    [
        "errors",
        "events",
        "registries",
        "plumbing",
        "config",
        "data",
        "models",
        "forest",
        "evaluation.metrics",
    ],
)
def test_lower_layers_do_not_import_higher_ones(low):
    """Data, models, the plumbing and the small shared modules never reach up into training,
    inference, run folders, the workflows or the command line (nor does the forest and the choice
    between it and the network, which prediction reads from a run folder)."""
    higher = ("training", "inference", "runs", "cli", "workflows", "evaluation.scoring")
    graph = internal(import_graph())
    offending = {
        (module, target)
        for module, targets in graph.items()
        if module == f"{PACKAGE}.{low}" or module.startswith(f"{PACKAGE}.{low}.")
        for target in targets
        if any(target == f"{PACKAGE}.{h}" or target.startswith(f"{PACKAGE}.{h}.") for h in higher)
    }
    assert not offending
    reached = internal(import_graph(type_checking=True))
    for h in higher:
        assert not side_doors(reached, f"{PACKAGE}.{low}", f"{PACKAGE}.{h}"), h


def test_the_core_never_imports_qt_or_napari():
    graph = import_graph()
    offending = {
        (module, target)
        for module, targets in graph.items()
        if not module.startswith(NAPARI_SIDE)
        for target in targets
        if target.split(".")[0] in GUI_MODULES
    }
    assert not offending


# The core's one door to napari: ``schism launch`` opens the viewer (launch imports napari lazily).
NAPARI_DOORS = {(f"{PACKAGE}.cli", f"{PACKAGE}.cli.launch")}


def test_the_core_never_reaches_the_widgets():
    graph = internal(import_graph(type_checking=True))
    core = [m for m in graph if not m.startswith(NAPARI_SIDE)]
    offending = {(m, t) for m in core for t in reachable(graph, m) if _under(t, f"{PACKAGE}._widgets")}
    assert not offending


def test_the_core_reaches_qt_or_napari_only_through_launch():
    """No chain of imports leads from the core to a napari-side module (and so to Qt or napari),
    besides the ``schism launch`` command's."""
    graph = internal(import_graph(type_checking=True))
    core = {m for m in graph if not m.startswith(NAPARI_SIDE)}
    # follow the core's own imports only, less its doors: nothing outside the core may be reached
    inside = {m: {t for t in graph[m] if (m, t) not in NAPARI_DOORS} if m in core else set() for m in graph}
    offending = {(m, t) for m in core for t in reachable(inside, m) if t not in core}
    assert not offending
    full = import_graph(type_checking=True)
    gui = {(m, t) for m in core for t in full[m] if t.split(".")[0] in GUI_MODULES}
    assert not gui


# The root holds the package's face and its folders; each module here says why it stands alone.
ROOT_MODULES = {
    "__init__.py": "the package's version and one import for its users",
    "_napari.py": "npe2's reader, writer and sample-data hooks (napari.yaml points here)",
    "config.py": "the one typed configuration that the INI, the CLI and the widgets share",
    "registries.py": "the torch-free architecture and loss names that config validates against",
    "errors.py": "one-line user errors, raised by every layer",
    "events.py": "the one progress/stop interface, used by every layer",
    "sample.py": "the synthetic rock CT: napari's sample data, the demo's and the tests' data",
}


def test_the_root_holds_only_the_face_and_folders():
    assert {path.name for path in ROOT.glob("*.py")} == set(ROOT_MODULES)
