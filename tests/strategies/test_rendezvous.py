"""The key space a process group is joined in on torchrun's agent store (strategies/rendezvous.py): fresh at every
join, the same for every rank, never a name a dead attempt left behind, whatever label (restart count) each rank has.

The ranks are threads sharing one TCP store (as workers share the agent's); the waits are events in the store.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist

from torchsystem_trainer.strategies.rendezvous import JOIN_PREFIX, agent_store_in_use, agree_on_namespace

TIMEOUT = timedelta(seconds=30)


@pytest.fixture
def store():
    return dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)


def client(store: dist.TCPStore) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", store.port, None, False, timeout=TIMEOUT)


def join(store: dist.TCPStore, rank: int, world_size: int, results: dict[int, Any], label: str = "",
         timeout: timedelta = TIMEOUT) -> threading.Thread:
    def run() -> None:
        try:
            results[rank] = agree_on_namespace(client(store), rank, world_size, timeout, label)
        except Exception as error:
            results[rank] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_until(predicate: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_every_join_gets_a_fresh_name_that_every_rank_agrees_on(store):
    names = []
    for _ in range(2):
        results: dict[int, Any] = {}
        threads = [join(store, rank, 3, results, label="attempt0") for rank in (2, 1, 0)]
        for thread in threads:
            thread.join(60)
        assert results[0] == results[1] == results[2] and results[0].startswith("attempt0-")
        names.append(results[0])
    assert names[0] != names[1]


def test_a_rank_never_accepts_a_name_of_a_dead_attempt(store):
    # attempt 0 completed (its "go" lists its tokens), then attempt 1's rank 0 died after publishing its name
    first: dict[int, Any] = {}
    for thread in [join(store, rank, 2, first) for rank in (1, 0)]:
        thread.join(60)
    dead = "attempt1-dead"
    store.set(f"{JOIN_PREFIX}/current", dead)
    # attempt 2: rank 1 starts first, reads the dead name and acknowledges it; rank 0 comes later
    results: dict[int, Any] = {}
    late = join(store, 1, 2, results, label="attempt0")  # its agent was restarted: another restart count
    wait_until(lambda: store.check([f"{JOIN_PREFIX}/{dead}/ack/1"]))
    join(store, 0, 2, results, label="attempt2").join(60)
    late.join(60)
    assert results[0] == results[1] and results[0].startswith("attempt2-")
    assert results[0] not in (first[0], dead)


def test_a_stale_go_is_not_accepted_and_the_wait_is_bounded(store):
    first: dict[int, Any] = {}
    for thread in [join(store, rank, 2, first) for rank in (1, 0)]:
        thread.join(60)
    # "current" still names attempt 0, whose "go" exists: a rank of a new attempt must not take it
    results: dict[int, Any] = {}
    join(store, 1, 2, results, timeout=timedelta(seconds=0.5)).join(60)
    assert isinstance(results[1], TimeoutError) and "rank 1 of 2" in str(results[1])


def test_rank_zero_names_the_ranks_that_never_joined(store):
    results: dict[int, Any] = {}
    threads = [join(store, rank, 3, results, timeout=timedelta(seconds=0.5)) for rank in (0, 1)]
    for thread in threads:
        thread.join(60)
    assert isinstance(results[0], TimeoutError) and "ranks [2] did not join" in str(results[0])


def test_the_agent_store_is_recognised_from_torchruns_variable():
    assert agent_store_in_use({"TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert not agent_store_in_use({"TORCHELASTIC_USE_AGENT_STORE": "False"})
    assert not agent_store_in_use({})
