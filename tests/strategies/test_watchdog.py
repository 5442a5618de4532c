"""The collective watchdog (strategies/watchdog.py), in one process: two ranks' watchdogs sharing a store. A rank that
waits in a collective past ``warn_after`` is reported once per stall, naming itself, the collective, the time, where
its main thread is and what the other rank was last seen doing; a rank that never answers is named as silent.
Runs of several processes (torchrun) are in test_elastic.py."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import pytest
import torch.distributed as dist

from torchsystem_trainer.strategies import DDPStrategy
from torchsystem_trainer.strategies.watchdog import CollectiveWatchdog


@pytest.fixture
def store():
    return dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False, timeout=timedelta(seconds=30))


def wait_until(predicate: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_rank_waiting_in_a_collective_is_reported_once_with_the_others_state(store, caplog):
    waiting, working = (CollectiveWatchdog(store, rank, 2, warn_after=1.0, interval=0.05) for rank in (0, 1))
    caplog.set_level(logging.WARNING, logger="torchsystem_trainer.strategies.watchdog")
    working.start()
    waiting.start()
    try:
        working.enter("all_reduce(sum)")
        working.leave()  # rank 1 finished its collective and moves on
        waiting.enter("all_reduce(max)")  # rank 0 waits in the next one
        wait_until(lambda: waiting.reports == 1 and working.reports_of(0) == 1)
    finally:  # stopped still in the collective: a leave() first could, on a loaded machine, be a second stall
        waiting.stop()
        working.stop()
    reports = [record.getMessage() for record in caplog.records if record.getMessage().startswith("rank 0")]
    assert len(reports) == 1  # once per stall
    report = reports[0]
    assert "rank 0 of 2 has waited" in report and "in all_reduce(max) (collective #1)" in report
    assert "test_watchdog.py" in report  # where the main thread was: this test, inside wait_until
    assert "rank 1: 1 collectives finished" in report and "every other rank was still answering" in report


def test_a_rank_that_never_answers_is_named_silent(store):
    alone = CollectiveWatchdog(store, 0, 3, warn_after=10.0, interval=0.05)
    alone.start()
    try:
        wait_until(lambda: alone.peers()[1].silent_s > 2 * alone.interval + 1.0)
    finally:
        alone.stop()
    assert alone.silent_peers() == [1, 2]
    assert "ranks [1, 2] had stopped answering" in alone.describe() and "rank 2: never heard from" in alone.describe()


def test_the_warning_threshold_is_checked():
    assert DDPStrategy(timeout=100).collective_warning == 50.0
    assert DDPStrategy().collective_warning == 300.0  # min(300 s, half of the 30 minutes)
    assert DDPStrategy(collective_warning=None).collective_warning is None
    with pytest.raises(ValueError, match="collective_warning=0"):
        DDPStrategy(collective_warning=0)
    with pytest.raises(ValueError, match="warn_after"):
        CollectiveWatchdog(dist.HashStore(), 0, 2, warn_after=-1)
