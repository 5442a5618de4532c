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

A weights-only checkpoint (``ModelCheckpoint(save_weights_only=True)``, ``trainer.save_checkpoint(path,
weights_only=True)``, :func:`~torchsystem_trainer.checkpoint.weights_state`) has ``"weights_only": True``, the
``aggregate`` section without optimizers and schedulers, and of ``callbacks`` only the averaged weights of
``EMA``/``StochasticWeightAveraging``; it loads into a model (``load_weights``, ``load_model``, ``validate``/``test``
with ``ckpt_path``) but cannot resume a fit.

The format does not depend on the number of processes: a checkpoint of a data-parallel run resumes on one process
and the other way round (with a warning, as the data order then changes).

Sources of the failures this addresses: Lightning saves no random state and restarts mid-epoch checkpoints from
the epoch's start unless the loader is stateful (its issues #19764, #19815, #18780); Keras' ``BackupAndRestore``
restarts the epoch; Accelerate needs batches skipped by hand (#2016).
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from torch.nn import Module

from torchsystem_trainer.checkpoint.aggregate import (
    aggregate_state,
    check_aggregate_state,
    check_plain,
    load_aggregate_state,
)
from torchsystem_trainer.checkpoint.io import CheckpointError, load_file
from torchsystem_trainer.checkpoint.rng import generator_states, load_generator_states, load_rng_state, rng_state

__all__ = [
    "FORMAT",
    "VERSION",
    "callback_keys",
    "checkpoint_state",
    "library_version",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "restore",
]

FORMAT = "torchsystem-trainer"
VERSION = 1
_SECTIONS = ("aggregate", "loop", "callbacks", "strategy", "rng")


@functools.cache  # read once per process, not at every save (it scans the installed distributions)
def library_version() -> str:
    """The installed torchsystem-trainer version, as checkpoints record it (``"0+unknown"`` when not installed)."""
    try:
        return metadata.version("torchsystem-trainer")
    except metadata.PackageNotFoundError:
        return "0+unknown"


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
        "library_version": library_version(),
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
        path: the file: a complete checkpoint, or a weights-only one (see the module docstring).

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
            f"than this library's {VERSION} (library {library_version()}); upgrade torchsystem-trainer to read it"
        )
    absent = [section for section in _SECTIONS[:1] if section not in state]
    if not state.get("weights_only"):
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
            version, weights-only, or does not match the aggregate, the metrics or a callback; naming the file.

    Warns:
        UserWarning: for another aggregate identity, another number of processes (the data order changes), or a
            loader whose generators differ from the checkpoint's.
    """
    source = repr(str(path))
    state = read_checkpoint(path)
    if state.get("weights_only"):
        raise CheckpointError(
            f"{source} is a weights-only checkpoint (save_weights_only=True): it holds no optimizer, loop, callback "
            f"or random state, so it cannot resume a fit; load its weights with load_weights(aggregate, path)"
        )
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

