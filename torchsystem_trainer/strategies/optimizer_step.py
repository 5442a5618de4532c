"""One ``optimizer.step()`` called in an aggregate's ``fit``, followed from the call to the parameter update.

This file is the whole path, for every strategy (one device, DDP, and sharded ones): read it top to bottom.

An aggregate written as the seed writes it calls ``optimizer.zero_grad()``, ``loss.backward()`` (or
``self.backward(loss)``) and ``optimizer.step()`` itself. The strategy owns one :class:`OptimizerStep`
(``strategy.steps``). When it has work to do around the step (:attr:`OptimizerStep.needed`: gradient accumulation,
fp16 loss scaling, clipping, a ``GradientsComputed`` listener, or gradients the strategy still reduces), its
``setup`` calls :meth:`OptimizerStep.bind`, which puts a ``step`` and a ``zero_grad`` on each optimizer *instance*
(the object, its class, its ``state_dict`` and every LR scheduler's reference to it stay the same). With nothing
to do, nothing is bound: ``optimizer.step()`` is the optimizer's own, as in a hand-written loop.

The path of one bound ``optimizer.step()``:

1. ``step`` (made by :meth:`OptimizerStep.bind`): inside an accumulation window (:attr:`OptimizerStep.accumulating`,
   set by the loop before each batch through :meth:`OptimizerStep.begin_batch`) it does nothing, and the gradients
   keep summing; DDP's backward then ran under ``no_sync`` (``Strategy.train_step_context``). Otherwise:
2. :meth:`OptimizerStep.step`:

   a. ``reduce_gradients(optimizer)``, the strategy's seam (``Strategy.gradient_reducer()``): DDP averages over
      the processes what its backward hooks did not (parameters outside every wrapped module, a window that ended
      under ``no_sync``) and checks once that no wrapped module was bypassed; one device has none. A sharded
      strategy reduces in its backward and needs none either.
   b. unscale (``16-mixed``: ``GradScaler.unscale_``), once it is sure the backward went through the scaler;
   c. average over the accumulation window (the gradients were summed over ``accumulate_grad_batches`` batches);
   d. ``on_gradients(optimizer)``: the Trainer emits ``GradientsComputed``: final, unclipped gradients, as
      Lightning's ``on_before_optimizer_step`` sees them;
   e. ``clip_gradients(optimizer)``, the strategy's seam (``Strategy.clip_gradients``), when
      ``gradient_clip_val`` is set;
   f. the optimizer's own step: directly, or through ``GradScaler.step`` (``Precision.step``), which skips a step
      whose gradients hold inf or NaN. ``GradScaler.step`` calls ``optimizer.step()`` itself, so for that call the
      optimizer has its own ``step`` back.

3. A step post-hook (``Optimizer.register_step_post_hook``) counts the steps that really ran. A bound LR scheduler
   steps only when its optimizer stepped since the scheduler's previous step, so a batch inside an accumulation
   window or a step the scaler skipped does not advance the schedule (Lightning does the same for step-interval
   schedulers).

``zero_grad()`` clears the gradients only at the first batch of a window (:attr:`OptimizerStep.window_start`);
then the next step checks again that a backward went through :meth:`OptimizerStep.backward` (``16-mixed``), so
several optimizers may step after one backward.
:meth:`OptimizerStep.backward` (bound to ``Aggregate.backward``) scales the loss under ``16-mixed``.

How a strategy customizes the step: it returns a reducer from ``gradient_reducer()``, overrides
``clip_gradients``, ``backward`` or ``train_step_context``, or brings a ``Precision`` with its own scaler; the
order above stays the same for all.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from torchsystem_trainer.strategies.precision import Precision

__all__ = ["OptimizerStep", "find_optimizers", "find_schedulers"]

_KEY = "_torchsystem_binding"
# torch's LRScheduler marks the optimizer step it wraps (to notice a scheduler stepped before its optimizer) with
# this private attribute, and warns when the step it finds lacks it; there is no public way to say a step is
# tracked. A bound step that wraps a marked step carries the mark too (it calls that step, so it is tracked); an
# unmarked one is left for a scheduler built later to wrap. If torch drops the convention, the mark does nothing
# and torch's own warning shows.
_LR_SCHEDULER_MARK = "_wrapped_by_lr_sched"
_GradientHook = Callable[[Optimizer], None]


class OptimizerStep:
    """The strategy's side of every optimizer step (see the module docstring).

    Args:
        precision: the strategy's precision (loss scaling, the scaler's step).

    Attributes:
        accumulate_grad_batches: batches whose gradients are summed per optimizer step (>= 1).
        accumulating: the current batch's gradients are summed and the optimizer must not step yet.
        window_start: the current batch is the first of an accumulation window, whose ``zero_grad()`` clears.
        reduce_gradients, clip_gradients, on_gradients: steps a, e and d of the path, or ``None``.
    """

    def __init__(self, precision: Precision) -> None:
        self.precision = precision
        self.accumulate_grad_batches = 1
        self.accumulating = False
        self.window_start = True
        self.reduce_gradients: _GradientHook | None = None
        self.clip_gradients: _GradientHook | None = None
        self.on_gradients: _GradientHook | None = None
        self.backward_seen = False

    def configure(
        self,
        *,
        accumulate_grad_batches: int = 1,
        reduce_gradients: _GradientHook | None = None,
        clip_gradients: _GradientHook | None = None,
        on_gradients: _GradientHook | None = None,
    ) -> None:
        """Set what the path does (the strategy calls this from its ``configure``)."""
        self.accumulate_grad_batches = accumulate_grad_batches
        self.reduce_gradients, self.clip_gradients, self.on_gradients = reduce_gradients, clip_gradients, on_gradients

    @property
    def needed(self) -> bool:
        """Whether the step does anything but the optimizer's own step; when not, nothing is bound."""
        return (
            self.accumulate_grad_batches > 1
            or self.precision.scaler is not None
            or self.reduce_gradients is not None
            or self.clip_gradients is not None
            or self.on_gradients is not None
        )

    # -- the loop's side, per batch ---------------------------------------------------------------------

    def begin_batch(self, index: int, total: int | None) -> None:
        """Place training batch ``index`` (0-based in its epoch) in its accumulation window; a window also ends
        at the loader's last batch (``total``, when known). Called only when ``accumulate_grad_batches > 1``."""
        position = index % self.accumulate_grad_batches
        self.window_start = position == 0
        self.accumulating = position != self.accumulate_grad_batches - 1 and index + 1 != total

    def finish_window(self, aggregate: Any) -> bool:
        """At the end of a training phase: step every optimizer of ``aggregate`` if the loader ended inside an
        accumulation window (its length was unknown), then start the next phase at a window's start.

        Returns:
            Whether the optimizers stepped.
        """
        unfinished = self.accumulating
        self.accumulating, self.window_start = False, True
        if unfinished:
            for optimizer in find_optimizers(aggregate):
                optimizer.step()
        return unfinished

    def backward(self, loss: Tensor) -> None:
        """Backpropagate ``loss`` (``[]``) with the precision's loss scaling (``Aggregate.backward`` comes here)."""
        self.backward_seen = True
        self.precision.backward(loss)

    # -- the path ---------------------------------------------------------------------------------------

    def step(self, optimizer: Optimizer, own_step: Callable[..., Any], closure: Callable[[], Any] | None) -> Any:
        """Steps a to f of the module docstring, for a window's last batch.

        Returns:
            What the optimizer's step returned; ``None`` for a step the scaler skipped.

        Raises:
            RuntimeError: under ``16-mixed`` when the backward pass did not go through ``aggregate.backward(loss)``,
                so the gradients are not scaled.
        """
        if self.reduce_gradients is not None:
            self.reduce_gradients(optimizer)
        scaler = self.precision.scaler
        if scaler is not None:
            if not self.backward_seen:
                raise RuntimeError(
                    "precision='16-mixed' scales the loss: call self.backward(loss) instead of loss.backward() "
                    "in the aggregate's fit"
                )
            self.precision.unscale(optimizer)
        if self.accumulate_grad_batches > 1:
            _scale_gradients(optimizer, 1.0 / self.accumulate_grad_batches)
        if self.on_gradients is not None:
            self.on_gradients(optimizer)
        if self.clip_gradients is not None:
            self.clip_gradients(optimizer)
        if scaler is None:
            return own_step() if closure is None else own_step(closure)
        if closure is not None:
            raise RuntimeError("precision='16-mixed' cannot step an optimizer with a closure (torch's GradScaler)")
        bound = optimizer.__dict__["step"]
        optimizer.__dict__["step"] = own_step  # GradScaler.step calls optimizer.step() itself
        try:
            return self.precision.step(optimizer)
        finally:
            optimizer.__dict__["step"] = bound

    # -- binding ----------------------------------------------------------------------------------------

    def bind(self, aggregate: Any) -> None:
        """Route the ``step``/``zero_grad`` of every optimizer of ``aggregate`` through this object, and gate its LR
        schedulers on real steps when a step can be skipped (accumulation, the fp16 scaler). Binding again only
        moves an optimizer to this object."""
        for optimizer in find_optimizers(aggregate):
            _bind_optimizer(optimizer, self)
        if self.accumulate_grad_batches > 1 or self.precision.scaler is not None:
            for scheduler in find_schedulers(aggregate):
                _bind_scheduler(scheduler)

    @staticmethod
    def unbind(aggregate: Any) -> None:
        """Give every optimizer and scheduler of ``aggregate`` back what it had before :meth:`bind`."""
        for scheduler in find_schedulers(aggregate):
            _unbind(scheduler)
        for optimizer in find_optimizers(aggregate):
            _unbind(optimizer)


