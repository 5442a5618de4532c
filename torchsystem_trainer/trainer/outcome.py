"""What a fit run in processes the strategy started (DDP's ``spawn``) brings back to the caller's Trainer.

The launcher itself brings back the function's result and the aggregate's state; rank 0's outcome adds the loop's
counters, stop flags and ``callback_metrics``, the strategy's state and every stateful callback's (so
``ModelCheckpoint.best_model_path`` is known in the caller, as after Lightning's ``spawn``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torchsystem_trainer.trainer.callback_list import is_stateful

__all__ = ["Outcome", "apply_outcome", "outcome_state"]


class Outcome(NamedTuple):
    """What a process's run hands back: ``result``, and the Trainer's outcome when it ran in another process."""

    result: Any
    state: dict[str, Any] | None


def outcome_state(trainer: Any) -> dict[str, Any]:
    """``trainer``'s outcome: ``{"progress", "should_stop", "stop_signalled", "interrupted", "received_signal",
    "callback_metrics", "strategy", "callbacks"}`` (``callbacks``: a state per callback, ``None`` for one without
    ``state_dict``), plain values that pickle."""
    loop = trainer.loop
    return {
        "progress": loop.progress.state_dict(),
        "should_stop": loop.should_stop,
        "stop_signalled": loop.stop_signalled,
        "interrupted": loop.interrupted,
        "received_signal": loop.received_signal,
        "callback_metrics": dict(loop.callback_metrics),
        "strategy": trainer.strategy.state_dict(),
        "callbacks": [callback.state_dict() if is_stateful(callback) else None for callback in trainer.callbacks],
    }


def apply_outcome(trainer: Any, state: dict[str, Any]) -> None:
    """Load an :func:`outcome_state` of the same set-up into ``trainer`` (its loop, strategy and callbacks)."""
    loop = trainer.loop
    loop.progress.load_state_dict(state["progress"])
    loop.should_stop, loop.stop_signalled = state["should_stop"], state["stop_signalled"]
    loop.interrupted, loop.received_signal = state["interrupted"], state["received_signal"]
    loop.callback_metrics = state["callback_metrics"]
    trainer.strategy.load_state_dict(state["strategy"])
    for callback, saved in zip(trainer.callbacks, state["callbacks"], strict=True):
        if saved is not None:
            callback.load_state_dict(saved)
