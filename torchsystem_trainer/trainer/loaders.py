"""Loaders and batches: what the Trainer accepts, and how a batch becomes a call of the aggregate.

A loader is any iterable of batches. ``loaders`` is given as the seed gives it, a sequence of ``(phase, loader)``
pairs, or as a mapping ``{phase: loader}``, or as one loader (training only). A batch is a tuple or list
(``fit(*batch)``, so ``(inputs, targets)`` becomes ``fit(inputs, targets)``) or a dict (``fit(**batch)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = [
    "PHASES",
    "BatchError",
    "batch_size",
    "batch_targets",
    "call_step",
    "limit_of",
    "normalize_loaders",
]

PHASES: tuple[str, ...] = ("train", "validation", "test", "predict")
TARGET_KEYS: tuple[str, ...] = ("targets", "target", "labels", "label", "y")


class BatchError(TypeError):
    """A batch, or what the aggregate returned for it, does not have the shape the Trainer needs."""


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)


def normalize_loaders(loaders: Any, allowed: Sequence[str], method: str) -> list[tuple[str, Iterable[Any]]]:
    """Turn the accepted forms of ``loaders`` into ``[(phase, loader), ...]`` in the given order.

    Args:
        loaders: ``[("train", dl), ("validation", dl)]``, ``{"train": dl, ...}``, or one loader (which gets the
            first allowed phase).
        allowed: the phases this Trainer method runs, e.g. ``("train", "validation")`` for ``fit``.
        method: the Trainer method's name, for error messages.

    Returns:
        The ``(phase, loader)`` pairs.

    Raises:
        ValueError: for a phase outside ``allowed`` (listing them), a repeated phase, or no loader at all.
        TypeError: when a loader is not iterable.
    """
    if isinstance(loaders, Mapping):
        pairs = list(loaders.items())
    elif isinstance(loaders, (list, tuple)) and loaders and all(_is_pair(item) for item in loaders):
        pairs = list(loaders)
    else:
        pairs = [(allowed[0], loaders)]
    if not pairs:
        raise ValueError(f"Trainer.{method}: loaders is empty; give at least a ({allowed[0]!r}, loader) pair")
    seen: set[str] = set()
    for phase, loader in pairs:
        if phase not in allowed:
            raise ValueError(
                f"Trainer.{method}: phase {phase!r} is not one this method runs; valid phases: {', '.join(allowed)}"
            )
        if phase in seen:
            raise ValueError(f"Trainer.{method}: phase {phase!r} is given twice")
        seen.add(phase)
        if not isinstance(loader, Iterable):
            raise TypeError(
                f"Trainer.{method}: the {phase!r} loader is a {type(loader).__name__}, not an iterable of batches"
            )
    return pairs


def limit_of(loader: Iterable[Any], limit: int | float | None, name: str) -> int | None:
    """How many batches of ``loader`` to run: all (``None``), an ``int`` count, or a ``float`` fraction of
    ``len(loader)`` (Lightning's ``limit_*_batches``).

    Raises:
        TypeError: for a fraction of a loader that has no ``len``.
    """
    if limit is None:
        return None
    if isinstance(limit, float):
        try:
            size = len(loader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{name}={limit} is a fraction, but the loader ({type(loader).__name__}) has no len(); "
                "give an int number of batches"
            ) from None
        return int(math.floor(size * limit))
    return limit


def call_step(function: Callable[..., Any], batch: Any, owner: str) -> tuple[Any, Tensor]:
    """Call the aggregate's ``fit``/``evaluate`` with ``batch`` and check it returned ``(predictions, loss)``.

    Args:
        function: the bound method, e.g. ``aggregate.fit``.
        batch: a tuple or list (passed as positional arguments) or a dict (keyword arguments).
        owner: ``"ClassName.fit"``, for error messages.

    Returns:
        ``(predictions, loss)``, ``loss`` a ``[]`` tensor.

    Raises:
        BatchError: for a batch of another type, or a return value that is not ``(predictions, loss tensor)``.
    """
    kind = type(batch)
    if kind is tuple or kind is list or isinstance(batch, (tuple, list)):
        result = function(*batch)
    elif isinstance(batch, Mapping):
        result = function(**batch)
    else:
        raise BatchError(
            f"a batch must be a tuple or list (passed to {owner} as positional arguments, e.g. (inputs, targets)) "
            f"or a dict (passed as keyword arguments); got a {type(batch).__name__}"
        )
    try:
        predictions, loss = result
    except (TypeError, ValueError):
        raise BatchError(
            f"{owner} must return (predictions, loss); it returned a {type(result).__name__}"
        ) from None
    if not isinstance(loss, Tensor):
        raise BatchError(f"{owner} must return (predictions, loss) with loss a tensor; loss is a {type(loss).__name__}")
    return predictions, loss


def batch_targets(batch: Any) -> Any:
    """The targets of a batch, for metrics: the last element of a tuple or list, or the value of the first of
    ``targets``, ``target``, ``labels``, ``label``, ``y`` in a dict; ``None`` when there is none."""
    if isinstance(batch, (tuple, list)):
        return batch[-1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
    return None


def batch_size(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor (1 for a 0-d tensor or a
    batch without tensors). Host-side metadata only: no device synchronisation."""
    if type(batch) is tuple and batch and type(batch[0]) is Tensor:  # the common (inputs, targets), no ABC check
        first = batch[0]
        return first.shape[0] if first.ndim else 1
    values = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, Tensor):
            return value.shape[0] if value.ndim else 1
    return 1
