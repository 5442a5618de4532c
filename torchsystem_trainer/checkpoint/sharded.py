"""Sharded checkpoints: a ``torch.distributed.checkpoint`` (DCP) folder every process writes its shard of, which
loads on any number of processes (FSDP's checkpoints).

A sharded checkpoint holds what a checkpoint file holds (:mod:`~torchsystem_trainer.checkpoint.state`), split in
two. Every sharded tensor (``DTensor``: the parameters of sharded modules and their optimizer states) goes to DCP,
each process writing its shards; everything else (loop, callbacks, precision scaler, random generators, the
aggregate's epoch, identity, schedulers and unsharded tensors) is plain data each process writes to a file of its
own, in which each sharded tensor is ``None`` and listed under ``"sharded"`` with its DCP key::

    epoch=1-step=8.ckpt/                 a folder, complete once .metadata exists
        rank-0.pt, rank-1.pt, ...         each process's plain part (save_atomic; read with weights_only=True)
        __0_0.distcp, __1_0.distcp, ...   each process's shards (DCP's FileSystemWriter)
        .metadata                         DCP's index of the shards, written last, by rank 0, once every process
                                          has written its files

    rank-<r>.pt = {"format", "version", "library_version",
                   "sharded": {"world_size": int, "rank": int,
                               "shards": [[path, key, shape, dtype], ...]},   # path: the keys down to the tensor
                   "aggregate": {"modules": {name: None | tensor}, "optimizers": {...}, ...}, "loop", "callbacks",
                   "strategy", "rng"}                                         # as in a checkpoint file

A save writes into a hidden folder (``.<name>.<random>.tmp``) that rank 0 renames to the destination once DCP's
metadata is written: a process killed during a save leaves the previous checkpoint in charge (and the hidden
folder, which readers ignore); a folder without ``.metadata`` is never read. Loading reads this process's plain file
on the same number of processes (exact resume: each rank's generators, data position and partial results), else
rank 0's (the data position is converted, with a warning, as for a checkpoint file), and loads each shard into a
tensor sharded as the aggregate's parameter is now: DCP reshards, so a checkpoint of 2 processes loads on 1 or 3,
and into a model that is not sharded at all (one device, evaluation).

DCP keeps only tensors here, so nothing in the folder is unpickled as an arbitrary object but DCP's own
``.metadata``, which is checked first against the classes DCP writes there (torch reads it with ``pickle``).
"""

from __future__ import annotations

import os
import pickle
import shutil
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.nn import Module

from torchsystem_trainer.checkpoint.aggregate import aggregate_state, check_plain, optimizers_of
from torchsystem_trainer.checkpoint.io import CheckpointError, fsync_folder, save_atomic
from torchsystem_trainer.checkpoint.rng import rng_state
from torchsystem_trainer.checkpoint.state import (
    FORMAT,
    VERSION,
    TrainerState,
    callback_keys,
    library_version,
    read_checkpoint,
    restore_state,
)

__all__ = [
    "METADATA",
    "ShardedCheckpoint",
    "consolidate_checkpoint",
    "copy_sharded",
    "is_complete",
    "is_sharded_checkpoint",
    "read_consolidated",
    "read_sharded",
    "restore_sharded",
    "save_sharded",
    "sharded_checkpoint_state",
]

METADATA = ".metadata"
"""DCP's metadata file: a sharded checkpoint is complete once it exists."""

_Template = Callable[[list[Any], list[int], torch.dtype], torch.Tensor]


@dataclass(frozen=True)
class ShardedCheckpoint:
    """One process's part of a sharded checkpoint, as :func:`save_sharded` writes it.

    Attributes:
        plain: the checkpoint's plain data, every sharded tensor replaced by ``None`` (see the module docstring).
        shards: the sharded tensors by DCP key (``"aggregate/modules/nn.0.weight"``): the live ``DTensor``s, not
            copies; an asynchronous writer must copy them before training goes on.
        rank, world_size: this process's rank and the number of processes.
    """

    plain: dict[str, Any]
    shards: dict[str, torch.Tensor]
    rank: int
    world_size: int


