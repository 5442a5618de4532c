"""How a strategy reaches inside an aggregate's learner step without changing the aggregate's code.

An aggregate written as the seed writes it calls ``optimizer.zero_grad()``, ``loss.backward()`` and
``optimizer.step()`` itself. The strategy binds those calls: it replaces ``step`` and ``zero_grad`` on the
optimizer *instance* (the object, its class, its state and every LR scheduler's reference to it stay the same),
so that gradient accumulation, unscaling, clipping and the ``GradientsComputed`` event happen in the strategy's
:meth:`~torchsystem_trainer.strategies.Strategy.optimizer_step`. LR schedulers are bound too: a scheduler step with
no optimizer step since the previous one (a step the fp16 scaler skipped, or a batch inside an accumulation window)
does nothing, which is Lightning's behaviour for step-interval schedulers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

if TYPE_CHECKING:
    from torchsystem_trainer.strategies.strategy import Strategy

__all__ = ["bind_optimizer", "bind_scheduler", "find_optimizers", "find_schedulers", "steps_taken", "unbind"]

_KEY = "_torchsystem_binding"


class _OptimizerBinding:
    """What a bound optimizer remembers: its own methods, the strategy, and how many steps it really took."""

    __slots__ = ("strategy", "step", "zero_grad", "previous", "inside", "steps", "hook")

    def __init__(self, optimizer: Optimizer, strategy: Strategy) -> None:
        self.strategy = strategy
        self.step: Callable[..., Any] = optimizer.step
        self.zero_grad: Callable[..., Any] = optimizer.zero_grad
        self.previous = {name: optimizer.__dict__[name] for name in ("step", "zero_grad") if name in optimizer.__dict__}
        self.inside = False
        self.steps = 0
        self.hook = optimizer.register_step_post_hook(self._count)

    def _count(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self.steps += 1
        optimizer._opt_called = True  # type: ignore[attr-defined]  # torch's scheduler-order check reads it


def bind_optimizer(optimizer: Optimizer, strategy: Strategy) -> None:
    """Route ``optimizer.step()``/``zero_grad()`` through ``strategy``. Binding again only changes the strategy.

    ``step()`` does nothing while ``strategy.accumulating``; otherwise it runs ``strategy.optimizer_step``,
    which calls back into the optimizer's own step. ``zero_grad()`` does nothing unless
    ``strategy.window_start`` (the first batch of an accumulation window).

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        strategy: the strategy whose flags and ``optimizer_step`` apply.
    """
    binding = optimizer.__dict__.get(_KEY)
    if binding is not None:
        binding.strategy = strategy
        return
    binding = _OptimizerBinding(optimizer, strategy)

    def step(closure: Callable[[], Any] | None = None) -> Any:
        if binding.inside:  # called back by the strategy (or its fp16 scaler): the optimizer's own step
            return binding.step() if closure is None else binding.step(closure)
        strategy = binding.strategy
        if strategy.plain_step:  # nothing to do around the step: skip optimizer_step's checks and the re-entry
            return binding.step() if closure is None else binding.step(closure)
        if strategy.accumulating:
            return None
        binding.inside = True
        try:
            return strategy.optimizer_step(optimizer)
        finally:
            binding.inside = False

    def zero_grad(set_to_none: bool = True) -> None:
        if binding.strategy.window_start:
            binding.zero_grad(set_to_none)

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # schedulers built later must not re-wrap it
    optimizer.__dict__.update({_KEY: binding, "step": step, "zero_grad": zero_grad})


def steps_taken(optimizer: Optimizer) -> int:
    """How many times a bound optimizer's own step really ran (steps skipped by the scaler do not count)."""
    return optimizer.__dict__[_KEY].steps  # type: ignore[no-any-return]


_SCHEDULER_NAMES = ("step", "state_dict", _KEY)


class _SchedulerBinding:
    __slots__ = ("step", "state_dict", "previous", "seen")

    def __init__(self, scheduler: LRScheduler) -> None:
        self.step = scheduler.step
        self.state_dict = scheduler.state_dict
        self.previous = {name: scheduler.__dict__[name] for name in _SCHEDULER_NAMES if name in scheduler.__dict__}
        self.seen = steps_taken(scheduler.optimizer)


def bind_scheduler(scheduler: LRScheduler) -> None:
    """Make ``scheduler.step()`` a no-op when its optimizer took no step since the scheduler's previous step.

    The scheduler's ``state_dict()`` is kept free of the binding (torch's schedulers save their whole
    ``__dict__``).

    Args:
        scheduler: an LR scheduler whose optimizer is already bound with :func:`bind_optimizer`.
    """
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


def unbind(obj: Optimizer | LRScheduler) -> None:
    """Give an optimizer or scheduler back its own methods (what it had before it was bound)."""
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
