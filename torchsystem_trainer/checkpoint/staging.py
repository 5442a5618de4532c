"""A checkpoint's state copied into CPU memory of its own, so that a background thread can write it while training
changes the live tensors: the "staging" step of an asynchronous checkpoint (``torch.distributed.checkpoint``'s
``async_save`` stages the same way before its background write).

The copy is the only time the training loop pays for an asynchronous checkpoint, so it is made as cheap as a copy
can be: the buffers of the previous copy are reused when the tensors' shapes and dtypes have not changed (a fresh
allocation of hundreds of megabytes costs as much again in page faults as the copy itself), tensors on a GPU are
copied into pinned memory without blocking and synchronised once at the end, and a tensor that appears twice (tied
weights) is copied once.

A sharded checkpoint (:class:`~torchsystem_trainer.checkpoint.sharded.ShardedCheckpoint`, FSDP's) is staged the same
way, its ``DTensor`` shards by ``torch.distributed.checkpoint``'s own stager (``DefaultStager``, the one its
``async_save`` uses: it keeps each ``DTensor``'s placement and caches its buffers between checkpoints too).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torchsystem_trainer.checkpoint.sharded import ShardedCheckpoint

__all__ = ["Stager"]


class Stager:
    """Copies every tensor of a state (any nesting of dicts, lists and tuples) into CPU memory that it owns.

    A copy stays valid until the next :meth:`stage`, which reuses its buffers: stage again only once the previous
    copy has been written.

    Args:
        reuse: keep the buffers between copies (default); ``False`` allocates new ones every time.

    Attributes:
        staged_bytes: the bytes of tensor data the last :meth:`stage` copied.
    """

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self.staged_bytes = 0
        self._buffers: dict[tuple[Any, ...], Tensor] = {}
        self._shard_stager: Any = None  # torch.distributed.checkpoint's DefaultStager, built at the first use

    def stage(self, state: Any) -> Any:
        """A copy of ``state`` whose tensors are in CPU memory of this stager's own.

        Args:
            state: tensors, numbers, strings, ``None``, and dicts, lists and tuples of those (what a checkpoint holds).

        Returns:
            The same structure (new containers); tensors copied (same shape, dtype, values; contiguous; on the CPU,
            ``requires_grad=False``), everything else as it is (immutable plain values).
        """
        self.staged_bytes = 0
        seen: dict[int, Tensor] = {}
        asynchronous = [False]
        copy = self._copy(state, (), seen, asynchronous)
        if asynchronous[0]:
            torch.cuda.synchronize()  # the non-blocking device-to-host copies have landed
        if not self.reuse:
            self._buffers = {}
        return copy

    def stage_sharded(self, state: ShardedCheckpoint) -> ShardedCheckpoint:
        """A copy of one process's part of a sharded checkpoint in CPU memory: its plain part as :meth:`stage`
        copies a state, its ``DTensor`` shards by ``torch.distributed.checkpoint``'s ``DefaultStager`` (synchronous
        staging; pinned memory and non-blocking copies where there is an accelerator).

        Returns:
            A :class:`ShardedCheckpoint` of copies (valid until the next staging).
        """
        if self._shard_stager is None:
            from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

            accelerated = torch.cuda.is_available()
            options = StagingOptions(
                use_pinned_memory=accelerated,
                use_shared_memory=False,
                use_async_staging=False,
                use_non_blocking_copy=accelerated,
            )
            self._shard_stager = DefaultStager(options)
        plain = self.stage(state.plain)
        shards = self._shard_stager.stage(state.shards)
        self.staged_bytes += sum(_local_bytes(tensor) for tensor in shards.values())
        return ShardedCheckpoint(plain, shards, state.rank, state.world_size)

    def clear(self) -> None:
        """Release the buffers."""
        self._buffers = {}
        if self._shard_stager is not None:
            self._shard_stager.close()
        self._shard_stager = None

    def _copy(self, value: Any, path: tuple[Any, ...], seen: dict[int, Tensor], asynchronous: list[bool]) -> Any:
        if isinstance(value, Tensor):
            return self._copy_tensor(value, path, seen, asynchronous)
        if isinstance(value, dict):
            return type(value)((key, self._copy(item, (*path, key), seen, asynchronous)) for key, item in value.items())
        if isinstance(value, list):
            return [self._copy(item, (*path, index), seen, asynchronous) for index, item in enumerate(value)]
        if isinstance(value, tuple) and not isinstance(value, torch.Size):
            items = [self._copy(item, (*path, index), seen, asynchronous) for index, item in enumerate(value)]
            return tuple(items) if type(value) is tuple else type(value)(*items)  # a named tuple: by position
        return value

    def _copy_tensor(
        self, tensor: Tensor, path: tuple[Any, ...], seen: dict[int, Tensor], asynchronous: list[bool]
    ) -> Tensor:
        done = seen.get(id(tensor))
        if done is not None:
            return done
        source = tensor.detach()
        if source.layout != torch.strided or source.is_quantized or source.is_nested:
            copy = source.to("cpu", copy=True)  # rare layouts: a plain copy, no buffer reuse
        else:
            pinned = source.is_cuda and torch.cuda.is_available()
            buffer = self._buffers.get(path)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                buffer = torch.empty(source.shape, dtype=source.dtype, device="cpu", pin_memory=pinned)
                self._buffers[path] = buffer
            buffer.copy_(source, non_blocking=pinned)
            asynchronous[0] = asynchronous[0] or pinned
            copy = buffer
        seen[id(tensor)] = copy
        self.staged_bytes += copy.numel() * copy.element_size()
        return copy


def _local_bytes(tensor: Tensor) -> int:
    """The bytes this process holds of ``tensor`` (a ``DTensor``'s local shard, else the tensor)."""
    to_local = getattr(tensor, "to_local", None)
    local: Tensor = to_local() if callable(to_local) else tensor
    return int(local.numel() * local.element_size())
