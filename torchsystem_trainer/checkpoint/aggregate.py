"""The aggregate's part of a checkpoint: its modules, optimizers, LR schedulers, epoch and identity.

The identity is the aggregate's ``id`` (its registry hash, as the seed computes it) and, for every direct child
module built from a registered class, that network's registry identity (``networks``: its registered name and
constructor arguments), from which :func:`~torchsystem_trainer.checkpoint.load_model` rebuilds it without the
training code.

Also :func:`check_plain`, which refuses, before anything is written, a value that ``torch.load(weights_only=True)``
could not read back.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from torchsystem_trainer.checkpoint.io import CheckpointError
from torchsystem_trainer.registry import UnregisteredError, getarguments, gethash, getname

__all__ = [
    "aggregate_epoch",
    "aggregate_state",
    "check_aggregate_state",
    "check_plain",
    "describe_mismatch",
    "load_aggregate_state",
    "network_identities",
    "optimizers_of",
]

# What torch.load(weights_only=True) reads back, by exact type (numpy.float64 is a float, and refused; a
# defaultdict is a dict, and refused).
_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))
_PLAIN = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def _named(owner: Module, kinds: tuple[type, ...]) -> Iterator[tuple[str, Any]]:
    for name, value in vars(owner).items():
        if isinstance(value, kinds):
            yield name, value
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, kinds):
                    yield f"{name}.{index}", item
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, kinds):
                    yield f"{name}.{key}", item


def optimizers_of(aggregate: Module) -> dict[str, Optimizer]:
    """The optimizers of ``aggregate`` by the names :func:`aggregate_state` gives them (``"optimizer"``, or
    ``"optimizers.0"`` for the first of a list attribute)."""
    return dict(_named(aggregate, (Optimizer,)))


def aggregate_epoch(aggregate: Module) -> int | None:
    """The aggregate's ``epoch`` (epochs completed) as an ``int``: a plain attribute, a class attribute or a
    registered buffer (a one-element tensor); ``None`` when it has none.

    Raises:
        TypeError: when ``epoch`` is neither an integer nor a one-element tensor holding one.
    """
    epoch = getattr(aggregate, "epoch", None)
    if epoch is None:
        return None
    if isinstance(epoch, torch.Tensor):
        if epoch.numel() != 1:
            raise TypeError(
                f"{type(aggregate).__name__}.epoch is a tensor of shape {list(epoch.shape)}; it counts epochs"
            )
        epoch = epoch.item()
    whole = isinstance(epoch, int) or (isinstance(epoch, float) and epoch.is_integer())
    if isinstance(epoch, bool) or not whole:
        raise TypeError(f"{type(aggregate).__name__}.epoch is {epoch!r}; it counts the epochs completed (an int >= 0)")
    return int(epoch)


def _identity(aggregate: Module) -> str | None:
    try:
        identity = aggregate.id
    except Exception:  # an aggregate without an identity (not initialized, unregistered parts)
        return None
    return None if identity is None else str(identity)


def network_identities(aggregate: Module) -> dict[str, dict[str, Any]]:
    """The registry identity of every direct child module of ``aggregate`` built from a registered class.

    A child counts when its arguments were captured (``register(MLP)`` before it was built) and can be hashed
    (they are JSON data: numbers, strings, lists, dicts, nested registered objects), so that they are plain data a
    ``weights_only`` load reads back.

    Args:
        aggregate: the aggregate (any module).

    Returns:
        ``{attribute: {"name": registered name, "arguments": {parameter: value}, "hash": registry hash}}``, e.g.
        ``{"nn": {"name": "MLP", "arguments": {"inputs": 784, "hidden": 256, "outputs": 10}, "hash": "af51..."}}``;
        empty when no child is registered.
    """
    found: dict[str, dict[str, Any]] = {}
    for attribute, module in aggregate.named_children():
        try:
            identity = {"name": getname(module), "arguments": getarguments(module), "hash": gethash(module)}
        except (UnregisteredError, TypeError):  # not registered, or arguments that are not JSON data
            continue
        found[attribute] = identity
    return found


def describe_mismatch(own: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """What differs between two module ``state_dict``s, as checkpoint restore reports it.

    Args:
        own: the module's ``state_dict()`` (the target).
        saved: the checkpoint's.

    Returns:
        Parts such as ``"missing keys: [...]"``, ``"unexpected keys: [...]"`` and ``"shape mismatches: ['w:
        checkpoint [2, 4] vs aggregate [3, 4]']"``; empty when the keys and shapes agree.
    """
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [
        f"{key}: checkpoint {list(saved[key].shape) if isinstance(saved[key], torch.Tensor) else saved[key]!r} vs "
        f"aggregate {list(own[key].shape)}"
        for key in sorted(set(own) & set(saved))
        if isinstance(own[key], torch.Tensor)
        and (not isinstance(saved[key], torch.Tensor) or own[key].shape != saved[key].shape)
    ]
    return [
        part
        for part in (
            f"missing keys: {missing}" if missing else "",
            f"unexpected keys: {unexpected}" if unexpected else "",
            f"shape mismatches: {shapes}" if shapes else "",
        )
        if part
    ]


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Check that ``obj`` holds only what ``torch.load(weights_only=True)`` reads back: tensors, numbers, strings,
    bytes, ``None``, dtypes, devices, sizes, and lists, tuples, sets, dicts and ``OrderedDict`` of those (exactly
    those types: a NumPy scalar, a ``defaultdict`` or a ``frozenset`` would not load).

    Args:
        obj: the object about to be saved.
        where: its name, for the message (``"checkpoint"``).

    Raises:
        TypeError: naming the first value of another type by its path (``checkpoint['callbacks']['X']['y']``)
            and its type, so a checkpoint that could not be loaded is never written.
    """
    stack: list[tuple[str, Any]] = [(where, obj)]
    while stack:
        path, value = stack.pop()
        if type(value) in _SCALARS:
            continue
        if isinstance(value, _PLAIN):
            if isinstance(value, torch.Tensor) and type(value) not in (torch.Tensor, torch.nn.Parameter):
                raise TypeError(f"{path} is a {type(value).__name__}, a tensor subclass weights_only loading refuses")
            continue
        if type(value) in (dict, OrderedDict):
            stack.extend((f"{path}[{key!r}]", item) for key, item in value.items())
            stack.extend((f"{path} key {key!r}", key) for key in value)
        elif type(value) in (list, tuple, set):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
        else:
            raise TypeError(
                f"{path} is a {type(value).__module__}.{type(value).__qualname__}: checkpoints hold only tensors, "
                f"numbers, strings and plain containers (they load with weights_only=True); convert it in the "
                f"state_dict that returns it"
            )


