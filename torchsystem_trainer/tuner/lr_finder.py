"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017), as
Lightning's ``lr_find``: train ``num_training`` optimizer steps with a learning rate rising from ``min_lr`` to
``max_lr``, record the smoothed loss of each, and suggest the rate where it falls fastest.

:class:`LRFinder` is the result; the callback that records it during the search is :class:`LRSearch`.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from typing_extensions import override

from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.events import BatchTrained, FitEnded, FitStarted
from torchsystem_trainer.strategies.optimizer_step import find_optimizers

__all__ = ["LRFinder", "LRSearch", "Mode", "schedule"]

Mode = Literal["exponential", "linear"]


def schedule(min_lr: float, max_lr: float, num_training: int, mode: Mode) -> list[float]:
    """The learning rate of each step: ``min_lr`` at the first, ``max_lr`` at the last, evenly spaced on a log
    scale (``"exponential"``) or a linear one (``"linear"``), as Lightning's ``_ExponentialLR``/``_LinearLR``.

    Returns:
        ``num_training`` rates.
    """
    last = max(num_training - 1, 1)
    if mode == "exponential":
        return [min_lr * (max_lr / min_lr) ** (i / last) for i in range(num_training)]
    return [min_lr + (max_lr - min_lr) * i / last for i in range(num_training)]


class LRFinder:
    """The outcome of :meth:`~torchsystem_trainer.tuner.Tuner.lr_find`.

    Attributes:
        results: ``{"lr": [...], "loss": [...]}``, one entry per optimizer step: the learning rate it ran with and
            the smoothed training loss (exponential moving average, ``beta=0.98``, bias-corrected; Lightning's).
        mode: ``"exponential"`` or ``"linear"``.
    """

    def __init__(self, mode: Mode, results: dict[str, list[float]] | None = None) -> None:
        self.mode: Mode = mode
        self.results: dict[str, list[float]] = results or {"lr": [], "loss": []}
        self._optimal_index: int | None = None

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> float | None:
        """The learning rate where the smoothed loss falls fastest: the minimum of its gradient (``torch.gradient``)
        with respect to the learning rate's axis as plotted, ``log(lr)`` in ``"exponential"`` mode (as fastai's
        ``steep`` suggestion; Lightning differentiates with respect to ``lr`` itself, where the noise of the first,
        closely spaced small rates dominates) and ``lr`` in ``"linear"`` mode, ignoring the first ``skip_begin``
        and last ``skip_end`` points and any non-finite loss (Lightning's arguments).

        Returns:
            The rate, or ``None`` (with a warning) when fewer than two points remain.
        """
        count = len(self.results["loss"])
        indexes = [
            i for i in range(skip_begin, count - skip_end) if math.isfinite(self.results["loss"][i])
        ]
        if len(indexes) < 2:
            warnings.warn(
                f"LRFinder.suggestion: {len(indexes)} usable point(s) after skipping {skip_begin} at the start and "
                f"{skip_end} at the end of {count}; raise num_training or give a loader with more batches",
                stacklevel=2,
            )
            self._optimal_index = None
            return None
        losses = torch.tensor([self.results["loss"][i] for i in indexes], dtype=torch.float64)
        rates = torch.tensor([self.results["lr"][i] for i in indexes], dtype=torch.float64)
        if self.mode == "exponential":
            rates = rates.log()
        gradient = torch.gradient(losses, spacing=[rates])[0]
        self._optimal_index = indexes[int(torch.argmin(gradient))]
        return self.results["lr"][self._optimal_index]

    def plot(self, path: str | os.PathLike[str], suggest: bool = True) -> Path:
        """Write the loss against the learning rate as a PNG (a log-scaled rate axis in ``"exponential"`` mode),
        with the suggestion marked. Needs matplotlib (``pip install torchsystem-trainer[plot]``); draws on its own
        figure, never through ``pyplot``'s global state.

        Args:
            path: the image file; its folder is created when missing.
            suggest: mark :meth:`suggestion`'s point.

        Returns:
            The path written.

        Raises:
            ModuleNotFoundError: when matplotlib is not installed, saying how to install it.
        """
        try:
            from matplotlib.figure import Figure
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                "LRFinder.plot needs matplotlib: pip install 'torchsystem-trainer[plot]'"
            ) from error
        figure = Figure(figsize=(6, 4))
        axes = figure.subplots()
        axes.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss (smoothed)")
        if suggest and self.suggestion() is not None and self._optimal_index is not None:
            index = self._optimal_index
            axes.plot(self.results["lr"][index], self.results["loss"][index], "o", color="red", markersize=8,
                      label=f"suggestion {self.results['lr'][index]:.3g}")
            axes.legend()
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(destination, format="png")
        return destination


