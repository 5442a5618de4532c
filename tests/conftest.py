"""Fixtures shared by the whole suite: tiny aggregates and data on CPU, and a clean process state."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchsystem_trainer import Aggregate
from torchsystem_trainer.callbacks import Callback


class Classifier(Aggregate):
    """The seed's classifier: its fit does zero_grad / backward / step itself."""

    def __init__(self, features: int = 4, classes: int = 2, lr: float = 0.1) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn.Linear(features, classes)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=lr)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return outputs, loss

    def onepoch(self) -> None:
        self.events.commit()


class Recorder(Callback):
    """Records (event name, epoch, step) for every event, as ignite's RecordedEngine does."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def _record(self, event) -> None:
        name = type(event).__name__
        if name in ("BatchTrained", "BatchValidated", "BatchTested"):
            self.events.append((name, event.epoch, event.batch, event.step))
        elif name == "GradientsComputed":
            self.events.append((name, event.epoch, event.step))
        elif name == "PhaseStarted":
            self.events.append((name, event.epoch, event.phase))
        elif name == "FitEnded":
            self.events.append((name, event.reason))
        elif name == "ExceptionRaised":
            self.events.append((name, type(event.exception).__name__))
        elif hasattr(event, "epoch"):
            self.events.append((name, event.epoch))
        else:
            self.events.append((name,))

    on_fit_started = on_epoch_started = on_phase_started = on_gradients_computed = _record
    on_batch_trained = on_batch_validated = on_batch_tested = on_batch_predicted = _record
    on_trained = on_validated = on_tested = on_iterated = on_predicted = _record
    on_exception_raised = on_fit_ended = _record

    def names(self) -> list[str]:
        return [event[0] for event in self.events]


def make_data(samples: int = 16, batch: int = 4, features: int = 4, classes: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator)
    targets = torch.randint(0, classes, (samples,), generator=generator)
    return [(inputs[i : i + batch], targets[i : i + batch]) for i in range(0, samples, batch)]


@pytest.fixture
def data():
    return make_data()


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return Classifier()


@pytest.fixture(autouse=True)
def _clean_process_state():
    """Restore environment variables and destroy any process group a test left behind (Fabric's conftest)."""
    environ = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(environ)
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call costs ~2 s the first time
        torch.use_deterministic_algorithms(deterministic)
