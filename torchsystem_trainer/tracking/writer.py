"""``Writer``: runs units of work against the store, and never lets a failing store stop training.

Each unit runs in its own transaction. When the store is locked or unreachable (SQLAlchemy's ``OperationalError``,
``InterfaceError`` or a dropped connection), the writer retries with a growing pause (0.05 s doubling to 1 s) for
at most ``retry_timeout`` seconds; then it prints one warning naming the URL (password hidden) and the cause, and
keeps that unit and every later one in memory, in order. While units are kept, each new write tries the store once
more (without pausing, at most every ``retry_timeout`` seconds) and writes everything kept as soon as it answers.
:meth:`Writer.flush` at a fit's end retries once more for ``retry_timeout``; what still cannot be written stays in
memory for the next fit of the same tracker, and the warning says how many units.

A unit that fails for another reason (a constraint, a bug) cannot succeed by waiting: it is dropped with a
warning, so it never blocks the units after it.
"""

from __future__ import annotations

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
    """Writes units of work in order, retrying a busy or unreachable store, keeping what it cannot write.

    Args:
        engine: the store's engine.
        retry_timeout: seconds to keep retrying a failing write before keeping it in memory (>= 0).
        owner: the name in warnings (``"RunTracker"``).
    """

    def __init__(self, engine: Engine, retry_timeout: float, owner: str = "RunTracker") -> None:
        self.engine = engine
        self.retry_timeout = float(retry_timeout)
        self.owner = owner
        self.pending: deque[tuple[str, Unit]] = deque()
        self._offline_since: float | None = None
        self._last_try = 0.0

    @property
    def url(self) -> str:
        """The store's URL, password hidden."""
        return redact(self.engine.url)

    def submit(self, description: str, unit: Unit) -> bool:
        """Queue ``unit`` and write everything queued.

        Args:
            description: what the unit writes, for warnings (``"metrics of train, epoch 3"``).
            unit: the unit of work.

        Returns:
            Whether the queue is empty now (everything written).
        """
        self.pending.append((description, unit))
        if self._offline_since is None:
            return self._drain(self.retry_timeout)
        if time.monotonic() - self._last_try < self.retry_timeout:
            return False
        return self._drain(0.0)

    def flush(self) -> bool:
        """Write everything queued, retrying for up to ``retry_timeout`` seconds; warn about what is left.

        Returns:
            Whether everything was written.
        """
        if not self.pending:
            return True
        written = self._drain(self.retry_timeout)
        if not written:
            warnings.warn(
                f"{self.owner}: {len(self.pending)} unit(s) of work for the run store at {self.url} are kept in "
                f"memory and will be written by this tracker's next fit",
                stacklevel=2,
            )
        return written

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
                    warnings.warn(f"{self.owner}: dropped the {description} for the run store at {self.url}: "
                                  f"{_cause(error)}", stacklevel=3)
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
            warnings.warn(
                f"{self.owner}: the run store at {self.url} did not accept the {description} within "
                f"{self.retry_timeout:g} s ({_cause(error)}); training goes on, and the rows are kept in memory "
                f"until the store answers",
                stacklevel=4,
            )


def _cause(error: BaseException) -> str:
    """``"OperationalError: database is locked"``: the driver's error when there is one, first line only."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
