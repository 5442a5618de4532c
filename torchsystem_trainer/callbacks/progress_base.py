"""``ProgressBarBase``: what every progress bar does with the Trainer's events; subclasses only draw.

One bar per phase (``PhaseStarted``), whose total is ``PhaseStarted.batches`` (the loader's length after
``limit_*_batches``; no total for a loader without a length). Titles follow Lightning's ``TQDMProgressBar``:
``"Epoch <epoch>"`` (0-based) for training, ``"Validation"``, ``"Test"``, ``"Predict"`` for the others.

A bar is redrawn when ``refresh_rate`` batches have passed since its last drawing *and* ``mininterval`` seconds
have (so a fast loop draws a few times a second, not once per batch), and at its phase's end, where it shows the
phase's results. The training bar also shows ``loss``: the mean of the training losses since its previous
drawing (Lightning shows a 20-batch running mean), read from the device once per drawing; the losses of the
batches in between are kept as tensors and never read one by one, so the bar costs no host-device sync per step.
The batch counter comes from the events' ``batch`` index, a host int. Values the aggregate logs with
``prog_bar=True`` are shown too, by name: the latest of each at every drawing, read with the loss (one host read),
and the phase's reduced value at its end.

A bar is closed at its phase's end, when the next phase starts, and at ``FitEnded`` and ``StageEnded`` (so also
when a fit, ``validate``, ``test`` or ``predict`` raised or was interrupted). A validation inside the training
phase (``val_check_interval``) closes the epoch's bar where it stands, draws its own, and then opens the epoch's bar
again at the same count.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.trainer.logged import read_values

if TYPE_CHECKING:
    from torchsystem_trainer.events import (
        BatchPredicted,
        BatchTested,
        BatchTrained,
        BatchValidated,
        FitEnded,
        PhaseStarted,
        Predicted,
        StageEnded,
        Tested,
        Trained,
        Validated,
    )

__all__ = ["ProgressBarBase", "phase_title"]

_TITLES = {"validation": "Validation", "test": "Test", "predict": "Predict"}


def phase_title(phase: str, epoch: int) -> str:
    """A bar's title: ``"Epoch 3"`` for training (0-based, as Lightning), ``"Validation"``, ``"Test"``,
    ``"Predict"``, else the phase's name."""
    return f"Epoch {epoch}" if phase == "train" else _TITLES.get(phase, phase)


