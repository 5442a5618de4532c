"""What a checkpoint holds, and how it is put back: everything needed to continue a fit as if nothing happened.

A checkpoint is a dict of plain data (it loads with ``weights_only=True``; :func:`checkpoint_state` checks that
before anything is written)::

    {"format": "torchsystem-trainer", "version": 1, "library_version": "0.1.0",
     "aggregate": {"modules": state_dict, "optimizers": {attribute: state}, "schedulers": {attribute: state},
                   "epoch": int | None, "id": str | None},
     "loop": {"progress": {"epoch", "batch", "step", "global_step"},   # batch: consumed in the current epoch
              "world_size": int,                                      # processes of the run that wrote it
              "should_stop": bool,                                    # the fit had decided to stop
              "train": {"epoch_start": {"rng", "generators"} | None,  # see checkpoint.resume
                        "generators": [uint8 tensor], "persistent": bool},
              "train_results": PhaseResults.state_dict() | None,      # the current epoch's, when batch > 0
              "generators": {phase: [uint8 tensor]},                  # other loaders' torch.Generator states
              "sampler_seeds": {phase: int}},                         # DistributedSampler seeds
     "callbacks": {key: state}, "strategy": {"scaler": ...}, "rng": RNGState}

The format does not depend on the number of processes: a checkpoint of a data-parallel run resumes on one process
and the other way round (with a warning, as the data order then changes).

Sources of the failures this addresses: Lightning saves no random state and restarts mid-epoch checkpoints from
the epoch's start unless the loader is stateful (its issues #19764, #19815, #18780); Keras' ``BackupAndRestore``
restarts the epoch; Accelerate needs batches skipped by hand (#2016).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch.nn import Module
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from torchsystem_trainer.checkpoint.io import CheckpointError, load_file
from torchsystem_trainer.checkpoint.rng import generator_states, load_generator_states, load_rng_state, rng_state

__all__ = [
    "FORMAT",
    "VERSION",
    "aggregate_state",
    "callback_keys",
    "check_aggregate_state",
    "check_plain",
    "checkpoint_state",
    "load_aggregate_state",
    "read_checkpoint",
    "restore",
    "resolve_checkpoint_path",
    "rng_state",
    "load_rng_state",
]

FORMAT = "torchsystem-trainer"
VERSION = 1
_SECTIONS = ("aggregate", "loop", "callbacks", "strategy", "rng")
# What torch.load(weights_only=True) reads back, by exact type (numpy.float64 is a float, and refused; a
# defaultdict is a dict, and refused).
_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))
_PLAIN = (torch.Tensor, torch.dtype, torch.device, torch.Size)


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
        identity = aggregate.id
    except Exception:  # an aggregate without an identity (not initialized, unregistered parts)
        return None
    return None if identity is None else str(identity)


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
        "epoch": int | None, "id": str | None}``: every optimizer and LR scheduler it holds as an attribute (or
        in a list, tuple or dict attribute), by attribute name.
    """
    return {
        "modules": aggregate.state_dict(),
        "optimizers": {name: o.state_dict() for name, o in _named(aggregate, (Optimizer,))},
        "schedulers": {name: s.state_dict() for name, s in _named(aggregate, (LRScheduler, ReduceLROnPlateau))},
        "epoch": aggregate.__dict__.get("epoch"),
        "id": _identity(aggregate),
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
        modules, optimizers_saved, schedulers_saved = state["modules"], state["optimizers"], state["schedulers"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{source} has no valid aggregate state (missing {error})") from error
    own = aggregate.state_dict()
    missing = sorted(set(own) - set(modules))
    unexpected = sorted(set(modules) - set(own))
    shapes = [
        f"{key}: checkpoint {list(modules[key].shape)} vs aggregate {list(own[key].shape)}"
        for key in sorted(set(own) & set(modules))
        if isinstance(own[key], torch.Tensor)
        and (not isinstance(modules[key], torch.Tensor) or own[key].shape != modules[key].shape)
    ]
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
    if missing or unexpected or shapes or absent or groups:
        details = "; ".join(
            part
            for part in (
                f"missing keys: {missing}" if missing else "",
                f"unexpected keys: {unexpected}" if unexpected else "",
                f"shape mismatches: {shapes}" if shapes else "",
                f"optimizers/schedulers not in the aggregate: {absent}" if absent else "",
                f"parameters per optimizer group differ: {groups}" if groups else "",
            )
            if part
        )
        raise CheckpointError(f"{source} does not match {type(aggregate).__name__}: {details}")


def load_aggregate_state(aggregate: Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Put :func:`aggregate_state`'s output back, checking everything before changing anything.

    The ``epoch`` is set without firing ``onepoch`` (it is restored, not advanced).

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
    for name, optimizer in _named(aggregate, (Optimizer,)):
        if name in state["optimizers"]:
            optimizer.load_state_dict(state["optimizers"][name])
    for name, scheduler in _named(aggregate, (LRScheduler, ReduceLROnPlateau)):
        if name in state["schedulers"]:
            scheduler.load_state_dict(state["schedulers"][name])
    if state.get("epoch") is not None:
        aggregate.__dict__["epoch"] = state["epoch"]  # restored, not advanced: no onepoch


def callback_keys(callbacks: list[Any]) -> list[str]:
    """A stable key per callback: its class's qualified name, with ``#n`` for the n-th repeat.

    Args:
        callbacks: the trainer's callbacks, in order.

    Returns:
        One key per callback.
    """
    keys, seen = [], {}  # type: ignore[var-annotated]
    for callback in callbacks:
        name = type(callback).__qualname__
        count = seen.get(name, 0)
        seen[name] = count + 1
        keys.append(name if count == 0 else f"{name}#{count}")
    return keys


def _loop_state(trainer: Any) -> dict[str, Any]:
    """The loop's part of a checkpoint (see the module docstring)."""
    progress = trainer.progress
    loaders: dict[str, Any] = getattr(trainer, "_loaders", {})
    position = getattr(trainer, "_position", None)
    consumed = progress.batch
    train = loaders.get("train")
    results = getattr(trainer, "_phase_results", {}).get("train") if consumed > 0 else None
    return {
        "progress": progress.state_dict(),
        "world_size": int(trainer.strategy.world_size),
        "should_stop": bool(trainer.should_stop and not getattr(trainer, "_signal_set_stop", False)),
        "train": None if position is None or train is None else position.state_dict(train, consumed),
        "train_results": None if results is None else results.state_dict(),
        "generators": {phase: generator_states(loader) for phase, loader in loaders.items() if phase != "train"},
        "sampler_seeds": {
            phase: seed for phase, loader in loaders.items() if (seed := _sampler_seed(loader)) is not None
        },
    }


def _sampler_seed(loader: Any) -> int | None:
    """The ``seed`` of a loader's sampler that shuffles by seed and epoch (``DistributedSampler``), else ``None``."""
    seed = getattr(getattr(loader, "sampler", None), "seed", None)
    return seed if type(seed) is int else None


def checkpoint_state(trainer: Any, aggregate: Module) -> dict[str, Any]:
    """Everything needed to continue a fit as if nothing happened (see the module docstring).

    Call it from an event handler of a running fit (``BatchTrained``, ``Iterated``, ``FitEnded``...): the loop's
    position is the one of that moment. Reads state only; the host reads the devices' tensors when the result is
    saved.

    Args:
        trainer: the ``Trainer``.
        aggregate: the aggregate being trained.

    Returns:
        The checkpoint, plain data only.

    Raises:
        TypeError: when some state (a callback's, a scheduler's) holds a value ``weights_only`` loading would
            refuse, naming where it is (see :func:`check_plain`).
    """
    stateful = [
        (key, callback)
        for key, callback in zip(callback_keys(trainer.callbacks), trainer.callbacks)
        if callable(getattr(callback, "state_dict", None))
    ]
    state = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": _library_version(),
        "aggregate": aggregate_state(aggregate),
        "loop": _loop_state(trainer),
        "callbacks": {key: callback.state_dict() for key, callback in stateful},
        "strategy": trainer.strategy.state_dict(),
        "rng": rng_state(),
    }
    check_plain(state)
    return state


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file and check that it is one of this library, of a format version it reads.

    Args:
        path: the file.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: when it is truncated, corrupt, unsafe, not a checkpoint of this library, of a newer format
            version, or lacks a section; the message names the file.
    """
    source = str(path)
    state = load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        kind = "a dict without 'format'" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(
            f"{source!r} is not a torchsystem-trainer checkpoint (it holds {kind}; checkpoints are written by "
            f"ModelCheckpoint or save_atomic(checkpoint_state(...)))"
        )
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"{source!r} has checkpoint format version {version!r} (library {state.get('library_version')!r}), newer "
            f"than this library's {VERSION} (library {_library_version()}); upgrade torchsystem-trainer to read it"
        )
    absent = [section for section in _SECTIONS if section not in state]
    if absent:
        raise CheckpointError(f"{source!r} is an incomplete checkpoint: it lacks {absent}")
    return state


def restore(trainer: Any, aggregate: Module, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``trainer`` and ``aggregate``: all of it, or nothing.

    Everything is checked before anything changes: the file (:func:`read_checkpoint`), the aggregate
    (:func:`check_aggregate_state`) and the current epoch's training results against the configured metrics.
    Then callbacks (a callback whose ``load_state_dict`` raises gets the earlier ones put back), the strategy, the
    aggregate, the loop and the random generators are restored. The training loop then continues at the
    checkpoint's epoch and batch (see :mod:`~torchsystem_trainer.checkpoint.resume`). Nothing on disk changes.

    Args:
        trainer: the ``Trainer``, inside ``fit`` (its loaders known, its strategy set up).
        aggregate: the aggregate.
        path: the checkpoint file.

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: when it is corrupt, unsafe, not a checkpoint of this library, of a newer format
            version, or does not match the aggregate, the metrics or a callback; naming the file.

    Warns:
        UserWarning: for another aggregate identity, another number of processes (the data order changes), or a
            loader whose generators differ from the checkpoint's.
    """
    source = repr(str(path))
    state = read_checkpoint(path)
    check_aggregate_state(aggregate, state["aggregate"], source)
    loop, progress = state["loop"], trainer.progress
    try:
        saved_progress = {key: int(loop["progress"][key]) for key in ("epoch", "batch", "step", "global_step")}
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source} has no valid loop progress ({error!r})") from error
    consumed = _consumed(saved_progress["batch"], int(loop.get("world_size", 1)), trainer, source)
    _check_train_results(trainer, loop, consumed, source)
    _load_callbacks(trainer, state["callbacks"], source)
    trainer.strategy.load_state_dict(state["strategy"])
    load_aggregate_state(aggregate, state["aggregate"], source)
    progress.load_state_dict({**saved_progress, "batch": consumed})
    trainer.should_stop = bool(loop.get("should_stop", False))
    loaders: dict[str, Any] = getattr(trainer, "_loaders", {})
    position = getattr(trainer, "_position", None)
    if position is not None and loop.get("train") is not None and "train" in loaders:
        position.load_state_dict(loop["train"], state["rng"], consumed)
    for phase, states in loop.get("generators", {}).items():
        if phase in loaders:
            load_generator_states(loaders[phase], states, f"the {phase!r} loader")
    for phase, seed in loop.get("sampler_seeds", {}).items():
        if phase in loaders and _sampler_seed(loaders[phase]) is not None:
            loaders[phase].sampler.seed = int(seed)  # a DistributedSampler seeded from the original run's seed
    load_rng_state(state["rng"])


def _consumed(batch: int, saved_world_size: int, trainer: Any, source: str) -> int:
    """The batches of the current epoch this process has consumed, after a change in the number of processes
    (a ``DistributedSampler`` gives each process every ``world_size``-th sample of one permutation, so the
    batches consumed by all processes together are a prefix of it, whatever their number)."""
    world_size = int(trainer.strategy.world_size)
    if saved_world_size == world_size:
        return batch
    converted = batch * saved_world_size // world_size
    warnings.warn(
        f"{source} was written by a run of {saved_world_size} process(es) and this one has {world_size}: each "
        f"process now sees other samples, so the data order (and the result) differs from the uninterrupted run"
        + (
            f"; the current epoch continues after {converted} batches per process (it had consumed {batch} per "
            f"process{'' if batch * saved_world_size % world_size == 0 else ', so a few samples are seen twice'}) "
            f"and its training results cover only the batches after the resume"
            if batch
            else ""
        ),
        stacklevel=4,
    )
    return converted


def _check_train_results(trainer: Any, loop: dict[str, Any], consumed: int, source: str) -> None:
    """Load the current epoch's training results into the trainer's (fresh) results of the training phase, or
    raise before anything else is restored. Under several processes only global rank 0 takes them (the file holds
    rank 0's); the others start the epoch's results afresh."""
    saved = loop.get("train_results")
    if consumed == 0 or not hasattr(trainer, "_results_of"):
        return
    results = trainer._results_of("train")
    if saved is None or int(loop.get("world_size", 1)) != trainer.strategy.world_size or trainer.strategy.global_rank:
        if saved is None:
            warnings.warn(
                f"{source} holds no training results for its unfinished epoch; that epoch's train results will "
                f"cover only the batches after the resume",
                stacklevel=4,
            )
        return
    try:
        results.load_state_dict(saved)
    except ValueError as error:  # the metrics changed: keep the loss, start the metrics at the resume point
        warnings.warn(
            f"{source}: {error}; the metrics of its unfinished epoch cover only the batches after the resume",
            stacklevel=4,
        )
        results.load_state_dict(saved, strict=False)
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{source}: the training results of its unfinished epoch cannot be restored ({error!r})"
        ) from error


