"""``Writer``: runs units of work against the store in a thread of its own, and never lets a failing store stop
or stall training.

:meth:`Writer.submit` queues a unit and returns at once: a writer thread (a daemon, started at the first unit and
again after each :meth:`Writer.flush`) runs the units in order, each in its own transaction, so the training thread
does not wait for the database (SQLAlchemy building the statements, the driver, the commit, a locked store), as
MLflow's and Weights & Biases' asynchronous logging do not either. When the store is locked or unreachable
(SQLAlchemy's ``OperationalError``, ``InterfaceError`` or a dropped connection), the thread retries with a growing
pause (0.05 s doubling to 1 s) for at most ``retry_timeout`` seconds; then it keeps that unit and every later one in
memory, in order, and a warning naming the URL (password hidden) and the cause is raised in the training thread at
its next call. While units are kept, each new unit makes the thread try the store once more (without pausing, at
most every ``retry_timeout`` seconds) and write everything kept as soon as it answers.

:meth:`Writer.flush` (a fit's or stage's end) waits for the thread to finish, then retries what is left once more
for ``retry_timeout`` in the caller's thread: after it, everything submitted is in the store, or kept in memory for
the next fit of the same tracker with a warning that says how many units.

A unit that fails for another reason (a constraint, a bug) cannot succeed by waiting: it is dropped with a
warning, so it never blocks the units after it.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from torchsystem_trainer.tracking.engine import redact
from torchsystem_trainer.tracking.units import Unit

__all__ = ["Writer"]


def _transient(error: SQLAlchemyError) -> bool:
    """Whether waiting may help: a lock, a timeout, a refused or dropped connection."""
    if isinstance(error, (OperationalError, InterfaceError)):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


class Writer:
    """Writes units of work in order from a thread of its own, retrying a busy or unreachable store, keeping what it
    cannot write.

    Args:
        engine: the store's engine.
        retry_timeout: seconds to keep retrying a failing write before keeping it in memory (>= 0).
        owner: the name in warnings (``"RunTracker"``).
    """

    def __init__(self, engine: Engine, retry_timeout: float, owner: str = "RunTracker") -> None:
        self.engine = engine
        self.retry_timeout = float(retry_timeout)
        self.owner = owner
        self.pending: deque[tuple[str, Unit]] = deque()  # submitted, not written yet (in order)
        self._offline_since: float | None = None
        self._last_try = 0.0
        self._warnings: deque[str] = deque()  # raised by the writer thread, given to the caller's next call
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The store's URL, password hidden."""
        return redact(self.engine.url)

    def submit(self, description: str, unit: Unit) -> None:
        """Queue ``unit`` for the writer thread and return (the warnings the thread raised since the last call are
        raised here).

        Args:
            description: what the unit writes, for warnings (``"metrics of train, epoch 3"``).
            unit: the unit of work.
        """
        self._raise_warnings()
        with self._wake:
            self.pending.append((description, unit))
            if self._thread is None or not self._thread.is_alive():  # none yet, or a forked child's copy
                self._closing = False
                self._thread = threading.Thread(target=self._run, name="torchsystem-run-store", daemon=True)
                self._thread.start()
            self._wake.notify()

    def flush(self) -> bool:
        """Wait for the writer thread, then write what is left, retrying for up to ``retry_timeout`` seconds; warn
        about what is still left (kept in memory for the next :meth:`submit` or :meth:`flush`).

        Returns:
            Whether everything was written.
        """
        thread = self._thread
        if thread is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            thread.join()
            self._thread = None
        written = not self.pending or self._drain(self.retry_timeout)
        self._raise_warnings()
        if not written:
            warnings.warn(
                f"{self.owner}: {len(self.pending)} unit(s) of work for the run store at {self.url} are kept in "
                f"memory and will be written by this tracker's next fit",
                stacklevel=2,
            )
        return written

    def _run(self) -> None:
        """The writer thread: write what is queued whenever something is; end at :meth:`flush` once idle."""
        while True:
            with self._wake:
                while not self.pending and not self._closing:
                    self._wake.wait()
                if not self.pending:
                    return
            if self._offline_since is None:
                written = self._drain(self.retry_timeout)
            elif time.monotonic() - self._last_try >= self.retry_timeout:
                written = self._drain(0.0)
            else:
                written = False
            if not written:  # offline: wait for the next unit (or the flush), as the loop above does when idle
                with self._wake:
                    if self._closing:
                        return
                    self._wake.wait()

    def _drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = 0.05
        while self.pending:
            description, unit = self.pending[0]
            self._last_try = time.monotonic()
            try:
                with self.engine.begin() as connection:
                    unit(connection)
            except Exception as error:  # a failing store never stops training
                if not (isinstance(error, SQLAlchemyError) and _transient(error)):
                    self.pending.popleft()
                    self._warn(f"{self.owner}: dropped the {description} for the run store at {self.url}: "
                               f"{_cause(error)}")
                    continue
                if time.monotonic() + pause > deadline:
                    self._go_offline(description, error)
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            self.pending.popleft()
            if self._offline_since is not None and not self.pending:
                self._offline_since = None
        return True

    def _go_offline(self, description: str, error: Exception) -> None:
        if self._offline_since is None:
            self._offline_since = time.monotonic()
            self._warn(
                f"{self.owner}: the run store at {self.url} did not accept the {description} within "
                f"{self.retry_timeout:g} s ({_cause(error)}); training goes on, and the rows are kept in memory "
                f"until the store answers"
            )

    def _warn(self, message: str) -> None:
        """Keep a warning for the caller's thread (``warnings`` filters and ``pytest.warns`` are per caller)."""
        self._warnings.append(message)

    def _raise_warnings(self) -> None:
        while self._warnings:
            warnings.warn(self._warnings.popleft(), stacklevel=4)


def _cause(error: BaseException) -> str:
    """``"OperationalError: database is locked"``: the driver's error when there is one, first line only."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