class ProgressBarBase(Callback):
    """The events of a progress bar (see the module docstring); a subclass implements :meth:`open_bar`,
    :meth:`draw` and :meth:`close_bar`.

    Args:
        refresh_rate: redraw every this many batches at most (an int >= 0); 0 disables the bar altogether
            (Lightning's ``refresh_rate=0``).
        mininterval: the least time between two drawings of a bar, in seconds (>= 0).

    Attributes:
        is_progress_bar: ``True``; the Trainer adds no default bar when a callback says so.

    Raises:
        ValueError: for ``refresh_rate`` that is not an int >= 0, or a negative ``mininterval``.
    """

    is_progress_bar: ClassVar[bool] = True
    rank_zero_only: ClassVar[bool] = True

    def __init__(self, refresh_rate: int = 1, mininterval: float = 0.1) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"{name}: refresh_rate={refresh_rate!r} is invalid; valid: an int >= 0 (0 disables)")
        if isinstance(mininterval, bool) or not isinstance(mininterval, (int, float)) or not mininterval >= 0:
            raise ValueError(f"{name}: mininterval={mininterval!r} is invalid; valid: a number of seconds >= 0")
        self.refresh_rate = refresh_rate
        self.mininterval = float(mininterval)
        self._open = False
        self._count = 0
        self._drawn = 0  # the count at the last drawing
        self._next_draw = 0.0  # time.perf_counter() after which the bar may be drawn again
        self._losses: list[torch.Tensor] = []  # training losses since the last drawing, never read one by one
        self._loop: Any = None  # the running trainer's loop (its bar_values), when it has one
        self._phase: str | None = None
        self._bar: tuple[str, int | None] = ("", None)  # the open bar's title and total
        self._epoch_bar: tuple[str, int | None, int] | None = None  # to reopen after a mid-epoch validation

    @property
    def is_enabled(self) -> bool:
        """Whether bars are drawn (``refresh_rate > 0``)."""
        return self.refresh_rate > 0

    # -- what a bar implements --------------------------------------------------------------------------

    def open_bar(self, title: str, total: int | None) -> None:
        """Show a new bar at 0 of ``total`` batches (``None``: unknown)."""
        raise NotImplementedError

    def draw(self, count: int, values: dict[str, float]) -> None:
        """Redraw the open bar at ``count`` batches, showing ``values`` (``{"loss": ...}`` for training)."""
        raise NotImplementedError

    def close_bar(self, count: int, results: dict[str, float] | None) -> None:
        """Close the open bar at ``count`` batches, showing its phase's ``results`` (``None``: the phase did not
        end, as when the run raised)."""
        raise NotImplementedError

    # -- hooks ------------------------------------------------------------------------------------------

    def on_phase_started(self, event: PhaseStarted) -> None:
        """Open the phase's bar, closing any bar a previous phase left open (the epoch's bar, when a validation starts
        inside the training phase, is opened again after it)."""
        if event.phase == "validation" and self._open and self._phase == "train":
            self._epoch_bar = (*self._bar, self._count)
        self._close(None)
        self._phase = event.phase
        self._loop = getattr(event.trainer, "loop", None)
        if self.is_enabled:
            self._start(phase_title(event.phase, event.epoch), event.batches, 0)

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Count the batch, keep its loss; redraw with the mean loss when due."""
        if self._open:
            self._losses.append(event.loss)
            self._advance(event.batch + 1)

    def on_batch_validated(self, event: BatchValidated) -> None:
        """Count the batch; redraw when due."""
        self._advance(event.batch + 1)

    def on_batch_tested(self, event: BatchTested) -> None:
        """Count the batch; redraw when due."""
        self._advance(event.batch + 1)

    def on_batch_predicted(self, event: BatchPredicted) -> None:
        """Count the batch; redraw when due."""
        self._advance(event.batch + 1)

    def on_trained(self, event: Trained) -> None:
        """Show the training results and close the bar."""
        self._close(event.results)

    def on_validated(self, event: Validated) -> None:
        """Show the validation results and close the bar; after a mid-epoch validation, open the epoch's bar again."""
        self._close(event.results)
        if self._epoch_bar is not None:
            title, total, count = self._epoch_bar
            self._epoch_bar, self._phase = None, "train"
            self._start(title, total, count)
            self.draw(count, {})

    def on_tested(self, event: Tested) -> None:
        """Show the test results and close the bar."""
        self._close(event.results)

    def on_predicted(self, event: Predicted) -> None:
        """Close the bar."""
        self._close({})

    def on_fit_ended(self, event: FitEnded) -> None:
        """Close a bar the fit left open (it raised, was interrupted, or stopped mid-phase)."""
        self._close(None)
        self._epoch_bar = None

    def on_stage_ended(self, event: StageEnded) -> None:
        """Close a bar ``validate``, ``test`` or ``predict`` left open (it raised or was interrupted)."""
        self._close(None)

    # -- helpers ----------------------------------------------------------------------------------------

    def _start(self, title: str, total: int | None, count: int) -> None:
        self.open_bar(title, total)
        self._bar = (title, total)
        self._open, self._count, self._drawn, self._losses = True, count, count, []
        self._next_draw = time.perf_counter() + self.mininterval

    def _advance(self, count: int) -> None:
        if not self._open:
            return
        self._count = count
        if count - self._drawn < self.refresh_rate:
            return
        now = time.perf_counter()
        if now < self._next_draw:
            return
        unread: dict[str, Any] = {}
        if self._losses:
            losses, self._losses = self._losses, []
            unread["loss"] = torch.stack(losses).float().mean()
        if self._loop is not None and self._phase is not None:
            unread.update(self._loop.bar_values(self._phase))  # the aggregate's prog_bar values
        self.draw(count, read_values(unread) if unread else {})  # the one host read of this drawing
        self._drawn, self._next_draw = count, now + self.mininterval

    def _close(self, results: dict[str, float] | None) -> None:
        if self._open:
            self._open, self._losses = False, []
            self.close_bar(self._count, results)
