"""``torch.compile`` as a ``Compiler`` step, the seed's way of building an aggregate: the pipeline builds it, sets
it up on the GPU through the strategy (``Strategy.setup`` is idempotent, so the Trainer's own call changes nothing),
compiles it (the whole aggregate, or its network), and the Trainer trains and validates the compiled code."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.gpu.helpers import loader
from torchsystem_trainer import Aggregate, Compiler, Depends, Trainer
from torchsystem_trainer.compiler import compile
from torchsystem_trainer.strategies import SingleDeviceStrategy, Strategy

pytestmark = pytest.mark.slow  # the first compilation takes seconds

TRACED: list[bool] = []  # what torch.compiler.is_compiling() said in MLP.forward, call after call


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 2))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        TRACED.append(torch.compiler.is_compiling())
        return self.layers(inputs)  # type: ignore[no-any-return]


class Model(Aggregate):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = network
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)  # type: ignore[no-any-return]


def training_strategy() -> Strategy:
    raise NotImplementedError("bound by the application: compiler.dependency_overrides[training_strategy]")


def pipeline(what: str | None) -> Compiler[Model]:
    compiler = Compiler[Model]("gpu")

    @compiler.step
    def build() -> Model:
        torch.manual_seed(0)
        return Model(MLP())

    @compiler.step
    def set_up(model: Model, strategy: Strategy = Depends(training_strategy)) -> Model:  # noqa: B008
        return strategy.setup(model)

    @compiler.step
    def compile_it(model: Model) -> Model:
        if what == "aggregate":
            model.compile()  # nn.Module.compile: in place, so `fit` calling self(inputs) runs the compiled forward
        elif what == "network":
            model.nn = compile(model.nn)  # the seed's step: torch.compile, re-exported by the compiler module
        return model

    return compiler


def _train(what: str | None) -> tuple[Model, Trainer]:
    strategy = SingleDeviceStrategy("cuda")
    compiler = pipeline(what)
    compiler.dependency_overrides[training_strategy] = lambda: strategy
    model = compiler.compile()
    assert next(model.parameters()).device.type == "cuda"  # set up by the pipeline already
    trainer = Trainer(strategy=strategy, max_epochs=2, enable_progress_bar=False)
    trainer.fit(model, [("train", loader(samples=32)), ("validation", loader(samples=16, seed=1))])
    return model, trainer


@pytest.mark.parametrize("what", ["aggregate", "network"])
def test_a_compiled_aggregate_trains_and_validates_as_the_eager_one(what):
    torch.compiler.reset()
    eager, eager_trainer = _train(None)
    TRACED.clear()
    compiled, trainer = _train(what)
    assert any(TRACED)  # dynamo traced the forward: the compiled code ran
    assert compiled.epoch == 2 and trainer.global_step == 16
    for ours, theirs in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    for key, value in eager_trainer.callback_metrics.items():
        assert trainer.callback_metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5)
