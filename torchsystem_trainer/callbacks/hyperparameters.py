"""The hyper-parameters of a run, collected in one place for every logger (and any run store) to write.

:func:`hyperparameters` flattens, into ``"<path>": value`` pairs:

====================================  ==================================================================================
key                                   value
====================================  ==================================================================================
``aggregate``                         the aggregate's registry name (:func:`~torchsystem_trainer.registry.getname`:
                                      its class name unless registered under another)
``aggregate/id``                      ``str(aggregate.id)`` (the seed's aggregates return their network's registry
                                      hash); absent when the identity is not set
``aggregate/<parameter>``             the aggregate's own constructor signature, when its class is registered
``<attr>``                            for each registered object the aggregate holds (submodules first, then other
                                      public attributes; the items of a list, tuple or dict attribute as
                                      ``<attr>/<index or key>``): its registry name
``<attr>/<parameter>``                its full constructor signature, defaults not passed included
                                      (:func:`~torchsystem_trainer.registry.getparameters`); a registered object among
                                      the arguments flattens the same way (``nn/activation``,
                                      ``nn/activation/inplace``), so does a plain dict (by key)
``<attr>/<path>/<parameter>``         registered modules deeper in a registered module's tree
                                      (``nn.encoder.block`` -> ``nn/encoder/block``), their defaults included
``<attr>/<setting>``                  for each ``torch.optim.Optimizer`` the aggregate holds (registered or not; in a
                                      list, tuple or dict attribute: ``<attr>/<index or key>``): every setting of its
                                      ``param_groups`` but ``params`` (``lr``, ``betas``, ``weight_decay``...); with
                                      several groups, ``<attr>/<group index>/<setting>``
``trainer/<setting>``                 the Trainer's ``max_epochs``, ``max_steps``, ``max_time`` (seconds),
                                      ``min_epochs``, ``min_steps``, ``precision``, ``accumulate_grad_batches``,
                                      ``gradient_clip_val``, ``gradient_clip_algorithm``, ``check_val_every_n_epoch``,
                                      ``val_check_interval``, ``limit_train_batches``, ``limit_val_batches``,
                                      ``seed``, ``deterministic``, ``strategy`` (class name), ``world_size``
====================================  ==================================================================================

Values are ``bool``, ``int``, ``float``, ``str`` or ``None``; anything else (a tuple such as Adam's ``betas``, a
list, an unregistered object) is written as its ``str``. Unregistered modules (a ``CrossEntropyLoss``) carry no
captured arguments and are left out, by definition.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torch.nn import Module
from torch.optim import Optimizer

from torchsystem_trainer.registry import UnregisteredError, getname, getparameters

__all__ = ["HParam", "hyperparameters", "identity", "optimizer_settings", "parts"]

HParam = bool | int | float | str | None
"""One hyper-parameter's value, as :func:`hyperparameters` returns them."""

_PLAIN = (str, int, float, bool, type(None))

_TRAINER_SETTINGS = (
    "max_epochs",
    "max_steps",
    "max_time",
    "min_epochs",
    "min_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "check_val_every_n_epoch",
    "val_check_interval",
    "limit_train_batches",
    "limit_val_batches",
    "seed",
    "deterministic",
)


def hyperparameters(aggregate: Any, trainer: Any = None) -> dict[str, HParam]:
    """Everything that defines a run, flat (see the module docstring for the keys).

    Args:
        aggregate: the aggregate; its submodules and public attributes are inspected.
        trainer: the ``Trainer`` whose settings to add as ``trainer/...``; ``None`` adds none.

    Returns:
        ``{"aggregate": "Classifier", "aggregate/id": "af51...", "nn": "MLP", "nn/input_size": 784, ...,
        "optimizer": "Adam", "optimizer/lr": 0.001, "optimizer/betas": "(0.9, 0.999)", ...,
        "trainer/max_epochs": 10, ...}``, in that order.

    Raises:
        Nothing: unregistered parts are left out, an identity that cannot be computed is left out.
    """
    flat: dict[str, HParam] = {"aggregate": getname(aggregate)}
    found = identity(aggregate)
    if found is not None:
        flat["aggregate/id"] = found
    _add_registered("aggregate", aggregate, flat, deep=False)
    for attribute, part in parts(aggregate):
        _add_registered(attribute, part, flat, deep=True)
        if isinstance(part, Optimizer):
            _add_optimizer(attribute, part, flat)
    if trainer is not None:
        _add_trainer(trainer, flat)
    return flat


