"""The Trainer's callback list: the defaults its flags add, and the order callbacks are dispatched in.

``enable_progress_bar``, ``enable_model_summary`` and ``verbose`` add a default callback unless the list holds one
of its kind (a callback saying ``is_progress_bar``, ``is_model_summary``, ``is_console_lines``), and refuse one
given with the flag ``False``. Checkpoint callbacks run after all others but those that declare
``runs_after_checkpoints = True``, so the state they save includes every other callback's update of the same event
(Lightning does the same; its issue #1464).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torchsystem_trainer.services import Consumer

__all__ = ["arrange_callbacks", "is_checkpointer", "is_stateful"]

Factory = Callable[[], Consumer] | None


def arrange_callbacks(
    callbacks: list[Consumer],
    *,
    enable_progress_bar: bool | None,
    progress_bar: Factory,
    enable_model_summary: bool,
    model_summary: Factory,
    verbose: bool,
    console: Factory,
) -> list[Consumer]:
    """``callbacks`` with the defaults the flags ask for, in dispatch order.

    Args:
        callbacks: the user's callbacks, in their order (the list is not changed).
        enable_progress_bar: add ``progress_bar()``; ``None`` means when stderr (where tqdm draws) is a terminal.
        enable_model_summary, verbose: add ``model_summary()``, ``console()``.
        progress_bar, model_summary, console: the factories of the defaults (``None``: not known).

    Raises:
        ValueError: for a flag ``False`` with a callback of its kind given, or ``True`` with no factory known.
        TypeError: for ``enable_model_summary`` or ``verbose`` that is not a ``bool``.
    """
    arranged = _with_progress_bar(list(callbacks), enable_progress_bar, progress_bar)
    arranged = _with_default(arranged, model_summary, "is_model_summary", enable_model_summary, "enable_model_summary")
    arranged = _with_default(arranged, console, "is_console_lines", verbose, "verbose")
    return sorted(arranged, key=lambda c: (bool(getattr(c, "runs_after_checkpoints", False)), is_checkpointer(c)))


def is_checkpointer(callback: Any) -> bool:
    """Whether ``callback`` writes checkpoints (it finds them for ``ckpt_path="last"``: ``ModelCheckpoint``)."""
    return callable(getattr(callback, "checkpoint_path", None))


def is_stateful(callback: Any) -> bool:
    """Whether ``callback`` has ``state_dict``/``load_state_dict`` (its state goes into checkpoints)."""
    return callable(getattr(callback, "state_dict", None)) and callable(getattr(callback, "load_state_dict", None))


def _with_progress_bar(callbacks: list[Consumer], enabled: bool | None, factory: Factory) -> list[Consumer]:
    has_bar = any(getattr(callback, "is_progress_bar", False) for callback in callbacks)
    if enabled is False and has_bar:
        raise ValueError("enable_progress_bar=False, but callbacks holds a progress bar: remove one of them")
    if enabled is None:
        enabled = sys.stderr.isatty()  # where tqdm draws
    if enabled and not has_bar:
        if factory is None:
            raise ValueError(
                "enable_progress_bar=True, but no progress bar is known to the Trainer; import "
                "torchsystem_trainer (which provides torchsystem_trainer.callbacks.ProgressBar) or give one in "
                "callbacks"
            )
        callbacks.append(factory())
    return callbacks


def _with_default(
    callbacks: list[Consumer], factory: Factory, flag: str, enabled: bool, argument: str
) -> list[Consumer]:
    """Add ``factory()`` when ``enabled`` and no callback says ``flag``; refuse one given with ``enabled=False``."""
    if not isinstance(enabled, bool):
        raise TypeError(f"Trainer: {argument}={enabled!r} is invalid; valid: True or False")
    given = [callback for callback in callbacks if getattr(callback, flag, False)]
    if not enabled and given:
        raise ValueError(f"{argument}=False, but callbacks holds a {type(given[0]).__name__}: remove one of them")
    if enabled and not given:
        if factory is None:
            raise ValueError(
                f"{argument}=True, but the Trainer knows no default for it; import torchsystem_trainer (which "
                "provides the callbacks' defaults) or pass {argument}=False"
            )
        callbacks.append(factory())
    return callbacks
