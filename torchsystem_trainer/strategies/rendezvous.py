"""Joining a process group on ``torchrun``'s own store, in a key space no earlier attempt has used.

The problem: ``torchrun``'s elastic agent hosts one TCP store for the whole job (``TORCHELASTIC_USE_AGENT_STORE=True``,
reached at ``MASTER_ADDR:MASTER_PORT``, the default of the c10d rendezvous since torch 2.4) and keeps it across
restarts. ``init_process_group("env://")`` writes every rank's gloo (or NCCL) rendezvous keys into it without a prefix,
so the ranks of a restarted attempt can read the addresses of the attempt that died: measured on torch 2.13, a
restart under ``torchrun --max-restarts=1`` failed about half the time with gloo's "connectFullMesh failed ...
Connection refused", or hung in ``init_process_group`` (PyTorch's issue #135712 traces the same to the shared store).

A prefix named after ``TORCHELASTIC_RESTART_COUNT`` (what ``torch_xla`` does) fixes one machine, but the count is each
agent's own: an agent that restarts for a membership change does not count it, and an agent started again on a node
that died starts from 0, so two nodes can disagree and never meet. The key space here is chosen by global rank 0 of
the attempt and confirmed to every other rank in a way a stale key cannot fake:

1. rank 0 draws a random name ``N`` and publishes it under ``current``;
2. every other rank reads ``current``, writes a token of its own (random, drawn for this join) under ``N/ack/<rank>``
   and waits for ``N/go``; when ``current`` changes meanwhile, it acknowledges the new name instead;
3. rank 0 waits for every acknowledgement, then writes ``N/go``: the list of the tokens it received. A rank accepts
   ``N`` only when its own token is in that list, so a name left by a dead attempt (whose ``go``, if any, lists old
   tokens) is never accepted, and no key under a fresh ``N`` can be stale.

The process group then lives in ``PrefixStore("torchsystem_trainer/join/<N>/", agent store)``. Torchtitan and Lightning
rely on ``init_process_group("env://")`` and inherit the problem; torch's own fix (a new store per restart, PyTorch
#135957) is not in the releases this library supports.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta

import torch.distributed as dist

__all__ = ["JOIN_PREFIX", "agent_store_in_use", "agree_on_namespace", "attempt_store"]

JOIN_PREFIX = "torchsystem_trainer/join"
"""The keys this module writes in the agent's store start with this."""
_POLL_S = 0.02


def agent_store_in_use(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``torchrun``'s agent hosts the store at ``MASTER_ADDR:MASTER_PORT`` for the workers
    (``TORCHELASTIC_USE_AGENT_STORE=True``, set by the agent: see ``torch.distributed.run``'s documentation)."""
    env = os.environ if environ is None else environ
    return env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def attempt_store(
    host: str, port: int, rank: int, world_size: int, timeout: timedelta
) -> tuple[dist.Store, dist.Store, str]:
    """Connect to the agent's store and agree with the other ranks on a key space of this attempt's own.

    Args:
        host, port: the agent's store (``MASTER_ADDR``, ``MASTER_PORT``).
        rank: this process's global rank.
        world_size: the number of processes of the attempt.
        timeout: how long to wait for the store and for the other ranks.

    Returns:
        ``(store for init_process_group, the agent's store, the key space's name)``.

    Raises:
        RuntimeError: (from ``torch.distributed``) when the store cannot be reached.
        TimeoutError: when the other ranks do not all join within ``timeout``, naming the missing ranks.
    """
    agent = dist.TCPStore(host, port, None, False, timeout=timeout)
    label = f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    name = agree_on_namespace(agent, rank, world_size, timeout, label)
    return dist.PrefixStore(f"{JOIN_PREFIX}/{name}/", agent), agent, name


def agree_on_namespace(store: dist.Store, rank: int, world_size: int, timeout: timedelta, label: str = "") -> str:
    """The name every rank of this join agrees on (the protocol of the module docstring).

    Every rank of the group calls it once per join, at about the same time.

    Args:
        store: a store every rank reaches (it may hold the keys of earlier joins).
        rank: this process's rank in the group.
        world_size: the number of ranks.
        timeout: how long to wait for the others.
        label: readable text put at the start of the name (the attempt), for whoever reads the store.

    Returns:
        The name: fresh, the same on every rank.

    Raises:
        TimeoutError: when the others do not all join within ``timeout``: rank 0 names the ranks that never
            acknowledged, another rank says what it last saw.
    """
    deadline = time.monotonic() + timeout.total_seconds()
    token = uuid.uuid4().hex
    current = f"{JOIN_PREFIX}/current"
    if rank == 0:
        fresh = f"{label}-{token}" if label else token
        store.set(current, fresh)
        acks = [f"{JOIN_PREFIX}/{fresh}/ack/{other}" for other in range(1, world_size)]
        tokens = [token]
        if acks:
            _wait_for(store, acks, deadline, lambda missing: _missing_ranks(missing, world_size, timeout))
            tokens += [value.decode() for value in store.multi_get(acks)]
        store.set(f"{JOIN_PREFIX}/{fresh}/go", ",".join(tokens))
        return fresh
    name: str | None = None
    while time.monotonic() < deadline:
        if not store.check([current]):
            time.sleep(_POLL_S)
            continue
        seen = store.get(current).decode()
        if seen != name:  # a new name: acknowledge it (an old one's ack is harmless garbage)
            name = seen
            store.set(f"{JOIN_PREFIX}/{name}/ack/{rank}", token)
        go = f"{JOIN_PREFIX}/{name}/go"
        if store.check([go]) and token in store.get(go).decode().split(","):
            return name
        time.sleep(_POLL_S)
    raise TimeoutError(
        f"rank {rank} of {world_size}: global rank 0 did not confirm a process group to join within "
        f"{timeout.total_seconds():g} s (last name seen in the agent's store: {name!r}); is rank 0 running?"
    )


def _wait_for(store: dist.Store, keys: list[str], deadline: float, message: Callable[[list[str]], str]) -> None:
    while not store.check(keys):
        if time.monotonic() >= deadline:
            missing = [key for key in keys if not store.check([key])]
            raise TimeoutError(message(missing))
        time.sleep(_POLL_S)


def _missing_ranks(missing: list[str], world_size: int, timeout: timedelta) -> str:
    ranks = [int(key.rsplit("/", 1)[1]) for key in missing]
    return (
        f"rank 0 of {world_size}: ranks {ranks} did not join the process group within {timeout.total_seconds():g} s "
        "(they did not start, or crashed before joining)"
    )