def identity(aggregate: Any) -> str | None:
    """``str(aggregate.id)``, or ``None`` when the aggregate has no identity (not initialized, no ``id``, or an
    ``id`` property that raises)."""
    try:
        found = aggregate.id
    except Exception:  # not initialized, unregistered parts, a user's property that fails
        return None
    return None if found is None else str(found)


def parts(aggregate: Any, separator: str = "/") -> Iterator[tuple[str, Any]]:
    """What the aggregate holds: its submodules, then its other public attributes (the optimizer, a scheduler...),
    each object once; the items of a list, tuple or dict attribute one by one, as ``<attr><separator><index or
    key>``; plain values (numbers, strings, ``None``) left out. Shared with the run store
    (``torchsystem_trainer.tracking.describe``, with ``separator="."``).

    Args:
        aggregate: any object (an ``nn.Module``'s children come first).
        separator: between an attribute's name and an item's index or key.

    Yields:
        ``(key, object)``.
    """
    seen: set[int] = set()
    children = dict(aggregate.named_children()) if isinstance(aggregate, Module) else {}
    public = {name: value for name, value in vars(aggregate).items() if not name.startswith("_")}
    for name, value in {**children, **public}.items():
        if isinstance(value, (list, tuple)):
            items: list[tuple[str, Any]] = [(f"{name}{separator}{index}", item) for index, item in enumerate(value)]
        elif isinstance(value, dict):
            items = [(f"{name}{separator}{key}", item) for key, item in value.items()]
        else:
            items = [(name, value)]
        for key, item in items:
            if id(item) not in seen and not isinstance(item, _PLAIN):
                seen.add(id(item))
                yield key, item


def optimizer_settings(optimizer: Optimizer) -> list[dict[str, Any]]:
    """Every setting of each of ``optimizer``'s ``param_groups`` but ``params`` (``lr``, ``betas``,
    ``weight_decay``...), as they are now: one dict per group."""
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def _add_registered(key: str, part: Any, flat: dict[str, HParam], deep: bool) -> None:
    try:
        parameters = getparameters(part)
    except UnregisteredError:
        parameters = None
    if parameters is not None and key != "aggregate":
        flat[key] = getname(part)
    for name, value in (parameters or {}).items():
        _flatten(f"{key}/{name}", value, flat)
    if deep and isinstance(part, Module):  # registered modules further down: their defaults, which no argument holds
        for path, module in part.named_modules(prefix=key):
            if module is part:
                continue
            try:
                inner = getparameters(module)
            except UnregisteredError:
                continue
            prefix = path.replace(".", "/")
            flat.setdefault(prefix, getname(module))
            nested: dict[str, HParam] = {}
            for name, value in inner.items():
                _flatten(f"{prefix}/{name}", value, nested)
            for name, value in nested.items():
                flat.setdefault(name, value)


def _add_optimizer(key: str, optimizer: Optimizer, flat: dict[str, HParam]) -> None:
    flat.setdefault(key, getname(optimizer))
    groups = optimizer_settings(optimizer)
    for index, group in enumerate(groups):
        prefix = key if len(groups) == 1 else f"{key}/{index}"
        for setting, value in group.items():
            flat[f"{prefix}/{setting}"] = _scalar(value)  # the live value wins over the captured argument


def _add_trainer(trainer: Any, flat: dict[str, HParam]) -> None:
    for setting in _TRAINER_SETTINGS:
        if hasattr(trainer, setting):
            flat[f"trainer/{setting}"] = _scalar(getattr(trainer, setting))
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None:
        precision = getattr(strategy, "precision", None)
        flat["trainer/precision"] = _scalar(getattr(precision, "precision", precision))
        flat["trainer/strategy"] = type(strategy).__name__
        flat["trainer/world_size"] = _scalar(getattr(strategy, "world_size", 1))


def _flatten(key: str, value: Any, flat: dict[str, HParam]) -> None:
    if isinstance(value, dict):
        if set(value) == {"name", "arguments"} and isinstance(value["arguments"], dict):  # a registered object
            flat[key] = str(value["name"])
            value = value["arguments"]
        for inner, item in value.items():
            _flatten(f"{key}/{inner}", item, flat)
    else:
        flat[key] = _scalar(value)


def _scalar(value: Any) -> HParam:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # type: ignore[no-any-return]
    if isinstance(value, Tensor) and value.numel() == 1:  # a tensor learning rate: read once, at the run's start
        return value.item()  # type: ignore[no-any-return]
    return str(value)
