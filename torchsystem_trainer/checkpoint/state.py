"""What a checkpoint holds, and how it is put back: everything needed to continue a fit as if nothing happened.

A checkpoint is a dict of plain data (it loads with ``weights_only=True``; :func:`checkpoint_state` checks that
before anything is written), one section per owner of state, each asked through its public interface::

    {"format": "torchsystem-trainer", "version": 1, "library_version": "0.1.0",
     "aggregate": aggregate_state(aggregate),   # {"modules", "optimizers", "schedulers", "epoch", "id"}
     "loop": trainer.loop.state_dict(),         # the Trainer's LoopState, see below
     "callbacks": {key: callback.state_dict()}, # every callback with state_dict/load_state_dict, by callback_keys
     "strategy": trainer.strategy.state_dict(), # the precision scaler's
     "rng": rng_state()}                        # the global generators (Python, NumPy, torch, CUDA)

    loop = {"progress": {"epoch", "batch", "step", "global_step"},   # batch: consumed in the current epoch
            "world_size": int,                                      # processes of the run that wrote it
            "global_rank": int,                                     # the process that wrote it
            "should_stop": bool,                                    # the fit had decided to stop
            "train": {"epoch_start": {"rng", "generators"} | None,  # see checkpoint.resume
                      "generators": [uint8 tensor], "rng": RNGState | None, "persistent": bool},
            "train_results": PhaseResults.state_dict() | None,      # the current epoch's, when batch > 0 (with the
                                                                    # partial reductions of logged values)
            "generators": {phase: [uint8 tensor]},                  # other loaders' torch.Generator states
            "sampler_seeds": {phase: int},                          # DistributedSampler seeds
            "validated_step": int | None,                           # the latest mid-epoch validation's step
            "callback_metrics": {key: float}}                       # trainer.callback_metrics

A weights-only checkpoint (``ModelCheckpoint(save_weights_only=True)``, ``trainer.save_checkpoint(path,
weights_only=True)``, :func:`~torchsystem_trainer.checkpoint.weights_state`) has ``"weights_only": True``, the
``aggregate`` section without optimizers and schedulers, and of ``callbacks`` only the averaged weights of
``EMA``/``StochasticWeightAveraging``; it loads into a model (``load_weights``, ``load_model``, ``validate``/``test``
with ``ckpt_path``) but cannot resume a fit.

The sections are separable: each is one object's ``state_dict()`` (the ``Stateful`` protocol of
``torch.distributed.checkpoint``), so a sharded format can save them as such. The format does not depend on the
number of processes: a checkpoint of a data-parallel run resumes on one process and the other way round (with a
warning, as the data order then changes).

Sources of the failures this addresses: Lightning saves no random state and restarts mid-epoch checkpoints from
the epoch's start unless the loader is stateful (its issues #19764, #19815, #18780); Keras' ``BackupAndRestore``
restarts the epoch; Accelerate needs batches skipped by hand (#2016).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from torch.nn import Module

from torchsystem_trainer.checkpoint.aggregate import (
    aggregate_state,
    check_aggregate_state,
    check_plain,
    load_aggregate_state,
)
from torchsystem_trainer.checkpoint.io import CheckpointError, load_file
from torchsystem_trainer.checkpoint.rng import load_rng_state, rng_state

__all__ = [
    "FORMAT",
    "VERSION",
    "Stateful",
    "TrainerState",
    "callback_keys",
    "checkpoint_state",
    "library_version",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "restore",
    "restore_state",
]

FORMAT = "torchsystem-trainer"
VERSION = 1
_SECTIONS = ("aggregate", "loop", "callbacks", "strategy", "rng")


class Stateful(Protocol):
    """An owner of state a checkpoint holds (``torch.distributed.checkpoint.stateful.Stateful``'s protocol)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class TrainerState(Protocol):
    """What a checkpoint reads of a Trainer: its public parts (the Trainer is in a layer above this one)."""

    @property
    def loop(self) -> Stateful: ...

    @property
    def strategy(self) -> Stateful: ...

    @property
    def callbacks(self) -> Sequence[Any]: ...


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


def checkpoint_state(trainer: TrainerState, aggregate: Module) -> dict[str, Any]:
    """Everything needed to continue a fit as if nothing happened (see the module docstring).

    Call it from an event handler of a running fit (``BatchTrained``, ``Iterated``, ``FitEnded``...): the loop's
    position is the one of that moment. Reads state only; the host reads the devices' tensors when the result is
    saved.

    Args:
        trainer: the ``Trainer`` (its ``loop``, ``strategy`` and ``callbacks``).
        aggregate: the aggregate being trained.

    Returns:
        The checkpoint, plain data only.

    Raises:
        TypeError: when some state (a callback's, a scheduler's) holds a value ``weights_only`` loading would
            refuse, naming where it is (see :func:`check_plain`).
    """
    state = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": library_version(),
        "aggregate": aggregate_state(aggregate),
        "loop": trainer.loop.state_dict(),
        "callbacks": {key: callback.state_dict() for key, callback in _stateful_callbacks(trainer.callbacks)},
        "strategy": trainer.strategy.state_dict(),
        "rng": rng_state(),
    }
    check_plain(state)
    return state


