"""What :meth:`Aggregate.log <torchsystem_trainer.domain.Aggregate.log>` accepts: its options and its values.

The domain layer checks a logged value and its options; whoever runs the aggregate (the Trainer) decides where the
value goes by binding a sink (:meth:`Aggregate.bind_log`). Kept apart from ``aggregate.py`` so that the trainer's
collector (``torchsystem_trainer.trainer.logged``) shares these names without importing the aggregate.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable
from typing import Literal

from torch import Tensor

__all__ = ["LOG_OPTIONS", "REDUCE_FX", "LogOptions", "LogSink", "LoggedValue", "ReduceFx", "check_log", "loggable"]

ReduceFx = Literal["mean", "sum", "max", "min"]
"""How a logged value is reduced over a phase (Lightning's ``reduce_fx`` names): ``"mean"`` weighted by the batch
sizes, ``"sum"``, ``"max"``, ``"min"``."""

REDUCE_FX: tuple[str, ...] = ("mean", "sum", "max", "min")

LoggedValue = Tensor | float
"""A logged value as kept: a ``[]`` (or one-element) tensor, detached, on the device it was given on, never read; or a
Python ``float`` (a number given as such)."""

LogOptions = tuple[bool, bool, str, bool]
"""``(on_step, on_epoch, reduce_fx, prog_bar)``, the options of one :meth:`Aggregate.log` call."""

LogSink = Callable[[str, LoggedValue, LogOptions], None]
"""What a runner binds to receive logged values: ``sink(name, value, options)``."""

LOG_OPTIONS: frozenset[LogOptions] = frozenset(
    (on_step, on_epoch, reduce_fx, prog_bar)
    for on_step, on_epoch, prog_bar in itertools.product((False, True), repeat=3)
    for reduce_fx in REDUCE_FX
    if on_step or on_epoch
)
"""Every valid option tuple (at least one of ``on_step``/``on_epoch``): one set lookup checks all four."""


def check_log(owner: str, name: object, options: tuple[object, ...]) -> None:
    """Check a ``log`` call's name and options (called when the cheap test fails, to say what is wrong).

    Args:
        owner: ``"ClassName.log"``, for the message.
        name: the logged name.
        options: ``(on_step, on_epoch, reduce_fx, prog_bar)`` as given.

    Raises:
        TypeError: for a name that is not a ``str`` or a flag that is not a ``bool``.
        ValueError: for an empty name, a ``reduce_fx`` other than ``"mean"``, ``"sum"``, ``"max"``, ``"min"``, or
            ``on_step=False`` with ``on_epoch=False`` (the value would go nowhere).
    """
    if not isinstance(name, str):
        raise TypeError(f"{owner}: name={name!r} is a {type(name).__name__}; valid: a non-empty str")
    if not name:
        raise ValueError(f"{owner}: name='' is invalid; valid: a non-empty str")
    on_step, on_epoch, reduce_fx, prog_bar = options
    for flag, value in (("on_step", on_step), ("on_epoch", on_epoch), ("prog_bar", prog_bar)):
        if not isinstance(value, bool):
            raise TypeError(f"{owner}({name!r}): {flag}={value!r} is invalid; valid: True or False")
    if reduce_fx not in REDUCE_FX:
        raise ValueError(
            f"{owner}({name!r}): reduce_fx={reduce_fx!r} is invalid; valid: {', '.join(map(repr, REDUCE_FX))}"
        )
    if not on_step and not on_epoch:
        raise ValueError(
            f"{owner}({name!r}): on_step=False and on_epoch=False log nothing; set on_epoch=True (the phase's "
            "reduced value) or on_step=True (each step's value)"
        )


def loggable(owner: str, name: str, value: object) -> LoggedValue:
    """``value`` as it is kept: a tensor detached from its graph (never copied to the host), or a number as a
    ``float``.

    Args:
        owner: ``"ClassName.log"``, for the message.
        name: the logged name, for the message.
        value: a tensor of one element (any shape with ``numel() == 1``, any device, a floating, integer or
            boolean dtype), or a real number.

    Returns:
        The value to keep.

    Raises:
        TypeError: for anything else (a torchmetrics ``Metric``: give it to ``Trainer(metrics=...)`` instead).
        ValueError: for a tensor of more or fewer than one element, or a complex one.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{owner}({name!r}): value is a tensor of shape {list(value.shape)}; valid: one element (reduce it "
                "first, e.g. .mean())"
            )
        if value.is_complex():
            raise ValueError(f"{owner}({name!r}): value is a complex tensor; valid: a real one")
        return value.detach() if value.requires_grad else value
    if isinstance(value, numbers.Real):
        return float(value)
    hint = (
        "; a torchmetrics Metric belongs in Trainer(metrics=...), which updates and computes it per phase"
        if any(cls.__name__ == "Metric" for cls in type(value).__mro__)
        else ""
    )
    raise TypeError(
        f"{owner}({name!r}): value is a {type(value).__name__}; valid: a tensor of one element or a number{hint}"
    )
