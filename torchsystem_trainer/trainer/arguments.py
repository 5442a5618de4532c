"""Checks of the Trainer's arguments: each error names the argument, the bad value and what is valid."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from torch.nn import Module

__all__ = [
    "aggregate",
    "choice",
    "fast_dev_run",
    "limit",
    "non_negative_float",
    "non_negative_int",
    "positive_int",
    "seconds",
    "subscriptions",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def non_negative_int(name: str, value: Any) -> int | None:
    """``None`` or an int >= 0.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name}={value!r} is invalid; valid: None or an int >= 0")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """An int >= 1.

    Raises:
        ValueError: otherwise.
    """
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; valid: an int >= 1")
    return int(value)


def non_negative_float(name: str, value: Any) -> float | None:
    """``None`` or a real number >= 0.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}={value!r} is invalid; valid: None or a number >= 0")
    return float(value)


def choice(name: str, value: Any, valid: Sequence[str]) -> str:
    """One of ``valid``.

    Raises:
        ValueError: otherwise, listing ``valid``.
    """
    if value not in valid:
        raise ValueError(f"{name}={value!r} is invalid; valid: {', '.join(repr(v) for v in valid)}")
    return str(value)


def limit(name: str, value: Any) -> int | float | None:
    """``None``, an int >= 0 (batches) or a float in ``[0, 1]`` (a fraction of the loader).

    Raises:
        ValueError: otherwise.
    """
    if value is None or (_is_int(value) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0):
        return value  # type: ignore[no-any-return]
    raise ValueError(f"{name}={value!r} is invalid; valid: None, an int >= 0, or a float in [0.0, 1.0]")


def fast_dev_run(value: Any) -> int:
    """``False``/``True`` or an int >= 0; returns the number of batches (0 when off).

    Raises:
        ValueError: otherwise.
    """
    if isinstance(value, bool):
        return int(value)
    if _is_int(value) and value >= 0:
        return int(value)
    raise ValueError(f"fast_dev_run={value!r} is invalid; valid: a bool or an int >= 0")


_CLOCK = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def seconds(name: str, value: Any) -> float | None:
    """A duration: ``None``, seconds (> 0), a ``timedelta``, or ``"DD:HH:MM:SS"`` (Lightning's form).

    Returns:
        Seconds, or ``None``.

    Raises:
        ValueError: otherwise.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, str) and (match := _CLOCK.match(value)):
        days, hours, minutes, secs = (int(group) for group in match.groups())
        total = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        total = float(value)
    else:
        total = -1.0
    if not total > 0:
        raise ValueError(
            f"{name}={value!r} is invalid; valid: None, seconds > 0, a timedelta, or 'DD:HH:MM:SS'"
        )
    return total


def aggregate(value: Any, methods: Sequence[str], method: str) -> None:
    """Check that ``value`` is a module with the ``methods`` a Trainer method calls.

    Raises:
        TypeError: naming what is missing.
    """
    if not isinstance(value, Module):
        raise TypeError(f"Trainer.{method}: the aggregate is a {type(value).__name__}, not a torch.nn.Module")
    for name in methods:
        if not callable(getattr(value, name, None)):
            raise TypeError(f"Trainer.{method}: {type(value).__name__} has no {name}() method")


def subscriptions(callbacks: Sequence[Any]) -> list[dict[str, list[Callable[[Any], None]]]]:
    """Ask every callback for its routing table, all before any is used: registering is all-or-nothing.

    Returns:
        One ``{event name: handlers}`` table per callback, in order.

    Raises:
        TypeError: for a callback that is not a consumer (no ``subscriptions()``).
        ValueError: from a ``Callback`` with a hook that matches no event.
    """
    tables = []
    for index, callback in enumerate(callbacks):
        method = getattr(callback, "subscriptions", None)
        if not callable(method):
            raise TypeError(
                f"callbacks[{index}] is a {type(callback).__name__}: a callback must be a Callback subclass or a "
                "Consumer"
            )
        tables.append(method())
    return tables

