"""``SimpleProfiler``: wall-clock time per region of a fit, and a table of it at the fit's end.

The Trainer hands the profiler the few callables a phase runs per batch and the callbacks' handlers, and the
profiler wraps them (``Trainer(profiler=None)``, the default, wraps nothing: the hot path is the same code as
without a profiler, resolved once per phase). Regions, each a row of the table:

=====================================  =============================================================================
row                                    what is timed
=====================================  =============================================================================
``fit``                                ``FitStarted`` to the end of ``FitEnded``: the 100 % of the last column
``<phase>``                            each training or validation phase as a whole (the rows below nest in it)
``<phase>: waiting for the loader``    each ``next()`` on the phase's loader (the time the loop waits for a batch)
``<phase>: batch to device``           the strategy's ``batch_to_device``
``<phase>: <Aggregate>.fit`` (or       the aggregate's step: forward, loss, backward and optimizer step (training),
``.evaluate``)                         forward and loss (evaluation)
``<Callback>.<hook>``                  each callback's handler of each event, by callback and event (Lightning's
                                       simple profiler does not time callbacks)
=====================================  =============================================================================

Columns: seconds in all, calls, microseconds per call, and percent of the fit. Rows nest (a callback's handler
of a batch event runs inside its phase), so the column does not sum to 100 %. Times are wall clock on the host
(``time.perf_counter``): on a GPU, a region that only launches kernels returns before they finish, so its time
moves to whichever region next waits for the device (use ``profiler="pytorch"`` to see the device's side).
Lightning's ``SimpleProfiler`` prints the same kind of table (mean, calls, total, percent).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["Record", "SimpleProfiler"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


class Record:
    """The time spent in one region: ``seconds`` in all over ``calls`` calls."""

    __slots__ = ("calls", "seconds")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def add(self, seconds: float) -> None:
        """Count one call of ``seconds``."""
        self.seconds += seconds
        self.calls += 1


class SimpleProfiler:
    """Times the regions of a fit (see the module docstring) and prints their table when it ends. The Trainer calls
    :meth:`start`, :meth:`instrument` (once per phase), :meth:`wrap` (once per callback handler) and :meth:`stop`;
    a subclass may profile otherwise (``PyTorchProfiler`` does).

    Args:
        file: where the table goes (default ``sys.stderr``, as the console lines); also kept as :meth:`summary`.

    Attributes:
        records: ``{row: Record}`` of the current (or last) fit (rows of earlier fits stay, with no calls).
        report: the last fit's table, ``""`` before the first.
    """

    def __init__(self, file: IO[str] | None = None) -> None:
        self.file = file
        self.records: dict[str, Record] = {}
        self.report = ""
        self._fit: Record | None = None
        self._started = 0.0

    # -- the life of a fit ------------------------------------------------------------------------------

    def start(self, root: Any, device: Any, global_rank: int) -> None:
        """A fit begins (its handlers are wrapped already): zero the records and start its clock.

        Args:
            root: the Trainer's ``default_root_dir`` (where a profiler writes files).
            device: the strategy's root device.
            global_rank: this process's rank.
        """
        for record in self.records.values():  # in place: the handlers wrapped for this fit hold them already
            record.seconds, record.calls = 0.0, 0
        self._fit = self.record("fit")
        self._started = time.perf_counter()

    def stop(self, print_report: bool = True) -> str:
        """The fit ended: stop its clock and print the table (``print_report``: on global rank 0).

        Returns:
            The table.
        """
        if self._fit is not None:
            self._fit.add(time.perf_counter() - self._started)
            self._fit = None
        self.report = self.summary()
        if print_report:
            print(self.report, file=self.file if self.file is not None else sys.stderr, flush=True)
        return self.report

    # -- regions ----------------------------------------------------------------------------------------

    def record(self, name: str) -> Record:
        """The record of region ``name``, created at first use."""
        found = self.records.get(name)
        if found is None:
            found = self.records[name] = Record()
        return found

    def wrap(self, function: _F, name: str) -> _F:
        """``function``, timed as region ``name`` at every call (``functools.wraps`` keeps its signature)."""
        record, clock = self.record(name), time.perf_counter

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                record.add(clock() - start)

        return timed  # type: ignore[return-value]

    def phase(self, phase: str) -> Callable[[], None]:
        """Start timing ``phase`` as a whole; returns what to call at its end."""
        record, start = self.record(phase), time.perf_counter()
        return lambda: record.add(time.perf_counter() - start)

    def iterate(self, iterable: Iterable[_T], name: str, phase: str) -> Iterator[_T]:
        """Iterate ``iterable``, timing each ``next()`` as region ``name``.

        Args:
            iterable: the phase's loader (or its iterator).
            name: the row.
            phase: ``"train"``, ``"validation"``, ``"test"``.
        """
        record, clock = self.record(name), time.perf_counter
        iterator = iter(iterable)
        while True:
            start = clock()
            try:
                item = next(iterator)
            except StopIteration:
                record.add(clock() - start)
                return
            record.add(clock() - start)
            yield item

    def instrument(
        self, phase: str, step: Callable[..., Any], owner: str, to_device: _F, iterator: Iterable[_T]
    ) -> tuple[Callable[..., Any], _F, Iterator[_T]]:
        """Wrap what a phase runs per batch: its step (``owner`` names it, ``"Classifier.fit"``), the strategy's
        ``batch_to_device`` and its loader's iterator. Called once per phase, only when profiling."""
        return (
            self.wrap(step, f"{phase}: {owner}"),
            self.wrap(to_device, f"{phase}: batch to device"),
            self.iterate(iterator, f"{phase}: waiting for the loader", phase),
        )

    # -- the table --------------------------------------------------------------------------------------

    def summary(self) -> str:
        """The table of the current records: rows by time spent, descending.

        Returns:
            The text, a title line then aligned columns.
        """
        fit = self.records.get("fit")
        total = fit.seconds if fit is not None and fit.seconds > 0 else None
        rows = sorted(((name, r) for name, r in self.records.items() if r.calls), key=lambda item: -item[1].seconds)
        width = max([len("region"), *(len(name) for name, _ in rows)])
        lines = [
            f"{type(self).__name__}: where the fit's time went (rows nest: a callback's handler of a batch event "
            "runs inside its phase)",
            f"{'region':<{width}}  {'seconds':>10}  {'calls':>8}  {'us/call':>12}  {'% of fit':>8}",
            "-" * (width + 46),
        ]
        for name, record in rows:
            per_call = record.seconds / record.calls * 1e6 if record.calls else 0.0
            share = f"{100 * record.seconds / total:8.2f}" if total else f"{'-':>8}"
            lines.append(f"{name:<{width}}  {record.seconds:10.4f}  {record.calls:8d}  {per_call:12.1f}  {share}")
        return "\n".join(lines)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a data-parallel launcher sends the Trainer to its processes): without ``file``, which a
        process gets back as ``None`` (its own ``sys.stderr``)."""
        state = dict(self.__dict__)
        state["file"] = None
        return state

