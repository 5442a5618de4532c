"""The default process group's life, for :class:`~torchsystem_trainer.strategies.ddp.DDPStrategy`: joined, owned,
destroyed.

A group joined from a launcher's environment (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) lives until the process exits, or until a launch fails. Under ``torchrun``'s agent store
(``TORCHELASTIC_USE_AGENT_STORE=True``) it is joined in a key space of its own
(:mod:`~torchsystem_trainer.strategies.rendezvous`): the agent's store outlives restarts and holds the rendezvous keys
of the attempts before, whose stale peer addresses made restarts fail ("connection refused"). A group joined with a
given store (the strategy's own launcher, or a one-process run) is destroyed by whoever joined it.

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
from torchsystem_trainer.strategies.environment import ProcessEnvironment
from torchsystem_trainer.strategies.rendezvous import JOIN_PREFIX, agent_store_in_use, agree_on_namespace, attempt_store

__all__ = ["destroy_group", "destroy_launcher_group", "join_group", "side_store"]

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
) -> tuple[dist.Store | None, str | None]:
    """``torch.distributed.init_process_group`` on this process's ``device``, then ``rank_zero_only.rank``.

    On CUDA the device is pinned first (``torch.cuda.set_device``) and NCCL forms its communicator at once
    (``device_id``), so a broken setup fails here rather than at the first collective. Under ``torchrun``'s agent
    store the group is joined in a key space of this attempt's own (see the module docstring).

    Args:
        backend: ``"gloo"``, ``"nccl"``...
        timeout: how long a collective may wait for the other processes.
        device: this process's device (``cpu`` or ``cuda:N``).
        store: the rendezvous store, with ``rank`` and ``world_size``; ``None``: the ``env://`` rendezvous of a
            launcher's environment variables, and the group then lives until the process exits (see the module).
        rank: this process's global rank (``None``: the launcher's ``RANK``; required with ``store``).
        world_size: the number of processes (``None``: the launcher's ``WORLD_SIZE``; required with ``store``).

    Returns:
        ``(a store every rank of the group reaches, the group's key space in it)`` for :func:`side_store`: the given
        store and ``None``, the agent's store and the name agreed on, or ``(None, None)`` under ``env://``.

    Raises:
        ValueError: (from ``torch.distributed``) without ``store`` when the launcher variables are missing.
        RuntimeError: (from ``torch.distributed``) when a group is initialised already, or the rendezvous fails.
        TimeoutError: under the agent's store, when the other ranks do not join within ``timeout``.
    """
    options: dict[str, Any] = {"backend": backend, "timeout": timeout}
    shared: tuple[dist.Store | None, str | None] = (store, None)
    environment = ProcessEnvironment.from_environ() if store is None else None
    if environment is not None and agent_store_in_use():
        rank = environment.global_rank if rank is None else rank
        world_size = environment.world_size if world_size is None else world_size
        group_store, agent, name = attempt_store(
            environment.master_addr, environment.master_port, rank, world_size, timeout
        )
        options["store"] = group_store
        shared = (agent, name)
    elif store is None:
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
    return shared


def side_store(shared: tuple[dist.Store | None, str | None], timeout: timedelta) -> dist.Store:
    """A key space of this group's own in a store every rank reaches, for side channels that must work when the
    collectives do not (the collective watchdog's heartbeats). Call it on every rank, after :func:`join_group`.

    Args:
        shared: what :func:`join_group` returned.
        timeout: how long to wait for the store and the other ranks.

    Returns:
        A ``PrefixStore``: under the agent's store, the group's own key space; otherwise one agreed on now in the
        given store, or (under ``env://``) in a client of the store at ``MASTER_ADDR:MASTER_PORT``.

    Raises:
        RuntimeError: outside a process group, or when the store cannot be reached.
        TimeoutError: when the other ranks do not agree on a key space within ``timeout``.
    """
    base, name = shared
    if name is not None and base is not None:
        return dist.PrefixStore(f"{JOIN_PREFIX}/{name}/side/", base)
    if not group_initialized():
        raise RuntimeError("side_store: no process group")
    if base is None:
        environment = ProcessEnvironment.from_environ()
        if environment is None:
            raise RuntimeError("side_store: no store given and no launcher environment (MASTER_ADDR, MASTER_PORT)")
        base = dist.TCPStore(environment.master_addr, environment.master_port, None, False, timeout=timeout)
    name = agree_on_namespace(base, dist.get_rank(), dist.get_world_size(), timeout, "side")
    return dist.PrefixStore(f"{JOIN_PREFIX}/{name}/side/", base)


def destroy_group() -> None:
    """Destroy the default process group, if one is initialised (the peers' pending collectives then fail)."""
    if group_initialized():
        dist.destroy_process_group()
    _LAUNCHER_GROUP["created"] = False


def destroy_launcher_group() -> None:
    """Destroy the default group if it is the launcher's (at exit, or when a launch fails); else do nothing."""
    if _LAUNCHER_GROUP["created"]:
        destroy_group()