def _load_callbacks(trainer: Any, saved: dict[str, Any], source: str) -> None:
    """Restore every stateful callback; if one raises, put back the ones already restored and raise."""
    done: list[tuple[Any, Any]] = []
    for key, callback in zip(callback_keys(trainer.callbacks), trainer.callbacks):
        load = getattr(callback, "load_state_dict", None)
        if key not in saved or not callable(load):
            continue
        before = callback.state_dict() if callable(getattr(callback, "state_dict", None)) else None
        try:
            load(saved[key])
        except Exception as error:
            for earlier, state in reversed(done):
                if state is not None:
                    earlier.load_state_dict(state)
            raise CheckpointError(f"{source}: the state of callback {key} cannot be restored: {error!r}") from error
        done.append((callback, before))


def resolve_checkpoint_path(trainer: Any, ckpt_path: Any) -> Path | None:
    """Turn ``fit``'s ``ckpt_path`` into a file: a path as it is, or ``"last"``/``"best"`` asked of the
    trainer's checkpoint callback (its ``checkpoint_path(which, trainer)``).

    Args:
        trainer: the ``Trainer``.
        ckpt_path: a path, ``"last"`` or ``"best"``.

    Returns:
        The file, or ``None`` for ``"last"`` when no checkpoint exists yet (the run starts from scratch, so the
        same command both starts and resumes a run).

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

