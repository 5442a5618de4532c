"""Weights in and out: weights-only checkpoints, loading a checkpoint's weights into a module, and rebuilding a
registered network from a checkpoint alone.

* :func:`weights_state`: what ``ModelCheckpoint(save_weights_only=True)`` and
  ``trainer.save_checkpoint(path, weights_only=True)`` write (Lightning's ``save_weights_only``): the aggregate's
  module weights, ``epoch`` and identity, and the averaged weights of ``EMA``/``StochasticWeightAveraging``; no
  optimizer, loop or random state, so such a file cannot resume a fit.
* :func:`load_weights`: a checkpoint's weights (complete or weights-only) into the aggregate, or into one of its
  submodules (the bare network, for inference), read with ``torch.load(weights_only=True)``.
* :func:`load_model`: rebuild the registered network a checkpoint names (its registry name and constructor
  arguments, stored by :func:`~torchsystem_trainer.checkpoint.aggregate.network_identities`) from a
  :class:`~torchsystem_trainer.registry.Registry` holding its class, and load its weights: inference with none of the
  training code at hand (Lightning's ``load_from_checkpoint`` without the ``LightningModule``).

A callback whose ``state_dict()`` holds ``"averaged_weights"`` (``{aggregate state_dict key: tensor}``, as ``EMA``
and ``StochasticWeightAveraging`` do) offers a second set of weights; ``averaged=True`` loads those.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import Module

from torchsystem_trainer.checkpoint.aggregate import aggregate_epoch, check_plain, describe_mismatch, network_identities
from torchsystem_trainer.checkpoint.io import CheckpointError
from torchsystem_trainer.checkpoint.sharded import is_sharded_checkpoint, read_consolidated
from torchsystem_trainer.checkpoint.state import FORMAT, VERSION, callback_keys, library_version, read_checkpoint
from torchsystem_trainer.registry import Registry

__all__ = ["AVERAGED_KEY", "UnknownModelError", "load_model", "load_weights", "weights_state"]

AVERAGED_KEY = "averaged_weights"
"""The key of a callback's state that holds a second, averaged set of the aggregate's weights."""


class UnknownModelError(KeyError):
    """The network a checkpoint names is not in the registry given to :func:`load_model`. The message lists the
    registry's names; it prints without the quotes ``KeyError`` puts around its argument."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def weights_state(
    aggregate: Module, callbacks: Sequence[Any] = (), *, modules: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A weights-only checkpoint of ``aggregate`` (see the module docstring).

    Args:
        aggregate: the aggregate.
        callbacks: the trainer's callbacks; the averaged weights of those that keep some are included.
        modules: the module weights to write instead of ``aggregate.state_dict()`` (a sharded strategy's weights
            gathered to full tensors: ``strategy.aggregate_state(aggregate)["modules"]``).

    Returns:
        ``{"format", "version", "library_version", "weights_only": True, "aggregate": {"modules", "epoch", "id",
        "networks"}, "callbacks": {key: {"averaged_weights": ...}}}``, plain data only.

    Raises:
        TypeError: when a value could not be read back by ``weights_only`` loading (see ``check_plain``).
    """
    averaged = {}
    for key, callback in zip(callback_keys(list(callbacks)), callbacks, strict=True):
        weights = getattr(callback, "averaged_weights", None)
        found = weights() if callable(weights) else None
        if found is not None:
            averaged[key] = {AVERAGED_KEY: found}
    identity = None
    try:
        identity = aggregate.id
    except Exception:  # an aggregate without an identity
        pass
    state = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": library_version(),
        "weights_only": True,
        "aggregate": {
            "modules": aggregate.state_dict() if modules is None else modules,
            "epoch": aggregate_epoch(aggregate),
            "id": None if identity is None else str(identity),
            "networks": network_identities(aggregate),
        },
        "callbacks": averaged,
    }
    check_plain(state)
    return state


def _averaged(state: dict[str, Any], which: bool | str, source: str) -> dict[str, Any]:
    """The averaged weights a checkpoint's callbacks hold: the only set, or the one of callback ``which``."""
    found = {
        key: saved[AVERAGED_KEY]
        for key, saved in (state.get("callbacks") or {}).items()
        if isinstance(saved, dict) and saved.get(AVERAGED_KEY) is not None
    }
    if isinstance(which, str):
        if which not in found:
            raise CheckpointError(f"{source} holds no averaged weights of callback {which!r}; it has {sorted(found)}")
        return found[which]  # type: ignore[no-any-return]
    if len(found) != 1:
        raise CheckpointError(
            f"{source} holds {'no' if not found else len(found)} set(s) of averaged weights "
            f"({sorted(found) or 'no EMA or StochasticWeightAveraging callback'}): "
            + ("pass averaged=False" if not found else "pass averaged='<callback key>' to choose one")
        )
    return next(iter(found.values()))  # type: ignore[no-any-return]


