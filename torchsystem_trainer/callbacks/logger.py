"""``Logger``: the base of every logger; a consumer of the Trainer's events that turns them into three calls.

A logger implements what it writes, the base decides when (Lightning's ``Logger`` interface, driven by events)::

    start(trainer, aggregate, run)      # a fit, or a validate/test outside a fit, begins: open what you write to
    log_hyperparams(params)             # once per fit (and for a validate/test run that no earlier run preceded)
    log_metrics(metrics, step)          # step values and phase results, see below
    save()                              # after each epoch's results: flush
    finalize(status)                    # the run ended (status: FitEnded.reason or StageEnded.reason): close

So an MLflow or Weights & Biases logger is one short class (``docs/observing.md`` has both). What is written,
and at which step (``step``: training batches since the run began, ``BatchTrained.step``):

================================  ==========================================  ====================================
keys                              when                                        step
================================  ==========================================  ====================================
:meth:`Logger.step_metrics`       every ``log_every_n_steps``-th training     that batch's ``step``
(``train/loss_step``,             batch: one host read, never on other steps
``train/<name>_step``)
``validation/<name>_step``,       every ``log_every_n_steps``-th batch of     the count of that phase's batches
``test/<name>_step``              that phase, when the aggregate logged       in this run (1, 2, ...), as
                                  ``on_step=True`` values in it               Lightning's evaluation steps
``train/<name>``,                 the epoch's end (``Iterated``), one call    ``trainer.progress.step``
(logged values included)
``validation/<name>``, ``epoch``  with every phase that ran (``epoch``:
                                  0-based, as Lightning logs it)
``validation/<name>``, ``epoch``  after a validation inside the epoch          ``MidEpochValidated.step``
                                  (``MidEpochValidated``,
                                  ``val_check_interval``), as Lightning logs
                                  each validation
``best/<monitor>``                the fit's end: the best value of every      ``trainer.progress.step``
                                  callback's ``monitor`` (``ModelCheckpoint``'s
                                  ``best_model_score``, else
                                  ``EarlyStopping``'s ``best_score``)
``validate/<name>``,              ``Trainer.validate``/``test`` outside a     this logger's count of earlier runs
``test/<name>``                   fit                                         of that stage since its last fit (0,
                                                                              1, ...): two runs never write two
                                                                              points at one step
================================  ==========================================  ====================================

A fit that ends inside an epoch (an exception during validation, a stop) still gets the phase results that
were computed, at ``FitEnded``. Under ``fast_dev_run`` a logger writes nothing (``start`` is not called).
Only the process of global rank 0 runs loggers (``rank_zero_only``).

**A failing logger never stops a fit.** An exception (not a ``KeyboardInterrupt``) raised by any of the calls
above, or while collecting what they are given, is caught: the logger warns once (:class:`LoggerWarning`, naming
the logger, the call and the error), keeps the error in :attr:`Logger.failed`, and writes nothing more until its
run ends; ``finalize`` is still tried then, so it can close its files, and any error there is ignored. The next
run (fit, validate or test) starts afresh.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.callbacks.hyperparameters import HParam, hyperparameters
from torchsystem_trainer.trainer.logged import read_values

if TYPE_CHECKING:
    from torchsystem_trainer.events import (
        BatchTested,
        BatchTrained,
        BatchValidated,
        FitEnded,
        FitStarted,
        Iterated,
        MidEpochValidated,
        StageEnded,
        StageStarted,
        Tested,
        Trained,
        Validated,
    )

__all__ = ["Logger", "LoggerWarning", "RunKind", "best_values"]

RunKind = Literal["fit", "validate", "test"]
"""What a logger's run is: a ``fit``, or a ``validate``/``test`` outside a fit."""


class LoggerWarning(UserWarning):
    """A logger raised; it writes nothing more in this run, and the fit goes on."""


