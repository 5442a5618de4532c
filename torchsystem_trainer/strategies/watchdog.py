"""A watchdog for the collectives of a data-parallel run: a rank that waits too long is reported, with what every
rank was last seen doing, long before the collective timeout ends the run.

Why: a collective waits for every rank, up to the group's timeout (30 minutes by default). A rank that is slow,
stuck in a data loader, deadlocked, frozen or on a node that died makes the others wait silently that long; gloo
has no flight recorder like NCCL's. NCCL's watchdog thread (``TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC``) and Lightning's
absence of one are the references.

How: each rank runs a daemon thread that, every ``interval`` seconds,

1. publishes in a store every rank reaches (the rendezvous store, through
   :func:`~torchsystem_trainer.strategies.process_group.side_store`) a heartbeat: a counter, the number of the
   strategy's collectives this rank has finished, the one it is waiting in (if any) and, once stalled, where its
   main thread is (the innermost frames of its Python stack, read with ``faulthandler``);
2. reads the other ranks' heartbeats (a peer whose counter stopped moving is dead, frozen or unreachable);
3. when this rank has waited ``warn_after`` seconds in one of the strategy's collectives, or has finished none for
   that long (which covers DDP's gradient all-reduce, run inside the backward pass), logs a warning naming the
   rank, the time, the collective or the place, and every other rank's last state; once per stall.

The strategy marks its collectives with :meth:`CollectiveWatchdog.enter` / :meth:`CollectiveWatchdog.leave` (two
attribute writes: nothing is sent per collective); the thread does everything else. When a collective fails (a
timeout, a peer gone), :meth:`CollectiveWatchdog.describe` says which ranks had stopped answering, for the error.
"""

from __future__ import annotations

import faulthandler
import logging
import re
import tempfile
import threading
import time
from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["CollectiveWatchdog", "PeerState"]

logger = logging.getLogger(__name__)
_FRAMES = 4  # innermost frames of the main thread shown in a report


@dataclass
class PeerState:
    """What a rank last published, as seen by this rank.

    Attributes:
        beat: its heartbeat counter.
        finished: the strategy's collectives it had finished.
        waiting: the collective it was waiting in (``""``: none).
        waited_s: for how long it had waited (in the collective, or since its last one), seconds.
        where: where its main thread was, once stalled (``""`` otherwise).
        reports: the stalls it has reported.
        silent_s: seconds since its heartbeat last changed, by this rank's clock.
    """

    beat: int = -1
    finished: int = 0
    waiting: str = ""
    waited_s: float = 0.0
    where: str = ""
    reports: int = 0
    silent_s: float = 0.0

    def describe(self, rank: int) -> str:
        if self.beat < 0:
            return f"rank {rank}: never heard from"
        doing = f"waiting in {self.waiting}" if self.waiting else "between collectives"
        text = f"rank {rank}: {self.finished} collectives finished, {doing} for {self.waited_s:.1f} s"
        if self.where:
            text += f" at {self.where}"
        return text + f"; heard {self.silent_s:.1f} s ago"


