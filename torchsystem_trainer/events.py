"""The Trainer's events: past-tense facts it produces, one frozen dataclass each.

Every event carries the ``trainer`` and the ``aggregate``. Counters: ``epoch`` is 0-based; ``batch`` is the
0-based index of the batch within its epoch's loader; ``step`` is the 1-based count of training batches since
the run began (resumes included), so the first training batch of a run has ``step == 1``. Batch events carry
``predictions`` and ``loss`` as tensors: building an event never synchronises the host with the device.
Phase events carry ``results: dict[str, float]``: ``"loss"`` (the sample-weighted mean over the phase) and every
configured metric. :class:`Iterated` carries the whole epoch's results flattened as ``"<phase>/<name>"``
(``"validation/loss"``), the keys callbacks such as ``EarlyStopping`` monitor.

The Trainer builds an event only when some callback handles it, so unhandled events cost nothing per step.
A handler that raises stops the event there, except for the endings (:class:`ExceptionRaised`,
:class:`FitEnded`, :class:`StageEnded`): those reach every handler, then the first error propagates
(``torchsystem_trainer.trainer.dispatch``).

Seed-style consumers (``torchsystem``'s README) read ``event.model`` and ``event.metrics`` (objects with ``name``
and ``value``); the phase events offer both as read-only views of ``aggregate`` and ``results``. Routing is by
event class name, as in the seed: a consumer handler annotated with any class named ``Trained`` receives these.

Which events fire, for each way a fit ends (``FitEnded.reason``):

================  ==============================================  =========================================
ending            cause                                           events at the end, in order
================  ==============================================  =========================================
``completed``     the aggregate reached ``max_epochs`` (one more  ... ``Iterated``, ``FitEnded``
                  epoch with no limit)
``max_steps``     ``max_steps`` optimizer steps ran               ... ``BatchTrained``, ``Trained``,
                                                                  ``Iterated``, ``FitEnded``
``max_time``      ``max_time`` elapsed (checked after each        ... ``BatchTrained``, ``Trained``,
                  batch)                                          ``Iterated``, ``FitEnded``
``stopped``       ``trainer.should_stop = True`` (any callback,   set during training: the current batch
                  e.g. ``EarlyStopping``) or a ``StopIteration``  finishes, then ``Trained``, ``Iterated``,
                  committed by the aggregate's domain events,     ``FitEnded`` (validation skipped); set in
                  once ``min_epochs``/``min_steps`` are reached   a mid-epoch validation (``EarlyStopping``
                  (before them the request is deferred:           decides at ``MidEpochValidated``): the
                  ``StopDeferred``, once, and training goes on)   same, right after ``MidEpochValidated``;
                                                                  set during the epoch's end-of-epoch
                                                                  validation or at its end (``EarlyStopping``
                                                                  decides at ``Iterated``): the epoch
                                                                  finishes, then ``FitEnded``.
                                                                  ``StopIteration`` is raised as the
                                                                  aggregate's epoch advances, just before
                                                                  ``Iterated``
``interrupted``   ``SIGTERM`` (preemption) or ``SIGINT``          the current training step (and its gradient
                  (Ctrl-C) received while ``fit`` runs in the     accumulation window, with the mid-epoch
                  main thread: ``fit`` handles both for its       validations inside it) finishes, or the
                  duration and stops at the next step boundary;   current validation phase (a mid-epoch
                  never deferred by ``min_epochs``/``min_steps``  one: then the fit stops; the end-of-epoch
                                                                  one: with its epoch's end); then
                                                                  ``FitEnded`` only: no
                                                                  ``ExceptionRaised`` (nothing was raised), no
                                                                  ``Trained``/``Iterated`` for an unfinished
                                                                  epoch (a resumed fit completes it);
                                                                  ``ModelCheckpoint`` writes ``last.ckpt``;
                                                                  ``fit`` returns normally,
                                                                  ``trainer.interrupted`` and
                                                                  ``trainer.received_signal`` are set
``interrupted``   ``KeyboardInterrupt`` raised in the loop (a     ``ExceptionRaised``, ``FitEnded``; ``fit``
                  second ``SIGINT`` while stopping, or Ctrl-C     returns normally, ``trainer.interrupted``;
                  outside the main thread's handlers)             after a second ``SIGINT`` the
                                                                  ``KeyboardInterrupt`` propagates instead
``exception``     any other exception from the aggregate, a       ``ExceptionRaised``, ``FitEnded``; then the
                  loader or a callback                            exception propagates out of ``fit``
================  ==============================================  =========================================

When a limit or a stop request arrives in the middle of the training phase, the epoch's validation phase is skipped
(the epoch did not reach its end, where that validation is due), so ``Iterated.results`` then holds only the
``train/...`` keys. A mid-epoch validation (``val_check_interval``) due after the batch that reaches ``max_steps``
or ``max_time`` still runs, as a validation due at the epoch's last batch does; one due after the batch where a stop
was requested does not.

Validations of a fit, and which event reports each one's results as ``"validation/<name>"`` (what
``EarlyStopping``, ``ModelCheckpoint`` and ``LearningRateScheduler`` read):

=========================  ============================================  ===========================================
validation                 events                                        reported by
=========================  ============================================  ===========================================
the sanity check           ``SanityCheckStarted``, ``SanityCheckEnded``  nothing: no ``PhaseStarted``,
(``num_sanity_val_steps``  (``trainer.sanity_checking`` between them)    ``BatchValidated``, ``Validated``; its
before the first batch)                                                  results are ``SanityCheckEnded``'s only
mid-epoch                  ``PhaseStarted("validation")``,               ``MidEpochValidated`` (right after
(``val_check_interval``)   ``BatchValidated``..., ``Validated``          ``Validated``); also ``callback_metrics``
the epoch's end            ``PhaseStarted("validation")``,               ``Iterated``, with the epoch's ``train/...``
                           ``BatchValidated``..., ``Validated``          results
=========================  ============================================  ===========================================

``Trainer.validate``, ``test`` and ``predict`` run outside a fit and are bracketed by their own pair of events,
:class:`StageStarted` and :class:`StageEnded`, whose ``stage`` is ``"validate"``, ``"test"`` or ``"predict"``
(Lightning's word for what a Trainer method runs, its ``TrainerFn``). They fire no ``FitStarted``/``FitEnded``,
and a fit fires no stage events (its validation phases are ``PhaseStarted("validation")`` ... ``Validated``)::

    StageStarted(stage)
    PhaseStarted(phase)                              # "validation", "test" or "predict"
    BatchValidated | BatchTested | BatchPredicted    # one per batch
    Validated | Tested | Predicted
    StageEnded(stage, reason)                        # always last

Which events fire, for each way a stand-alone run ends (``StageEnded.reason``):

================  ==============================================  =========================================
ending            cause                                           events at the end, in order
================  ==============================================  =========================================
``completed``     the loader's batches ran (up to                 ... ``Validated``/``Tested``/
                  ``limit_val_batches`` for ``validate``)         ``Predicted``, ``StageEnded``; the method
                                                                  returns its results
``interrupted``   ``KeyboardInterrupt`` raised in the run (Ctrl-  ``ExceptionRaised``, ``StageEnded``; then
                  C: no signal handlers are installed outside     the ``KeyboardInterrupt`` propagates (a
                  ``fit``)                                        stand-alone run has no results to return;
                                                                  ``fit`` and Lightning return normally)
``exception``     any other exception from the aggregate, a       ``ExceptionRaised``, ``StageEnded``; then the
                  loader or a callback (``StageStarted``'s        exception propagates out of the method
                  handlers included)
================  ==============================================  =========================================

A ``ckpt_path`` that cannot be loaded fails ``validate``/``test`` before ``StageStarted``: no event fires then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor
    from torch.optim import Optimizer

    from torchsystem_trainer.domain import Aggregate

__all__ = [
    "EVENTS",
    "BatchPredicted",
    "BatchTested",
    "BatchTrained",
    "BatchValidated",
    "EndReason",
    "EpochStarted",
    "ExceptionRaised",
    "FitEnded",
    "FitStarted",
    "GradientsComputed",
    "Iterated",
    "Metric",
    "MidEpochValidated",
    "PhaseStarted",
    "Predicted",
    "SanityCheckEnded",
    "SanityCheckStarted",
    "Stage",
    "StageEndReason",
    "StageEnded",
    "StageStarted",
    "StopDeferred",
    "Tested",
    "Trained",
    "Validated",
]

EndReason = Literal["completed", "max_steps", "max_time", "stopped", "interrupted", "exception"]
Stage = Literal["validate", "test", "predict"]
"""A run outside ``fit``: ``Trainer.validate``, ``test`` or ``predict`` (Lightning's ``TrainerFn`` less ``fit``)."""
StageEndReason = Literal["completed", "interrupted", "exception"]


class Metric(NamedTuple):
    """One named result, as the seed's consumers read them (``metric.name``, ``metric.value``)."""

    name: str
    value: float


@dataclass(frozen=True, slots=True)
class FitStarted:
    """``fit`` set up the strategy, subscribed callbacks and restored any checkpoint; no batch ran yet."""

    trainer: Any
    aggregate: Aggregate


@dataclass(frozen=True, slots=True)
class StageStarted:
    """``validate``, ``test`` or ``predict`` (``stage``) set up the strategy and the callbacks; no batch ran yet.
    The first event of such a run, as Lightning's ``on_validation_start``/``on_test_start``/``on_predict_start``;
    ``fit`` fires ``FitStarted`` instead."""

    trainer: Any
    aggregate: Aggregate
    stage: Stage


@dataclass(frozen=True, slots=True)
class SanityCheckStarted:
    """``fit`` is about to run its sanity check: ``batches`` validation batches (``num_sanity_val_steps``, capped
    by the loader's length and ``limit_val_batches``; ``None`` when the loader has no length and all of it runs)
    before the first training batch, so that an error in ``evaluate`` shows in seconds (Lightning's
    ``on_sanity_check_start``). ``trainer.sanity_checking`` is ``True`` until :class:`SanityCheckEnded`.

    No ``PhaseStarted``, ``BatchValidated`` or ``Validated`` fires for these batches: nothing that reacts to a
    validation (loggers, ``EarlyStopping``, ``ModelCheckpoint``, ``History``, the run store) can take them for one.
    """

    trainer: Any
    aggregate: Aggregate
    batches: int | None


@dataclass(frozen=True, slots=True)
class SanityCheckEnded:
    """The sanity check ended (Lightning's ``on_sanity_check_end``). ``results`` hold its loss and metrics, for a
    person to read; they are no validation's results: they reach no ``callback_metrics``, no logger and no monitor.
    """

    trainer: Any
    aggregate: Aggregate
    results: dict[str, float]


@dataclass(frozen=True, slots=True)
class EpochStarted:
    """An epoch (0-based ``epoch``) begins."""

    trainer: Any
    aggregate: Aggregate
    epoch: int


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    """A phase (``"train"``, ``"validation"``, ``"test"``, ``"predict"``) begins over its loader. ``batches`` is
    how many batches it will run (the loader's length after ``limit_*_batches``), ``None`` when the loader has no
    length."""

    trainer: Any
    aggregate: Aggregate
    epoch: int
    phase: str
    batches: int | None


@dataclass(frozen=True, slots=True)
class GradientsComputed:
    """Gradients of an optimizer step are ready: after backward (unscaled, averaged over accumulated batches,
    clipped), before ``optimizer.step()``. ``step`` is the training batch that completes the step."""

    trainer: Any
    aggregate: Aggregate
    epoch: int
    step: int
    optimizer: Optimizer


@dataclass(frozen=True, slots=True)
class _BatchEvent:
    trainer: Any
    aggregate: Aggregate
    epoch: int
    batch: int
    step: int
    predictions: Any
    loss: Tensor
    targets: Any


@dataclass(frozen=True, slots=True)
class BatchTrained(_BatchEvent):
    """The aggregate's ``fit`` ran on one training batch. ``loss``: the ``[]`` tensor ``fit`` returned, detached from
    its autograd graph (the step has used it; Lightning's ``on_train_batch_end`` gets a detached loss too) and still
    on its device: reading it (``float(event.loss)``) is what synchronises."""


@dataclass(frozen=True, slots=True)
class BatchValidated(_BatchEvent):
    """The aggregate's ``evaluate`` ran on one validation batch (``step``: training batches so far)."""


@dataclass(frozen=True, slots=True)
class BatchTested(_BatchEvent):
    """The aggregate's ``evaluate`` ran on one test batch."""


@dataclass(frozen=True, slots=True)
class BatchPredicted:
    """The aggregate predicted one batch."""

    trainer: Any
    aggregate: Aggregate
    batch: int
    predictions: Any


@dataclass(frozen=True, slots=True)
class _PhaseEvent:
    trainer: Any
    aggregate: Aggregate
    epoch: int
    results: dict[str, float]

    @property
    def model(self) -> Aggregate:
        """The aggregate, under the seed's name."""
        return self.aggregate

    @property
    def metrics(self) -> tuple[Metric, ...]:
        """The results as the seed's ``Metric`` objects (``name``, ``value``)."""
        return tuple(Metric(name, value) for name, value in self.results.items())


@dataclass(frozen=True, slots=True)
class Trained(_PhaseEvent):
    """The training phase of an epoch ended; ``results`` hold its loss and metrics."""


@dataclass(frozen=True, slots=True)
class Validated(_PhaseEvent):
    """A validation phase ended (in ``fit`` or ``validate``); ``results`` hold its loss and metrics."""


@dataclass(frozen=True, slots=True)
class MidEpochValidated(_PhaseEvent):
    """A validation in the middle of an epoch's training phase ended (``val_check_interval``), after its
    ``Validated`` and all of that event's handlers (so ``EMA`` has put the trained weights back). ``results`` hold
    its results as ``"validation/<name>"``, as :class:`Iterated` holds an epoch's; ``batch`` is the number of
    training batches of the epoch trained before it and ``step`` the run's (``trainer.progress.step``).

    ``EarlyStopping`` and ``ModelCheckpoint`` check here as they do at ``Iterated``, which reports only the
    validation that ran at the epoch's end (if any), so every validation is checked once.
    """

    batch: int
    step: int


@dataclass(frozen=True, slots=True)
class Tested(_PhaseEvent):
    """A test phase ended (``Trainer.test``); ``results`` hold its loss and metrics."""


@dataclass(frozen=True, slots=True)
class Iterated(_PhaseEvent):
    """An epoch over all loaders ended. ``results`` hold every phase's results as ``"<phase>/<name>"``."""


@dataclass(frozen=True, slots=True)
class StopDeferred:
    """A stop was requested (``trainer.should_stop``, ``EarlyStopping``, the aggregate's ``StopIteration``) before
    ``min_epochs`` or ``min_steps`` was reached, so training goes on; the fit stops once both are reached, unless
    the request is withdrawn (``trainer.should_stop = False``). Fired once per fit, at the first deferral
    (Lightning logs "Trainer was signaled to stop but the required ``min_epochs`` or ``min_steps`` has not been
    met"). ``epoch``: the 0-based epoch during which (or at whose end) the stop was deferred; ``step``:
    ``trainer.global_step`` then.
    """

    trainer: Any
    aggregate: Aggregate
    epoch: int
    step: int
    min_epochs: int | None
    min_steps: int | None


@dataclass(frozen=True, slots=True)
class Predicted:
    """``Trainer.predict`` ended; ``predictions`` holds one entry per batch."""

    trainer: Any
    aggregate: Aggregate
    predictions: list[Any]


@dataclass(frozen=True, slots=True)
class ExceptionRaised:
    """``fit``, ``validate``, ``test`` or ``predict`` is ending because of ``exception`` (a ``KeyboardInterrupt``
    included; a fit stopped by ``SIGTERM`` or ``SIGINT`` raises nothing and fires no ``ExceptionRaised``). Next
    comes ``FitEnded`` or ``StageEnded``, as Lightning's ``on_exception`` precedes its teardown."""

    trainer: Any
    aggregate: Aggregate
    exception: BaseException


@dataclass(frozen=True, slots=True)
class FitEnded:
    """``fit`` ended, for ``reason`` (see the module's table). The last event of every fit; ``validate``,
    ``test`` and ``predict`` end with ``StageEnded`` instead."""

    trainer: Any
    aggregate: Aggregate
    reason: EndReason


@dataclass(frozen=True, slots=True)
class StageEnded:
    """``validate``, ``test`` or ``predict`` (``stage``) ended, for ``reason`` (see the module's second table):
    ``"completed"``, ``"interrupted"`` (a ``KeyboardInterrupt``) or ``"exception"``. The last event of such a run,
    whatever the reason, as Lightning's ``on_validation_end``/``on_test_end``/``on_predict_end`` (which, unlike
    this, Lightning skips when the run raised); ``fit`` fires ``FitEnded`` instead."""

    trainer: Any
    aggregate: Aggregate
    stage: Stage
    reason: StageEndReason


EVENTS: tuple[type, ...] = (
    FitStarted,
    StageStarted,
    SanityCheckStarted,
    SanityCheckEnded,
    EpochStarted,
    PhaseStarted,
    GradientsComputed,
    BatchTrained,
    BatchValidated,
    BatchTested,
    BatchPredicted,
    Trained,
    Validated,
    MidEpochValidated,
    Tested,
    Iterated,
    StopDeferred,
    Predicted,
    ExceptionRaised,
    FitEnded,
    StageEnded,
)
"""Every event the Trainer produces, in the order of the hook names a callback may define."""
