"""The Strategy: where tensors live, at what precision the arithmetic runs, and how processes share the work.

A strategy is the only thing that decides devices, precision and data parallelism (as Lightning Fabric's
``Strategy`` + ``Precision`` do). The Trainer asks it to launch processes, set up the aggregate, move batches,
open the forward context, and step optimizers; callbacks use its collectives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ContextManager, Literal, TypeVar

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.optim import Optimizer

from torchsystem_trainer.domain import Aggregate
from torchsystem_trainer.strategies.binding import (
    bind_optimizer,
    bind_scheduler,
    find_optimizers,
    find_schedulers,
    unbind,
)
from torchsystem_trainer.strategies.precision import Precision

__all__ = ["Strategy", "ClipAlgorithm", "CLIP_ALGORITHMS", "ReduceOp"]

A = TypeVar("A", bound=Aggregate)
R = TypeVar("R")
ClipAlgorithm = Literal["norm", "value"]
CLIP_ALGORITHMS: tuple[str, ...] = ("norm", "value")
ReduceOp = Literal["sum", "mean", "max", "min"]


class Strategy(ABC):
    """Base class of strategies. Subclasses give :attr:`root_device`; data-parallel ones override the process
    topology, :meth:`launch`, :meth:`setup` (wrapping), :meth:`process_dataloader` and the collectives.

    Attributes:
        precision: the :class:`Precision` plugin.
        accumulating: set by the Trainer before each training batch: ``True`` when this batch's gradients
            are accumulated and the optimizer must not step yet.
        window_start: set by the Trainer before each training batch: ``True`` on the first batch of an
            accumulation window, the only batch whose ``zero_grad()`` clears the gradients.
        accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm: see :meth:`configure`.
    """

    def __init__(self, precision: str = "32-true") -> None:
        self.precision = Precision(precision, self.root_device)
        self.accumulating = False
        self.window_start = True
        self.accumulate_grad_batches = 1
        self.gradient_clip_val: float | None = None
        self.gradient_clip_algorithm: ClipAlgorithm = "norm"
        self.on_gradients: Callable[[Optimizer], None] | None = None
        self._backward_seen = False
        self.plain_step = self._plain_step()

    # -- topology ---------------------------------------------------------------------------------------

    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process computes on."""

    @property
    def global_rank(self) -> int:
        """0-based index of this process among all processes."""
        return 0

    @property
    def local_rank(self) -> int:
        """0-based index of this process among the processes of its machine."""
        return 0

    @property
    def world_size(self) -> int:
        """Number of processes sharing the work."""
        return 1

    @property
    def is_global_zero(self) -> bool:
        """Whether this is the process of global rank 0 (the one that writes files)."""
        return self.global_rank == 0

    def launch(self, function: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``function`` in every process of this strategy; here, just this one.

        Returns:
            ``function``'s result on this process.
        """
        return function(*args, **kwargs)

    # -- set-up -----------------------------------------------------------------------------------------

    def configure(
        self,
        *,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: ClipAlgorithm = "norm",
        on_gradients: Callable[[Optimizer], None] | None = None,
    ) -> None:
        """Set how :meth:`optimizer_step` treats gradients (the Trainer calls this with its own arguments).

        Args:
            accumulate_grad_batches: batches whose gradients are summed per optimizer step; the sum is divided
                by this number before the step, so a step sees the mean gradient (>= 1).
            gradient_clip_val: clip gradients to this norm (or value), after unscaling; ``None`` for no clipping.
            gradient_clip_algorithm: ``"norm"`` (``torch.nn.utils.clip_grad_norm_``, 2-norm over all of an
                optimizer's parameters) or ``"value"`` (``clip_grad_value_``).
            on_gradients: called with the optimizer once gradients are final, before the step.
        """
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.on_gradients = on_gradients
        self.plain_step = self._plain_step()

    def _plain_step(self) -> bool:
        """Whether :meth:`optimizer_step` would only call the optimizer's own step: no scaler, no accumulation,
        no clipping, no ``on_gradients``, and not overridden. A bound optimizer then steps directly."""
        return (
            self.precision.scaler is None
            and self.accumulate_grad_batches == 1
            and self.gradient_clip_val is None
            and self.on_gradients is None
            and type(self).optimizer_step is Strategy.optimizer_step
        )

    def setup(self, aggregate: A) -> A:
        """Move ``aggregate`` to :attr:`root_device`, cast it to the precision's parameter dtype, and bind its
        optimizers, LR schedulers and :meth:`~torchsystem_trainer.domain.Aggregate.backward` to this strategy.

        Idempotent, so it may also run as a ``Compiler`` step before the Trainer runs it again (for a data-parallel
        strategy only where the processes already exist, as under ``torchrun``).

        Args:
            aggregate: the aggregate to train.

        Returns:
            The same aggregate, set up.
        """
        aggregate.to(self.root_device)
        self.precision.convert_module(aggregate)
        schedulers = find_schedulers(aggregate)
        if not self.plain_step or schedulers:  # a plain step with no scheduler needs no binding at all
            for optimizer in find_optimizers(aggregate):
                bind_optimizer(optimizer, self)
            for scheduler in schedulers:
                bind_scheduler(scheduler)
        if isinstance(aggregate, Aggregate):
            # Only loss scaling (16-mixed) or a subclass's own backward needs the detour; otherwise the aggregate's
            # backward is plain loss.backward(), two calls fewer per step.
            needed = self.precision.scaler is not None or type(self).backward is not Strategy.backward
            aggregate.bind_backward(self.backward if needed else None)
        return aggregate

    def teardown(self, aggregate: Aggregate) -> None:
        """Undo :meth:`setup`'s bindings (the aggregate stays on its device)."""
        for scheduler in find_schedulers(aggregate):
            unbind(scheduler)
        for optimizer in find_optimizers(aggregate):
            unbind(optimizer)
        if isinstance(aggregate, Aggregate):
            aggregate.bind_backward(None)

    def process_dataloader(self, loader: Iterable[Any], phase: str) -> Iterable[Any]:
        """Adapt a loader to this strategy (a data-parallel one shards it); unchanged here."""
        return loader

    # -- per batch --------------------------------------------------------------------------------------

    def batch_to_device(self, batch: Any) -> Any:
        """Move every tensor of ``batch`` (any nesting of tuples, lists, dicts) to :attr:`root_device`, casting
        floating inputs for ``64-true``.

        Returns:
            A batch of the same structure.
        """
        device = self.root_device
        if type(batch) is tuple and not self.precision.converts_inputs:
            # The common (inputs, targets) of plain tensors, without apply_to_collection's generic walk
            # (~1 us per batch instead of ~2.5 us); anything else (nesting, dicts, non-tensors) goes below.
            tensors = [value.to(device, non_blocking=True) for value in batch if isinstance(value, Tensor)]
            if len(tensors) == len(batch):
                return tuple(tensors)
        if self.precision.converts_inputs:
            convert = self.precision.convert_input
            return apply_to_collection(batch, Tensor, lambda t: convert(t.to(device, non_blocking=True)))
        return apply_to_collection(batch, Tensor, lambda t: t.to(device, non_blocking=True))

    def forward_context(self) -> ContextManager[Any]:
        """The precision context ``fit``/``evaluate`` run under (autocast for mixed precision)."""
        return self.precision.forward_context()

    def needs_step_context(self) -> bool:
        """Whether :meth:`train_step_context` does anything: autocast (mixed precision), or a subclass's own
        context (``no_sync``). When not, the Trainer enters no context per batch."""
        return self.precision.autocast_dtype is not None or type(self).train_step_context is not Strategy.train_step_context

    def train_step_context(self) -> ContextManager[Any]:
        """The context one training batch runs under: :meth:`forward_context`; a data-parallel strategy adds
        ``no_sync`` while :attr:`accumulating`."""
        return self.forward_context()

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` (``[]`` scalar) with the precision's loss scaling; bound to the aggregate's
        ``backward`` by :meth:`setup`."""
        self._backward_seen = True
        self.precision.backward(loss)

    def optimizer_step(self, optimizer: Optimizer) -> Any:
        """Finish the gradients and step: unscale (``16-mixed``), average over the accumulation window, clip,
        call ``on_gradients``, then step through the precision (which skips non-finite fp16 steps).

        Returns:
            What the optimizer's step returned; ``None`` for a skipped step.

        Raises:
            RuntimeError: under ``16-mixed`` when the backward pass did not go through
                ``aggregate.backward(loss)``, so the gradients are not scaled.
        """
        if self.precision.scaler is not None:
            if not self._backward_seen:
                raise RuntimeError(
                    "precision='16-mixed' scales the loss: call self.backward(loss) instead of loss.backward() "
                    "in the aggregate's fit"
                )
            self.precision.unscale(optimizer)
        self._backward_seen = False
        if self.accumulate_grad_batches > 1:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, 1.0 / self.accumulate_grad_batches)
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer)
        if self.on_gradients is not None:
            self.on_gradients(optimizer)
        return self.precision.step(optimizer)

    def clip_gradients(self, optimizer: Optimizer) -> None:
        """Clip ``optimizer``'s gradients in place by :attr:`gradient_clip_algorithm`."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        assert self.gradient_clip_val is not None
        if self.gradient_clip_algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(parameters, self.gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(parameters, self.gradient_clip_val)

    # -- collectives ------------------------------------------------------------------------------------

    def all_reduce(self, tensor: Tensor, op: ReduceOp = "sum") -> Tensor:
        """Reduce ``tensor`` across processes; the identity with one process.

        Returns:
            The reduced tensor (same shape and dtype).
        """
        return tensor

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Gather ``tensor`` from every process.

        Returns:
            ``[world_size, *tensor.shape]``.
        """
        return tensor.unsqueeze(0)

    def broadcast(self, obj: R, src: int = 0) -> R:
        """Send ``obj`` (a tensor or any picklable object) from process ``src`` to all; returns it."""
        return obj

    def barrier(self, name: str | None = None) -> None:
        """Wait until every process reaches this point."""

    # -- persistence ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The strategy's own state: the precision scaler's."""
        return self.precision.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.precision.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.root_device)!r}, precision={self.precision.precision!r})"