def is_sharded_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a sharded checkpoint's folder (complete or not) rather than a checkpoint file."""
    return Path(path).is_dir()


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint file or a sharded checkpoint whose metadata is written."""
    location = Path(path)
    return location.is_file() or (location / METADATA).is_file()


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sharded_checkpoint_state(trainer: TrainerState, aggregate: Module) -> ShardedCheckpoint:
    """This process's part of a sharded checkpoint of ``trainer`` and ``aggregate``, as
    :func:`~torchsystem_trainer.checkpoint.checkpoint_state` is a checkpoint file's: the module weights through
    ``torch.distributed.checkpoint.state_dict.get_model_state_dict`` (each sharded module's parameters as its
    ``DTensor`` shards; gathered units are resharded first), the optimizers' own ``state_dict`` (whose states of
    sharded parameters are ``DTensor``s too), this process's loop, callbacks, scaler and random generators.

    Returns:
        The :class:`ShardedCheckpoint`.

    Raises:
        TypeError: when some state holds a value ``weights_only`` loading would refuse (see ``check_plain``).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    for module in aggregate.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # parameters gathered for an accumulation window: save the shards
    parts = aggregate_state(aggregate)
    parts["modules"] = get_model_state_dict(aggregate)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": library_version(),
        "aggregate": parts,
        "loop": trainer.loop.state_dict(),
        "callbacks": {
            key: callback.state_dict()
            for key, callback in zip(callback_keys(list(trainer.callbacks)), trainer.callbacks, strict=True)
            if callable(getattr(callback, "state_dict", None))
        },
        "strategy": trainer.strategy.state_dict(),
        "rng": rng_state(),
    }
    rank, world_size = _rank_and_world()
    shards: dict[str, torch.Tensor] = {}
    listed: list[list[Any]] = []
    plain = _split(state, [], shards, listed)
    plain["sharded"] = {"world_size": world_size, "rank": rank, "shards": listed}
    check_plain(plain)
    return ShardedCheckpoint(plain, shards, rank, world_size)


