"""What a checkpoint holds, and how it is put back.

A checkpoint is a dict of plain data (it loads with ``weights_only=True``)::

    {"format": "torchsystem-trainer", "version": 1, "library_version": "0.1.0",
     "aggregate": {"modules": ..., "optimizers": {attr: ...}, "schedulers": {attr: ...}, "epoch": int, "id": str},
     "loop": {"progress": {"epoch", "batch", "step", "global_step"}},
     "callbacks": {key: state}, "strategy": {...}, "rng": {...}}
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from torchsystem_trainer.checkpoint.io import CheckpointError, load_file

__all__ = [
    "FORMAT",
    "VERSION",
    "aggregate_state",
    "callback_keys",
    "checkpoint_state",
    "load_aggregate_state",
    "restore",
    "resolve_checkpoint_path",
]

FORMAT = "torchsystem-trainer"
VERSION = 1


def _library_version() -> str:
    try:
        return metadata.version("torchsystem-trainer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


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


def _identity(aggregate: Module) -> str | None:
    try:
        identity = aggregate.id  # type: ignore[union-attr]
    except Exception:  # an aggregate without an identity (not initialized, unregistered parts)
        return None
    return None if identity is None else str(identity)


def aggregate_state(aggregate: Module) -> dict[str, Any]:
    """The aggregate's whole state: its modules' ``state_dict``, every optimizer and LR scheduler it holds as
    an attribute (by attribute name), its ``epoch`` and its identity (``str(aggregate.id)`` or ``None``)."""
    return {
        "modules": aggregate.state_dict(),
        "optimizers": {name: o.state_dict() for name, o in _named(aggregate, (Optimizer,))},
        "schedulers": {name: s.state_dict() for name, s in _named(aggregate, (LRScheduler, ReduceLROnPlateau))},
        "epoch": aggregate.__dict__.get("epoch"),
        "id": _identity(aggregate),
    }


def load_aggregate_state(aggregate: Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Put :func:`aggregate_state`'s output back, checking everything before changing anything.

    Args:
        aggregate: the aggregate to restore into.
        state: what :func:`aggregate_state` returned.
        source: the file name, for messages.

    Raises:
        CheckpointError: when parameters do not match (listing missing and unexpected keys and shape
            mismatches) or an optimizer/scheduler of the checkpoint is missing from the aggregate.
    """
    modules = state["modules"]
    own = aggregate.state_dict()
    missing = sorted(set(own) - set(modules))
    unexpected = sorted(set(modules) - set(own))
    shapes = [
        f"{key}: checkpoint {list(modules[key].shape)} vs aggregate {list(own[key].shape)}"
        for key in sorted(set(own) & set(modules))
        if isinstance(own[key], torch.Tensor) and own[key].shape != modules[key].shape
    ]
    optimizers = dict(_named(aggregate, (Optimizer,)))
    schedulers = dict(_named(aggregate, (LRScheduler, ReduceLROnPlateau)))
    absent = [n for n in state["optimizers"] if n not in optimizers] + [
        n for n in state["schedulers"] if n not in schedulers
    ]
    if missing or unexpected or shapes or absent:
        details = "; ".join(
            part
            for part in (
                f"missing keys: {missing}" if missing else "",
                f"unexpected keys: {unexpected}" if unexpected else "",
                f"shape mismatches: {shapes}" if shapes else "",
                f"optimizers/schedulers not in the aggregate: {absent}" if absent else "",
            )
            if part
        )
        raise CheckpointError(f"{source} does not match {type(aggregate).__name__}: {details}")
    identity, saved = _identity(aggregate), state.get("id")
    if identity is not None and saved is not None and identity != saved:
        warnings.warn(
            f"{source} was written by aggregate {saved!r}; restoring it into aggregate {identity!r}",
            stacklevel=3,
        )
    aggregate.load_state_dict(modules)
    for name, optimizer in optimizers.items():
        if name in state["optimizers"]:
            optimizer.load_state_dict(state["optimizers"][name])
    for name, scheduler in schedulers.items():
        if name in state["schedulers"]:
            scheduler.load_state_dict(state["schedulers"][name])
    if state.get("epoch") is not None:
        aggregate.__dict__["epoch"] = state["epoch"]  # restored, not advanced: no onepoch


