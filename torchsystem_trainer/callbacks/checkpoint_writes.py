"""How ``ModelCheckpoint`` writes its files: in the training thread, or staged and written in the background
(``async_save=True``); one file by rank 0, or a sharded checkpoint by every process together.

A checkpoint is a top-k file (when it ranks), ``last.ckpt`` (a hard link to it, or written again) and the deletion of
the files that left the top ``k``, in that order, so a crash at any moment leaves complete files only. In the
background the order is the same; the state is first copied into CPU memory
(:class:`~torchsystem_trainer.checkpoint.staging.Stager`), because training changes the live tensors, and at most
one write is in flight (:class:`~torchsystem_trainer.checkpoint.async_writer.AsyncWriter`): the next checkpoint
waits for it, and so does the end of the fit. A sharded checkpoint (FSDP) is written by every process together, in
the background on a process group of the writers' own, as ``torch.distributed.checkpoint.async_save`` does: the
collectives of two threads on one group would interleave.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist

from torchsystem_trainer.callbacks.checkpoint_files import link_or_write
from torchsystem_trainer.checkpoint import save_atomic, weights_state
from torchsystem_trainer.checkpoint.async_writer import AsyncWriter
from torchsystem_trainer.checkpoint.sharded import copy_sharded, save_sharded, sharded_checkpoint_state
from torchsystem_trainer.checkpoint.staging import Stager

__all__ = ["BackgroundWrites", "remove_checkpoint", "write_collectively", "write_files"]


def write_files(
    state: dict[str, Any], path: str | None, last: Path | None, evicted: list[str], written: dict[str, bool]
) -> None:
    """Write the top-k file (when ``path``), then ``last`` (when given), then delete the ``evicted`` files.

    Args:
        state: the checkpoint (live, in the training thread; a staged copy in the background).
        path: the top-k file, or ``None`` when this checkpoint does not rank.
        last: ``last.ckpt``, or ``None`` without ``save_last``.
        evicted: the files that left the top ``k``.
        written: set to ``{"top_k": True}`` once the top-k file is complete (the caller's undo reads it).

    Raises:
        OSError: when a file cannot be written; what was complete before stays.
    """
    if path is not None:
        save_atomic(state, path)
    written["top_k"] = True
    try:
        if last is not None:
            link_or_write(Path(path) if path is not None else None, last, state)
    finally:
        for old in evicted:
            if old != path:
                remove_checkpoint(Path(old))


def write_collectively(
    trainer: Any, aggregate: Any, path: str | None, last: Path | None, weights_only: bool
) -> None:
    """Write the checkpoint at ``path`` (if any) and ``last`` (if any), every process together: a sharded folder each
    process writes its shard of, ``last`` a linked copy made by rank 0; or with ``weights_only`` the weights gathered
    to rank 0, which writes the files.

    Raises:
        OSError: when a file cannot be written; what was complete before stays.
    """
    zero = trainer.is_global_zero
    if weights_only:
        modules = trainer.strategy.aggregate_state(aggregate)["modules"]  # a collective: every process
        state = weights_state(aggregate, trainer.callbacks, modules=modules)
        if zero:
            if path is not None:
                save_atomic(state, path)
            if last is not None:
                link_or_write(Path(path) if path is not None else None, last, state)
        trainer.strategy.barrier("checkpoint written")
        return
    sharded = sharded_checkpoint_state(trainer, aggregate)
    if path is not None:
        save_sharded(sharded, path)
    if last is not None:
        if path is None:
            save_sharded(sharded, last)
        else:
            if zero:
                copy_sharded(path, last)
            trainer.strategy.barrier("last checkpoint linked")


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file or a sharded checkpoint's folder (gone already: nothing to do)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class BackgroundWrites:
    """The background writer of one fit (see the module docstring): built when the fit starts, closed when it ends.

    Args:
        sharded: the fit writes sharded checkpoints (every process writes).
        timeout: how long the writers' collectives wait for the other processes (the strategy's ``timeout``).
    """

    def __init__(self, sharded: bool, timeout: Any = None) -> None:
        self._writer = AsyncWriter()
        self._stager = Stager()
        self._group: Any = None
        if sharded and dist.is_available() and dist.is_initialized():  # every process builds it, in order
            self._group = dist.new_group(backend="gloo", timeout=timeout)

    def wait(self) -> None:
        """Wait for the write in flight, if any.

        Raises:
            CheckpointError: when it failed, naming the file (once).
        """
        self._writer.wait()

    def close(self) -> None:
        """Release the staging buffers and the writers' process group (after :meth:`wait`)."""
        self._stager.clear()
        if self._group is not None:
            dist.destroy_process_group(self._group)
        self._group = None

    def files(
        self,
        state: dict[str, Any],
        path: str | None,
        last: Path | None,
        evicted: list[str],
        written: dict[str, bool],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Copy ``state`` into CPU memory (the training loop's pause) and write it as :func:`write_files` does, in
        the background. Call :meth:`wait` first: the copy reuses the buffers the previous write was reading.

        Args:
            on_error: called in the thread that waits, with the write's exception, before it is raised.
        """
        staged = self._stager.stage(state)
        self._writer.submit(path or str(last), lambda: write_files(staged, path, last, evicted, written), on_error)

    def sharded(
        self,
        trainer: Any,
        aggregate: Any,
        path: str | None,
        last: Path | None,
        evicted: list[str],
        written: dict[str, bool],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Copy this process's part of a sharded checkpoint into CPU memory (``DTensor`` shards by DCP's stager) and
        write it in the background, every process together: the folder at ``path``, ``last`` linked by rank 0, then
        rank 0 deletes what left the top ``k``. Every process calls it; call :meth:`wait` first."""
        staged = self._stager.stage_sharded(sharded_checkpoint_state(trainer, aggregate))
        zero, group = trainer.is_global_zero, self._group

        def write() -> None:
            if path is not None:
                save_sharded(staged, path, process_group=group)
            written["top_k"] = True
            if last is not None:
                if path is None:
                    save_sharded(staged, last, process_group=group)
                else:
                    if zero:
                        copy_sharded(path, last)
                    if group is not None:
                        dist.barrier(group=group)
            if zero:
                for old in evicted:
                    if old != path:
                        remove_checkpoint(Path(old))

        self._writer.submit(path or str(last), write, on_error)