def _weights_of(path: str | os.PathLike[str], averaged: bool | str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(checkpoint, module weights, source)`` of a checkpoint file."""
    source = repr(str(path))
    state = _read(path)
    modules = _averaged(state, averaged, source) if averaged else state["aggregate"].get("modules")
    if not isinstance(modules, Mapping):
        raise CheckpointError(f"{source} has no module weights")
    return state, dict(modules), source


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint file, or a sharded checkpoint's weights gathered into one (in this process)."""
    return read_consolidated(path, weights_only=True) if is_sharded_checkpoint(path) else read_checkpoint(Path(path))


def _prefix_for(own: Mapping[str, Any], saved: Mapping[str, Any], source: str, target: Module) -> str:
    """The prefix of the checkpoint's keys under which ``target``'s keys are found (``""`` for the aggregate,
    ``"nn."`` for its child ``nn``); the one that matches most keys, refusing a tie."""
    if not own or set(own) <= set(saved):
        return ""
    counts: dict[str, int] = {}
    for key in own:
        suffix = f".{key}"
        for candidate in saved:
            if candidate.endswith(suffix):
                prefix = candidate[: -len(key)]
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return ""  # nothing matches: the mismatch message lists every key
    best = max(counts.values())
    winners = sorted(prefix for prefix, count in counts.items() if count == best)
    if len(winners) > 1:
        raise CheckpointError(
            f"{source}: the keys of {type(target).__name__} are found under several prefixes {winners}; pass "
            f"prefix= to choose one"
        )
    return winners[0]


def load_weights(
    target: Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    prefix: str | None = None,
    averaged: bool | str = False,
) -> Any:
    """Load a checkpoint's module weights into ``target``: the aggregate, or one of its submodules.

    The file is read with ``torch.load(weights_only=True)`` after its CRCs are checked (no code in it runs), and
    checked against ``target`` before anything changes. For a submodule (``load_weights(aggregate.nn, path)``,
    or a freshly built network of the same class) the checkpoint's keys under that child's prefix are used
    (``"nn.layers.0.weight"`` -> ``"layers.0.weight"``); the prefix is found from the keys, or given.

    Args:
        target: the module to load into; its parameters keep their device and dtype.
        path: a checkpoint file, complete or weights-only, or a sharded checkpoint's folder (its shards are
            gathered here, in this process).
        strict: every key of ``target`` must be in the checkpoint and no other key under the prefix
            (``torch.nn.Module.load_state_dict``'s ``strict``); shapes must match either way.
        prefix: the prefix of ``target``'s keys in the checkpoint (``"nn."``); ``None``: found from the keys.
        averaged: load the averaged weights an ``EMA`` or ``StochasticWeightAveraging`` callback kept in the
            checkpoint instead of the trained ones; a string names the callback's key (``"EMA"``) when there are
            several.

    Returns:
        ``torch.nn.Module.load_state_dict``'s result: ``(missing_keys, unexpected_keys)``, empty when ``strict``.

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: for a file that is corrupt, unsafe or not a checkpoint of this library; for keys that do
            not match (listing missing and unexpected keys, and shape mismatches, as checkpoint restore does), for
            a prefix that is ambiguous, or for ``averaged`` weights the checkpoint does not hold; ``target`` is
            then unchanged.
    """
    _, saved, source = _weights_of(path, averaged)
    own = target.state_dict()
    if prefix is None:
        prefix = _prefix_for(own, saved, source, target)
    selected = {key[len(prefix) :]: value for key, value in saved.items() if key.startswith(prefix)}
    parts = describe_mismatch(own, selected)
    if not strict:
        parts = [part for part in parts if part.startswith("shape")]
    if parts:
        where = f" (under prefix {prefix!r})" if prefix else ""
        raise CheckpointError(f"{source}{where} does not match {type(target).__name__}: {'; '.join(parts)}")
    return target.load_state_dict(selected, strict=strict)


def _rebuild(value: Any, registry: Registry[Any], annotation: str | None) -> Any:
    """A captured argument made an object again: a registered object described by name (``'ReLU'``, for a
    parameter not annotated ``str``) or as ``{'name': ..., 'arguments': {...}}`` is built from ``registry``."""
    if isinstance(value, str) and annotation != "str" and value in registry:
        return _construct(registry, value, {})
    if isinstance(value, dict) and set(value) == {"name", "arguments"} and value["name"] in registry:
        return _construct(registry, value["name"], value["arguments"])
    if isinstance(value, list):
        return [_rebuild(item, registry, None) for item in value]
    if isinstance(value, tuple):
        return tuple(_rebuild(item, registry, None) for item in value)
    return value


def _construct(registry: Registry[Any], name: str, arguments: Mapping[str, Any]) -> Any:
    cls = registry.get(name)
    if cls is None:
        raise UnknownModelError(
            f"the checkpoint names the registered class {name!r}, which is not in the registry given; its names: "
            f"{registry.keys()} (register the class in it: @registry.register)"
        )
    annotations = registry.signature(name) or {}
    values = {key: _rebuild(value, registry, annotations.get(key)) for key, value in arguments.items()}
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    parameters = inspect.signature(cls).parameters
    for key, value in values.items():
        kind = parameters[key].kind if key in parameters else inspect.Parameter.VAR_KEYWORD
        if kind is inspect.Parameter.POSITIONAL_ONLY:
            positional.append(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(value)
        else:
            keywords[key] = value
    return cls(*positional, **keywords)


def load_model(
    path: str | os.PathLike[str],
    registry: Registry[Any],
    *,
    network: str | None = None,
    strict: bool = True,
    averaged: bool | str = False,
    map_location: str | torch.device = "cpu",
) -> Module:
    """Rebuild the registered network a checkpoint names and load its weights, in evaluation mode.

    The checkpoint stores, for each child of the aggregate built from a registered class, its registered name and
    constructor arguments (``{"nn": {"name": "MLP", "arguments": {"inputs": 784, ...}}}``). The class is looked up by
    that name in ``registry``, built with those arguments (nested registered objects, stored by name or as
    ``{"name", "arguments"}``, are built from ``registry`` too), moved to ``map_location``, and given that child's
    weights (:func:`load_weights`).

    Example:
        >>> models = Registry[Module]()
        >>> models.register(MLP)
        >>> network = load_model("runs/checkpoints/last.ckpt", models)  # an MLP, in eval mode

    Args:
        path: a checkpoint file, complete or weights-only, or a sharded checkpoint's folder.
        registry: a :class:`~torchsystem_trainer.registry.Registry` holding the network's class (and the classes
            of registered objects among its arguments).
        network: the aggregate's attribute of the network (``"nn"``) when the checkpoint names several.
        strict: as for :func:`load_weights`.
        averaged: load the averaged weights of an ``EMA`` or ``StochasticWeightAveraging`` callback (see
            :func:`load_weights`).
        map_location: the device to build the network on.

    Returns:
        The network, in evaluation mode (``.eval()``).

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: for a file that cannot be used, one that names no registered network (written before this
            was stored, or whose network's class was not registered when it was built), several networks without
            ``network``, or weights that do not match.
        UnknownModelError: (a ``KeyError``) when the name is not in ``registry``, listing the registry's names.
    """
    source = repr(str(path))
    state = _read(path)
    networks = state["aggregate"].get("networks") or {}
    if not networks:
        raise CheckpointError(
            f"{source} names no registered network: register the network's class (register(MLP)) before building "
            f"it, so checkpoints store its name and constructor arguments"
        )
    if network is None:
        if len(networks) > 1:
            raise CheckpointError(f"{source} names several networks {sorted(networks)}; pass network= to choose one")
        network = next(iter(networks))
    if network not in networks:
        raise CheckpointError(f"{source} names no network {network!r}; it names {sorted(networks)}")
    identity = networks[network]
    model = _construct(registry, identity["name"], identity["arguments"])
    if not isinstance(model, Module):
        raise TypeError(f"{identity['name']!r} in the registry built a {type(model).__name__}, not a torch Module")
    model.to(map_location)
    load_weights(model, Path(path), strict=strict, prefix=f"{network}.", averaged=averaged)
    return model.eval()
