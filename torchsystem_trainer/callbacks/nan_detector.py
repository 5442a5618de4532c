"""``NaNDetector``: stop a fit at the first non-finite loss, gradient or parameter, naming the step and tensor.

The idea is PTUtils' ``NaNDetector`` callback (``end_of_training_step``: ``if np.isnan(training_loss): raise``),
extended to gradients and parameters. What is checked, and when:

====================  =======================  =====================================================
check                 event                    what
====================  =======================  =====================================================
``check_loss``        ``BatchTrained``         the batch's loss
``check_gradients``   ``GradientsComputed``    the gradients of the stepping optimizer's parameters,
                                               final (unscaled, averaged, clipped), before the step
``check_parameters``  ``BatchTrained``         every parameter of the aggregate, after the step
====================  =======================  =====================================================

A failed check raises :class:`NonFiniteError` from the hook, so the fit ends as every exception does:
``ExceptionRaised``, then ``FitEnded(reason="exception")``, then the error propagates out of ``Trainer.fit``
(see :mod:`torchsystem_trainer.events`). Messages name the 1-based training step (``BatchTrained.step``), the
tensor (parameters by their name in ``aggregate.named_parameters()``) and the kind of value found::

    step 17: loss is non-finite (nan)
    step 17: gradient of 'nn.0.weight' is non-finite (inf)
    step 17: parameter 'nn.0.weight' is non-finite (-inf)

Speed: this callback trades speed for safety. Every enabled check synchronises host and device once per step
(one ``bool`` of a reduction per device; the tensor at fault is searched for only after a failure), which stalls
an asynchronous GPU pipeline. Checks that are disabled are not subscribed, so their events are not even built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback

if TYPE_CHECKING:
    from torchsystem_trainer.events import BatchTrained, FitStarted, GradientsComputed

__all__ = ["NaNDetector", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """A loss, gradient or parameter held NaN or infinity; the message names the step and the tensor."""


class NaNDetector(Callback):
    """Raise :class:`NonFiniteError` when the loss, a gradient or a parameter becomes non-finite.

    Args:
        check_loss: check each training batch's loss (``BatchTrained``).
        check_gradients: check the gradients before each optimizer step (``GradientsComputed``).
        check_parameters: check every parameter after each training batch (``BatchTrained``).

    Raises:
        ValueError: when every check is disabled (the callback would do nothing).
    """

    def __init__(self, check_loss: bool = True, check_gradients: bool = False, check_parameters: bool = False) -> None:
        super().__init__()
        if not (check_loss or check_gradients or check_parameters):
            raise ValueError(
                "NaNDetector: check_loss, check_gradients and check_parameters are all False; enable at least one"
            )
        self.check_loss = bool(check_loss)
        self.check_gradients = bool(check_gradients)
        self.check_parameters = bool(check_parameters)
        self._names: dict[int, str] = {}

    @override
    def subscriptions(self) -> dict[str, list[Callable[[Any], None]]]:
        """The hooks of the enabled checks only.

        Raises:
            CallbackHookError: as :meth:`Callback.subscriptions`.
        """
        table = super().subscriptions()
        if not self.check_gradients:
            table.pop("GradientsComputed", None)
        if not (self.check_loss or self.check_parameters):
            table.pop("BatchTrained", None)
        return table

    def on_fit_started(self, event: FitStarted) -> None:
        """Map the aggregate's parameters to their names, for messages."""
        self._names = {id(parameter): name for name, parameter in event.aggregate.named_parameters()}

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Check the loss and/or the parameters.

        Raises:
            NonFiniteError: naming the step and the loss or the parameter.
        """
        if self.check_loss:
            loss = event.loss.detach()
            if not bool(torch.isfinite(loss).all()):
                raise NonFiniteError(f"step {event.step}: loss is non-finite ({_kind(loss)})")
        if self.check_parameters:
            named = [(name, parameter.detach()) for name, parameter in event.aggregate.named_parameters()]
            _check(named, event.step, "parameter")

    def on_gradients_computed(self, event: GradientsComputed) -> None:
        """Check the gradients of the optimizer about to step.

        Raises:
            NonFiniteError: naming the step and the parameter whose gradient is non-finite.
        """
        named = [
            (self._names.get(id(p), f"param_groups[{g}][{i}]"), p.grad.detach())
            for g, group in enumerate(event.optimizer.param_groups)
            for i, p in enumerate(group["params"])
            if p.grad is not None
        ]
        _check(named, event.step, "gradient of")


def _check(named: list[tuple[str, torch.Tensor]], step: int, what: str) -> None:
    """One sync per device; then, only on failure, find the first tensor at fault."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for _, tensor in named:
        by_device.setdefault(tensor.device, []).append(torch.isfinite(tensor).all())
    if all(bool(torch.stack(flags).all()) for flags in by_device.values()):
        return
    for name, tensor in named:
        if not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(f"step {step}: {what} {name!r} is non-finite ({_kind(tensor)})")


def _kind(tensor: torch.Tensor) -> str:
    """``"nan"``, ``"inf"`` or ``"-inf"``: the first kind of non-finite value present, in that order."""
    if bool(torch.isnan(tensor).any()):
        return "nan"
    return "inf" if bool(torch.isposinf(tensor).any()) else "-inf"