class Logger(Callback, ABC):
    """Base class of loggers: subclasses implement :meth:`log_hyperparams` and :meth:`log_metrics` (abstract: a
    subclass without them cannot be built), and may implement :meth:`start`, :meth:`save` and :meth:`finalize`
    (see the module docstring for when each runs).

    Args:
        log_every_n_steps: write :meth:`step_metrics` every this many training batches (>= 1). Reading a loss
            synchronises host and device, so the other batches' values are never read.
        log_hyperparameters: write :func:`~torchsystem_trainer.callbacks.hyperparameters.hyperparameters` at
            each fit's start.

    Attributes:
        failed: the exception that disabled the logger in the current (or last) run; ``None`` while it works.

    Raises:
        ValueError: for ``log_every_n_steps`` that is not an int >= 1.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(self, log_every_n_steps: int = 50, log_hyperparameters: bool = True) -> None:
        super().__init__()
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(
                f"{type(self).__name__}: log_every_n_steps={log_every_n_steps!r} is invalid; valid: an int >= 1"
            )
        self.log_every_n_steps = log_every_n_steps
        self.log_hyperparameters = bool(log_hyperparameters)
        self.failed: BaseException | None = None
        self._run: RunKind | None = None  # the run being written, None between runs and under fast_dev_run
        self._has_run = False  # some run started before (so a validate/test continues its destination)
        self._pending: dict[str, float] = {}  # the current epoch's phase results, written at its end
        self._pending_epoch = 0
        self._stage_runs: dict[str, int] = {}  # runs of validate/test since the last fit
        self._phase_batches: dict[str, int] = {}  # validation/test batches of this run, the x-axis of their steps

    # -- what a logger implements -----------------------------------------------------------------------

    def start(self, trainer: Any, aggregate: Any, run: RunKind) -> None:
        """A run begins: open what the logger writes to. Does nothing by default.

        Args:
            trainer: the ``Trainer``.
            aggregate: the aggregate.
            run: ``"fit"`` (a new run of the logger's own: a file loggers' new ``version_N``), or ``"validate"`` /
                ``"test"`` outside a fit (which file loggers write next to the last fit's files).
        """

    @abstractmethod
    def log_hyperparams(self, params: Mapping[str, HParam]) -> None:
        """Write the run's hyper-parameters (Lightning's ``log_hyperparams``).

        Args:
            params: flat ``{key: value}``, see :func:`~torchsystem_trainer.callbacks.hyperparameters.hyperparameters`.
        """

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Write values at ``step`` (Lightning's ``log_metrics``).

        Args:
            metrics: ``{key: value}``; keys as in the module docstring's table.
            step: the x-axis value, see the module docstring.
        """

    def save(self) -> None:
        """Flush what was written (after each epoch's results, and before :meth:`finalize`). Nothing by default."""

    def finalize(self, status: str) -> None:
        """The run ended: close what :meth:`start` opened. Nothing by default.

        Args:
            status: how it ended: ``FitEnded.reason`` (``"completed"``, ``"max_steps"``, ``"max_time"``,
                ``"stopped"``, ``"interrupted"``, ``"exception"``) or ``StageEnded.reason``.
        """

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Write values another callback measured (``LearningRateMonitor``'s rates) through :meth:`log_metrics`,
        guarded as the base's own calls are; nothing outside a run, under ``fast_dev_run``, or after a failure.

        Args:
            metrics: ``{key: value}``.
            step: the x-axis value, as for the base's values (``trainer.progress.step`` or ``BatchTrained.step``).
        """
        if self._run is not None:
            self._guard(lambda: self.log_metrics(metrics, step), "log_metrics")

    def step_metrics(self, event: BatchTrained) -> dict[str, float]:
        """The values written on a logging step: ``{"train/loss_step": loss}`` and what the aggregate logged with
        ``on_step=True`` in that batch (``"train/<name>_step"``), read from the device at once.

        Args:
            event: the logging step's ``BatchTrained``.

        Returns:
            ``{key: value}``.
        """
        logged = _step_values(event.trainer, "train")
        if not logged:
            return {"train/loss_step": float(event.loss)}
        return read_values({"train/loss_step": event.loss, **logged})

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Start the fit's run and write its hyper-parameters."""
        self._begin(event.trainer, event.aggregate, "fit")

    def on_stage_started(self, event: StageStarted) -> None:
        """Start a ``validate``/``test`` run (``predict`` writes nothing)."""
        if event.stage != "predict":
            self._begin(event.trainer, event.aggregate, event.stage)

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Every ``log_every_n_steps``-th step, write :meth:`step_metrics`."""
        if event.step % self.log_every_n_steps == 0 and self._run == "fit":
            self._guard(lambda: self.log_metrics(self.step_metrics(event), event.step), "log_metrics")

    def on_batch_validated(self, event: BatchValidated) -> None:
        """Every ``log_every_n_steps``-th validation batch, write the aggregate's ``validation/<name>_step`` values."""
        self._evaluation_step(event, "validation")

    def on_batch_tested(self, event: BatchTested) -> None:
        """Every ``log_every_n_steps``-th test batch, write the aggregate's ``test/<name>_step`` values."""
        self._evaluation_step(event, "test")

    def on_trained(self, event: Trained) -> None:
        """Keep the training results for the epoch's end."""
        self._phase_ended(event.trainer, "train", event.epoch, event.results)

    def on_validated(self, event: Validated) -> None:
        """Keep the validation results for the epoch's end; outside a fit, write them as ``validate/<name>``."""
        self._phase_ended(event.trainer, "validation", event.epoch, event.results)

    def on_mid_epoch_validated(self, event: MidEpochValidated) -> None:
        """Write a mid-epoch validation's results and ``epoch`` at its own step (the epoch's end then writes the
        validation that ran there, if any)."""
        if self._run == "fit":
            for key in event.results:
                self._pending.pop(key, None)
            metrics: dict[str, float] = {**event.results, "epoch": event.epoch}
            self._guard(lambda: self.log_metrics(metrics, event.step), "log_metrics")

    def on_tested(self, event: Tested) -> None:
        """Write the test results as ``test/<name>``."""
        self._phase_ended(event.trainer, "test", event.epoch, event.results)

    def on_iterated(self, event: Iterated) -> None:
        """Write the epoch's results and ``epoch``, then :meth:`save`."""
        if self._run == "fit":
            self._flush(event.trainer)
            self._guard(self.save, "save")

    def on_fit_ended(self, event: FitEnded) -> None:
        """Write results not yet written and the best monitored values, then :meth:`finalize`."""
        if self._run == "fit":
            self._flush(event.trainer)
            best = best_values(event.trainer)
            if best:
                self._guard(lambda: self.log_metrics(best, event.trainer.progress.step), "log_metrics")
            self._end(event.reason)

    def on_stage_ended(self, event: StageEnded) -> None:
        """:meth:`finalize` a ``validate``/``test`` run."""
        if self._run == event.stage:
            self._end(event.reason)

    # -- helpers ----------------------------------------------------------------------------------------

    def _evaluation_step(self, event: BatchValidated | BatchTested, phase: str) -> None:
        if self._run is None:
            return
        count = self._phase_batches[phase] = self._phase_batches.get(phase, 0) + 1
        if count % self.log_every_n_steps == 0:
            logged = _step_values(event.trainer, phase)
            if logged:
                self._guard(lambda: self.log_metrics(read_values(logged), count), "log_metrics")

    def _begin(self, trainer: Any, aggregate: Any, run: RunKind) -> None:
        self.failed, self._pending, self._run, self._phase_batches = None, {}, None, {}
        if trainer.fast_dev_run:
            return
        first = run == "fit" or not self._has_run
        if run == "fit":
            self._stage_runs = {}
        self._run, self._has_run = run, True
        self._guard(lambda: self.start(trainer, aggregate, run), "start")
        if first and self.log_hyperparameters:
            self._guard(lambda: self.log_hyperparams(hyperparameters(aggregate, trainer)), "log_hyperparams")

    def _phase_ended(self, trainer: Any, phase: str, epoch: int, results: dict[str, float]) -> None:
        if self._run == "fit":
            self._pending.update({f"{phase}/{name}": value for name, value in results.items()})
            self._pending_epoch = epoch
        elif self._run is not None:
            step = self._stage_runs.get(self._run, 0)
            self._stage_runs[self._run] = step + 1
            metrics = {f"{self._run}/{name}": value for name, value in results.items()}
            self._guard(lambda: self.log_metrics(metrics, step), "log_metrics")

    def _flush(self, trainer: Any) -> None:
        if self._pending:
            metrics: dict[str, float] = {**self._pending, "epoch": self._pending_epoch}
            self._pending = {}
            self._guard(lambda: self.log_metrics(metrics, trainer.progress.step), "log_metrics")

    def _end(self, status: str) -> None:
        self._run = None
        if self.failed is None:
            self._guard(self.save, "save")
            self._guard(lambda: self.finalize(status), "finalize")
            return
        try:  # already warned: only give it the chance to close its files
            self.finalize(status)
        except Exception:  # the first error was reported; later ones add nothing
            pass

    def _guard(self, call: Callable[[], None], name: str) -> None:
        """Run ``call`` unless the logger failed in this run; on an exception, warn once and disable the logger."""
        if self.failed is not None:
            return
        try:
            call()
        except Exception as error:  # a logger must never stop the fit
            self.failed = error
            warnings.warn(
                f"{type(self).__name__}.{name} raised {error!r}; this logger writes nothing more in this run "
                "(training goes on)",
                LoggerWarning,
                stacklevel=2,
            )


def _step_values(trainer: Any, phase: str) -> dict[str, Any]:
    """The aggregate's step values of ``phase``'s latest batch (``trainer.loop.step_values``), unread."""
    loop = getattr(trainer, "loop", None)
    return {} if loop is None else loop.step_values(phase)  # type: ignore[no-any-return]


def best_values(trainer: Any) -> dict[str, float]:
    """The best value of every monitored key among the trainer's callbacks: ``{"best/<monitor>": value}``.

    A callback counts when it has a ``monitor`` string and a finite ``best_model_score`` (``ModelCheckpoint``)
    or ``best_score`` (``EarlyStopping``); the first callback of each monitor wins.

    Args:
        trainer: the ``Trainer``.

    Returns:
        The values, possibly empty.
    """
    best: dict[str, float] = {}
    for callback in trainer.callbacks:
        monitor = getattr(callback, "monitor", None)
        if not isinstance(monitor, str) or f"best/{monitor}" in best:
            continue
        for attribute in ("best_model_score", "best_score"):
            value = getattr(callback, attribute, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                best[f"best/{monitor}"] = float(value)
                break
    return best
