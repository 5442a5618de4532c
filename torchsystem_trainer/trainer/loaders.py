"""Loaders and batches: what the Trainer accepts, and how a batch becomes a call of the aggregate.

A loader is any iterable of batches. ``loaders`` is given as the seed gives it, a sequence of ``(phase, loader)``
pairs, or as a mapping ``{phase: loader}``, or as one loader (training only). A batch is a tuple or list
(``fit(*batch)``, so ``(inputs, targets)`` becomes ``fit(inputs, targets)``) or a dict (``fit(**batch)``).
"""

from __future__ import annotations

import inspect
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
    "describe_batch",
    "limit_of",
    "normalize_loaders",
    "targets_reader",
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
        TypeError: when a loader is not iterable, or for a list or tuple of several ``DataLoader`` objects (which
            phase each is would be a guess).
    """
    if isinstance(loaders, Mapping):
        pairs = list(loaders.items())
    elif isinstance(loaders, (list, tuple)) and all(_is_pair(item) for item in loaders):
        pairs = list(loaders)  # [] too: no loader at all
    else:
        _refuse_unnamed_loaders(loaders, allowed, method)
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


def _refuse_unnamed_loaders(loaders: Any, allowed: Sequence[str], method: str) -> None:
    """Refuse a list or tuple of several ``DataLoader`` objects, or of phase pairs mixed with other items: the
    loaders need their phases, and read as one loader they would fail later, blaming the batches.

    Raises:
        TypeError: naming the ``loaders`` argument, what it holds and the accepted forms.
    """
    if not isinstance(loaders, (list, tuple)) or not loaders:
        return
    from torch.utils.data import DataLoader

    several = len(loaders) > 1 and all(isinstance(item, DataLoader) for item in loaders)
    mixed = any(_is_pair(item) for item in loaders)
    if not (several or mixed):
        return
    what = f"{len(loaders)} DataLoaders" if several else "phase pairs mixed with other items"
    first, *rest = allowed
    forms = [f"[({first!r}, loader)" + "".join(f", ({phase!r}, loader)" for phase in rest) + "]"]
    forms.append("{" + ", ".join(f"{phase!r}: loader" for phase in allowed) + "}")
    raise TypeError(
        f"Trainer.{method}: loaders is a {type(loaders).__name__} of {what}, so which is which is unknown; give "
        f"{forms[0]}, {forms[1]}, or one loader (the {first!r} phase only)"
    )


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
        return math.floor(size * limit)
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
        BatchError: for a batch of another type, a batch that does not fit the method's parameters (naming the
            batch's keys or length and the signature), or a return value that is not ``(predictions, loss tensor)``.
    """
    kind = type(batch)
    try:
        if kind is tuple or kind is list or isinstance(batch, (tuple, list)):
            result = function(*batch)
        elif isinstance(batch, Mapping):
            result = function(**batch)
        else:
            raise BatchError(
                f"a batch must be a tuple or list (passed to {owner} as positional arguments, e.g. (inputs, targets)) "
                f"or a dict (passed as keyword arguments); got a {type(batch).__name__}"
            )
    except TypeError as error:  # zero cost unless raised: only then ask whether the batch fits the signature
        if not isinstance(error, BatchError):
            _check_binds(function, batch, owner, error)
        raise
    try:
        predictions, loss = result
    except (TypeError, ValueError):
        raise BatchError(
            f"{owner} must return (predictions, loss); it returned a {type(result).__name__}"
        ) from None
    if not isinstance(loss, Tensor):
        raise BatchError(f"{owner} must return (predictions, loss) with loss a tensor; loss is a {type(loss).__name__}")
    return predictions, loss


def _check_binds(function: Callable[..., Any], batch: Any, owner: str, error: TypeError) -> None:
    """Raise a :class:`BatchError` from ``error`` when ``batch`` does not bind to ``function``'s parameters (so
    the ``TypeError`` came from the call itself, not from inside the method); return otherwise."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin or C callable without a signature: nothing better to say
        return
    try:
        if isinstance(batch, Mapping):
            signature.bind(**batch)
        else:
            signature.bind(*batch)
    except TypeError as mismatch:
        if isinstance(batch, Mapping):
            given = f"a dict batch with keys {sorted(map(str, batch))}"
            hint = "rename the keys to the parameters, or override the method to take the batch's keys"
        else:
            given = f"a {type(batch).__name__} batch of {len(batch)} elements ({describe_batch(batch)})"
            hint = "make each batch (inputs, targets), or override the method to take the batch's elements"
        bare = signature.replace(
            parameters=[parameter.replace(annotation=parameter.empty) for parameter in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise BatchError(f"{owner}{bare} cannot take {given}: {mismatch}; {hint}") from error


def describe_batch(batch: Any, depth: int = 0) -> str:
    """A short description of a batch's structure, for error messages: tensors as ``Tensor[4, 3] float32``,
    tuples and lists element by element, dicts key by key (two levels deep).

    Args:
        batch: any batch.

    Returns:
        e.g. ``"tuple(Tensor[4, 3] float32, Tensor[4] int64)"`` or ``"dict(x=Tensor[4, 3] float32, mask=...)"``.
    """
    if isinstance(batch, Tensor):
        return f"Tensor{list(batch.shape)} {str(batch.dtype).removeprefix('torch.')}"
    if depth >= 2:
        return type(batch).__name__
    if isinstance(batch, Mapping):
        inner = ", ".join(f"{key}={describe_batch(value, depth + 1)}" for key, value in batch.items())
        return f"{type(batch).__name__}({inner})"
    if isinstance(batch, (tuple, list)):
        inner = ", ".join(describe_batch(value, depth + 1) for value in batch)
        return f"{type(batch).__name__}({inner})"
    return type(batch).__name__


def batch_targets(batch: Any) -> Any:
    """The targets of a batch, for metrics (the seed's ``(input, target)``): the second element of a tuple or
    list, or the value of the first of ``targets``, ``target``, ``labels``, ``label``, ``y`` in a dict; ``None``
    when there is none. Further elements (sample weights, masks) are never taken for targets."""
    if isinstance(batch, (tuple, list)):
        return batch[1] if len(batch) > 1 else None
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
    return None


def targets_reader(aggregate: Any, required: bool, phase: str) -> Callable[[Any], Any]:
    """How a phase finds each batch's targets: the aggregate's own ``targets(batch)`` method when it defines one,
    else :func:`batch_targets`. Resolved once per phase.

    Args:
        aggregate: the aggregate (its class may define ``targets(self, batch)``).
        required: whether metrics are configured, so a batch without targets is an error.
        phase: the phase, for error messages.

    Returns:
        ``(batch) -> targets or None``; with ``required``, one that raises instead of returning ``None``.

    Raises:
        ValueError: (from the returned function, ``required`` only) for a batch without targets, showing the
            batch's structure and the rule.
    """
    own = callable(getattr(type(aggregate), "targets", None))
    read: Callable[[Any], Any] = aggregate.targets if own else batch_targets
    if not required:
        return read

    def read_required(batch: Any) -> Any:
        targets = read(batch)
        if targets is None:
            raise ValueError(
                f"metrics need targets, and the {phase!r} batch {describe_batch(batch)} has none: targets are the "
                f"second element of a tuple or list batch, or a dict batch's {' / '.join(map(repr, TARGET_KEYS))} "
                f"key, or what the aggregate's targets(batch) method returns"
            )
        return targets

    return read_required


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