class LRSearch(Callback):
    """Sets each optimizer step's learning rate and records its smoothed loss (used by ``Tuner.lr_find``).

    At ``FitStarted`` every parameter group of the aggregate's optimizer gets ``rates[0]``; after each optimizer
    step (``BatchTrained`` where ``global_step`` advanced) the mean loss of that step's batches is read (one host
    read per step; under several processes it is first averaged over them, so every process records the same
    curve), smoothed, and the next rate is set (after the aggregate's own ``fit``, so it wins over a scheduler the
    aggregate steps itself). The search stops once the smoothed loss exceeds ``early_stop_threshold`` times the best
    seen, or is not finite. At ``FitEnded`` rank 0's results are broadcast.

    Args:
        rates: the learning rate of each step.
        early_stop_threshold: see above; ``None``: never stop early.
        beta: the smoothing factor.
    """

    def __init__(self, rates: list[float], early_stop_threshold: float | None, beta: float = 0.98) -> None:
        self.rates, self.threshold, self.beta = rates, early_stop_threshold, beta
        self.results: dict[str, list[float]] = {"lr": [], "loss": []}
        self._optimizer: Any = None
        self._average = self._best = 0.0
        self._seen = 0
        self._sum: torch.Tensor | None = None
        self._batches = 0

    def on_fit_started(self, event: FitStarted) -> None:
        """Set the first learning rate."""
        optimizers = find_optimizers(event.aggregate)
        if len(optimizers) != 1:
            raise ValueError(
                f"Tuner.lr_find needs an aggregate with exactly one optimizer (Lightning's rule); "
                f"{type(event.aggregate).__name__} has {len(optimizers)}"
            )
        self._optimizer = optimizers[0]
        self.results = {"lr": [], "loss": []}
        self._average, self._best, self._seen, self._sum, self._batches = 0.0, 0.0, 0, None, 0
        self._set(self.rates[0])

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Record the step's smoothed loss, stop on divergence, set the next rate."""
        trainer = event.trainer
        self._sum = event.loss.float() if self._sum is None else self._sum + event.loss.float()
        self._batches += 1
        step = trainer.global_step
        if step == self._seen:  # inside an accumulation window
            return
        self._seen = step
        loss = self._sum / self._batches
        self._sum, self._batches = None, 0
        if trainer.strategy.world_size > 1:
            loss = trainer.strategy.all_reduce(loss, "mean")
        value = float(loss)
        count = len(self.results["loss"]) + 1
        self._average = self.beta * self._average + (1 - self.beta) * value
        smoothed = self._average / (1 - self.beta**count)
        self.results["lr"].append(self.rates[min(step, len(self.rates)) - 1])
        self.results["loss"].append(smoothed)
        diverged = self.threshold is not None and count > 1 and smoothed > self.threshold * self._best
        if diverged or not math.isfinite(smoothed):
            trainer.should_stop = True
        if count == 1 or smoothed < self._best:
            self._best = smoothed
        if step < len(self.rates):
            self._set(self.rates[step])

    def on_fit_ended(self, event: FitEnded) -> None:
        """Give every process rank 0's results (the same already, as the losses are averaged over processes)."""
        strategy = event.trainer.strategy
        if strategy.world_size > 1 and event.reason != "exception":
            self.results = strategy.broadcast(self.results, 0)

    def _set(self, rate: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = rate

    @override
    def state_dict(self) -> dict[str, Any]:
        """The results (so a fit that started processes brings them back to the caller)."""
        return {"lr": list(self.results["lr"]), "loss": list(self.results["loss"])}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take :meth:`state_dict`'s output."""
        self.results = {"lr": list(state["lr"]), "loss": list(state["loss"])}
