"""Start the processes of a data-parallel run from a plain ``python script.py`` (or a test, or a notebook).

Why new processes run the function and not the script: Lightning's default ``ddp`` re-runs the user's script
(``sys.argv``) in a subprocess per extra device. That needs a script to re-run: from a test, a notebook,
``python -c`` or a library call it re-runs the wrong thing, and in a script it runs everything before ``fit``
once more per process (downloads, prints, side effects). Here the Trainer's own function (``_fit``) is sent to
the new processes with ``torch.multiprocessing`` (as Lightning's ``ddp_spawn`` does), so ``Trainer.fit`` can be
called from anywhere, runs once per process, and returns in the caller, whose aggregate then holds the trained
state. The price: with ``spawn``/``forkserver`` everything ``fit`` receives is pickled (define aggregates,
datasets and collate functions at module level) and the script needs an ``if __name__ == "__main__":`` guard;
``fork`` (Linux) pickles nothing, but forked children use one intra-op thread each (GNU OpenMP hangs in a child
forked from a parent that already used its thread pool) and cannot use CUDA if the parent initialised it.
``torchrun`` needs none of this: every process runs the script, and the strategy joins the group it describes.

What the caller gets back, from rank 0 (Lightning's spawn launcher does the same): the function's return value,
and the whole state of every ``nn.Module`` argument (weights, optimizers, schedulers, ``epoch``: the strategy's
``aggregate_state``, which every rank computes, as a sharded strategy gathers its shards there), loaded into the
caller's objects. Nothing else of the
children is copied back: a function whose owner has more to hand back returns it (the Trainer's run returns its
loop's outcome, its strategy's and its callbacks' states, and applies them in the caller itself).

Failure: the launcher watches every child. When one exits with an error, the others are stopped at once
(``SIGTERM``, then ``SIGKILL`` after :data:`KILL_GRACE_S`), not left waiting in a collective, and the error of the
rank that failed first is raised in the caller: the original exception (when it can be pickled), with a note
naming its rank and, as its ``__cause__``, a :class:`ProcessRaisedError` holding that rank's traceback.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from torchsystem_trainer.checkpoint import load_aggregate_state

__all__ = [
    "KILL_GRACE_S",
    "GroupMember",
    "ProcessRaisedError",
    "StartMethod",
    "check_main_guard",
    "launch_processes",
]

StartMethod = Literal["spawn", "fork", "forkserver"]
KILL_GRACE_S = 3.0
"""Seconds a child has to exit after ``SIGTERM`` before it is killed, once a sibling has failed."""


class GroupMember(Protocol):
    """What the launcher needs of a strategy: how long collectives wait, joining and leaving the group, running a
    function in it (``launch``, which in a process of a group runs the function there, watched), and the state of an
    aggregate in the one-process format (a collective for a sharded strategy)."""

    @property
    def timeout(self) -> timedelta: ...

    def aggregate_state(self, aggregate: Any) -> dict[str, Any]: ...

    def init_process_group(
        self, store: dist.Store | None = None, rank: int | None = None, world_size: int | None = None
    ) -> None: ...

    def destroy_process_group(self) -> None: ...

    def launch(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


class ProcessRaisedError(RuntimeError):
    """A process of a data-parallel run failed.

    Raised itself when the failure cannot be given as the original exception (it could not be pickled, or the
    process died from a signal or ``os._exit``); otherwise the ``__cause__`` of the original exception.

    Attributes:
        rank: the failing process's global rank.
        world_size: the number of processes of the run.
        exit_code: the process's exit code (negative: killed by that signal), or ``None`` when it raised.
        child_traceback: the formatted traceback from the process, or ``""``.
    """

    def __init__(
        self, message: str, rank: int, world_size: int, exit_code: int | None = None, child_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.rank = rank
        self.world_size = world_size
        self.exit_code = exit_code
        self.child_traceback = child_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.args[0], self.rank, self.world_size, self.exit_code, self.child_traceback)


def check_main_guard() -> None:
    """Refuse to launch from a child that is still importing the ``__main__`` module (``spawn`` and
    ``forkserver`` import it again in every child).

    Raises:
        RuntimeError: inside such an import: the script calls ``fit`` without an ``if __name__ == "__main__":``
            guard, so every child would start processes of its own.
    """
    # The standard library's own check (multiprocessing.spawn._check_not_importing_main) reads this private flag;
    # there is no public one. A Python without it skips this check, and the child's own start then fails instead.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(
            "Trainer.fit was called while a new process imports the main module: with start_method='spawn' or "
            "'forkserver' the script must start training under an `if __name__ == \"__main__\":` guard "
            "(or run it with torchrun, or use start_method='fork' on Linux)"
        )


@dataclass(frozen=True)
class _GlobalState:
    """Process-wide settings a ``spawn``/``forkserver`` child would not inherit (Lightning captures the same)."""

    torch_rng: torch.Tensor
    python_rng: Any
    numpy_rng: Any
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    default_dtype: torch.dtype

    @classmethod
    def capture(cls) -> _GlobalState:
        try:
            import numpy

            numpy_rng = numpy.random.get_state()
        except ImportError:
            numpy_rng = None
        return cls(
            torch_rng=torch.get_rng_state(),
            python_rng=random.getstate(),
            numpy_rng=numpy_rng,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            default_dtype=torch.get_default_dtype(),
        )

    def restore(self) -> None:
        torch.set_rng_state(self.torch_rng)
        random.setstate(self.python_rng)
        if self.numpy_rng is not None:
            import numpy

            numpy.random.set_state(self.numpy_rng)
        current = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if current != (self.deterministic, self.deterministic_warn_only):  # the call costs seconds (imports)
            torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.set_default_dtype(self.default_dtype)


@dataclass(frozen=True)
class _Spec:
    """What every child needs. ``payload`` holds the objects themselves under ``fork``; otherwise they are
    pickled once into ``folder/payload.pkl`` (plain pickle: tensors are copied, never shared between processes)."""

    world_size: int
    host: str
    port: int
    folder: str
    start_method: StartMethod
    threads: int | None
    payload: tuple[Any, ...] | None
    state: _GlobalState | None


def launch_processes(
    strategy: GroupMember,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    num_processes: int,
    start_method: StartMethod,
    threads: int | None,
) -> Any:
    """Run ``function(*args, **kwargs)`` in ``num_processes`` new processes forming one process group, and
    bring rank 0's results back (see the module docstring).

    Args:
        strategy: the strategy that joins each child to the group (sent along with the function).
        function: the function every process runs (the Trainer's run).
        args, kwargs: its arguments.
        num_processes: number of processes (>= 2), ranks ``0..num_processes-1`` on this machine.
        start_method: ``"spawn"``, ``"forkserver"`` or ``"fork"`` (see the module docstring).
        threads: intra-op threads per child (``torch.set_num_threads``), or ``None`` to leave torch's default.

    Returns:
        Rank 0's return value.

    Raises:
        TypeError: under ``spawn``/``forkserver`` when something cannot be pickled, naming it.
        RuntimeError: under ``fork`` when CUDA is already initialised in this process.
        ProcessRaisedError: see the module docstring; or the failing rank's own exception.
    """
    check_main_guard()
    if start_method == "fork" and torch.cuda.is_initialized():
        raise RuntimeError(
            f"{type(strategy).__name__}(start_method='fork') cannot start processes once CUDA is initialised in "
            "this one (a tensor or module was moved to a GPU, or torch.cuda was called): use start_method='spawn'"
        )
    with tempfile.TemporaryDirectory(prefix="torchsystem-ddp-") as folder:
        objects = (strategy, function, args, kwargs)
        payload: tuple[Any, ...] | None = objects
        state = None
        if start_method != "fork":
            owner = f"{type(strategy).__name__}(start_method={start_method!r})"
            _write_payload(Path(folder) / "payload.pkl", objects, owner)
            payload, state = None, _GlobalState.capture()
        # This process hosts the rendezvous store (as torchrun's agent does), bound to a port the OS picks: no
        # port is guessed, and none can be taken by another program between choosing and binding it.
        store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=strategy.timeout, wait_for_workers=False)
        spec = _Spec(num_processes, "127.0.0.1", store.port, folder, start_method, threads, payload, state)
        context = mp.start_processes(
            _worker, args=(spec,), nprocs=num_processes, join=False, start_method=start_method
        )
        _watch(context.processes, Path(folder), num_processes)
        if not (Path(folder) / "output.pt").exists():  # rank 0 exited 0 without results: a KeyboardInterrupt
            _raise_failure(context.processes, Path(folder), 0, num_processes)
        output = torch.load(Path(folder) / "output.pt", map_location="cpu", weights_only=False)
    del store
    for index, state in output["modules"].items():
        load_aggregate_state(args[index], state, source="rank 0's final state")
    return output["result"]


def _write_payload(path: Path, payload: tuple[Any, ...], owner: str) -> None:
    try:
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise TypeError(
            f"{owner} sends the trainer, the aggregate and the loaders to the new "
            f"processes by pickling them, and pickling failed: {error}. Define aggregates, datasets, collate "
            "functions and callbacks at module level (no lambdas or local classes), run with torchrun, or use "
            "start_method='fork' on Linux"
        ) from error
    path.write_bytes(data)


def _worker(local_rank: int, spec: _Spec) -> None:
    """One child: join the group, run the function, report (rank 0: results; any rank: its error)."""
    rank = local_rank
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(spec.world_size),
        LOCAL_WORLD_SIZE=str(spec.world_size),
        GROUP_RANK="0",
        MASTER_ADDR=spec.host,
        MASTER_PORT=str(spec.port),
    )
    if spec.start_method == "fork":
        torch.set_num_threads(1)  # GNU OpenMP's pool does not survive fork: more threads hang (measured)
    elif spec.threads is not None:
        torch.set_num_threads(spec.threads)
    folder = Path(spec.folder)
    try:
        if spec.payload is not None:
            strategy, function, args, kwargs = spec.payload
        else:
            strategy, function, args, kwargs = pickle.loads((folder / "payload.pkl").read_bytes())
        if spec.state is not None:
            spec.state.restore()
        store = dist.TCPStore(spec.host, spec.port, None, False, timeout=strategy.timeout)
        strategy.init_process_group(store=store, rank=rank, world_size=spec.world_size)
        try:
            result = strategy.launch(function, *args, **kwargs)  # in the group now: runs here, watched
            # every rank: a sharded strategy gathers the full state collectively; rank 0's is complete
            states = {i: strategy.aggregate_state(arg) for i, arg in enumerate(args) if isinstance(arg, nn.Module)}
            if rank == 0:
                _write_output(folder / "output.pt", result, states)
        except BaseException as error:
            # Recorded before the group goes: destroying it is what fails the peers' pending collectives, so
            # their errors come strictly later than this one (see root_cause).
            _write_error(folder / f"error-{rank}.pkl", rank, error)
            raise
        finally:
            strategy.destroy_process_group()
    except BaseException as error:
        if not (folder / f"error-{rank}.pkl").exists():
            _write_error(folder / f"error-{rank}.pkl", rank, error)
        raise


def _write_output(path: Path, result: Any, states: dict[int, dict[str, Any]]) -> None:
    output = {"result": result, "modules": states}
    buffer = io.BytesIO()
    torch.save(output, buffer)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(buffer.getvalue())
    temporary.replace(path)


def _write_error(path: Path, rank: int, error: BaseException) -> None:
    record = {
        "rank": rank,
        "time": time.time(),
        "pid": os.getpid(),
        "type": type(error).__qualname__
        if type(error).__module__ == "builtins"
        else f"{type(error).__module__}.{type(error).__qualname__}",
        "message": str(error),
        "traceback": traceback.format_exc(),
        "exception": None,
    }
    try:
        data = pickle.dumps(error)
        pickle.loads(data)  # an exception whose __init__ takes other arguments pickles but does not unpickle
        record["exception"] = data
    except Exception:
        pass
    try:
        path.write_bytes(pickle.dumps(record))
    except Exception:
        pass


def _watch(processes: list[Any], folder: Path, world_size: int) -> None:
    """Wait for every child; on the first failure stop the others and raise the root cause.

    Raises:
        ProcessRaisedError, or the failing rank's exception: see :func:`_raise_failure`.
    """
    waiting = {process.sentinel: rank for rank, process in enumerate(processes)}
    failed: int | None = None
    exited: set[int] = set()  # by themselves, not stopped here
    try:
        while waiting and failed is None:
            for sentinel in multiprocessing.connection.wait(list(waiting)):
                rank = waiting.pop(sentinel)  # type: ignore[call-overload]
                processes[rank].join()
                exited.add(rank)
                if processes[rank].exitcode != 0 and failed is None:
                    failed = rank
    finally:
        if waiting:  # a failure, or the caller was interrupted (Ctrl-C): stop the rest, never leave orphans
            _stop(processes)
    if failed is not None:
        _raise_failure(processes, folder, failed, world_size, exited)


def _stop(processes: list[Any]) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + KILL_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def root_cause(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The error that happened first: the others are usually its consequences (a peer's collective failing
    with "connection closed" once the failing process is gone).

    Args:
        records: error records of the failed ranks (``{"rank", "time" (seconds since the epoch), ...}``).

    Returns:
        The earliest record, ties going to the lower rank; ``None`` for no records.
    """
    return min(records, key=lambda record: (record["time"], record["rank"]), default=None)


def _raise_failure(
    processes: list[Any], folder: Path, failed: int, world_size: int, exited: set[int] | None = None
) -> None:
    records = []
    for path in sorted(folder.glob("error-*.pkl")):
        try:
            records.append(pickle.loads(path.read_bytes()))
        except Exception:
            continue
    # A rank killed by a signal from outside (SIGKILL, the out-of-memory killer) writes no record; its peers then
    # fail in a collective ("connection closed") and do: the killed rank is the root cause, not their errors.
    recorded = {record["rank"] for record in records}
    killed = [r for r in sorted(exited or ()) if (processes[r].exitcode or 0) < 0 and r not in recorded]
    record = None if killed else root_cause(records)
    failed = killed[0] if killed else failed
    if record is None:
        code = processes[failed].exitcode
        if code == 0:
            how = "ended without results and without an error (a KeyboardInterrupt?)"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name} (out of memory, or killed from outside?)"
        else:
            how = f"exited with code {code} without raising an exception (os._exit, or a crash in native code?)"
        raise ProcessRaisedError(
            f"rank {failed} of {world_size} (pid {processes[failed].pid}) {how}", failed, world_size, exit_code=code
        )
    rank, trace = record["rank"], record["traceback"]
    cause = ProcessRaisedError(
        f"rank {rank} of {world_size} (pid {record['pid']}) raised {record['type']}: {record['message']}\n\n"
        f"Traceback in rank {rank}:\n{trace}",
        rank,
        world_size,
        child_traceback=trace,
    )
    if record["exception"] is None:
        raise cause
    error = pickle.loads(record["exception"])
    error.add_note(f"raised in rank {rank} of {world_size} of the data-parallel run (its traceback is the cause)")
    raise error from cause
