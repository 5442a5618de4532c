"""``SIGTERM`` and ``SIGINT`` during a fit: finish the current step, then stop cleanly and write a checkpoint.

A preempted job (SLURM, Kubernetes, spot instances) gets ``SIGTERM`` and a grace period before ``SIGKILL``; a user
presses Ctrl-C (``SIGINT``). Python's defaults end the process (``SIGTERM``) or raise ``KeyboardInterrupt``
wherever the main thread is (``SIGINT``), possibly in the middle of an optimizer step, so a checkpoint written
then may hold half-updated weights. :class:`StopSignals` replaces both handlers for the duration of a fit with one
that only asks the loop to stop; the loop stops at the next step boundary, and the end events (and
``ModelCheckpoint``) see a consistent state. A second ``SIGINT`` while stopping raises ``KeyboardInterrupt`` at
once: the user insists. Lightning's ``SignalConnector`` does the same for ``SIGTERM`` (and also calls handlers that
were installed before it, as this does).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["STOP_SIGNALS", "StopSignals"]

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
"""The signals that stop a fit gracefully."""


class StopSignals:
    """Context manager that turns ``SIGTERM``/``SIGINT`` into a stop request while it is open.

    Handlers are installed only in the main thread (Python delivers signals there only), and not for a signal
    whose handler is ``SIG_IGN`` (a process started with ``nohup`` keeps ignoring ``SIGINT``). On exit, the previous
    handlers are put back.

    Args:
        on_stop: called with the signal number at the first signal; it should set a flag the loop checks after
            each step. A Python handler installed before (not Python's default ``SIGINT`` handler) is called after
            it, with the same arguments.
        signals: the signals handled (default :data:`STOP_SIGNALS`; a cluster's warning signal such as Slurm's
            ``SIGUSR1`` for ``SLURMRequeue``).

    Attributes:
        received: the first signal received, or ``None``.
        insisted: whether a second ``SIGINT`` came (and raised ``KeyboardInterrupt``).
    """

    def __init__(self, on_stop: Callable[[int], None], signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.on_stop = on_stop
        self.signals = tuple(signals)
        self.received: int | None = None
        self.insisted = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for number in self.signals:
            previous = signal.getsignal(number)
            if previous is signal.SIG_IGN:
                continue
            try:
                signal.signal(number, self._handle)
            except (OSError, ValueError):  # a platform that cannot install it
                continue
            self._previous[number] = previous
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._handle:
                signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        """The handler: a first signal asks to stop; a second ``SIGINT`` raises ``KeyboardInterrupt``.

        Raises:
            KeyboardInterrupt: at a second ``SIGINT``.
        """
        if self.received is not None:
            if number == signal.SIGINT:
                self.insisted = True
                raise KeyboardInterrupt
            return  # a repeated SIGTERM: already stopping
        self.received = number
        self.on_stop(number)
        previous = self._previous.get(number)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(number, frame)
