"""``EarlyStopping``: stop a fit when a monitored result stops improving, as Lightning's callback of that name."""

from __future__ import annotations

import math
import warnings
from typing import Any

from torch import Tensor
from tqdm import tqdm
from typing_extensions import override

from torchsystem_trainer.callbacks.averaging import copy_into, weights_at_fit_end, weights_of
from torchsystem_trainer.callbacks.callback import Callback, resumed
from torchsystem_trainer.callbacks.monitor import Mode, check_mode, monitored_value, warn_never_seen
from torchsystem_trainer.events import FitEnded, FitStarted, Iterated, MidEpochValidated

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` when ``monitor`` has not improved for ``patience`` checks, or has crossed a
    threshold, or is not finite. Lightning's ``EarlyStopping``, checked at the end of each epoch (``Iterated``)
    and after each validation inside an epoch (``MidEpochValidated``, ``val_check_interval``), with Keras'
    ``restore_best_weights`` and ``start_from_epoch``.

    A check happens at the end of every epoch whose results hold ``monitor``, and after every mid-epoch validation
    when ``monitor`` is a ``"validation/..."`` key. An epoch whose monitored phase did not run (validation only
    every ``check_val_every_n_epoch`` epochs, or skipped because the training phase was cut short) is not a check:
    ``patience`` counts checks, not epochs (as in Lightning, where it counts validation runs). The fit then stops
    at the end of the epoch that triggered the stop, or, after a mid-epoch validation, at once (the rest of the
    epoch's training and its end-of-epoch validation are skipped); ``min_epochs``/``min_steps`` defer it. In
    each check, in order:

    1. ``check_finite`` and the value is ``nan`` or infinite: stop.
    2. The value improves on ``best_score`` by more than ``min_delta`` (``value < best_score - min_delta`` for
       ``mode="min"``, ``value > best_score + min_delta`` for ``"max"``): it becomes ``best_score`` and
       ``wait_count`` returns to 0; otherwise ``wait_count`` grows by one.
    3. ``stopping_threshold`` is strictly beaten (``value < stopping_threshold`` for ``"min"``): stop, the goal is
       reached.
    4. ``divergence_threshold`` is strictly passed the wrong way (``value > divergence_threshold`` for
       ``"min"``): stop, the run diverged.
    5. The value did not improve and ``wait_count >= patience``: stop.

    Epochs whose 0-based index is below ``start_from_epoch`` are not checks at all (Keras): no best score, no
    patience, no stop, whatever their value (a warm-up in which no improvement is expected).

    With ``restore_best_weights`` (Keras; Lightning's issue #1415), each improvement copies the aggregate's weights
    (its ``state_dict`` tensors: parameters and buffers) at that check (the trained weights: ``EMA`` has swapped
    them back by then); when the fit ends by this callback, by
    another stop request or by any limit (``FitEnded`` reasons ``"stopped"``, ``"completed"``, ``"max_steps"``,
    ``"max_time"``), they are loaded back into the aggregate, bit for bit. Not after ``"interrupted"`` (the fit
    is to be resumed) or ``"exception"``. The copy lives on the training device, or on the CPU with
    ``best_weights_on_cpu``; it is saved in checkpoints, so a resumed fit restores the same weights. The weights the
    fit ended with are then kept in the state too, so a fit resumed from a checkpoint written after it
    (``trainer.save_checkpoint``) continues from them, as ``EMA`` does.

    The state (``wait_count``, ``best_score``, ``stopped_epoch``, ``stopping_reason``, the best weights) is saved in
    checkpoints and restored on resume; the constructor's arguments (``patience``, thresholds...) are not
    overridden by a checkpoint, so a resumed run may change them. A fit not resumed from a checkpoint starts with a
    fresh state.
    Put ``EarlyStopping`` before ``ModelCheckpoint`` in the callback list, so a checkpoint holds this epoch's
    state rather than the previous one's.

    Args:
        monitor: the key of ``Iterated.results`` to watch, ``"<phase>/<name>"`` (``"validation/loss"``).
        mode: ``"min"`` (lower is better) or ``"max"``.
        patience: checks without improvement after which to stop (an int >= 0; 0 stops at the first check that
            does not improve).
        min_delta: how much the value must improve on the best to count as an improvement (>= 0, in the
            monitored value's units).
        stopping_threshold: stop as soon as the value is better than this.
        divergence_threshold: stop as soon as the value is worse than this.
        check_finite: stop when the value is ``nan`` or infinite.
        verbose: print each check's outcome and the stop (through ``tqdm.write``, on the process of global
            rank 0).
        restore_best_weights: keep the weights of the best check and load them back when the fit ends (see
            above).
        best_weights_on_cpu: keep that copy in CPU memory rather than on the training device (one device-to-host
            copy per improvement).
        start_from_epoch: the 0-based epoch from which checks begin (an int >= 0; Keras' name).

    Attributes:
        wait_count: checks since the last improvement.
        best_score: the best value seen (``inf`` for ``"min"``, ``-inf`` for ``"max"`` before any check).
        stopped_epoch: the 0-based epoch at whose end this callback stopped the fit; ``None`` if it did not.
        stopping_reason: why it stopped, in words; ``None`` if it did not.
        best_weights: the kept ``{state_dict key: tensor}`` (``restore_best_weights``), ``None`` before the first
            improvement.
        best_epoch: the 0-based epoch of ``best_score``; ``None`` before the first check.

    Raises:
        ValueError: for an invalid argument, naming it, the value and the valid values.
        MonitorError: (at an epoch's end) when ``monitor`` is missing from the results of a phase that ran, or
            names no phase of ``fit``; the message lists the available keys.
    """

    def __init__(
        self,
        monitor: str = "validation/loss",
        mode: Mode = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
        verbose: bool = False,
        restore_best_weights: bool = False,
        best_weights_on_cpu: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor={monitor!r} is invalid; valid: a key like 'validation/loss'")
        self.monitor = monitor
        self.mode: Mode = check_mode("EarlyStopping", mode)
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience={patience!r} is invalid; valid: an int >= 0")
        self.patience = patience
        if not _is_real(min_delta) or not min_delta >= 0 or math.isinf(min_delta):
            raise ValueError(f"EarlyStopping: min_delta={min_delta!r} is invalid; valid: a finite number >= 0")
        self.min_delta = float(min_delta)
        for name, value in (("stopping_threshold", stopping_threshold), ("divergence_threshold", divergence_threshold)):
            if value is not None and (not _is_real(value) or not math.isfinite(value)):
                raise ValueError(f"EarlyStopping: {name}={value!r} is invalid; valid: None or a finite number")
        self.stopping_threshold = None if stopping_threshold is None else float(stopping_threshold)
        self.divergence_threshold = None if divergence_threshold is None else float(divergence_threshold)
        self.check_finite = bool(check_finite)
        self.verbose = bool(verbose)
        if isinstance(start_from_epoch, bool) or not isinstance(start_from_epoch, int) or start_from_epoch < 0:
            raise ValueError(f"EarlyStopping: start_from_epoch={start_from_epoch!r} is invalid; valid: an int >= 0")
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = bool(restore_best_weights)
        self.best_weights_on_cpu = bool(best_weights_on_cpu)
        self._owner = f"EarlyStopping(monitor={monitor!r})"
        self._reset()
        self._restored = False

    def _reset(self) -> None:
        self.wait_count = 0
        self.best_score = math.inf if self.mode == "min" else -math.inf
        self.stopped_epoch: int | None = None
        self.stopping_reason: str | None = None
        self.best_weights: dict[str, Tensor] | None = None
        self.best_epoch: int | None = None
        self._checks = 0
        self._trained: dict[str, Tensor] | None = None  # the weights the fit ended with, when it restored the best

    def on_fit_started(self, event: FitStarted) -> None:
        """Start from a fresh state, unless a checkpoint was just restored into this callback."""
        if not (self._restored and resumed(event.trainer)):
            self._reset()
        else:
            if self.best_weights is not None and not self.best_weights_on_cpu:  # loaded on the CPU: to the device
                device = next((p.device for p in event.aggregate.parameters()), None)
                if device is not None:
                    self.best_weights = {key: value.to(device) for key, value in self.best_weights.items()}
            if self._trained is not None:  # a checkpoint written after the fit restored the best weights
                event.aggregate.load_state_dict(self._trained, strict=False)
        self._restored, self._checks, self._trained = False, 0, None

    def on_iterated(self, event: Iterated) -> None:
        """Check the epoch's monitored value and stop the fit if a rule says so.

        Raises:
            MonitorError: see the class.
        """
        self._check(event, f"epoch {event.epoch}")

    def on_mid_epoch_validated(self, event: MidEpochValidated) -> None:
        """Check a mid-epoch validation's monitored value (a ``"validation/..."`` monitor) and stop the fit if a rule
        says so.

        Raises:
            MonitorError: see the class.
        """
        self._check(event, f"epoch {event.epoch}, batch {event.batch}")

    def _check(self, event: Iterated | MidEpochValidated, where: str) -> None:
        current = monitored_value(self._owner, self.monitor, event.results)
        if current is None:
            return
        self._checks += 1
        if event.epoch < self.start_from_epoch:
            self._say(event.trainer, f"{where}: {self.monitor} = {current:.6g}, warm-up (not checked)")
            return
        best = self.best_score
        reason = self._evaluate(current)
        if self.best_score != best:  # improved
            self.best_epoch = event.epoch
            if self.restore_best_weights:
                self._keep(event.aggregate)
        if reason is None:
            summary = f"{self.monitor} = {current:.6g}, best {self.best_score:.6g}, waited {self.wait_count}"
            self._say(event.trainer, f"{where}: {summary}")
            return
        event.trainer.should_stop = True
        self.stopped_epoch = event.epoch
        self.stopping_reason = reason
        self._say(event.trainer, f"{where}: {reason}; stopping the fit")

    def on_fit_ended(self, event: FitEnded) -> None:
        """Load the best weights back (``restore_best_weights``, a fit that ended by a stop or a limit); warn when
        ``monitor`` was never in an epoch's results during the fit."""
        if self.restore_best_weights and self.best_weights is not None and event.reason not in _NO_RESTORE:
            self._trained = weights_at_fit_end(event)  # before any callback replaced them
            event.aggregate.load_state_dict(self.best_weights, strict=False)
            self._say(event.trainer, f"restored the weights of epoch {self.best_epoch} ({self.monitor} = "
                                     f"{self.best_score:.6g})")
        warn_never_seen(self._owner, self.monitor, self._checks, event.reason, bool(event.trainer.callback_metrics))

    def _keep(self, aggregate: Any) -> None:
        """Copy the aggregate's weights into :attr:`best_weights` (allocated once, then overwritten in place)."""
        if self.best_weights is None:
            self.best_weights = weights_of(aggregate, "cpu" if self.best_weights_on_cpu else None)
        else:
            copy_into(self.best_weights, aggregate)

    def _evaluate(self, current: float) -> str | None:
        """Apply the rules of the class docstring to one value; returns why to stop, or ``None``."""
        monitor, sign = self.monitor, 1.0 if self.mode == "min" else -1.0
        if self.check_finite and not math.isfinite(current):
            return f"{monitor} = {current} is not finite (best was {self.best_score:.6g})"
        improved = sign * current < sign * self.best_score - self.min_delta
        if improved:
            self.best_score, self.wait_count = current, 0
        else:
            self.wait_count += 1
        better, worse = ("<", ">") if self.mode == "min" else (">", "<")
        if self.stopping_threshold is not None and sign * current < sign * self.stopping_threshold:
            return f"{monitor} = {current:.6g} reached the stopping threshold ({better} {self.stopping_threshold:g})"
        if self.divergence_threshold is not None and sign * current > sign * self.divergence_threshold:
            return f"{monitor} = {current:.6g} diverged past the threshold ({worse} {self.divergence_threshold:g})"
        if not improved and self.wait_count >= self.patience:
            return (
                f"{monitor} did not improve by more than {self.min_delta:g} in the last {self.wait_count} check(s) "
                f"(best {self.best_score:.6g})"
            )
        return None

    def _say(self, trainer: Any, message: str) -> None:
        if self.verbose and getattr(trainer, "is_global_zero", True):
            tqdm.write(f"EarlyStopping: {message}")

    @override
    def state_dict(self) -> dict[str, Any]:
        """The stopping state as plain numbers and strings (``best_score`` may be ``inf``).

        Returns:
            ``{"monitor", "mode", "patience", "wait_count", "best_score", "best_epoch", "stopped_epoch",
            "stopping_reason", "best_weights", "trained_weights"}`` (``best_weights``: ``{key: tensor}`` or ``None``;
            ``trained_weights``: the weights the fit ended with, after it restored the best ones, else ``None``).
        """
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "wait_count": self.wait_count,
            "best_score": float(self.best_score),
            "stopped_epoch": self.stopped_epoch,
            "stopping_reason": self.stopping_reason,
            "best_epoch": self.best_epoch,
            "best_weights": None if self.best_weights is None else dict(self.best_weights),
            "trained_weights": self._trained,
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. The constructor's ``patience`` and thresholds are kept; a state
        saved for another ``monitor`` or ``mode`` is not restored (its best score means nothing here), with a
        warning.

        Raises:
            KeyError: when a field is missing.
        """
        if state["monitor"] != self.monitor or state["mode"] != self.mode:
            warnings.warn(
                f"{self._owner}: the checkpoint's EarlyStopping state is for monitor={state['monitor']!r}, "
                f"mode={state['mode']!r}; starting from a fresh state instead",
                stacklevel=2,
            )
            return
        self.wait_count = int(state["wait_count"])
        self.best_score = float(state["best_score"])
        self.stopped_epoch = None if state["stopped_epoch"] is None else int(state["stopped_epoch"])
        self.stopping_reason = state["stopping_reason"]
        self.best_epoch = state.get("best_epoch")
        saved = state.get("best_weights")
        self.best_weights = None if saved is None or not self.restore_best_weights else dict(saved)
        self._trained = state.get("trained_weights")
        self._restored = True


_NO_RESTORE = ("interrupted", "exception")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
