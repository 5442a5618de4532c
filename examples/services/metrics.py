"""A ``Metrics`` implementation for classification: the sample-weighted mean loss and the accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Metric", "Metrics"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One named result of a phase.

    Attributes:
        name: ``"loss"`` or ``"accuracy"``.
        value: the value over the phase's samples.
    """

    name: str
    value: float


class Metrics:
    """Accumulate a phase's loss and correct predictions on the device; read them once, in :meth:`compute`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.loss_sum: Tensor | float = 0.0
        self.correct: Tensor | int = 0
        self.samples = 0

    def update(self, batch: int, loss: Tensor, predictions: Tensor, targets: Tensor) -> None:
        """Record one batch.

        Args:
            batch: 1-based index of the batch in its phase (unused: every batch counts alike).
            loss: [] float32, the batch's mean loss.
            predictions: [batch] int64 predicted classes.
            targets: [batch] int64 true classes.
        """
        size = targets.shape[0]
        self.loss_sum = self.loss_sum + loss.detach() * size
        self.correct = self.correct + (predictions == targets).sum()
        self.samples += size

    def compute(self) -> list[Metric]:
        """The phase's results, then start again.

        Returns:
            ``[Metric("loss", mean loss per sample), Metric("accuracy", share of correct predictions)]``.

        Raises:
            ValueError: when no batch was recorded since the last :meth:`compute`.
        """
        if self.samples == 0:
            raise ValueError("Metrics.compute: no batch was recorded; was the loader empty?")
        loss = float(torch.as_tensor(self.loss_sum)) / self.samples
        accuracy = float(torch.as_tensor(self.correct)) / self.samples
        self.reset()
        return [Metric("loss", loss), Metric("accuracy", accuracy)]