def _stateful_callbacks(callbacks: Sequence[Any]) -> list[tuple[str, Any]]:
    return [
        (key, callback)
        for key, callback in zip(callback_keys(list(callbacks)), callbacks, strict=True)
        if callable(getattr(callback, "state_dict", None))
    ]


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


def restore(trainer: TrainerState, aggregate: Module, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``trainer`` and ``aggregate``.

    Everything that can be checked is checked before anything changes: the file (:func:`read_checkpoint`), the
    aggregate (:func:`check_aggregate_state`), and the loop state (its ``load_state_dict`` checks before it
    changes). Then the loop, the callbacks (a callback whose ``load_state_dict`` raises gets the earlier ones put
    back), the strategy, the aggregate and the random generators are restored. The training loop then continues at
    the checkpoint's epoch and batch (see :mod:`~torchsystem_trainer.checkpoint.resume`). Nothing on disk changes.

    Args:
        trainer: the ``Trainer``, inside ``fit`` (its loop begun with the run's loaders, its strategy set up).
        aggregate: the aggregate.
        path: the checkpoint file.

    Raises:
        FileNotFoundError: when the file does not exist.
        CheckpointError: when it is corrupt, unsafe, not a checkpoint of this library, of a newer format
            version, weights-only, or does not match the aggregate, the metrics or a callback; naming the file.

    Warns:
        UserWarning: for another aggregate identity, another number of processes (the data order changes), or a
            loader whose generators differ from the checkpoint's; naming the file.
    """
    source = repr(str(path))
    restore_state(trainer, aggregate, read_checkpoint(path), source)


def restore_state(trainer: TrainerState, aggregate: Module, state: dict[str, Any], source: str) -> None:
    """Load a checkpoint already read (what :func:`read_checkpoint` returned, or a sharded checkpoint's state with
    its shards loaded: :func:`~torchsystem_trainer.checkpoint.sharded.restore_sharded`) into ``trainer`` and
    ``aggregate``, as :func:`restore` describes.

    Args:
        trainer: the ``Trainer``, inside ``fit``.
        aggregate: the aggregate.
        state: the checkpoint.
        source: how messages name it (``"'path'"``).

    Raises:
        CheckpointError: for a weights-only checkpoint, or one that does not match the aggregate, the metrics or a
            callback, naming ``source``.

    Warns:
        UserWarning: as :func:`restore`.
    """
    if state.get("weights_only"):
        raise CheckpointError(
            f"{source} is a weights-only checkpoint (save_weights_only=True): it holds no optimizer, loop, callback "
            f"or random state, so it cannot resume a fit; load its weights with load_weights(aggregate, path)"
        )
    check_aggregate_state(aggregate, state["aggregate"], source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.loop.load_state_dict(state["loop"])
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"{source}: its loop state cannot be restored ({error!r})") from error
    for warning in caught:  # the loop does not know the file: name it
        warnings.warn(f"{source}: {warning.message}", warning.category, stacklevel=3)
    _load_callbacks(trainer, state["callbacks"], source)
    trainer.strategy.load_state_dict(state["strategy"])
    load_aggregate_state(aggregate, state["aggregate"], source)
    load_rng_state(state["rng"])


def _load_callbacks(trainer: TrainerState, saved: dict[str, Any], source: str) -> None:
    """Restore every stateful callback; if one raises, put back the ones already restored and raise."""
    done: list[tuple[Any, Any]] = []
    for key, callback in zip(callback_keys(list(trainer.callbacks)), trainer.callbacks, strict=True):
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


def resolve_checkpoint_path(trainer: TrainerState, ckpt_path: Any) -> Path | None:
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

