"""``PyTorchProfiler``: ``torch.profiler`` over a few training steps, a trace TensorBoard or Perfetto opens, and the
region table of :class:`~.simple.SimpleProfiler` with torch's own operator table.

``torch.profiler.profile`` runs for the whole fit with a ``schedule(wait, warmup, active, repeat)`` counted in
training steps (a step ends when the training loop asks its loader for the next batch, so the last step of an
epoch ends at the loader's end), so only ``active`` steps are recorded, after ``wait`` idle and ``warmup``
discarded ones (Lightning's ``PyTorchProfiler`` and torch's recipe do the same). Every region of the simple
profiler is also a ``torch.profiler.record_function`` range, so the trace shows the loader, the batch transfer, the
aggregate's step and each callback handler by name, over the operators and (on CUDA) the kernels.

The trace is written by ``torch.profiler.tensorboard_trace_handler`` as ``rank<r>.<n>.pt.trace.json`` in
``<default_root_dir>/profiler/version_<n>`` (the next free version at each fit; ``dirpath`` to choose): open it
with TensorBoard's profile plugin (``pip install torch-tb-profiler``; ``tensorboard --logdir
<default_root_dir>/profiler``) or load the file in https://ui.perfetto.dev (a Chrome trace).
"""

from __future__ import annotations

import functools
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

from torchsystem_trainer.profilers.simple import SimpleProfiler

__all__ = ["PyTorchProfiler"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")
_END = object()


def _count(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"PyTorchProfiler: {name}={value!r} is invalid; valid: an int >= {low}")
    return value


class PyTorchProfiler(SimpleProfiler):
    """``torch.profiler`` over training steps, with a trace file and the summary tables (see the module docstring).

    Args:
        wait: training steps skipped before recording (>= 0).
        warmup: steps recorded and thrown away, for the profiler's own start-up (>= 0).
        active: steps recorded (>= 1).
        repeat: cycles of ``wait + warmup + active`` (>= 1; each writes a trace file).
        dirpath: where trace files go; ``None``: ``<default_root_dir>/profiler/version_<n>``.
        record_shapes, profile_memory, with_stack: ``torch.profiler.profile``'s options of those names.
        row_limit: rows of torch's operator table (>= 1).
        file: where the tables go (default ``sys.stderr``).

    Attributes:
        trace_dir: the folder of the last fit's trace files, once it started.
        traces: the trace files the last fit wrote.

    Raises:
        ValueError: for a count out of range, naming it.
    """

    def __init__(
        self,
        wait: int = 1,
        warmup: int = 1,
        active: int = 3,
        repeat: int = 1,
        dirpath: str | os.PathLike[str] | None = None,
        record_shapes: bool = False,
        profile_memory: bool = False,
        with_stack: bool = False,
        row_limit: int = 20,
        file: IO[str] | None = None,
    ) -> None:
        super().__init__(file)
        self.wait, self.warmup = _count("wait", wait, 0), _count("warmup", warmup, 0)
        self.active, self.repeat = _count("active", active, 1), _count("repeat", repeat, 1)
        self.row_limit = _count("row_limit", row_limit, 1)
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.trace_dir: Path | None = None
        self.traces: list[Path] = []
        self._profile: Any = None
        self._cuda = False
        self._steps = 0

    def start(self, root: Any, device: Any, global_rank: int) -> None:
        """Start the fit's clock and ``torch.profiler.profile`` (CPU, and CUDA when the fit runs there)."""
        super().start(root, device, global_rank)
        self.trace_dir = self.dirpath if self.dirpath is not None else _next_version(Path(root) / "profiler")
        self.traces, self._steps = [], 0
        self._cuda = torch.device(device).type == "cuda"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self._cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        folder, worker = self.trace_dir, f"rank{global_rank}"
        write = torch.profiler.tensorboard_trace_handler(str(folder), worker_name=worker)

        def ready(profile: Any) -> None:
            before = set(folder.glob(f"{worker}.*.pt.trace.json")) if folder.is_dir() else set()
            write(profile)
            self.traces += sorted(set(folder.glob(f"{worker}.*.pt.trace.json")) - before)

        self._profile = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(
                wait=self.wait, warmup=self.warmup, active=self.active, repeat=self.repeat
            ),
            on_trace_ready=ready,
            record_shapes=self.record_shapes,
            profile_memory=self.profile_memory,
            with_stack=self.with_stack,
        )
        self._profile.start()

    def stop(self, print_report: bool = True) -> str:
        """Stop ``torch.profiler`` (writing the trace of a cycle still recording), then print both tables."""
        profile, self._profile = self._profile, None
        operators = ""
        if profile is not None:
            profile.stop()
            operators = self._operators(profile)
        report = super().stop(print_report=False)
        if operators:
            report = f"{report}\n\n{operators}"
        self.report = report
        if print_report:
            print(report, file=self.file if self.file is not None else sys.stderr, flush=True)
        return report

    def _operators(self, profile: Any) -> str:
        needed = self.wait + self.warmup + 1
        if not self.traces:
            warnings.warn(
                f"PyTorchProfiler: the fit ran {self._steps} training step(s), and the schedule records from step "
                f"{needed} on (wait={self.wait}, warmup={self.warmup}): no trace was written; lower them",
                stacklevel=4,
            )
            return ""
        sort_by = "self_cuda_time_total" if self._cuda else "self_cpu_time_total"
        table = profile.key_averages().table(sort_by=sort_by, row_limit=self.row_limit)
        files = ", ".join(str(path) for path in self.traces)
        return f"torch.profiler: {self.active} step(s) recorded per cycle; trace: {files}\n{table}"

    def wrap(self, function: _F, name: str) -> _F:
        """Time ``function`` as the simple profiler does, inside a ``record_function(name)`` range."""
        timed = super().wrap(function, name)

        @functools.wraps(function)
        def ranged(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(name):
                return timed(*args, **kwargs)

        return ranged  # type: ignore[return-value]

    def iterate(self, iterable: Iterable[_T], name: str, phase: str) -> Iterator[_T]:
        """Time each ``next()`` as the simple profiler does, in a ``record_function(name)`` range; for training, a
        step of the schedule ends at each ``next()`` but the phase's first (the last one finds the loader's end)."""
        record, clock, training = self.record(name), time.perf_counter, phase == "train"
        iterator = iter(iterable)
        first = True
        while True:
            if training and not first:
                self._step()
            first = False
            start = clock()
            with torch.profiler.record_function(name):
                item = next(iterator, _END)
            record.add(clock() - start)
            if item is _END:
                return
            yield item  # type: ignore[misc]

    def _step(self) -> None:
        if self._profile is not None:
            self._steps += 1
            self._profile.step()

    def __getstate__(self) -> dict[str, Any]:
        """Picklable: no running ``torch.profiler`` (a process starts its own)."""
        state = super().__getstate__()
        state["_profile"] = None
        return state


def _next_version(folder: Path) -> Path:
    """``folder/version_<n>`` for the first ``n`` not taken (Lightning's run folders)."""
    taken = {path.name for path in folder.glob("version_*")} if folder.is_dir() else set()
    number = 0
    while f"version_{number}" in taken:
        number += 1
    return folder / f"version_{number}"