def callback_keys(callbacks: list[Any]) -> list[str]:
    """A stable key per callback: its class's qualified name, with ``#n`` for the n-th repeat."""
    keys, seen = [], {}  # type: ignore[var-annotated]
    for callback in callbacks:
        name = type(callback).__qualname__
        count = seen.get(name, 0)
        seen[name] = count + 1
        keys.append(name if count == 0 else f"{name}#{count}")
    return keys


def rng_state() -> dict[str, Any]:
    """The random number generators' states as plain data: Python, NumPy's global one, torch CPU and CUDA."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    try:
        import numpy
    except ImportError:
        return state
    kind, keys, position, has_gauss, cached = numpy.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(position), int(has_gauss), float(cached)]  # type: ignore[attr-defined]
    return state


def load_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        kind, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached))


def checkpoint_state(trainer: Any, aggregate: Module) -> dict[str, Any]:
    """Everything needed to continue a fit as if nothing happened (see the module docstring)."""
    stateful = [
        (key, callback)
        for key, callback in zip(callback_keys(trainer.callbacks), trainer.callbacks)
        if callable(getattr(callback, "state_dict", None))
    ]
    return {
        "format": FORMAT,
        "version": VERSION,
        "library_version": _library_version(),
        "aggregate": aggregate_state(aggregate),
        "loop": {"progress": trainer.progress.state_dict()},
        "callbacks": {key: callback.state_dict() for key, callback in stateful},
        "strategy": trainer.strategy.state_dict(),
        "rng": rng_state(),
    }


def restore(trainer: Any, aggregate: Module, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``trainer`` and ``aggregate``.

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: when it is corrupt, unsafe, not a checkpoint of this library, of a newer format
            version, or does not match the aggregate.
    """
    source = str(path)
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{source!r} is not a torchsystem-trainer checkpoint")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(
            f"{source!r} has checkpoint format version {state.get('version')!r}, newer than this library's "
            f"{VERSION} (library {_library_version()}); upgrade torchsystem-trainer to read it"
        )
    load_aggregate_state(aggregate, state["aggregate"], source)
    trainer.progress.load_state_dict(state["loop"]["progress"])
    saved = state["callbacks"]
    for key, callback in zip(callback_keys(trainer.callbacks), trainer.callbacks):
        if key in saved and callable(getattr(callback, "load_state_dict", None)):
            callback.load_state_dict(saved[key])
    trainer.strategy.load_state_dict(state["strategy"])
    load_rng_state(state["rng"])


def resolve_checkpoint_path(trainer: Any, ckpt_path: Any) -> Path | None:
    """Turn ``fit``'s ``ckpt_path`` into a file: a path as it is, or ``"last"``/``"best"`` asked of the
    trainer's checkpoint callback (its ``checkpoint_path(which, trainer)``).

    Returns:
        The file, or ``None`` for ``"last"`` when no checkpoint exists yet (the run starts from scratch).

    Raises:
        ValueError: for ``"last"``/``"best"`` without a checkpoint callback, or ``"best"`` with no best file.
    """
    if ckpt_path not in ("last", "best"):
        return Path(ckpt_path)
    finders = [c for c in trainer.callbacks if callable(getattr(c, "checkpoint_path", None))]
    if not finders:
        raise ValueError(f"ckpt_path={ckpt_path!r} needs a ModelCheckpoint in the trainer's callbacks")
    found = finders[0].checkpoint_path(ckpt_path, trainer)
    if found is None and ckpt_path == "best":
        raise ValueError("ckpt_path='best': the ModelCheckpoint has no best checkpoint yet")
    return found  # type: ignore[no-any-return]