def _scale_gradients(optimizer: Optimizer, factor: float) -> None:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    foreach_mul = getattr(torch, "_foreach_mul_", None)  # private, but what torch.optim itself uses: one kernel
    if foreach_mul is not None:
        foreach_mul(grads, factor)
    else:  # a torch without it: the same result, one kernel per tensor
        for grad in grads:
            grad.mul_(factor)


class _OptimizerBinding:
    """What a bound optimizer remembers: its steps' owner, its own methods, and how many steps it really took."""

    __slots__ = ("hook", "own_step", "own_zero_grad", "owner", "previous", "steps")

    def __init__(self, optimizer: Optimizer, owner: OptimizerStep) -> None:
        self.owner = owner
        self.own_step: Callable[..., Any] = optimizer.step
        self.own_zero_grad: Callable[..., Any] = optimizer.zero_grad
        self.previous = {name: optimizer.__dict__[name] for name in ("step", "zero_grad") if name in optimizer.__dict__}
        self.steps = 0
        self.hook = optimizer.register_step_post_hook(self._count)

    def _count(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1


def _bind_optimizer(optimizer: Optimizer, owner: OptimizerStep) -> None:
    binding = optimizer.__dict__.get(_KEY)
    if binding is not None:
        binding.owner = owner
        return
    binding = _OptimizerBinding(optimizer, owner)

    def step(optimizer: Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        steps = binding.owner
        if steps.accumulating:
            return None
        return steps.step(optimizer, binding.own_step, closure)

    def zero_grad(set_to_none: bool = True) -> None:
        steps = binding.owner
        if steps.window_start:
            steps.backward_seen = False  # the gradients to come must come through backward() again
            binding.own_zero_grad(set_to_none)

    if hasattr(binding.own_step, _LR_SCHEDULER_MARK):  # see _LR_SCHEDULER_MARK
        setattr(step, _LR_SCHEDULER_MARK, True)
    # a method of the instance (not a plain function), as torch's LRScheduler expects when it wraps a step
    optimizer.__dict__.update({_KEY: binding, "step": types.MethodType(step, optimizer), "zero_grad": zero_grad})


def steps_taken(optimizer: Optimizer) -> int:
    """How many times a bound optimizer's own step really ran (steps skipped by the scaler do not count)."""
    return optimizer.__dict__[_KEY].steps  # type: ignore[no-any-return]


_SCHEDULER_NAMES = ("step", "state_dict", _KEY)


class _SchedulerBinding:
    __slots__ = ("previous", "seen", "state_dict", "step")

    def __init__(self, scheduler: LRScheduler) -> None:
        self.step = scheduler.step
        self.state_dict = scheduler.state_dict
        self.previous = {name: scheduler.__dict__[name] for name in _SCHEDULER_NAMES if name in scheduler.__dict__}
        self.seen = steps_taken(scheduler.optimizer)


def _bind_scheduler(scheduler: LRScheduler) -> None:
    """Make ``scheduler.step()`` a no-op when its optimizer took no step since the scheduler's previous step; its
    ``state_dict()`` is kept free of the binding (torch's schedulers save their whole ``__dict__``)."""
    if _KEY in scheduler.__dict__ or _KEY not in scheduler.optimizer.__dict__:
        return
    binding = _SchedulerBinding(scheduler)

    def step(*args: Any, **kwargs: Any) -> None:
        taken = steps_taken(scheduler.optimizer)
        if taken == binding.seen:
            return  # no optimizer step since the last scheduler step: skipped by the scaler, or accumulating
        binding.seen = taken
        binding.step(*args, **kwargs)

    def state_dict() -> dict[str, Any]:
        return {key: value for key, value in binding.state_dict().items() if key not in _SCHEDULER_NAMES}

    scheduler.__dict__.update({_KEY: binding, "step": step, "state_dict": state_dict})


def _unbind(obj: Optimizer | LRScheduler) -> None:
    binding = obj.__dict__.pop(_KEY, None)
    if binding is None:
        return
    for name in ("step", "zero_grad", "state_dict"):
        obj.__dict__.pop(name, None)
    if isinstance(binding, _OptimizerBinding):
        binding.hook.remove()
    obj.__dict__.update(binding.previous)


def _values(owner: Any) -> Iterator[Any]:
    for value in vars(owner).values():
        if isinstance(value, (list, tuple)):
            yield from value
        elif isinstance(value, dict):
            yield from value.values()
        else:
            yield value


def find_optimizers(owner: Any) -> list[Optimizer]:
    """The optimizers an aggregate holds as attributes (directly, or in a list, tuple or dict attribute)."""
    found: list[Optimizer] = []
    for value in _values(owner):
        if isinstance(value, Optimizer) and not any(value is known for known in found):
            found.append(value)
    return found


def find_schedulers(owner: Any) -> list[LRScheduler]:
    """The LR schedulers an aggregate holds as attributes (directly, or in a list, tuple or dict attribute)."""
    found: list[LRScheduler] = []
    for value in _values(owner):
        if isinstance(value, (LRScheduler, ReduceLROnPlateau)) and not any(value is known for known in found):
            found.append(value)
    return found
