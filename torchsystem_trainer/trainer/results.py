"""What a phase accumulates over its batches: the sample-weighted loss and the metrics.

Both stay on the device for the whole phase; the host reads them once, when the phase ends.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

__all__ = ["PhaseResults", "build_metrics"]

_FOLD = 1024  # batch losses kept before they are folded into one running sum


def build_metrics(metrics: Any) -> MetricCollection | None:
    """Turn the Trainer's ``metrics`` argument into a ``MetricCollection`` (a template, cloned per phase).

    Args:
        metrics: ``None``, a torchmetrics ``Metric``, a ``MetricCollection``, or ``{name: Metric}``.

    Returns:
        The collection, or ``None``.

    Raises:
        TypeError: for anything else, or a dict value that is not a ``Metric``.
        ValueError: for a metric named ``"loss"``, which the Trainer reports itself.
    """
    if metrics is None:
        return None
    if isinstance(metrics, MetricCollection):
        collection = metrics
    elif isinstance(metrics, Metric):
        collection = MetricCollection([metrics])
    elif isinstance(metrics, dict):
        for name, metric in metrics.items():
            if not isinstance(metric, Metric):
                raise TypeError(f"metrics[{name!r}] is a {type(metric).__name__}, not a torchmetrics Metric")
        collection = MetricCollection(dict(metrics))
    else:
        raise TypeError(
            f"metrics is a {type(metrics).__name__}; give a torchmetrics Metric, a MetricCollection or {{name: Metric}}"
        )
    if "loss" in collection.keys(keep_base=False):
        raise ValueError("metrics has a metric named 'loss'; the Trainer reports the loss itself: rename it")
    return collection


class PhaseResults:
    """The running results of one phase.

    Args:
        metrics: this phase's metrics (already on the device), or ``None``.
    """

    def __init__(self, metrics: MetricCollection | None) -> None:
        self.metrics = metrics
        self.losses: list[Tensor] = []
        self.sizes: list[int] = []
        self.total: Tensor | None = None  # [] float64 or float32, the folded sum of loss * batch size
        self.count = 0  # samples seen

    def update(self, loss: Tensor, size: int, predictions: Any, targets: Any) -> None:
        """Record one batch: ``loss`` ``[]`` (its mean over the batch), ``size`` samples, and the metric inputs.

        Raises:
            ValueError: when metrics are configured and the batch has no targets.
        """
        self.losses.append(loss.detach())
        self.sizes.append(size)
        self.count += size
        if len(self.losses) >= _FOLD:
            self._fold()
        if self.metrics is not None:
            if targets is None:
                raise ValueError(
                    "metrics need targets: make batches (inputs, targets) tuples, or dicts with a 'targets' key"
                )
            self.metrics.update(predictions, targets)

    def _fold(self) -> None:
        losses = torch.stack(self.losses).float()
        sizes = torch.tensor(self.sizes, dtype=losses.dtype, device=losses.device)
        folded = torch.dot(losses, sizes)
        self.total = folded if self.total is None else self.total + folded
        self.losses.clear()
        self.sizes.clear()

    def loss_sum(self) -> Tensor | None:
        """``[]`` the sum of loss x batch size over the phase so far, on the device; ``None`` before any batch."""
        if self.losses:
            self._fold()
        return self.total

    def compute(self, reduce: Any = None) -> dict[str, float]:
        """The phase's results: ``"loss"`` (sample-weighted mean) and every metric, as floats.

        Args:
            reduce: ``(tensor) -> tensor`` summing across processes (the strategy's ``all_reduce``), or ``None``.

        Returns:
            ``{"loss": float, <metric>: float, ...}``; empty when the phase saw no batch.

        Raises:
            ValueError: when a metric computes a tensor with more than one element.
        """
        total = self.loss_sum()
        results: dict[str, float] = {}
        if total is not None:
            pair = torch.stack([total, torch.tensor(float(self.count), dtype=total.dtype, device=total.device)])
            if reduce is not None:
                pair = reduce(pair)
            loss_sum, count = pair.tolist()
            results["loss"] = loss_sum / count
        if self.metrics is not None and (total is not None or reduce is not None):
            for name, value in self.metrics.compute().items():
                tensor = torch.as_tensor(value)
                if tensor.numel() != 1:
                    raise ValueError(
                        f"metric {name!r} computed a tensor of shape {list(tensor.shape)}; results hold scalars "
                        "(for per-class metrics choose an average, e.g. average='macro')"
                    )
                results[name] = float(tensor)
        return results

    def reset(self) -> None:
        """Forget everything, for the next epoch."""
        self.losses.clear()
        self.sizes.clear()
        self.total = None
        self.count = 0
        if self.metrics is not None:
            self.metrics.reset()
