"""The package's imports point down the layers of ARCHITECTURE.md and form no cycle, not even under
``TYPE_CHECKING`` or inside a function (a lazy import is still a dependency).

Read from the source with ``ast``: every ``import torchsystem_trainer...`` / ``from torchsystem_trainer... import``
anywhere in a module is an edge to the module it names (``from package import name`` is an edge to the submodule
``package.name`` when there is one, else to the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "torchsystem_trainer"
PACKAGE = "torchsystem_trainer"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("depends",),
    ("registry",),
    ("domain",),
    ("compiler",),
    ("services",),
    ("events",),  # the Trainer's event vocabulary: built on the domain's Event, read by callbacks
    ("checkpoint",),
    ("strategies",),
    ("profilers",),  # timers the Trainer wraps around its phases and handlers when asked
    ("trainer",),
    ("callbacks",),
    ("tuner", "tracking"),  # tools over the Trainer, and the run store (a consumer + a reader)
)
FRAMEWORK = {"depends", "registry", "domain", "compiler", "services"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module for alias in node.names
            ]
        else:
            continue
        found.update(target for target in targets if target == PACKAGE or target.startswith(PACKAGE + "."))
    found.discard(name)
    return {target if target in MODULES else _owning_module(target) for target in found}


def _owning_module(target: str) -> str:
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


GRAPH: dict[str, set[str]] = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    """The layer a module belongs to (its first name under the package); ``None`` for the package root, the
    facade that re-exports from every layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _rank(layer: str) -> int:
    for rank, names in enumerate(LAYERS):
        if layer in names:
            return rank
    raise AssertionError(f"{PACKAGE}.{layer} is in no layer of LAYERS: add it where ARCHITECTURE.md puts it")


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer = _layer(module)
        if layer is not None:
            _rank(layer)


def test_imports_point_down_the_layers():
    upward = [
        f"{module} ({layer}) imports {target} ({_layer(target)})"
        for module, targets in GRAPH.items()
        if (layer := _layer(module)) is not None
        for target in sorted(targets)
        if _layer(target) is None or _rank(_layer(target)) > _rank(layer)  # type: ignore[arg-type]
    ]
    assert upward == []


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        (FRAMEWORK, {"trainer", "strategies", "checkpoint", "callbacks"}),
        ({"checkpoint"}, {"trainer", "strategies", "callbacks"}),
        ({"strategies"}, {"trainer", "callbacks"}),
        ({"trainer"}, {"callbacks"}),
    ],
    ids=["framework", "checkpoint", "strategies", "trainer"],
)
def test_named_layers_never_import_the_ones_above(lower, upper):
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) in lower
        for target in sorted(targets)
        if _layer(target) in upper
    ]
    assert wrong == []


def test_no_import_cycles():
    """Depth-first search over the module graph; any back edge is a cycle (reported as the path around it)."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert [" -> ".join(cycle) for cycle in cycles] == []


def test_the_graph_is_read():
    """The reader finds known edges (so an empty graph cannot pass the tests above)."""
    assert f"{PACKAGE}.trainer.trainer" in MODULES
    assert f"{PACKAGE}.events" in GRAPH[f"{PACKAGE}.trainer.trainer"]
    assert any(target.startswith(f"{PACKAGE}.strategies") for target in GRAPH[f"{PACKAGE}.trainer.trainer"])
