"""The registration rule shared by Producer and Publisher: check every candidate first, keep order, no repeats."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["register_unique"]

T = TypeVar("T")


def register_unique(registered: list[T], candidates: Iterable[T], method: str, owner: str) -> None:
    """Append each candidate to ``registered`` unless it is already there (by identity), all or nothing.

    Args:
        registered: the owner's list, changed in place.
        candidates: the objects to register, in order.
        method: the method every candidate must have (``"consume"``, ``"receive"``).
        owner: the registering class's name, for the message.

    Raises:
        TypeError: when a candidate has no callable ``method``; nothing is registered then.
    """
    candidates = list(candidates)
    for candidate in candidates:
        if not callable(getattr(candidate, method, None)):
            raise TypeError(f"{candidate!r} cannot be registered on a {owner}: it has no {method}() method")
    for candidate in candidates:
        if not any(known is candidate for known in registered):
            registered.append(candidate)