class CollectiveWatchdog:
    """Report a rank that waits longer than ``warn_after`` seconds (see the module docstring).

    Args:
        store: a store every rank of the group reaches, in a key space of the group's own.
        rank: this process's global rank.
        world_size: the number of ranks.
        warn_after: seconds of waiting (in one collective, or without finishing any) before a report.
        interval: seconds between heartbeats; default ``min(1, warn_after / 4)``.

    Attributes:
        rank, world_size, warn_after: as given.
        reports: the stalls this rank has reported.
    """

    def __init__(
        self, store: dist.Store, rank: int, world_size: int, warn_after: float, interval: float | None = None
    ) -> None:
        if not warn_after > 0:
            raise ValueError(f"CollectiveWatchdog: warn_after={warn_after!r} is invalid; valid: seconds > 0")
        self.store, self.rank, self.world_size, self.warn_after = store, rank, world_size, float(warn_after)
        self.interval = min(1.0, self.warn_after / 4) if interval is None else float(interval)
        self.reports = 0
        # (the collective waited in or "", when it began or the last one ended, collectives finished): one tuple,
        # replaced whole by the training thread, so the watchdog's thread reads the three of one moment
        self._now: tuple[str, float, int] = ("", time.monotonic(), 0)
        self._failed: tuple[str, float] | None = None  # the collective that failed: its name, how long it waited
        self._reported = -1  # the collectives finished at the last report: one report per stall
        self._beat = 0
        self._peers: dict[int, PeerState] = {rank: PeerState() for rank in range(world_size) if rank != self.rank}
        self._changed: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the strategy's side (the training thread) ---------------------------------------------------------

    def enter(self, name: str) -> None:
        """A collective begins (``name``: what it is, e.g. ``"all_reduce"``)."""
        self._now = (name, time.monotonic(), self._now[2])

    def leave(self, failed: bool = False) -> None:
        """The collective begun last has finished, or ``failed`` (raised)."""
        waiting, since, finished = self._now
        now = time.monotonic()
        if failed:
            self._failed = (waiting, now - since)
        self._now = ("", now, finished + 1)

    # -- life -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching, from now (the thread is a daemon: it never keeps the process alive)."""
        if self._thread is None:
            self._now = ("", time.monotonic(), self._now[2])
            self._reported, self._failed = -1, None
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="torchsystem-collective-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (it ends within one interval)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.interval + 1.0)
        self._thread = None

    def reports_of(self, rank: int) -> int:
        """How many stalls ``rank`` has reported, as far as this rank knows (its own count for itself)."""
        return self.reports if rank == self.rank else self._peers[rank].reports

    def waited_s(self) -> float:
        """Seconds this rank has waited in the current collective, or since it finished the last one."""
        return time.monotonic() - self._now[1]

    def failed_collective(self) -> tuple[str, float] | None:
        """The collective that failed since :meth:`start`, if any: its name and how long it waited, seconds."""
        return self._failed

    def silent_peers(self) -> list[int]:
        """The ranks whose heartbeat has not changed for more than two intervals (or was never heard)."""
        limit = 2 * self.interval + 1.0
        return [rank for rank, state in sorted(self._peers.items()) if state.beat < 0 or state.silent_s > limit]

    def peers(self) -> dict[int, PeerState]:
        """The other ranks' last states, by rank (copies)."""
        return {rank: PeerState(**vars(state)) for rank, state in self._peers.items()}

    def describe(self) -> str:
        """The other ranks' last states, for an error message: which ones had stopped answering, and what the
        others were doing."""
        peers = sorted(self.peers().items())
        silent = self.silent_peers()
        lines = [state.describe(rank) for rank, state in peers]
        head = (
            f"ranks {silent} had stopped answering (dead, frozen or unreachable)"
            if silent
            else "every other rank was still answering"
        )
        return f"collective watchdog of rank {self.rank} of {self.world_size}: {head}; " + "; ".join(lines)

    # -- the thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._tick()
            except Exception as error:  # the store is gone (its host died): keep quiet, the collective will fail
                logger.debug("collective watchdog of rank %d: %r", self.rank, error)
            if self._stop.wait(self.interval):
                return

    def _tick(self) -> None:
        waiting, since, finished = self._now
        waited = time.monotonic() - since
        stalled = waited >= self.warn_after
        where = _main_thread_frames() if stalled else ""
        report = stalled and self._reported != finished
        if report:
            self._reported = finished
            self.reports += 1
        self._beat += 1
        state = f"{self._beat}|{finished}|{waiting}|{waited:.3f}|{self.reports}|{where}"
        self.store.set(f"rank/{self.rank}", state)
        self._read_peers()
        if report:
            doing = (
                f"in {waiting} (collective #{finished + 1})"
                if waiting
                else f"without finishing a collective (the last was #{finished}; DDP's gradient all-reduce in "
                "the backward pass, a data loader or this rank's own computation)"
            )
            logger.warning(
                "rank %d of %d has waited %.1f s %s, at %s; %s",
                self.rank,
                self.world_size,
                waited,
                doing,
                where or "?",
                self.describe(),
            )

    def _read_peers(self) -> None:
        now = time.monotonic()
        for rank, known in self._peers.items():
            key = f"rank/{rank}"
            if not self.store.check([key]):
                known.silent_s = now - self._changed.setdefault(rank, now)
                continue
            beat, finished, waiting, waited, reports, where = self.store.get(key).decode().split("|", 5)
            if int(beat) != known.beat:
                self._changed[rank] = now
            known.beat, known.finished, known.waiting = int(beat), int(finished), waiting
            known.waited_s, known.reports, known.where = float(waited), int(reports), where
            known.silent_s = now - self._changed.get(rank, now)


def _main_thread_frames() -> str:
    """The innermost frames of the main thread's Python stack, as ``file:line in function`` (``faulthandler``'s
    dump, the public way to read another thread's stack)."""
    with tempfile.TemporaryFile(mode="w+") as dump:
        faulthandler.dump_traceback(dump, all_threads=True)
        dump.seek(0)
        text = dump.read()
    main = f"{threading.main_thread().ident:#018x}"
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and main in lines[0]:
            return " < ".join(_short(line) for line in lines[1 : 1 + _FRAMES])
    return ""


def _short(frame: str) -> str:
    """``  File "/a/b/c.py", line 7 in f`` as ``b/c.py:7 in f``."""
    found = re.match(r'\s*File "(.*)", line (\d+) in (.*)', frame)
    if found is None:
        return frame.strip()
    path, line, function = found.groups()
    return f"{'/'.join(path.split('/')[-2:])}:{line} in {function}"
