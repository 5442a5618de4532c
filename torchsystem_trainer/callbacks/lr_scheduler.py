"""``LearningRateScheduler``: the Trainer steps a torch learning-rate scheduler (Keras' callback name; the meaning
of Lightning's ``lr_scheduler_config``: ``interval``, ``frequency``, ``monitor``).

When the scheduler steps:

==================================  =============================================================================
``interval="step"``                 after every ``frequency``-th optimizer step of the scheduler's optimizer that
                                    really ran, at the ``BatchTrained`` of that batch (or at ``Trained`` for a step
                                    taken at the phase's end): a batch inside a gradient-accumulation window, or a
                                    step the fp16 scaler skipped (inf/NaN gradients), does not count, as in
                                    Lightning. Steps are counted with a step post-hook on the optimizer
                                    (``Optimizer.register_step_post_hook``), which runs only when the optimizer's
                                    own ``step`` ran.
``interval="epoch"``                at the end of every ``frequency``-th epoch (``Iterated``, after the end-of-epoch
                                    validation and the aggregate's ``onepoch``)
``monitor="validation/loss"``       ``interval="epoch"`` only: at ``Iterated``, ``scheduler.step(value)`` with the
                                    epoch's latest value of ``monitor`` (``ReduceLROnPlateau``): its end-of-epoch
                                    validation's, else its latest mid-epoch validation's (``val_check_interval``;
                                    ``trainer.callback_metrics``, as Lightning reads the latest value); an epoch
                                    whose monitored phase did not run is not a check and the scheduler does not
                                    step (the rule of ``EarlyStopping``,
                                    :mod:`~torchsystem_trainer.callbacks.monitor`)
==================================  =============================================================================

A scheduler stepped both by the aggregate (in its ``fit`` or ``onepoch``) and by this callback is refused: the
callback compares the scheduler's ``last_epoch`` (the count of its steps, public on every torch scheduler) with the
value it left after its own last step, and raises before stepping it again, at the first batch or epoch's end
after the aggregate stepped it. A seed-style aggregate that steps its own scheduler, without this callback, keeps
working as before.

From the epoch at which a ``StochasticWeightAveraging`` callback starts its ``SWALR`` on the same optimizer, this
callback stops stepping (with a warning, once): SWA owns the learning rate then, as Lightning swaps the
scheduler configuration for ``SWALR``.

The scheduler's state and the count of optimizer steps are saved in checkpoints (``state_dict``), so a resumed
fit steps it exactly as the uninterrupted one. The learning-rate finder (``Tuner.lr_find``) runs a Trainer of its
own without your callbacks, so it never steps this scheduler.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.callbacks.monitor import monitored_value
from torchsystem_trainer.callbacks.swa import StochasticWeightAveraging
from torchsystem_trainer.events import BatchTrained, FitEnded, FitStarted, Iterated, Trained
from torchsystem_trainer.strategies.optimizer_step import find_optimizers

__all__ = ["INTERVALS", "LearningRateScheduler", "SchedulerConflictError"]

INTERVALS: tuple[str, ...] = ("epoch", "step")


class SchedulerConflictError(RuntimeError):
    """A scheduler this callback steps was stepped by someone else too (the aggregate's ``fit`` or ``onepoch``)."""


class LearningRateScheduler(Callback):
    """Step ``scheduler`` for the Trainer (see the module docstring for when).

    Args:
        scheduler: any torch scheduler instance over one of the aggregate's optimizers (``StepLR``,
            ``OneCycleLR``, ``ReduceLROnPlateau``, ...).
        interval: ``"epoch"`` or ``"step"`` (optimizer steps that really ran).
        frequency: step every this many intervals (an int >= 1).
        monitor: the ``"<phase>/<name>"`` key whose value ``scheduler.step(value)`` takes, for a scheduler that
            reacts to a metric (``ReduceLROnPlateau``, which needs one); ``interval="epoch"`` only.

    Attributes:
        steps: the optimizer steps counted in this fit (resumes included), for ``interval="step"``.

    Raises:
        TypeError: for a ``scheduler`` that is not a torch LR scheduler.
        ValueError: for an invalid ``interval``, ``frequency`` or ``monitor`` (naming it, its value and what is valid);
            at ``FitStarted``, for a scheduler whose optimizer is not one of the aggregate's.
        SchedulerConflictError: during the fit, when the scheduler was also stepped by the aggregate.
        MonitorError: at an epoch's end, when ``monitor`` is missing from the results of a phase that ran.
    """

    def __init__(
        self,
        scheduler: LRScheduler | ReduceLROnPlateau,
        interval: Literal["epoch", "step"] = "epoch",
        frequency: int = 1,
        monitor: str | None = None,
    ) -> None:
        owner = "LearningRateScheduler"
        if not isinstance(scheduler, (LRScheduler, ReduceLROnPlateau)):
            raise TypeError(
                f"{owner}: scheduler is a {type(scheduler).__name__}; valid: a torch.optim.lr_scheduler instance "
                f"(StepLR, OneCycleLR, ReduceLROnPlateau, ...)"
            )
        if interval not in INTERVALS:
            raise ValueError(f"{owner}: interval={interval!r} is invalid; valid: 'epoch', 'step'")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"{owner}: frequency={frequency!r} is invalid; valid: an int >= 1")
        plateau = isinstance(scheduler, ReduceLROnPlateau)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"{owner}: monitor={monitor!r} is invalid; valid: None or a key like 'validation/loss'")
        if plateau and monitor is None:
            raise ValueError(
                f"{owner}: monitor=None is invalid for ReduceLROnPlateau, which steps with a metric; valid: a key "
                f"like 'validation/loss'"
            )
        if monitor is not None and not plateau:
            raise ValueError(
                f"{owner}: monitor={monitor!r} is invalid for {type(scheduler).__name__}, whose step takes no "
                f"metric; valid: None (monitor is for ReduceLROnPlateau)"
            )
        if monitor is not None and interval != "epoch":
            raise ValueError(
                f"{owner}: interval={interval!r} is invalid with monitor={monitor!r}; valid: 'epoch' (a monitored "
                f"value exists only when a phase ends)"
            )
        self.scheduler = scheduler
        self.interval = interval
        self.frequency = frequency
        self.monitor = monitor
        self.steps = 0
        self._owner = f"{owner}({type(scheduler).__name__})"
        self._optimizer: Optimizer = scheduler.optimizer
        self._counted = self._seen = 0
        self._hook: RemovableHandle | None = None
        self._last_epoch = int(scheduler.last_epoch)
        self._swa: list[StochasticWeightAveraging] = []
        self._suspended = False
        self._restored = False

    @override
    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The hooks, less ``on_batch_trained`` for ``interval="epoch"`` (nothing to do per batch then)."""
        table = super().subscriptions()
        if self.interval == "epoch":
            table.pop(BatchTrained.__name__, None)
        return table

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Check the scheduler's optimizer, start counting its steps, note the scheduler's position.

        Raises:
            ValueError: for a scheduler whose optimizer the aggregate does not hold.
        """
        optimizers = find_optimizers(event.aggregate)
        if not any(optimizer is self._optimizer for optimizer in optimizers):
            raise ValueError(
                f"{self._owner}: the scheduler's optimizer ({type(self._optimizer).__name__}) is not one of "
                f"{type(event.aggregate).__name__}'s ({', '.join(type(o).__name__ for o in optimizers) or 'none'}); "
                f"build the scheduler over the aggregate's optimizer"
            )
        if not (self._restored and resumed(event.trainer)):
            self.steps = 0
        self._restored, self._suspended = False, False
        self._counted = self._seen = self.steps
        self._last_epoch = int(self.scheduler.last_epoch)
        self._swa = [c for c in event.trainer.callbacks if isinstance(c, StochasticWeightAveraging)]
        self._remove_hook()
        if self.interval == "step":
            self._hook = self._optimizer.register_step_post_hook(self._count)

    def on_batch_trained(self, event: BatchTrained) -> None:
        """``interval="step"``: step after every ``frequency``-th optimizer step that ran."""
        if self._counted != self._seen:
            self._catch_up(event.trainer)

    def on_trained(self, event: Trained) -> None:
        """``interval="step"``: a step taken at the phase's end (an accumulation window cut by the loader's end);
        both intervals: refuse a scheduler the aggregate stepped in its ``fit``."""
        if self._counted != self._seen:
            self._catch_up(event.trainer)
        self._check_alone()

    def on_iterated(self, event: Iterated) -> None:
        """``interval="epoch"``: step at the end of every ``frequency``-th epoch (with ``monitor``: its value).

        Raises:
            SchedulerConflictError: when the aggregate stepped the scheduler (in ``onepoch`` or ``fit``).
            MonitorError: see the class.
        """
        self._check_alone()
        if self.interval != "epoch" or (event.epoch + 1) % self.frequency:
            return
        if self.monitor is None:
            self._step(event.trainer, None)
            return
        # the epoch's latest value: its end-of-epoch validation's, else its latest mid-epoch validation's
        value = monitored_value(self._owner, self.monitor, event.trainer.callback_metrics)
        if value is not None:
            self._step(event.trainer, value)

    def on_fit_ended(self, event: FitEnded) -> None:
        """Stop counting the optimizer's steps."""
        self._remove_hook()

    # -- stepping -----------------------------------------------------------------------------------------

    def _count(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        self._counted += 1

    def _catch_up(self, trainer: Any) -> None:
        """Step once for each ``frequency``-th optimizer step counted since the last call."""
        self._check_alone()
        counted = self._counted
        for step in range(self._seen + 1, counted + 1):
            if step % self.frequency == 0:
                self._step(trainer, None)
        self._seen = self.steps = counted

    def _step(self, trainer: Any, value: float | None) -> None:
        if self._suspended_by_swa(trainer):
            return
        if value is None:
            self.scheduler.step()
        else:
            self.scheduler.step(value)  # type: ignore[call-arg, arg-type]  # ReduceLROnPlateau
        self._last_epoch = int(self.scheduler.last_epoch)

    def _check_alone(self) -> None:
        """Refuse a scheduler stepped by someone else since this callback's last step.

        Raises:
            SchedulerConflictError: naming the scheduler and what to do.
        """
        if int(self.scheduler.last_epoch) != self._last_epoch:
            raise SchedulerConflictError(
                f"{self._owner}: the scheduler was stepped outside this callback (its last_epoch went from "
                f"{self._last_epoch} to {self.scheduler.last_epoch}), most likely by the aggregate's fit or onepoch; "
                f"a scheduler is stepped by one owner only: remove its step() from the aggregate, or remove this "
                f"callback"
            )

    def _suspended_by_swa(self, trainer: Any) -> bool:
        if self._suspended:
            return True
        for swa in self._swa:
            if swa.scheduler is not None and swa.scheduler.optimizer is self._optimizer:
                self._suspended = True
                warnings.warn(
                    f"{self._owner}: StochasticWeightAveraging sets the learning rate from epoch {swa.swa_start} on "
                    f"(SWALR), so this scheduler is no longer stepped (Lightning swaps it for SWALR too)",
                    stacklevel=2,
                )
                return True
        return False

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- state ------------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state and the optimizer steps counted.

        Returns:
            ``{"scheduler": scheduler.state_dict(), "steps": int, "interval": str, "frequency": int}``.
        """
        return {
            "scheduler": self.scheduler.state_dict(),
            "steps": int(self.steps),
            "interval": self.interval,
            "frequency": self.frequency,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load the scheduler's state into it now and continue counting from the saved steps.

        Raises:
            KeyError: when a field is missing.
        """
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self._last_epoch = int(self.scheduler.last_epoch)
        self._restored = True
