from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import Module
from torch.optim import Optimizer

from torchsystem_trainer.compiler import Compiler, compile
from torchsystem_trainer.depends import Depends


def device() -> str:
    raise NotImplementedError("bound in the application layer")


def epoch() -> int:
    return 10  # the seed's example value


class Classifier(nn.Module):
    """The seed's Classifier, reduced to what the compilation pipeline touches."""

    def __init__(self, nn: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn
        self.criterion = criterion
        self.optimizer = optimizer

    def forward(self, input: Tensor) -> Tensor:
        return self.nn(input)


def test_compile_is_torch_compile() -> None:
    assert compile is torch.compile


def test_steps_run_in_order_passing_each_result_to_the_next() -> None:
    compiler = Compiler[list[str]]()
    calls: list[tuple[str, tuple[Any, ...]]] = []

    @compiler.step
    def first(a: int, b: int, *, scale: int) -> tuple[int, int]:
        calls.append(("first", (a, b, scale)))
        return a * scale, b * scale

    @compiler.step
    def second(a: int, b: int) -> int:  # a tuple result is unpacked positionally
        calls.append(("second", (a, b)))
        return a + b

    @compiler.step
    def third(total: int) -> None:  # anything else is passed as one argument
        calls.append(("third", (total,)))

    @compiler.step
    def fourth(nothing: None) -> list[str]:  # None is a result like any other
        calls.append(("fourth", (nothing,)))
        return ["done"]

    assert compiler.compile(1, 2, scale=10) == ["done"]
    assert calls == [("first", (1, 2, 10)), ("second", (10, 20)), ("third", (30,)), ("fourth", (None,))]
    assert compiler.steps == [first, second, third, fourth]


def test_steps_is_the_live_pipeline_as_upstream() -> None:
    compiler = Compiler[str]()

    @compiler.step
    def build(name: str) -> str:
        return name

    @compiler.step
    def move(name: str, device: str = Depends(device)) -> str:
        return f"{name}@{device}"

    compiler.override(device, lambda: "cpu")
    compiler.steps.append(str.upper)  # appended directly: run as it is
    assert compiler.compile("mlp") == "MLP@CPU"
    compiler.steps.remove(move)
    assert compiler.compile("mlp") == "MLP"
    compiler.steps.clear()
    with pytest.raises(ValueError, match="has no steps"):
        compiler.compile("mlp")


def test_depends_and_compile_are_importable_from_the_compiler_module_as_upstream() -> None:
    from torchsystem_trainer import compiler as module

    assert module.Depends is Depends and module.compile is torch.compile
    assert {"Compiler", "Depends", "compile"} <= set(module.__all__)


def test_step_returns_a_directly_callable_injected_function() -> None:
    compiler = Compiler[str]()

    @compiler.step
    def move(name: str, device: str = Depends(device)) -> str:
        return f"{name}@{device}"

    compiler.dependency_overrides[device] = lambda: "cpu"
    assert move.__name__ == "move"
    assert move("mlp") == "mlp@cpu"
    assert compiler.compile("mlp") == "mlp@cpu"


def test_steps_get_dependencies_with_the_compilers_overrides() -> None:
    compiler = Compiler[str]()
    log: list[str] = []

    def lease() -> Iterator[str]:
        log.append("acquire")
        yield "gpu-lease"
        log.append("release")

    @compiler.step
    def build(name: str) -> str:
        return name

    @compiler.step
    def place(name: str, device: str = Depends(device), lease: str = Depends(lease)) -> str:
        log.append(f"place {name} on {device} with {lease}")
        return f"{name}@{device}"

    compiler.override(device, lambda: "cuda:0")
    assert compiler.compile("mlp") == "mlp@cuda:0"
    assert log == ["acquire", "place mlp on cuda:0 with gpu-lease", "release"]


def test_unimplemented_step_dependency_names_the_compiler_overrides() -> None:
    compiler = Compiler[str]()

    @compiler.step
    def move_to_device(name: str, device: str = Depends(device)) -> str:
        return name

    with pytest.raises(NotImplementedError, match=r"^dependency 'device' of handler 'move_to_device' is not "
                       r"implemented: override it with compiler\.dependency_overrides\[device\] = \.\.\.$"):
        compiler.compile("mlp")


@pytest.mark.parametrize(
    ("compiler", "label"),
    [(Compiler[Classifier](), "Compiler[Classifier]"), (Compiler(), "Compiler"), (Compiler("build"), "Compiler('build')")],
    ids=["generic", "bare", "named"],
)
def test_compiling_without_steps_raises_a_value_error_naming_the_compiler(compiler: Compiler[Any], label: str) -> None:
    with pytest.raises(ValueError) as info:
        compiler.compile(1)
    assert str(info.value) == f"{label} has no steps: add a step with @compiler.step before calling compile()"


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_seed_compilation_pipeline(caplog: pytest.LogCaptureFixture) -> None:
    # The seed README's src/services/compilation.py, verbatim but for the imports.
    logger = logging.getLogger(__name__)
    compiler = Compiler[Classifier]()

    def device() -> str:...  # type: ignore[empty-body]

    def epoch() -> int:
        return 10 # Just for the sake of the example

    @compiler.step
    def build_classifier(model: Module, criterion: Module, optimizer: Optimizer):  # type: ignore[no-untyped-def]
        logger.info(f'Building Classifier')
        return Classifier(model, criterion, optimizer)

    @compiler.step
    def move_to_device(classifier: Classifier, device = Depends(device)):  # type: ignore[no-untyped-def]
        logger.info(f'Moving classifier to device: {device}')
        return classifier.to(device)

    @compiler.step
    def compile_classifier(classifier: Classifier):  # type: ignore[no-untyped-def]
        logger.info(f'Compiling classifier')
        return compile(classifier)

    @compiler.step
    def get_current_epoch(classifier: Classifier, epoch: int = Depends(epoch)):  # type: ignore[no-untyped-def]
        classifier.epoch = epoch
        return classifier

    # The seed's main.py
    compiler.dependency_overrides[device] = lambda: "cpu"
    network = nn.Linear(4, 2)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger=__name__):
        classifier = compiler.compile(network, criterion, optimizer)

    assert [record.getMessage() for record in caplog.records if record.name == __name__] == [
        "Building Classifier",
        "Moving classifier to device: cpu",
        "Compiling classifier",
    ]
    original = classifier._orig_mod  # torch.compile wraps the module it is given
    assert isinstance(original, Classifier)
    assert original.nn is network and original.criterion is criterion and original.optimizer is optimizer
    assert classifier.epoch == 10 and original.epoch == 10
    assert next(original.parameters()).device == torch.device("cpu")
