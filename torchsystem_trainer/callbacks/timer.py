"""``Timer``: how long each phase and the whole fit took, and an optional time budget (Lightning's ``Timer``)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.events import (
    BatchTrained,
    FitEnded,
    FitStarted,
    PhaseStarted,
    Predicted,
    StageEnded,
    Tested,
    Trained,
    Validated,
)
from torchsystem_trainer.trainer.arguments import seconds

__all__ = ["Timer"]

PHASES: tuple[str, ...] = ("train", "validation", "test", "predict", "fit")
_STAGE_PHASES = {"validate": "validation", "test": "test", "predict": "predict"}


class Timer(Callback):
    """Measures wall-clock time with ``time.monotonic``: per phase (from ``PhaseStarted`` to the phase's end
    event, or to ``FitEnded``/``StageEnded`` when the run raised first; a validation inside an epoch counts as
    validation, not training), summed over the phase's runs, and for the
    whole fit (``"fit"``: ``FitStarted`` to ``FitEnded``, validation and every callback included). With
    ``duration``, sets ``trainer.should_stop`` once the fit's time reaches it, checked after every training batch
    and at the end of each phase (so a validation phase that overruns ends the fit at that epoch's end).

    Differences from Lightning's ``Timer``: the phases are this Trainer's (``"train"`` is the training phase
    only; Lightning's ``"train"`` stage spans the whole fit, our ``"fit"``), and the budget is measured on
    ``"fit"``. The times are saved in checkpoints, so a resumed fit continues counting from the saved times;
    a fit that does not resume starts from zero. A resumed fit whose budget is already spent stops after its
    first training batch (the loop checks ``should_stop`` after a batch). Under a data-parallel strategy the
    stop decision of global rank 0 is broadcast, so every process stops at the same batch.

    Args:
        duration: the fit's time budget: seconds (> 0), a ``timedelta``, or ``"DD:HH:MM:SS"``; ``None``: none.

    Raises:
        ValueError: for an invalid ``duration``, naming the value and the valid forms.
    """

    def __init__(self, duration: float | timedelta | str | None = None) -> None:
        self.duration: float | None = seconds("Timer: duration", duration)
        self._elapsed: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._paused_train = False
        self._restored = False

    def time_elapsed(self, phase: str = "train") -> float:
        """Seconds spent in ``phase`` so far, its running interval included.

        Args:
            phase: ``"train"``, ``"validation"``, ``"test"``, ``"predict"`` or ``"fit"``.

        Returns:
            Seconds (0.0 for a phase that never ran).

        Raises:
            ValueError: for another ``phase``.
        """
        if phase not in PHASES:
            raise ValueError(f"Timer.time_elapsed: phase={phase!r} is invalid; valid: {', '.join(map(repr, PHASES))}")
        started = self._started.get(phase)
        running = 0.0 if started is None else time.monotonic() - started
        return self._elapsed.get(phase, 0.0) + running

    def time_remaining(self) -> float | None:
        """Seconds left of ``duration`` (negative once overrun), or ``None`` without a duration.

        Returns:
            ``duration - time_elapsed("fit")``, or ``None``.
        """
        return None if self.duration is None else self.duration - self.time_elapsed("fit")

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Start the fit's clock, from the restored times if a checkpoint was just restored, else from zero."""
        if not (self._restored and resumed(event.trainer)):
            self._elapsed = {}
        self._restored, self._paused_train = False, False
        self._started = {"fit": time.monotonic()}
        self._check(event.trainer)

    def on_phase_started(self, event: PhaseStarted) -> None:
        """Start the phase's clock; a validation inside the training phase (``val_check_interval``) pauses the
        training phase's clock until it ends."""
        if event.phase == "validation" and "train" in self._started:
            self._stop("train")
            self._paused_train = True
        self._started[event.phase] = time.monotonic()

    def on_trained(self, event: Trained) -> None:
        """Stop the training phase's clock; stop the fit (at this epoch's end) when the budget is spent."""
        self._stop("train")
        self._check(event.trainer)

    def on_validated(self, event: Validated) -> None:
        """Stop the validation phase's clock; stop the fit (at this epoch's end) when the budget is spent."""
        self._stop("validation")
        if self._paused_train:
            self._paused_train = False
            self._started["train"] = time.monotonic()
        self._check(event.trainer)

    def on_tested(self, event: Tested) -> None:
        """Stop the test phase's clock."""
        self._stop("test")

    def on_predicted(self, event: Predicted) -> None:
        """Stop the predict phase's clock."""
        self._stop("predict")

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Stop the fit when the budget is spent."""
        self._check(event.trainer)

    def on_fit_ended(self, event: FitEnded) -> None:
        """Stop every running clock (a phase an exception interrupted included)."""
        for phase in list(self._started):
            self._stop(phase)

    def on_stage_ended(self, event: StageEnded) -> None:
        """Stop the clock of the phase ``validate``, ``test`` or ``predict`` ran, when it raised before its end
        event: the time until then counts, and the clock does not run on after the run."""
        self._stop(_STAGE_PHASES[event.stage])

    def _stop(self, phase: str) -> None:
        started = self._started.pop(phase, None)
        if started is not None:
            self._elapsed[phase] = self._elapsed.get(phase, 0.0) + time.monotonic() - started

    def _check(self, trainer: Any) -> None:
        if self.duration is None:
            return
        spent = self.time_elapsed("fit") >= self.duration
        if trainer.world_size > 1:
            spent = bool(trainer.strategy.broadcast(spent, 0))
        if spent:
            trainer.should_stop = True

    # -- state ------------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """Seconds spent per phase, as plain floats.

        Returns:
            ``{"time_elapsed": {phase: seconds}}`` for every phase of :data:`PHASES`.
        """
        return {"time_elapsed": {phase: self.time_elapsed(phase) for phase in PHASES}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next fit continues counting from these times.

        Raises:
            KeyError: when ``"time_elapsed"`` is missing.
        """
        self._elapsed = {phase: float(value) for phase, value in state["time_elapsed"].items()}
        self._started = {}
        self._restored = True
