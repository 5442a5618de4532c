"""The interfaces the services are written against (the seed's ``src/domain.py``).

Nothing here is implemented: the training service only knows these protocols, so any aggregate with ``fit`` and
``evaluate``, any metrics with ``update`` and ``compute``, and any iterable of batches will do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from torchsystem_trainer import Events

__all__ = ["Loader", "Metric", "Metrics", "Model"]


class Model(Protocol):
    """An aggregate that learns from batches: the seed's ``Model``."""

    phase: str
    epoch: int
    events: Events
    nn: Module
    criterion: Module
    optimizer: Optimizer

    @property
    def id(self) -> Any:
        """The identity of the aggregate root (the registry hash of its network)."""
        ...

    def fit(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step: returns ``(predictions, loss)``."""
        ...

    def evaluate(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Score a batch without learning: returns ``(predictions, loss)``."""
        ...


class Metric(Protocol):
    """One named value, e.g. ``loss`` or ``accuracy``."""

    @property
    def name(self) -> str:
        """The metric's name, the topic it is published on."""
        ...

    @property
    def value(self) -> float:
        """The metric's value over a phase."""
        ...


class Metrics(Protocol):
    """Accumulates batch results over a phase."""

    def update(self, batch: int, loss: Tensor, predictions: Tensor, targets: Tensor) -> None:
        """Record one batch (``batch`` is its 1-based index in the phase)."""
        ...

    def compute(self) -> Sequence[Metric]:
        """The phase's metrics; the accumulation starts again afterwards."""
        ...


class Loader(Protocol):
    """Anything that yields ``(inputs, targets)`` batches."""

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of one pass."""
        ...
