"""Run a function in several processes, each one rank of a gloo process group, and return what each rank did
(torchtnt's ``spawn_multi_process`` idea).

The processes get the environment ``torchrun`` gives its workers (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``...), so code under test takes its "launched by torchrun" path. As torchrun's agent
does, this process hosts the rendezvous store on a port the OS picks (``TORCHELASTIC_USE_AGENT_STORE``): no port
is guessed, and process groups can be created and destroyed repeatedly in one worker.

Processes start with ``forkserver``: the server imports torch and the library once (preloaded), then forks a clean
process per rank in milliseconds, with none of this process's threads (a plain ``fork`` of a process that used
OpenMP hangs in the child's first parallel region).
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "torchmetrics", "torchsystem_trainer", "tests.conftest"]
"""Imported once by the fork server. torch._dynamo is imported by the first optimizer a process builds (seconds)."""
multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)


@dataclass
class Outcome:
    """What one rank did: its return value, or the traceback of what it raised; and how long it ran (s)."""

    rank: int
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def run_ranks(function: Callable[..., Any], *args: Any, world_size: int = 2, timeout_s: float = 60.0) -> list[Outcome]:
    """Call ``function(rank, *args)`` in ``world_size`` processes launched like ``torchrun`` workers.

    Args:
        function: a module-level function (it is pickled to the processes).
        args: its further arguments (picklable).
        world_size: number of processes.
        timeout_s: seconds after which every process still running is killed and the test fails.

    Returns:
        One :class:`Outcome` per rank, in rank order.

    Raises:
        AssertionError: when a process is still running after ``timeout_s`` (a hang), naming the ranks.
    """
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    with tempfile.TemporaryDirectory(prefix="ranks-") as folder:
        context = mp.start_processes(
            _rank_main,
            args=(function, args, world_size, store.port, folder),
            nprocs=world_size,
            join=False,
            start_method="forkserver",
        )
        deadline = time.monotonic() + timeout_s
        for process in context.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        hung = [rank for rank, process in enumerate(context.processes) if process.is_alive()]
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
        assert not hung, f"ranks {hung} were still running after {timeout_s} s"
        outcomes = []
        for rank, process in enumerate(context.processes):
            path = Path(folder) / f"rank-{rank}.pt"
            if path.exists():
                outcomes.append(torch.load(path, weights_only=False))
            else:
                outcomes.append(Outcome(rank, error=f"exited with code {process.exitcode} and no outcome"))
    return outcomes


def values(outcomes: list[Outcome]) -> list[Any]:
    """The return value of every rank.

    Raises:
        AssertionError: when a rank raised, with its traceback.
    """
    failed = [f"rank {o.rank}:\n{o.error}" for o in outcomes if o.error is not None]
    assert not failed, "\n".join(failed)
    return [o.value for o in outcomes]


def _rank_main(rank: int, function: Callable[..., Any], args: tuple[Any, ...], world_size: int, port: int, folder: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",
        TORCHELASTIC_RESTART_COUNT="0",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    start = time.monotonic()
    try:
        outcome = Outcome(rank, value=function(rank, *args))
    except BaseException:
        outcome = Outcome(rank, error=traceback.format_exc())
    outcome.seconds = time.monotonic() - start
    torch.save(outcome, Path(folder) / f"rank-{rank}.pt")
