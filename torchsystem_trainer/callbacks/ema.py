"""``EMA``: an exponential moving average of the weights, validated with and kept at the end of a fit.

Built on ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``; it behaves as Lightning's
``WeightAveraging`` callback with an EMA average (and Keras' ``use_ema``): validation inside a fit runs with the
averaged weights, and the aggregate keeps them when the fit ends.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim.swa_utils import get_ema_multi_avg_fn
from typing_extensions import override

from torchsystem_trainer.callbacks.averaging import AveragedWeights, weights_at_fit_end
from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.events import (
    BatchTrained,
    ExceptionRaised,
    FitEnded,
    FitStarted,
    PhaseStarted,
    Validated,
)

__all__ = ["EMA"]

_KEEPS_AVERAGE = ("completed", "max_steps", "max_time", "stopped")


class EMA(Callback):
    """Keep ``ema = decay * ema + (1 - decay) * weights`` after every ``every_n_steps``-th optimizer step.

    * The average starts as a copy of the weights at the first update of a fit (``AveragedModel``'s rule).
    * ``validate_with_ema``: each validation phase of a fit runs with the averaged weights (swapped in at
      ``PhaseStarted("validation")``, swapped back, bit for bit, at ``Validated`` or when the phase raises), so the
      monitored ``validation/...`` values, ``EarlyStopping`` and ``ModelCheckpoint``'s best file refer to them.
      ``Trainer.validate`` outside a fit, like ``test``, evaluates the weights the aggregate holds (those of its
      ``ckpt_path`` when given).
    * When the fit ends by a stop or a limit (``FitEnded`` reasons ``"completed"``, ``"max_steps"``, ``"max_time"``,
      ``"stopped"``), the aggregate is given the averaged weights: ``trainer.test`` and ``predict`` afterwards use
      them, and so does a checkpoint written then (``trainer.save_checkpoint``). The trained weights are kept in this
      callback's state, so a fit resumed from such a checkpoint continues from them. Not after ``"interrupted"``
      or ``"exception"``: the aggregate keeps its trained weights, to be resumed.
    * Checkpoints hold both sets: the trained weights as the aggregate's, the averaged ones in this callback's state
      (``averaged_weights``, which ``load_weights(..., averaged=True)`` and ``load_model(..., averaged=True)`` load).
      A resumed fit continues bit-identically.

    The averaged copy lives with the weights (on their device). Each update is a few fused tensor operations and
    no host-device synchronisation (``AveragedModel.update_parameters`` reads its counter on the host at each call,
    so the same arithmetic is run here without that read). Every process of a data-parallel fit keeps the same
    average (the weights are the same everywhere).

    Args:
        decay: the weight of the old average, in ``[0, 1]`` (``get_ema_multi_avg_fn``'s ``decay``).
        validate_with_ema: run validation inside a fit with the averaged weights.
        every_n_steps: update after every n-th optimizer step (``trainer.global_step``), an int >= 1.
        use_buffers: average the floating buffers too (BatchNorm statistics, Lightning's default); ``False``: copy
            them from the model at each update (``AveragedModel``'s default).

    Attributes:
        averaged: the :class:`~torchsystem_trainer.callbacks.averaging.AveragedWeights` of the current fit (its
            ``model`` is the ``AveragedModel``), ``None`` before one starts.

    Raises:
        ValueError: for an invalid argument, naming it, the value and what is valid.
    """

    def __init__(
        self,
        decay: float = 0.999,
        validate_with_ema: bool = True,
        every_n_steps: int = 1,
        use_buffers: bool = True,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay={decay!r} is invalid; valid: a number in [0, 1] (e.g. 0.999)")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"EMA: every_n_steps={every_n_steps!r} is invalid; valid: an int >= 1")
        self.decay = float(decay)
        self.validate_with_ema = bool(validate_with_ema)
        self.every_n_steps = every_n_steps
        self.use_buffers = bool(use_buffers)
        self.averaged: AveragedWeights | None = None
        self._last_update_step = -1
        self._trained: dict[str, Tensor] | None = None  # the weights the fit ended with, when it took the average
        self._loaded: dict[str, Any] | None = None
        self._swapped = False
        self._fitting = False  # between FitStarted and FitEnded: validate()/test() outside a fit never swap

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Create the average over the aggregate (set up on its device); put back a restored state."""
        aggregate, loaded = event.aggregate, self._loaded if resumed(event.trainer) else None
        self._loaded, self._swapped, self._fitting = None, False, True
        self.averaged = AveragedWeights(
            aggregate, use_buffers=self.use_buffers, multi_avg_fn=get_ema_multi_avg_fn(self.decay)
        )
        self._last_update_step, self._trained = -1, None
        if loaded is None:
            return
        if loaded["averaged_weights"] is not None:
            self.averaged.load(loaded["averaged_weights"], loaded["n_averaged"])
        self._last_update_step = int(loaded["last_update_step"])
        if loaded.get("trained_weights") is not None:  # a checkpoint written after a fit took the average
            aggregate.load_state_dict(loaded["trained_weights"], strict=False)

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Update the average after every ``every_n_steps``-th optimizer step (once per step under accumulation)."""
        step = event.trainer.global_step
        if step == self._last_update_step or step % self.every_n_steps or self.averaged is None:
            return
        self.averaged.update_ema()
        self._last_update_step = step

    def on_phase_started(self, event: PhaseStarted) -> None:
        """Swap the averaged weights in for a validation phase of a fit (``validate_with_ema``); a stand-alone
        ``Trainer.validate`` evaluates the weights the aggregate holds, as ``test`` does."""
        if (
            event.phase == "validation"
            and self._fitting
            and self.validate_with_ema
            and self._has_average()
            and not self._swapped
        ):
            self.averaged.swap()  # type: ignore[union-attr]
            self._swapped = True

    def on_validated(self, event: Validated) -> None:
        """Swap the trained weights back after a validation phase."""
        self._swap_back()

    def on_exception_raised(self, event: ExceptionRaised) -> None:
        """Swap the trained weights back when a validation phase raised (before any checkpoint is written)."""
        self._swap_back()

    def on_fit_ended(self, event: FitEnded) -> None:
        """Give the aggregate the averaged weights when the fit ended by a stop or a limit."""
        self._swap_back()
        self._fitting = False
        if event.reason in _KEEPS_AVERAGE and self._has_average():
            self._trained = weights_at_fit_end(event)  # before any callback replaced them
            self.averaged.copy_to_aggregate()  # type: ignore[union-attr]

    def _has_average(self) -> bool:
        return self.averaged is not None and self.averaged.count > 0

    def _swap_back(self) -> None:
        if self._swapped and self.averaged is not None:
            self.averaged.swap()
            self._swapped = False

    # -- state ------------------------------------------------------------------------------------------

    def averaged_weights(self) -> dict[str, Tensor] | None:
        """The averaged weights keyed as the aggregate's ``state_dict`` (``None`` before the first update)."""
        return self.averaged.state() if self._has_average() else None  # type: ignore[union-attr]

    @override
    def state_dict(self) -> dict[str, Any]:
        """Both weight sets' part of a checkpoint.

        Returns:
            ``{"decay", "every_n_steps", "n_averaged", "last_update_step", "averaged_weights": {key: tensor} | None,
            "trained_weights": {key: tensor} | None}`` (``trained_weights``: after a fit took the average).
        """
        return {
            "decay": self.decay,
            "every_n_steps": self.every_n_steps,
            "n_averaged": 0 if self.averaged is None else self.averaged.count,
            "last_update_step": self._last_update_step,
            "averaged_weights": self.averaged_weights(),
            "trained_weights": self._trained,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep :meth:`state_dict`'s output for the next fit's start (the average is rebuilt over its aggregate).

        Raises:
            KeyError: when a field is missing.
            ValueError: when the state was saved with another ``decay`` (the average would not continue).
        """
        if float(state["decay"]) != self.decay:
            raise ValueError(
                f"EMA: the checkpoint's average used decay={state['decay']!r}, this EMA has {self.decay!r}"
            )
        self._loaded = {
            "averaged_weights": state["averaged_weights"],
            "n_averaged": int(state["n_averaged"]),
            "last_update_step": int(state["last_update_step"]),
            "trained_weights": state.get("trained_weights"),
        }

