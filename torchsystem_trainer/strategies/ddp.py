"""Data-parallel training on ``torch.distributed``: one process per device, each with a full copy of the
aggregate, gradients averaged by ``torch.nn.parallel.DistributedDataParallel`` (DDP).

Launching, the process group, sharded loaders and collectives are every data-parallel strategy's
(:class:`~torchsystem_trainer.strategies.parallel.ParallelStrategy`). Wrapping (see :meth:`DDPStrategy.setup`)
leaves the aggregate unchanged (:mod:`~torchsystem_trainer.strategies.routing`).

The design follows Lightning Fabric's ``DDPStrategy`` (device and backend choice, ``no_sync`` for gradient
accumulation, collectives) and PyTorch's "Getting Started with Distributed Data Parallel" tutorial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from typing_extensions import override

from torchsystem_trainer.domain import Aggregate
from torchsystem_trainer.strategies.collectives import average_gradients, group_initialized
from torchsystem_trainer.strategies.parallel import ACCELERATORS, START_METHODS, Accelerator, ParallelStrategy
from torchsystem_trainer.strategies.routing import Route, loose_parameters, route_modules, unroute

__all__ = ["ACCELERATORS", "START_METHODS", "Accelerator", "DDPStrategy"]

A = TypeVar("A", bound=Aggregate)
_RESERVED_DDP_ARGUMENTS = ("module", "device_ids", "output_device", "process_group", "find_unused_parameters")

class DDPStrategy(ParallelStrategy):
    """Train on several processes, one per device, with ``DistributedDataParallel``.

    Per process: a full copy of the aggregate on its device, its shard of every training batch stream, and the
    gradients averaged over all processes during the backward pass, so every copy takes the same optimizer step
    and the weights stay identical. With per-process batch ``B`` on ``N`` processes a step sees the mean
    gradient of ``N * B`` samples: as one process with batch ``N * B``.

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
        find_unused_parameters: DDP's option: set it when some parameters get no gradient in some steps.
        start_method: how the strategy starts processes from a plain ``python script.py``: ``"spawn"``
            (default: works everywhere, CUDA included; needs picklable arguments and a ``__main__`` guard),
            ``"forkserver"`` (the same, cheaper when launching repeatedly) or ``"fork"`` (Linux; nothing pickled;
            one intra-op thread per process; no CUDA initialised before). Unused under ``torchrun``.
        ddp_comm_hook: a DDP communication hook registered on every wrapped module, e.g.
            ``torch.distributed.algorithms.ddp_comm_hooks.default_hooks.fp16_compress_hook``.
        ddp_comm_state: the hook's state (``None`` for the default hooks).
        **ddp_kwargs: other ``DistributedDataParallel`` arguments (``bucket_cap_mb``, ``static_graph``,
            ``gradient_as_bucket_view``, ``broadcast_buffers``...).

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
        collective_warning: float | str | None = "auto",
        find_unused_parameters: bool = False,
        start_method: str = "spawn",
        ddp_comm_hook: Callable[..., Any] | None = None,
        ddp_comm_state: object = None,
        **ddp_kwargs: Any,
    ) -> None:
        reserved = sorted(set(ddp_kwargs) & set(_RESERVED_DDP_ARGUMENTS))
        if reserved:
            raise ValueError(
                f"DDPStrategy: {', '.join(reserved)} are set by the strategy; give the other "
                "DistributedDataParallel arguments only"
            )
        self.find_unused_parameters = bool(find_unused_parameters)
        self._ddp_kwargs = ddp_kwargs
        self._ddp_comm_hook = ddp_comm_hook
        self._ddp_comm_state = ddp_comm_state
        self._routes: list[Route] = []
        self._loose: list[torch.nn.Parameter] = []
        self._routing_checked = False
        self._grads_unsynced = False  # the last backward ran under no_sync: gradients differ across processes
        super().__init__(devices, accelerator, backend, precision, timeout, start_method, collective_warning)

    # -- set-up -----------------------------------------------------------------------------------------

    @override
    def setup(self, aggregate: A) -> A:
        """Set up as :class:`Strategy` does (device, precision, optimizer binding), then route each trainable
        child of the aggregate through ``DistributedDataParallel`` (:mod:`~torchsystem_trainer.strategies.routing`):
        the aggregate keeps its modules, parameter objects, attributes and ``state_dict`` keys. DDP broadcasts
        rank 0's parameters and buffers, so every process starts from the same weights. Idempotent.

        Runs inside the processes of the run (``Trainer.fit`` calls it there); under ``torchrun`` it may also run
        before ``fit`` (it joins the group then).

        Returns:
            The same aggregate.

        Raises:
            RuntimeError: outside the processes of a run (no process group, no launcher environment).
            ValueError: when two trainable children share a parameter.
        """
        if not group_initialized():
            self.init_process_group()
        super().setup(aggregate)
        new = route_modules(aggregate, self._wrap)
        if new:
            self._routes.extend(new)
            self._routing_checked = False
        self._loose = loose_parameters(aggregate, [route.module for route in self._routes])
        return aggregate

    def _wrap(self, module: torch.nn.Module) -> DistributedDataParallel:
        index = self.root_device.index if self.accelerator == "cuda" else None
        ddp = DistributedDataParallel(
            module,
            device_ids=None if index is None else [index],
            output_device=index,
            find_unused_parameters=self.find_unused_parameters,
            **self._ddp_kwargs,
        )
        if self._ddp_comm_hook is not None:
            ddp.register_comm_hook(self._ddp_comm_state, self._ddp_comm_hook)
        return ddp

    @property
    def ddp_modules(self) -> dict[str, DistributedDataParallel]:
        """The ``DistributedDataParallel`` of each routed child, by its name in the aggregate (``"nn"``); for
        registering communication hooks or reading DDP's state. Empty outside a fit."""
        return {route.name: route.ddp for route in self._routes}

    @override
    def teardown(self, aggregate: Aggregate) -> None:
        """Give the aggregate's modules their own forward back and remove DDP's gradient hooks, then undo the
        bindings (the process group stays until :meth:`launch` ends)."""
        own = {id(module) for module in aggregate.modules()}
        unroute([route for route in self._routes if id(route.module) in own])
        self._routes = [route for route in self._routes if id(route.module) not in own]
        self._loose = []
        self._grads_unsynced = False
        super().teardown(aggregate)


    # -- per batch --------------------------------------------------------------------------------------

    @override
    def train_step_context(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context, plus ``no_sync()`` of every wrapped module while :attr:`accumulating`: the
        gradient all-reduce then waits for the last batch of the accumulation window (whose backward
        all-reduces the summed gradients). The whole step (forward and backward) must run inside."""
        if not self.steps.accumulating or not self._routes:
            self._grads_unsynced = False
            return self.forward_context()
        self._grads_unsynced = True
        stack = contextlib.ExitStack()
        for route in self._routes:
            stack.enter_context(route.ddp.no_sync())
        stack.enter_context(self.forward_context())
        return stack

    @override
    def gradient_reducer(self) -> Callable[[Optimizer], None] | None:
        """:meth:`reduce_gradients` (step a of every optimizer step: see
        :mod:`~torchsystem_trainer.strategies.optimizer_step`)."""
        return self.reduce_gradients

    def reduce_gradients(self, optimizer: Optimizer) -> None:
        """Make sure ``optimizer``'s gradients are averaged over the processes before it steps.

        DDP averaged them during the backward pass, except for parameters outside every wrapped module and for
        a window that ended under ``no_sync`` (a loader that ended inside an accumulation window): those are
        averaged here. At the first step, checks that no wrapped module was bypassed.

        Raises:
            RuntimeError: when a wrapped module's parameters got gradients though it was never called (its
                submodules were called directly), so DDP did not average them.
        """
        if not self._routing_checked and self._routes:
            self._check_routing()
            self._routing_checked = True
        if self._grads_unsynced:
            parameters = [p for route in self._routes for p in route.module.parameters() if p.requires_grad]
            average_gradients(parameters, self.root_device)
            self._grads_unsynced = False
        if self._loose:
            stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            loose = [p for p in self._loose if id(p) in stepped]
            average_gradients(loose, self.root_device)

    def _check_routing(self) -> None:
        for route in self._routes:
            if route.forward.calls == 0 and any(p.grad is not None for p in route.module.parameters()):
                raise RuntimeError(
                    f"DDPStrategy: the parameters of aggregate.{route.name} got gradients, but aggregate.{route.name} "
                    "itself was never called in training, so its gradients were not averaged across processes. "
                    f"Call aggregate.{route.name}(...) (or self(...) with a forward that calls it), not its "
                    "submodules directly"
                )

