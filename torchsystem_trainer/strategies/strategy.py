"""The Strategy: where tensors live, at what precision the arithmetic runs, and how processes share the work.

A strategy is the only thing that decides devices, precision and data parallelism (as Lightning Fabric's
``Strategy`` + ``Precision`` do). The Trainer asks it to launch processes, set up the aggregate, move batches and
open the forward context; the aggregate's optimizer steps go through its :class:`OptimizerStep` (``strategy.steps``;
:mod:`~torchsystem_trainer.strategies.optimizer_step` is that whole path); callbacks use its collectives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from typing import Any, Literal, TypeVar

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor
from torch.optim import Optimizer

from torchsystem_trainer.checkpoint import aggregate_state
from torchsystem_trainer.domain import Aggregate
from torchsystem_trainer.strategies.optimizer_step import OptimizerStep
from torchsystem_trainer.strategies.precision import Precision

__all__ = ["CLIP_ALGORITHMS", "ClipAlgorithm", "ReduceOp", "Strategy"]

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
        steps: the :class:`OptimizerStep` every bound optimizer step runs through.
        accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm: see :meth:`configure`.
    """

    def __init__(self, precision: str = "32-true") -> None:
        self.precision = Precision(precision, self.root_device)
        self.steps = OptimizerStep(self.precision)
        self.accumulate_grad_batches = 1
        self.gradient_clip_val: float | None = None
        self.gradient_clip_algorithm: ClipAlgorithm = "norm"

    @property
    def accumulating(self) -> bool:
        """Whether the current training batch's gradients are accumulated and the optimizer does not step yet
        (``steps.accumulating``, set by the loop before each batch)."""
        return self.steps.accumulating

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
        """Set what the optimizer step does around the optimizer's own step (the Trainer calls this with its own
        arguments); see :mod:`~torchsystem_trainer.strategies.optimizer_step` for the order.

        Args:
            accumulate_grad_batches: batches whose gradients are summed per optimizer step; the sum is divided
                by this number before the step, so a step sees the mean gradient (>= 1).
            gradient_clip_val: clip gradients to this norm (or value), after unscaling; ``None`` for no clipping.
            gradient_clip_algorithm: ``"norm"`` (``torch.nn.utils.clip_grad_norm_``, 2-norm over all of an
                optimizer's parameters) or ``"value"`` (``clip_grad_value_``).
            on_gradients: called with the optimizer once gradients are final (unscaled, averaged), before
                clipping and the step.
        """
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.steps.precision = self.precision
        self.steps.configure(
            accumulate_grad_batches=accumulate_grad_batches,
            reduce_gradients=self.gradient_reducer(),
            clip_gradients=None if gradient_clip_val is None else self.clip_gradients,
            on_gradients=on_gradients,
        )

    def gradient_reducer(self) -> Callable[[Optimizer], None] | None:
        """What reduces an optimizer's gradients across processes before it steps (step a of the optimizer step),
        for what the backward pass did not reduce; ``None`` (the default): nothing to reduce.

        Returns:
            ``(optimizer) -> None``, or ``None``.
        """
        return None

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
        if self.steps.needed:  # a plain step needs no binding at all: the optimizer's own runs
            self.steps.bind(aggregate)
        if isinstance(aggregate, Aggregate):
            # Only loss scaling (16-mixed) or a subclass's own backward needs the detour; otherwise the aggregate's
            # backward is plain loss.backward(), two calls fewer per step.
            needed = self.precision.scaler is not None or type(self).backward is not Strategy.backward
            aggregate.bind_backward(self.backward if needed else None)
        return aggregate

    def teardown(self, aggregate: Aggregate) -> None:
        """Undo :meth:`setup`'s bindings (the aggregate stays on its device)."""
        OptimizerStep.unbind(aggregate)
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
        overridden = type(self).train_step_context is not Strategy.train_step_context
        return self.precision.autocast_dtype is not None or overridden

    def evaluation_context(self) -> ContextManager[Any]:
        """The context a whole validation, test or predict phase runs under (entered once per phase, inside
        ``torch.inference_mode()``): :meth:`forward_context`; a sharded strategy also gathers the parameters
        there, so processes may run different numbers of evaluation batches."""
        return self.forward_context()

    def train_step_context(self) -> ContextManager[Any]:
        """The context one training batch runs under: :meth:`forward_context`; a data-parallel strategy adds
        ``no_sync`` while :attr:`accumulating`."""
        return self.forward_context()

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` (``[]`` scalar) with the precision's loss scaling; bound to the aggregate's
        ``backward`` by :meth:`setup`."""
        self.steps.backward(loss)

    def clip_gradients(self, optimizer: Optimizer) -> None:
        """Clip ``optimizer``'s gradients in place by :attr:`gradient_clip_algorithm` (step e of the optimizer
        step: after unscaling and ``GradientsComputed``)."""
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

    def barrier(self, name: str | None = None) -> None:  # noqa: B027 (a no-op with one process, not abstract)
        """Wait until every process reaches this point."""

    # -- persistence ------------------------------------------------------------------------------------

    @property
    def sharded_checkpoints(self) -> bool:
        """Whether a checkpoint of this strategy is a ``torch.distributed.checkpoint`` folder that every process
        writes its shard of (:mod:`torchsystem_trainer.checkpoint.sharded`), rather than one file written by
        global rank 0. ``False`` here."""
        return False

    def aggregate_state(self, aggregate: Any) -> dict[str, Any]:
        """The aggregate's whole state in the one-process format
        (:func:`~torchsystem_trainer.checkpoint.aggregate_state`: full tensors, optimizer states by parameter
        index), whatever the sharding. What the launcher hands back from rank 0 to the caller of ``fit``.

        A sharded strategy gathers the shards here: every process must call it (a collective), and only global
        rank 0's result is complete.

        Returns:
            ``{"modules", "optimizers", "schedulers", "epoch", "id", "networks"}``.
        """
        return aggregate_state(aggregate)

    def state_dict(self) -> dict[str, Any]:
        """The strategy's own state: the precision scaler's."""
        return self.precision.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.precision.load_state_dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={str(self.root_device)!r}, precision={self.precision.precision!r})"