def aggregate_state(aggregate: Module) -> dict[str, Any]:
    """The aggregate's whole state.

    Args:
        aggregate: the aggregate (any module).

    Returns:
        ``{"modules": state_dict, "optimizers": {attribute: state}, "schedulers": {attribute: state},
        "epoch": int | None, "id": str | None, "networks": network_identities(aggregate)}``: every optimizer and
        LR scheduler it holds as an attribute (or in a list, tuple or dict attribute), by attribute name.
    """
    return {
        "modules": aggregate.state_dict(),
        "optimizers": {name: o.state_dict() for name, o in _named(aggregate, (Optimizer,))},
        "schedulers": {name: s.state_dict() for name, s in _named(aggregate, (LRScheduler, ReduceLROnPlateau))},
        "epoch": aggregate_epoch(aggregate),
        "id": _identity(aggregate),
        "networks": network_identities(aggregate),
    }


def check_aggregate_state(aggregate: Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Check that :func:`aggregate_state`'s output fits ``aggregate``, changing nothing.

    Args:
        aggregate: the aggregate to restore into.
        state: the saved state.
        source: the file name, for messages.

    Raises:
        CheckpointError: when parameters do not match (listing missing and unexpected keys and shape
            mismatches), an optimizer or scheduler of the checkpoint is not in the aggregate, or an optimizer's
            parameter groups differ in number or size; the message names ``source``.
    """
    try:
        modules = state["modules"]
        optimizers_saved, schedulers_saved = state.get("optimizers", {}), state.get("schedulers", {})
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{source} has no valid aggregate state (missing {error})") from error
    if not isinstance(modules, dict):
        raise CheckpointError(f"{source} has no valid aggregate state (its modules are a {type(modules).__name__})")
    parts = describe_mismatch(aggregate.state_dict(), modules)
    optimizers = dict(_named(aggregate, (Optimizer,)))
    schedulers = dict(_named(aggregate, (LRScheduler, ReduceLROnPlateau)))
    absent = [n for n in optimizers_saved if n not in optimizers] + [n for n in schedulers_saved if n not in schedulers]
    groups = []
    for name, optimizer in optimizers.items():
        saved = optimizers_saved.get(name)
        if saved is None:
            continue
        sizes = [len(group["params"]) for group in saved.get("param_groups", [])]
        actual = [len(group["params"]) for group in optimizer.param_groups]
        if sizes != actual:
            groups.append(f"{name}: checkpoint {sizes} vs aggregate {actual}")
    if absent:
        parts.append(f"optimizers/schedulers not in the aggregate: {absent}")
    if groups:
        parts.append(f"parameters per optimizer group differ: {groups}")
    if parts:
        details = "; ".join(parts)
        raise CheckpointError(f"{source} does not match {type(aggregate).__name__}: {details}")


def load_aggregate_state(aggregate: Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Put :func:`aggregate_state`'s output back, checking everything before changing anything.

    The ``epoch`` is set without firing ``onepoch`` (it is restored, not advanced); an ``epoch`` buffer is restored
    with the modules' state.

    Args:
        aggregate: the aggregate to restore into.
        state: what :func:`aggregate_state` returned.
        source: the file name, for messages.

    Raises:
        CheckpointError: see :func:`check_aggregate_state`; the aggregate is then unchanged.

    Warns:
        UserWarning: when the checkpoint's aggregate identity (registry hash) differs from ``aggregate``'s,
            naming both.
    """
    check_aggregate_state(aggregate, state, source)
    identity, saved = _identity(aggregate), state.get("id")
    if identity is not None and saved is not None and identity != saved:
        warnings.warn(
            f"{source} was written by aggregate {saved!r}; restoring it into aggregate {identity!r}",
            stacklevel=3,
        )
    aggregate.load_state_dict(state["modules"])
    optimizers, schedulers = state.get("optimizers", {}), state.get("schedulers", {})  # none in weights-only files
    for name, optimizer in _named(aggregate, (Optimizer,)):
        if name in optimizers:
            optimizer.load_state_dict(optimizers[name])
    for name, scheduler in _named(aggregate, (LRScheduler, ReduceLROnPlateau)):
        if name in schedulers:
            scheduler.load_state_dict(schedulers[name])
    epoch = state.get("epoch")
    if epoch is not None and not isinstance(getattr(aggregate, "epoch", None), torch.Tensor):  # a buffer: in modules
        # Restored, not advanced: written past the Aggregate's __setattr__, so its onepoch hook (the seed's "an epoch
        # ended") does not fire for a value that was already reached in the run that saved it.
        vars(aggregate)["epoch"] = int(epoch)
