"""What every data-parallel strategy shares: the process topology, launching, the process group, sharded loaders
and the collectives. :class:`~torchsystem_trainer.strategies.ddp.DDPStrategy` (a full copy of the aggregate per
process) and :class:`~torchsystem_trainer.strategies.fsdp.FSDPStrategy` (parameters, gradients and optimizer state
sharded across the processes) differ only in how they wrap the aggregate and what a step needs.

Launching (see :meth:`ParallelStrategy.launch`): under ``torchrun`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) every process runs the script and joins the group; from a plain
``python script.py`` the strategy starts the processes itself (:mod:`~torchsystem_trainer.strategies.launchers`
says how and why; :mod:`~torchsystem_trainer.strategies.process_group` how long a group lives). Loaders are sharded
(:mod:`~torchsystem_trainer.strategies.samplers`); collectives run over the default group
(:mod:`~torchsystem_trainer.strategies.collectives`), and a watchdog reports a process that waits too long in one
(:mod:`~torchsystem_trainer.strategies.watchdog`).

The design follows Lightning Fabric's ``ParallelStrategy`` (topology, launcher, collectives shared by its DDP and
FSDP strategies).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal, TypeVar, get_args

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import RandomSampler
from typing_extensions import override

from torchsystem_trainer.strategies import collectives
from torchsystem_trainer.strategies.collectives import group_initialized
from torchsystem_trainer.strategies.devices import (
    ACCELERATORS,
    Accelerator,
    resolve_accelerator,
    resolve_backend,
    resolve_devices,
    resolve_timeout,
)
from torchsystem_trainer.strategies.environment import ProcessEnvironment, cpu_count
from torchsystem_trainer.strategies.launchers import StartMethod, check_main_guard, launch_processes
from torchsystem_trainer.strategies.process_group import destroy_group, destroy_launcher_group, join_group, side_store
from torchsystem_trainer.strategies.samplers import distribute_loader, shuffle_seed_of, unshardable_reason
from torchsystem_trainer.strategies.strategy import ReduceOp, Strategy
from torchsystem_trainer.strategies.watchdog import CollectiveWatchdog

__all__ = ["ACCELERATORS", "START_METHODS", "Accelerator", "ParallelStrategy"]

R = TypeVar("R")
START_METHODS: tuple[str, ...] = get_args(StartMethod)
_SEED_MODULUS = 2**62  # DistributedSampler seeds its generator with seed + epoch: keep that inside int64


class ParallelStrategy(Strategy):
    """Base of the strategies that train on several processes, one per device (Lightning's ``ParallelStrategy``).

    Args:
        devices: ``"auto"``: on CUDA every visible GPU, on CPU one process (under ``torchrun``: the processes it
            started); an ``int``: that many GPUs (the first ones) or, on CPU, that many processes; a list of GPU
            indices (CUDA only).
        accelerator: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
        backend: the ``torch.distributed`` backend; ``None``: ``"nccl"`` on CUDA, ``"gloo"`` on CPU.
        precision: ``"32-true"``, ``"64-true"``, ``"bf16-mixed"`` or ``"16-mixed"`` (see ``Precision``).
        timeout: how long a collective may wait for the other processes before it fails (a ``timedelta`` or
            seconds; default 30 minutes): the bound on how long the others wait when one process dies under a
            launcher that does not stop them (the strategy's own launcher and ``torchrun`` stop them at once), or
            when a machine stops answering.
        collective_warning: seconds a process may wait in a collective (or without finishing one) before the
            collective watchdog logs a warning naming it, the time and what every other process was last seen
            doing (:mod:`~torchsystem_trainer.strategies.watchdog`); ``"auto"``: ``min(300, timeout / 2)``;
            ``None``: no watchdog.
        start_method: how the strategy starts processes from a plain ``python script.py``: ``"spawn"``
            (default: works everywhere, CUDA included; needs picklable arguments and a ``__main__`` guard),
            ``"forkserver"`` (the same, cheaper when launching repeatedly) or ``"fork"`` (Linux; nothing pickled;
            one intra-op thread per process; no CUDA initialised before). Unused under ``torchrun``.

    Raises:
        ValueError: for an invalid argument, naming it, the value and the valid values.
        RuntimeError: for ``accelerator="cuda"`` without CUDA, or GPU indices this machine does not have.
    """

    def __init__(
        self,
        devices: str | int | Sequence[int] = "auto",
        accelerator: str = "auto",
        backend: str | None = None,
        precision: str = "32-true",
        timeout: timedelta | float = timedelta(minutes=30),
        start_method: str = "spawn",
        collective_warning: float | str | None = "auto",
    ) -> None:
        self.accelerator: Literal["cpu", "cuda"] = resolve_accelerator(accelerator)
        self._processes, self._gpus = resolve_devices(devices, self.accelerator)
        self._devices_given = not (isinstance(devices, str) and devices == "auto")
        self.backend: str = resolve_backend(backend, self.accelerator)
        self.timeout: timedelta = resolve_timeout(timeout)
        self.collective_warning = _collective_warning(type(self).__name__, collective_warning, self.timeout)
        self.watchdog: CollectiveWatchdog | None = None
        if start_method not in START_METHODS or start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"{type(self).__name__}: start_method={start_method!r} is invalid here; valid: "
                f"{', '.join(m for m in START_METHODS if m in multiprocessing.get_all_start_methods())}"
            )
        self.start_method: StartMethod = start_method  # type: ignore[assignment]
        self._owns_group = False
        self._keeps_one_process_group = False  # a one-process run's group is destroyed when the run ends
        super().__init__(precision)


    # -- topology ---------------------------------------------------------------------------------------

    @property
    def num_processes(self) -> int:
        """Processes this strategy starts on this machine from a plain ``python script.py``."""
        return self._processes

    @property
    def parallel_devices(self) -> list[torch.device]:
        """The device of each local process, by local rank."""
        if self.accelerator == "cpu":
            return [torch.device("cpu")] * self._processes
        return [torch.device("cuda", index) for index in self._gpus]

    @property
    @override
    def root_device(self) -> torch.device:
        if self.accelerator == "cpu":
            return torch.device("cpu")
        local_rank = self.local_rank
        if local_rank >= len(self._gpus):
            raise RuntimeError(
                f"{type(self).__name__}: this process has LOCAL_RANK={local_rank}, but devices={self._gpus} has "
                f"{len(self._gpus)} GPU(s): start at most that many processes per machine"
            )
        return torch.device("cuda", self._gpus[local_rank])

    @property
    @override
    def global_rank(self) -> int:
        if group_initialized():
            return dist.get_rank()
        environment = ProcessEnvironment.from_environ()
        return 0 if environment is None else environment.global_rank

    @property
    @override
    def local_rank(self) -> int:
        environment = ProcessEnvironment.from_environ()
        return 0 if environment is None else environment.local_rank

    @property
    @override
    def world_size(self) -> int:
        if group_initialized():
            return dist.get_world_size()
        environment = ProcessEnvironment.from_environ()
        return self.num_processes if environment is None else environment.world_size

    # -- processes --------------------------------------------------------------------------------------

    @override
    def launch(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``function`` in every process of the run, and return its result in the caller.

        - In a process of a run already (a group is initialised: a process this strategy started, an earlier
          ``fit`` under ``torchrun``, or a user's own ``init_process_group``): run it here.
        - Under ``torchrun`` (the launch variables are set): join the group and run. The group then lives until
          the process exits (or a launch fails), so a later ``fit``/``validate`` reuses it: creating a group
          again on torchrun's store would read the previous group's rendezvous keys (stale peer addresses:
          measured, "connection refused").
        - With one process: run here in a one-process group, destroyed at the end (kept by a strategy whose
          aggregate stays bound to it, FSDP's).
        - Otherwise start :attr:`num_processes` processes with :attr:`start_method` and bring rank 0's results
          back (see :mod:`~torchsystem_trainer.strategies.launchers`); each destroys its group at its end.

        When ``function`` raises, the group is destroyed (which makes the peers' pending collectives fail at
        once) and the exception propagates.

        Returns:
            ``function``'s result (rank 0's, when processes were started).

        Raises:
            RuntimeError: in a child importing an unguarded ``__main__``; when the ``torchrun`` environment
                does not match ``devices``.
            ProcessRaisedError: (or the original exception) when a started process fails; see the launcher.
        """
        if group_initialized():
            try:
                return self._watched(function, *args, **kwargs)
            except BaseException:
                destroy_launcher_group()  # a torchrun group of an earlier fit: fail the peers now
                raise
        check_main_guard()
        environment = ProcessEnvironment.from_environ()
        if environment is None and self.num_processes > 1:
            threads = None
            if self.accelerator == "cpu" and "OMP_NUM_THREADS" not in os.environ:
                threads = max(1, cpu_count() // self.num_processes)  # do not oversubscribe the cores
            return launch_processes(  # type: ignore[no-any-return]
                self,
                function,
                args,
                kwargs,
                num_processes=self.num_processes,
                start_method=self.start_method,
                threads=threads,
            )
        if environment is not None:
            self.init_process_group()
            try:
                return self._watched(function, *args, **kwargs)
            except BaseException:
                self.destroy_process_group()
                raise
        self.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
        try:
            return function(*args, **kwargs)
        finally:
            if not self._keeps_one_process_group:
                self.destroy_process_group()

    def _watched(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """``function(*args, **kwargs)`` with the collective watchdog running (when there is one); an exception of a
        collective (or raised while a peer had stopped answering) gets a note naming the silent processes."""
        watchdog = self.watchdog
        if watchdog is None:
            return function(*args, **kwargs)
        watchdog.start()
        try:
            return function(*args, **kwargs)
        except Exception as error:
            if isinstance(error, dist.DistError) or watchdog.silent_peers():
                error.add_note(
                    f"rank {watchdog.rank} of {watchdog.world_size} failed {_failed_where(watchdog)} "
                    f"({watchdog.describe()})"
                )
            raise
        finally:
            watchdog.stop()

    def init_process_group(
        self, store: dist.Store | None = None, rank: int | None = None, world_size: int | None = None
    ) -> None:
        """Join the default process group (a no-op when one is initialised) with :attr:`backend` and
        :attr:`timeout` on :attr:`root_device` (:func:`.process_group.join_group`); with several processes and
        :attr:`collective_warning` set, build the collective watchdog (:attr:`watchdog`) on the group's store.

        Args:
            store: the rendezvous store, with ``rank`` and ``world_size``; ``None``: the ``env://`` rendezvous of
                a launcher's environment variables.
            rank: this process's global rank (with ``store``).
            world_size: the number of processes (with ``store``).

        Raises:
            RuntimeError: without ``store`` when no launcher set the environment, or when the environment does
                not match ``devices``.
        """
        if group_initialized():
            return
        if store is None:
            environment = ProcessEnvironment.from_environ()
            if environment is None:
                raise RuntimeError(
                    f"{type(self).__name__}: no process group and no launcher environment (RANK, WORLD_SIZE, "
                    "MASTER_ADDR, MASTER_PORT): run under torchrun, or let Trainer.fit start the processes"
                )
            self._check_environment(environment)
            rank, world_size = environment.global_rank, environment.world_size
        shared = join_group(self.backend, self.timeout, self.root_device, store, rank, world_size)
        self._owns_group = True
        if self.collective_warning is not None and dist.get_world_size() > 1:
            self.watchdog = CollectiveWatchdog(
                side_store(shared, self.timeout), dist.get_rank(), dist.get_world_size(), self.collective_warning
            )

    def destroy_process_group(self) -> None:
        """Destroy the default process group if this strategy created it (a user's own group is left alone)."""
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None
        if self._owns_group:
            destroy_group()
        self._owns_group = False

    def _check_environment(self, environment: ProcessEnvironment) -> None:
        if self._devices_given and environment.local_world_size != self.num_processes:
            raise RuntimeError(
                f"{type(self).__name__}: the launcher started {environment.local_world_size} process(es) on this "
                f"machine (LOCAL_WORLD_SIZE), but devices asks for {self.num_processes}: make them agree "
                "(torchrun --nproc_per_node, or devices='auto')"
            )
        self.root_device  # noqa: B018  # raises for a LOCAL_RANK without a GPU

    # -- loaders ----------------------------------------------------------------------------------------

    @override
    def process_dataloader(self, loader: Iterable[Any], phase: str) -> Iterable[Any]:
        """Shard ``loader`` across the processes (:mod:`~torchsystem_trainer.strategies.samplers`).

        ``"train"``: a ``DistributedSampler`` (the user's shuffle and ``drop_last`` kept; shuffled with the
        loader's own generator's seed, else rank 0's ``torch.initial_seed()``, so ``Trainer(seed=...)`` decides
        it); ``"validation"``/``"test"``: a :class:`DistributedEvalSampler` (no padded duplicates);
        ``"predict"``: unchanged, every process predicts everything (so ``Trainer.predict`` returns all of it).
        A loader that cannot be sharded (not a ``DataLoader``, an ``IterableDataset``, a custom sampler) is left
        whole, with a warning on rank 0: every process then runs all of it, which repeats the work but keeps
        gradients and mean metrics right. A loader with a ``DistributedSampler`` already is left as it is.

        Returns:
            The loader to iterate in this process.

        Raises:
            TypeError: for a ``DataLoader`` subclass that cannot be rebuilt with another sampler.
        """
        world_size = self.world_size
        if world_size == 1 or phase == "predict" or not group_initialized():
            return loader
        reason = unshardable_reason(loader)
        if reason == "":
            return loader
        if reason is not None:
            rank_zero_warn(
                f"{type(self).__name__}: the {phase!r} loader is not sharded across the {world_size} processes, as "
                f"{reason}. Every process iterates all of it: gradients and mean metrics stay right, but the work is "
                "repeated (and sum-type metrics count every sample once per process)"
            )
            return loader
        seed = shuffle_seed_of(loader)  # type: ignore[arg-type]
        if seed is None and isinstance(loader.sampler, RandomSampler):  # type: ignore[attr-defined]
            seed = self.broadcast(torch.initial_seed() % _SEED_MODULUS)
        return distribute_loader(
            loader,  # type: ignore[arg-type]
            train=phase == "train",
            num_replicas=world_size,
            rank=self.global_rank,
            seed=0 if seed is None else seed % _SEED_MODULUS,
        )

    # -- collectives: checks here, the communication in :mod:`~torchsystem_trainer.strategies.collectives` --

    def _collective_device(self) -> torch.device | None:
        return self.root_device if self.backend == "nccl" else None  # NCCL runs on the process's GPU

    @override
    def all_reduce(self, tensor: Tensor, op: ReduceOp = "sum") -> Tensor:
        """Reduce ``tensor`` over the processes with ``op``; see :func:`.collectives.all_reduce`.

        Raises:
            ValueError, TypeError: for an invalid ``op`` or dtype (see :func:`.collectives.check_reduce_op`).
            RuntimeError: outside the processes of a run.
        """
        collectives.check_reduce_op(tensor, op)
        if not collectives.require_group(f"{type(self).__name__}.all_reduce", self.world_size):
            return super().all_reduce(tensor, op)
        if self.watchdog is None:
            return collectives.all_reduce(tensor, op, self._collective_device())
        return self._watch(f"all_reduce({op})", collectives.all_reduce, tensor, op, self._collective_device())

    @override
    def all_gather(self, tensor: Tensor) -> Tensor:
        """Gather ``tensor`` from every process: ``[world_size, *tensor.shape]``; see :func:`.collectives.all_gather`.

        Raises:
            RuntimeError: outside the processes of a run.
        """
        if not collectives.require_group(f"{type(self).__name__}.all_gather", self.world_size):
            return super().all_gather(tensor)
        if self.watchdog is None:
            return collectives.all_gather(tensor, self._collective_device())
        return self._watch("all_gather", collectives.all_gather, tensor, self._collective_device())

    @override
    def broadcast(self, obj: R, src: int = 0) -> R:
        """Send ``obj`` (a tensor or any picklable object) from rank ``src`` to every process; see
        :func:`.collectives.broadcast`.

        Raises:
            RuntimeError: outside the processes of a run.
        """
        if not collectives.require_group(f"{type(self).__name__}.broadcast", self.world_size):
            return super().broadcast(obj, src)
        if self.watchdog is None:
            return collectives.broadcast(obj, src, self._collective_device())
        return self._watch(f"broadcast(src={src})", collectives.broadcast, obj, src, self._collective_device())

    @override
    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point (``name`` is for the reader only).

        Raises:
            RuntimeError: outside the processes of a run.
        """
        if not collectives.require_group(f"{type(self).__name__}.barrier", self.world_size):
            return
        if self.watchdog is None:
            collectives.barrier(self._collective_device())
        else:
            self._watch(f"barrier({name})" if name else "barrier", collectives.barrier, self._collective_device())

    def _watch(self, name: str, collective: Callable[..., R], *args: Any) -> R:
        """``collective(*args)``, marked for the watchdog as ``name`` (there must be a watchdog)."""
        watchdog = self.watchdog
        assert watchdog is not None
        watchdog.enter(name)
        try:
            result = collective(*args)
        except BaseException:
            watchdog.leave(failed=True)
            raise
        watchdog.leave()
        return result

    def __repr__(self) -> str:
        devices = self._processes if self.accelerator == "cpu" else self._gpus
        return (
            f"{type(self).__name__}(accelerator={self.accelerator!r}, devices={devices!r}, backend={self.backend!r}, "
            f"precision={self.precision.precision!r}, start_method={self.start_method!r})"
        )


def _collective_warning(owner: str, value: float | str | None, timeout: timedelta) -> float | None:
    """``collective_warning`` in seconds (``"auto"``: ``min(300, timeout / 2)``), or ``None``.

    Raises:
        ValueError: for anything but ``"auto"``, ``None`` or seconds > 0.
    """
    if value is None:
        return None
    if isinstance(value, str) and value == "auto":
        return min(300.0, timeout.total_seconds() / 2)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError(f"{owner}: collective_warning={value!r} is invalid; valid: 'auto', None or seconds > 0")


def _failed_where(watchdog: CollectiveWatchdog) -> str:
    """Where a process failed, for the note on a collective's error: in the strategy's collective that failed, or
    after some time without finishing one (DDP's gradient all-reduce and FSDP's gathers run inside forward and
    backward)."""
    failed = watchdog.failed_collective()
    if failed is not None:
        return f"in {failed[0]} after waiting {failed[1]:.1f} s"
    return f"after {watchdog.waited_s():.1f} s without finishing a collective (in a backward pass's communication?)"
