"""When a requested stop ends a fit: at once, or once ``min_epochs`` and ``min_steps`` are reached (Lightning's).

A stop is requested by setting ``trainer.should_stop`` (a callback, ``EarlyStopping``, ``Timer``), by the
aggregate's ``StopIteration`` at ``onepoch``, or by ``SIGTERM``/``SIGINT``. Before the minimum is reached a
request other than a signal is deferred: ``should_stop`` stays set, training goes on, and the fit ends at the first
point where a stop is checked (after a training batch, at an epoch's end) with the minimum reached, unless the
request was withdrawn (``trainer.should_stop = False``) meanwhile. The first deferral of a fit fires
:class:`~torchsystem_trainer.events.StopDeferred`. A signal is never deferred: a preempted job must stop now.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchsystem_trainer.events import EndReason, StopDeferred

if TYPE_CHECKING:
    from torchsystem_trainer.trainer.dispatch import EventBus
    from torchsystem_trainer.trainer.loop_state import LoopState

__all__ = ["Minimum", "stop_reason"]


@dataclass(frozen=True, slots=True)
class Minimum:
    """The Trainer's ``min_epochs`` and ``min_steps``.

    Attributes:
        epochs: the epoch count the aggregate must reach (epochs completed, as ``max_epochs`` counts them) before a
            requested stop ends the fit; ``None``: none.
        steps: the optimizer steps of this run (``trainer.global_step``) before a requested stop ends the fit;
            ``None``: none.
    """

    epochs: int | None = None
    steps: int | None = None

    def reached(self, epochs_completed: int, global_step: int) -> bool:
        """Whether a requested stop may end the fit now."""
        return (self.epochs is None or epochs_completed >= self.epochs) and (
            self.steps is None or global_step >= self.steps
        )


def stop_reason(
    loop: LoopState, minimum: Minimum, bus: EventBus, source: Any, aggregate: Any, epoch: int
) -> EndReason | None:
    """Why a requested stop ends the fit now: ``"interrupted"`` (a signal) or ``"stopped"``; ``None`` when no stop is
    requested or it is deferred (firing ``StopDeferred`` the first time in the fit).

    Args:
        loop: the loop's state (its stop flags and counters; ``progress.epoch`` counts the epochs completed).
        minimum: ``min_epochs`` and ``min_steps``.
        bus: the run's event bus.
        source: the object events carry as their ``trainer``.
        aggregate: the aggregate.
        epoch: the 0-based epoch running (at an epoch's end: the epoch that ended), for ``StopDeferred``.

    Returns:
        The reason, or ``None``.
    """
    if not loop.should_stop:
        return None
    progress = loop.progress
    if loop.stop_signalled or minimum.reached(progress.epoch, progress.global_step):
        return loop.stop_reason()
    if not loop.stop_deferred:
        loop.stop_deferred = True
        bus.emit(StopDeferred, source, aggregate, epoch, progress.global_step, minimum.epochs, minimum.steps)
    return None