def _split(value: Any, path: list[Any], shards: dict[str, torch.Tensor], listed: list[list[Any]]) -> Any:
    """``value`` with every ``DTensor`` replaced by ``None``, put in ``shards`` and ``listed``."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        key = "/".join(str(part) for part in path)
        if key in shards:
            raise ValueError(f"two sharded tensors of the checkpoint have the key {key!r}")
        shards[key] = value
        listed.append([list(path), key, list(value.shape), str(value.dtype).removeprefix("torch.")])
        return None
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _split(v, [*path, k], shards, listed)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_split(v, [*path, i], shards, listed) for i, v in enumerate(value))
    return value


def save_sharded(
    state: ShardedCheckpoint, folder: str | os.PathLike[str], *, process_group: dist.ProcessGroup | None = None
) -> Path:
    """Write a sharded checkpoint to ``folder``, every process of the group together (a collective).

    Each process writes its plain file, then its shards (``torch.distributed.checkpoint.save``); rank 0 writes
    DCP's metadata last and renames the hidden folder written so far to ``folder``, replacing an older checkpoint
    of that name (the old one is renamed aside first and deleted after).

    Args:
        state: this process's :class:`ShardedCheckpoint`.
        folder: the destination (``.../epoch=1-step=8.ckpt``); its parent is created when missing.
        process_group: the group whose processes write (``None``: the default group, or no group at all with one
            process); an asynchronous writer passes a group of its own.

    Returns:
        The destination, complete on every process when this returns.

    Raises:
        OSError: when the folder cannot be written; an existing checkpoint of that name is then unchanged.
    """
    import torch.distributed.checkpoint as dcp

    destination = Path(folder).absolute()
    grouped = dist.is_available() and dist.is_initialized()
    name = [f".{destination.name}.{uuid.uuid4().hex}.tmp"]
    if state.rank == 0:
        destination.parent.mkdir(parents=True, exist_ok=True)
        (destination.parent / name[0]).mkdir()
    if grouped:
        dist.broadcast_object_list(name, src=0, group=process_group)  # every process writes into rank 0's folder
    temporary = destination.parent / name[0]
    save_atomic(state.plain, temporary / f"rank-{state.rank}.pt")
    with warnings.catch_warnings():  # DCP warns when it saves in one process: the intent without a group
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save(
            state.shards,
            storage_writer=dcp.FileSystemWriter(temporary),
            process_group=process_group,
            no_dist=not grouped,
        )  # returns on every process once rank 0 has written the metadata
    if state.rank == 0:
        _commit(temporary, destination)
    if grouped:
        dist.barrier(group=process_group)
    return destination


def _commit(temporary: Path, destination: Path) -> None:
    """Rename ``temporary`` to ``destination``, moving an existing one aside first (deleted after)."""
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.old")
        os.replace(destination, old)  # a crash from here to the next line leaves it there: see newest_checkpoint
    os.replace(temporary, destination)
    fsync_folder(destination.parent)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def copy_sharded(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Make ``destination`` a complete copy of the sharded checkpoint ``source`` (``last.ckpt`` of the newest
    checkpoint), in one process: hard links to its files (no second write of the same bytes; a copy where links
    fail) in a hidden folder, the metadata last, then renamed over ``destination``.

    Returns:
        The destination.

    Raises:
        CheckpointError: when ``source`` is not a complete sharded checkpoint.
        OSError: when the copy fails; ``destination`` is then unchanged.
    """
    origin, target = Path(source), Path(destination).absolute()
    if not (origin / METADATA).is_file():
        raise CheckpointError(f"{str(origin)!r} is not a complete sharded checkpoint (no {METADATA})")
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    temporary.mkdir()
    try:
        files = sorted(origin.iterdir(), key=lambda path: path.name == METADATA)  # the metadata last
        for path in files:
            try:
                os.link(path, temporary / path.name)
            except OSError:
                shutil.copy2(path, temporary / path.name)
        _commit(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def read_sharded(folder: str | os.PathLike[str], rank: int = 0) -> dict[str, Any]:
    """The plain part of a sharded checkpoint, written by process ``rank``: its sharded tensors are ``None``
    (listed under ``"sharded"``). Reads no shard.

    Raises:
        FileNotFoundError: when ``folder`` does not exist.
        CheckpointError: when it is incomplete (no metadata), its metadata holds objects DCP does not write, or
            its plain file is not a checkpoint of this library (see ``read_checkpoint``); naming the folder.
    """
    location = Path(folder)
    if not location.is_dir():
        raise FileNotFoundError(f"sharded checkpoint {str(location)!r} does not exist")
    if not (location / METADATA).is_file():
        raise CheckpointError(
            f"{str(location)!r} is an incomplete sharded checkpoint (no {METADATA}: its save did not finish)"
        )
    _check_metadata(location / METADATA)
    state = read_checkpoint(location / f"rank-{rank}.pt")
    sharded = state.get("sharded")
    if not isinstance(sharded, dict) or not isinstance(sharded.get("shards"), list):
        raise CheckpointError(f"{str(location)!r}: rank-{rank}.pt is not the plain part of a sharded checkpoint")
    return state


def restore_sharded(trainer: TrainerState, aggregate: Module, folder: str | os.PathLike[str]) -> None:
    """Load a sharded checkpoint into ``trainer`` and ``aggregate``, every process of the run together, as
    :func:`~torchsystem_trainer.checkpoint.restore` loads a file (everything checked before anything changes).

    Each shard is loaded into a tensor sharded as the aggregate's parameter is now (a new tensor: the aggregate
    changes only once everything is checked), so the checkpoint loads on another number of processes, or into an
    aggregate that is not sharded.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_sharded` and ``restore``.

    Warns:
        UserWarning: as ``restore``; for another number of processes each process restores rank 0's plain part.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.tensor import DTensor

    rank, world_size = _rank_and_world()
    state = read_sharded(folder, 0)
    if rank and state["sharded"]["world_size"] == world_size:
        state = read_sharded(folder, rank)
    modules = aggregate.state_dict()
    optimizers = optimizers_of(aggregate)

    def template(path: list[Any], shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        like: Any = None
        if path[:2] == ["aggregate", "modules"] and len(path) == 3:
            like = modules.get(path[2])
        elif path[:2] == ["aggregate", "optimizers"] and len(path) == 6 and path[2] in optimizers:
            params = [p for group in optimizers[path[2]].param_groups for p in group["params"]]
            like = params[path[4]] if isinstance(path[4], int) and path[4] < len(params) else None
        elif isinstance(path[-1], str):  # a copy of the weights a callback keeps (EMA, SWA, the best weights)
            like = modules.get(path[-1])
        if isinstance(like, DTensor) and list(like.shape) == shape:
            return torch.empty_like(like, dtype=dtype)  # sharded as the aggregate is now: DCP reshards
        return torch.empty(shape, dtype=dtype)

    grouped = dist.is_available() and dist.is_initialized()
    state = _load_shards(folder, state, template, lambda path: True, dcp.load, no_dist=not grouped)
    restore_state(trainer, aggregate, state, repr(str(folder)))


def _load_shards(
    folder: str | os.PathLike[str],
    state: dict[str, Any],
    template: _Template,
    wanted: Callable[[list[Any]], bool],
    load: Callable[..., Any],
    **options: Any,
) -> dict[str, Any]:
    """``state`` (a plain part) with the shards ``wanted`` loaded into ``template(path, shape, dtype)`` tensors."""
    import torch.distributed.checkpoint as dcp

    targets: dict[str, torch.Tensor] = {}
    paths: dict[tuple[Any, ...], str] = {}
    for path, key, shape, dtype in state["sharded"]["shards"]:
        if wanted(path):
            targets[key] = template(path, list(shape), getattr(torch, dtype))
            paths[tuple(path)] = key
    if targets:
        with warnings.catch_warnings():  # DCP warns when it loads in one process: the intent with no_dist
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            load(targets, storage_reader=dcp.FileSystemReader(folder), **options)
    filled = _fill(state, [], {path: targets[key] for path, key in paths.items()})
    filled.pop("sharded")
    return cast(dict[str, Any], filled)


def _fill(value: Any, path: list[Any], loaded: dict[tuple[Any, ...], torch.Tensor]) -> Any:
    if tuple(path) in loaded:
        return loaded[tuple(path)]
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _fill(v, [*path, k], loaded)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_fill(v, [*path, i], loaded) for i, v in enumerate(value))
    return value


def read_consolidated(folder: str | os.PathLike[str], *, weights_only: bool = False) -> dict[str, Any]:
    """A sharded checkpoint as one checkpoint dict of full tensors, read in this process alone (no process group
    needed, none used): what a checkpoint file of the same run would hold (``read_checkpoint``'s format, rank 0's
    plain part), or with ``weights_only`` its weights-only form (module weights, epoch, identity, and the callbacks'
    states, where ``EMA``/``StochasticWeightAveraging`` keep averaged weights; no optimizer shard is read).

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_sharded`.
    """
    import torch.distributed.checkpoint as dcp

    state = read_sharded(folder, 0)

    def wanted(path: list[Any]) -> bool:
        return not weights_only or path[:2] == ["aggregate", "modules"] or path[:1] == ["callbacks"]

    def template(path: list[Any], shape: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    full = _load_shards(folder, state, template, wanted, dcp.load, no_dist=True)
    if not weights_only:
        return full
    parts = full["aggregate"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "library_version": full["library_version"],
        "weights_only": True,
        "aggregate": {key: parts.get(key) for key in ("modules", "epoch", "id", "networks")},
        "callbacks": full["callbacks"],
    }


def consolidate_checkpoint(
    folder: str | os.PathLike[str], destination: str | os.PathLike[str], *, weights_only: bool = False
) -> Path:
    """Write a sharded checkpoint as one checkpoint file (atomically): the file a one-process run of the same
    training would have written (:func:`read_consolidated`), which ``torch.load(weights_only=True)`` reads,
    ``load_weights``/``load_model`` accept, and (unless ``weights_only``) ``fit(ckpt_path=...)`` resumes from on
    any strategy. DCP's own ``format_utils.dcp_to_torch_save`` does the same for a bare DCP folder; this one keeps
    the checkpoint's format. Runs in one process.

    Returns:
        The file written.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_sharded`.
        OSError: when the file cannot be written.
    """
    return save_atomic(read_consolidated(folder, weights_only=weights_only), destination)


# -- DCP's metadata, checked before torch unpickles it ------------------------------------------------------

_METADATA_NAMES = {
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"  # its dataclasses and enums, all of them


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only what DCP writes in ``.metadata``: its metadata classes, sizes, dtypes, layouts and paths."""

    def find_class(self, module: str, name: str) -> Any:
        if module == _METADATA_MODULE:
            import torch.distributed.checkpoint.metadata as metadata

            allowed = isinstance(getattr(metadata, name, None), type)
        elif module == "torch":
            allowed = name in _METADATA_NAMES["torch"] or isinstance(getattr(torch, name, None), torch.dtype)
        else:
            allowed = name in _METADATA_NAMES.get(module, ())
        if not allowed:
            raise pickle.UnpicklingError(f"it would build {module}.{name}")
        return super().find_class(module, name)


def _check_metadata(path: Path) -> None:
    """Refuse a ``.metadata`` that would build anything DCP does not write there, before torch unpickles it."""
    try:
        with path.open("rb") as handle:
            _MetadataUnpickler(handle).load()
    except Exception as error:
        raise CheckpointError(
            f"{str(path)!r} was refused: it is not the metadata torch.distributed.checkpoint writes ({error}). "
            "Nothing in it was run"
        ) from error
