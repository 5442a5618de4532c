"""Checkpoint writes in the background, one at a time, with their errors brought back to the training thread.

:class:`AsyncWriter` runs a write (a function, in a thread of its own) or follows one that something else runs (a
``concurrent.futures.Future``, such as the one ``torch.distributed.checkpoint.async_save`` returns for a sharded
checkpoint). Its rules are those of an asynchronous ``ModelCheckpoint``:

* one write at a time: :meth:`~AsyncWriter.submit` waits for the previous write first;
* an error of a background write is raised in the thread that next waits (the next checkpoint, or the end of the
  fit), as a :class:`~torchsystem_trainer.checkpoint.CheckpointError` naming the file, with the original as its cause;
* :meth:`~AsyncWriter.wait` waits for the write in flight (the fit calls it before it ends).

Crash safety is the write's own: :func:`~torchsystem_trainer.checkpoint.save_atomic` leaves the previous file in
place until the new one is complete, whatever thread runs it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from torchsystem_trainer.checkpoint.io import CheckpointError

__all__ = ["AsyncWriter"]


@dataclass
class _Pending:
    path: str
    future: Future[Any]
    on_error: Callable[[BaseException], None] | None


class AsyncWriter:
    """At most one checkpoint write in flight (see the module docstring).

    Args:
        name: the name of the writing threads (for debuggers and the watchdog's stack dumps).

    Attributes:
        pending: the file being written, or ``None``.
    """

    def __init__(self, name: str = "torchsystem-checkpoint-writer") -> None:
        self.name = name
        self._pending: _Pending | None = None

    @property
    def pending(self) -> str | None:
        return None if self._pending is None else self._pending.path

    def submit(
        self, path: str, write: Callable[[], Any], on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        """Wait for the previous write, then run ``write()`` in a new thread.

        Args:
            path: the file ``write`` writes (named in errors).
            write: the write; it must not touch state the training thread changes (give it a staged copy).
            on_error: called in the waiting thread with the write's exception before it is raised (to undo
                bookkeeping that assumed the write would succeed).

        Raises:
            CheckpointError: when the previous write failed (see :meth:`wait`).
        """
        self.wait()
        future: Future[Any] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(write())
            except BaseException as error:  # handed to the waiting thread
                future.set_exception(error)

        # not a daemon: a script that ends while a write is in flight still completes it
        threading.Thread(target=run, name=self.name, daemon=False).start()
        self._pending = _Pending(path, future, on_error)

    def follow(self, path: str, future: Future[Any], on_error: Callable[[BaseException], None] | None = None) -> None:
        """Wait for the previous write, then follow a write that something else runs (``future`` completes when
        ``path`` is written, as ``torch.distributed.checkpoint.async_save``'s does).

        Raises:
            CheckpointError: when the previous write failed (see :meth:`wait`).
        """
        self.wait()
        self._pending = _Pending(path, future, on_error)

    def wait(self) -> None:
        """Wait for the write in flight, if any.

        Raises:
            CheckpointError: when it failed, naming the file; the write's exception is the cause.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            error = pending.future.exception()  # waits
        except BaseException:  # this thread was interrupted while waiting (Ctrl-C): the write is still in flight
            self._pending = pending
            raise
        if error is None:
            return
        if pending.on_error is not None:
            pending.on_error(error)
        raise CheckpointError(
            f"the background write of checkpoint {pending.path!r} failed: {type(error).__name__}: {error}"
        ) from error

    def done(self) -> bool:
        """Whether no write is in flight (a finished one may still hold an error for :meth:`wait`)."""
        return self._pending is None or self._pending.future.done()
