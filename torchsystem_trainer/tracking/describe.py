"""What the store records about an aggregate and its data: plain, JSON-ready descriptions read from the registry.

Three readers, each small and side-effect free:

- :func:`describe_model`: the aggregate's identity (its ``id``) and the registered object that identity is the hash
  of (``gethash(aggregate.nn)`` in the seed), with its name and constructor arguments.
- :func:`describe_modules`: the parts around the model (criterion, optimizers, LR schedulers, other registered
  submodules), each with its name, registry hash, arguments and, for an optimizer, its ``param_groups``'
  hyper-parameters (``lr``, ``betas``...) as they are now.
- :func:`describe_loader`: a loader's dataset class, length, batch size, shuffling and the dataset's registry
  identity.

The walk over what an aggregate holds, its identity and an optimizer's settings are the loggers' own
(:mod:`torchsystem_trainer.callbacks.hyperparameters`), so the store and the loggers describe a run alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.data import DataLoader, RandomSampler

from torchsystem_trainer.callbacks.hyperparameters import identity as aggregate_identity
from torchsystem_trainer.callbacks.hyperparameters import optimizer_settings, parts
from torchsystem_trainer.registry import UnregisteredError, getarguments, gethash, getname

__all__ = ["ModelIdentityError", "describe_loader", "describe_model", "describe_modules", "plain"]

_SCALARS = (str, int, float, bool, type(None))


class ModelIdentityError(TypeError):
    """The aggregate has no identity to key the store with."""


def plain(value: Any) -> Any:
    """``value`` as JSON: dicts (string keys), lists, finite floats, ints, strings, booleans, ``None``; a
    non-finite float becomes its string (``"nan"``, ``"inf"``), any other object its ``repr``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return repr(value)


def _identity(obj: Any) -> tuple[str, str, dict[str, Any]] | None:
    try:
        return gethash(obj), getname(obj), getarguments(obj)
    except (UnregisteredError, TypeError):
        return None


def _parts(aggregate: Any) -> Iterator[tuple[str, Any]]:
    """``(attribute, object)`` for the aggregate's submodules and public attributes, list/tuple/dict items named
    ``"<attribute>.<index or key>"``: the walk the loggers' hyper-parameters make."""
    return parts(aggregate, separator=".")


def describe_model(aggregate: Any) -> dict[str, Any]:
    """The aggregate's identity and what it is the hash of.

    Args:
        aggregate: the aggregate; its ``id`` is the key (the seed's ``gethash(self.nn)``); without one, its own
            registry hash when its class is registered.

    Returns:
        ``{"hash": str, "name": str, "arguments": dict}``: the name and arguments of the registered object
        (the aggregate or one of its parts) whose hash equals the identity, else the aggregate's class name and
        ``{}``.

    Raises:
        ModelIdentityError: when the aggregate has neither an ``id`` nor a registered class; the message says how to
            give it one.
    """
    identity = aggregate_identity(aggregate)  # None for an Aggregate whose id was never initialized
    if identity is None:
        own = _identity(aggregate)
        if own is None:
            raise ModelIdentityError(
                f"RunTracker keys the store by the aggregate's identity, and {type(aggregate).__name__} has none: "
                f"define an `id` property (the seed returns gethash(self.nn)), call aggregate.initialize(id), or "
                f"register({type(aggregate).__name__})"
            )
        identity = own[0]
    key = str(identity)
    for _, part in [("", aggregate), *_parts(aggregate)]:
        found = _identity(part)
        if found is not None and found[0] == key:
            return {"hash": key, "name": found[1], "arguments": plain(found[2])}
    return {"hash": key, "name": type(aggregate).__name__, "arguments": {}}


def _kind(attribute: str, part: Any) -> str | None:
    if isinstance(part, Optimizer):
        return "optimizer"
    if isinstance(part, (LRScheduler, ReduceLROnPlateau)):
        return "scheduler"
    if isinstance(part, nn.Module):
        if type(part).__module__ == "torch.nn.modules.loss" or attribute.split(".")[0] in ("criterion", "loss_fn"):
            return "criterion"
        return "module" if _identity(part) is not None else None
    return None


def _settings(part: Any) -> dict[str, Any]:
    """Public scalar settings of an unregistered part (``CrossEntropyLoss``'s ``reduction``, ``label_smoothing``;
    an optimizer's ``defaults``; a scheduler's ``state_dict`` less its counters)."""
    if isinstance(part, Optimizer):
        source = dict(part.defaults)
    elif isinstance(part, (LRScheduler, ReduceLROnPlateau)):
        source = {k: v for k, v in part.state_dict().items() if k not in ("last_epoch", "verbose")}
    else:
        source = vars(part)
    return {
        key: plain(value)
        for key, value in source.items()
        if not key.startswith("_") and key != "training" and isinstance(value, (*_SCALARS, list, tuple))
    }


def describe_modules(aggregate: Any, model_hash: str) -> list[dict[str, Any]]:
    """The criterion, optimizers, LR schedulers and other registered parts around the model.

    Args:
        aggregate: the aggregate.
        model_hash: the model's identity; the part with that hash is the model itself and is left out.

    Returns:
        One ``{"attribute", "kind", "name", "hash", "arguments", "hyperparameters"}`` per part, in attribute order:
        ``hash`` is ``None`` and ``arguments`` the public settings for an unregistered class; ``hyperparameters``
        is an optimizer's ``param_groups`` without their ``params`` (``[{"lr": 0.001, ...}]``), else ``None``.
    """
    described = []
    for attribute, part in _parts(aggregate):
        kind = _kind(attribute, part)
        if kind is None:
            continue
        found = _identity(part)
        if found is not None and found[0] == model_hash:
            continue
        groups = None
        if isinstance(part, Optimizer):
            groups = [{k: plain(v) for k, v in group.items()} for group in optimizer_settings(part)]
        described.append(
            {
                "attribute": attribute,
                "kind": kind,
                "name": found[1] if found else type(part).__name__,
                "hash": found[0] if found else None,
                "arguments": plain(found[2]) if found else _settings(part),
                "hyperparameters": groups,
            }
        )
    return described


def describe_loader(loader: Any) -> dict[str, Any]:
    """A loader's identity: its dataset's class, length and registry identity, its length, batch size, shuffling.

    Args:
        loader: a ``DataLoader`` or any iterable of batches (then only ``batches`` may be known).

    Returns:
        ``{"dataset", "dataset_name", "dataset_hash", "dataset_arguments", "samples", "batches", "batch_size",
        "shuffle"}``, ``None`` for what is unknown.
    """
    dataset = getattr(loader, "dataset", None)
    found = None if dataset is None else _identity(dataset)
    return {
        "dataset": None if dataset is None else type(dataset).__name__,
        "dataset_name": found[1] if found else None,
        "dataset_hash": found[0] if found else None,
        "dataset_arguments": plain(found[2]) if found else None,
        "samples": _length(dataset),
        "batches": _length(loader),
        "batch_size": getattr(loader, "batch_size", None) if isinstance(loader, DataLoader) else None,
        "shuffle": isinstance(loader.sampler, RandomSampler) if isinstance(loader, DataLoader) else None,
    }


def _length(obj: Any) -> int | None:
    if obj is None:
        return None
    try:
        return len(obj)
    except TypeError:  # an iterable without a length (a generator, an IterableDataset)
        return None
