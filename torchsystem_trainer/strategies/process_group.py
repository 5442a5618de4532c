"""The default process group's life, for :class:`~torchsystem_trainer.strategies.ddp.DDPStrategy`: joined, owned,
destroyed.

A group joined from a launcher's environment (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) lives until the process exits, or until a launch fails: creating a group again on torchrun's store
would read the previous group's rendezvous keys (stale peer addresses: measured, "connection refused"). A group
joined with a given store (the strategy's own launcher, or a one-process run) is destroyed by whoever joined it.

Also, at import: ``lightning_utilities``' ``rank_zero_only.rank`` from ``RANK`` (0 without it), which that library
leaves unset, so that its rank-zero helpers work before a group exists.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_only

from torchsystem_trainer.strategies.collectives import group_initialized

__all__ = ["destroy_group", "destroy_launcher_group", "join_group"]

if getattr(rank_zero_only, "rank", None) is None:
    _environ_rank = os.environ.get("RANK", "0")
    rank_zero_only.rank = int(_environ_rank) if _environ_rank.isdigit() else 0  # type: ignore[attr-defined]

_LAUNCHER_GROUP = {"created": False, "registered": False}  # a group joined from a launcher's variables


def join_group(
    backend: str,
    timeout: timedelta,
    device: torch.device,
    store: dist.Store | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> None:
    """``torch.distributed.init_process_group`` on this process's ``device``, then ``rank_zero_only.rank``.

    On CUDA the device is pinned first (``torch.cuda.set_device``) and NCCL forms its communicator at once
    (``device_id``), so a broken setup fails here rather than at the first collective.

    Args:
        backend: ``"gloo"``, ``"nccl"``...
        timeout: how long a collective may wait for the other processes.
        device: this process's device (``cpu`` or ``cuda:N``).
        store: the rendezvous store, with ``rank`` and ``world_size``; ``None``: the ``env://`` rendezvous of a
            launcher's environment variables, and the group then lives until the process exits (see the module).
        rank: this process's global rank (``None``: the launcher's ``RANK``; required with ``store``).
        world_size: the number of processes (``None``: the launcher's ``WORLD_SIZE``; required with ``store``).

    Raises:
        ValueError: (from ``torch.distributed``) without ``store`` when the launcher variables are missing.
        RuntimeError: (from ``torch.distributed``) when a group is initialised already, or the rendezvous fails.
    """
    options: dict[str, Any] = {"backend": backend, "timeout": timeout}
    if store is None:
        options["init_method"] = "env://"
    else:
        options["store"] = store
    if rank is not None:
        options["rank"] = rank
    if world_size is not None:
        options["world_size"] = world_size
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if backend == "nccl":
            options["device_id"] = device
    dist.init_process_group(**options)
    if store is None:
        if not _LAUNCHER_GROUP["registered"]:
            atexit.register(destroy_launcher_group)
        _LAUNCHER_GROUP.update(created=True, registered=True)
    rank_zero_only.rank = dist.get_rank()  # type: ignore[attr-defined]


def destroy_group() -> None:
    """Destroy the default process group, if one is initialised (the peers' pending collectives then fail)."""
    if group_initialized():
        dist.destroy_process_group()
    _LAUNCHER_GROUP["created"] = False


def destroy_launcher_group() -> None:
    """Destroy the default group if it is the launcher's (at exit, or when a launch fails); else do nothing."""
    if _LAUNCHER_GROUP["created"]:
        destroy_group()
