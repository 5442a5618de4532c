"""The phases of a run: the per-batch loops of training, evaluation and prediction.

They are the Trainer's hot path, kept apart from its orchestration (``trainer.py``): each resolves once, at the
phase's start, everything it uses per batch (the bound methods, the strategy's contexts, the handlers of the batch
event), builds a batch event only when some callback handles it, and reads nothing back from the device.

A phase knows nothing of the Trainer: it gets a :class:`Run` (the strategy, the event bus, the loop's state, and
the object events name as their ``trainer``) and the settings it applies, and it advances ``run.loop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from torchsystem_trainer.checkpoint import load_rng_state, rng_state
from torchsystem_trainer.events import (
    BatchPredicted,
    BatchTested,
    BatchTrained,
    BatchValidated,
    EndReason,
    MidEpochValidated,
    PhaseStarted,
    Predicted,
    Tested,
    Validated,
)
from torchsystem_trainer.strategies import ReduceOp, Strategy
from torchsystem_trainer.trainer.dispatch import EventBus
from torchsystem_trainer.trainer.loaders import batch_size, call_step, limit_of, targets_reader
from torchsystem_trainer.trainer.logged import bind_log
from torchsystem_trainer.trainer.loop_state import LoopState
from torchsystem_trainer.trainer.results import PhaseResults
from torchsystem_trainer.trainer.stopping import Minimum, stop_reason
from torchsystem_trainer.trainer.val_check import EpochChecks

__all__ = [
    "MidEpochValidation",
    "Run",
    "evaluate_batches",
    "evaluate_phase",
    "planned_batches",
    "predict_phase",
    "train_phase",
    "validate_mid_epoch",
]


@dataclass(frozen=True, slots=True)
class Run:
    """What the phases of one run share.

    Attributes:
        source: the object every event carries as its ``trainer`` (the Trainer).
        strategy: the run's strategy (set up).
        bus: the run's event bus.
        loop: the loop's state, which the phases advance.
        profiler: the run's profiler (``torchsystem_trainer.profilers``), or ``None``: then a phase runs exactly
            the code it runs without one.
    """

    source: Any
    strategy: Strategy
    bus: EventBus
    loop: LoopState
    profiler: Any = None

    def reduce(self, tensor: torch.Tensor, op: ReduceOp = "sum") -> torch.Tensor:
        """Reduce ``tensor`` over the processes with ``op`` (the identity with one)."""
        return self.strategy.all_reduce(tensor, op) if self.strategy.world_size > 1 else tensor

    @property
    def reducer(self) -> Callable[..., torch.Tensor] | None:
        """:meth:`reduce` under several processes, ``None`` with one (what ``PhaseResults.compute`` takes)."""
        return self.reduce if self.strategy.world_size > 1 else None


_EVALUATION_EVENTS = {"validation": (BatchValidated, Validated), "test": (BatchTested, Tested)}


@dataclass(frozen=True, slots=True)
class MidEpochValidation:
    """What a training phase needs to validate in the middle of its epoch (``val_check_interval``).

    Attributes:
        checks: where this epoch's validations fall.
        loader: the validation loader (as the strategy adapted it).
        limit: ``limit_val_batches``.
    """

    checks: EpochChecks
    loader: Iterable[Any]
    limit: int | float | None


def train_phase(
    run: Run,
    aggregate: Any,
    loader: Iterable[Any],
    *,
    limit: int | float | None,
    max_steps: int | None,
    deadline: float | None,
    minimum: Minimum = Minimum(),  # noqa: B008  # frozen: one shared instance is safe
    validation: MidEpochValidation | None = None,
) -> tuple[dict[str, float], EndReason | None, bool]:
    """Run one training phase: the per-batch hot path.

    After each batch, in order: a requested stop ends the phase (unless ``minimum`` defers it); a mid-epoch
    validation due after this batch runs (``validate_mid_epoch``); ``max_steps``, then ``max_time``, end it.
    A resumed phase whose checkpoint was written between a batch and the validation due after it runs that
    validation first.

    Args:
        run: the run.
        aggregate: the aggregate, set up.
        loader: the training loader (as the strategy adapted it).
        limit: ``limit_train_batches`` (an ``int`` count or a ``float`` fraction), or ``None``.
        max_steps: stop once ``loop.progress.global_step`` reaches it, or ``None``.
        deadline: ``time.monotonic()`` at which ``max_time`` runs out, or ``None``.
        minimum: ``min_epochs``/``min_steps``, before which a requested stop is deferred.
        validation: the mid-epoch validations of this epoch, or ``None`` for none.

    Returns:
        The phase's results, why the fit must stop (or ``None``), and whether the phase was cut short before the
        loader's end.
    """
    strategy, bus, loop, source = run.strategy, run.bus, run.loop, run.source
    progress = loop.progress
    aggregate.phase = "train"
    epoch = progress.epoch
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):  # DistributedSampler and friends reshuffle per epoch
        set_epoch(epoch)
    limit = limit_of(loader, limit, "limit_train_batches")
    total = planned_batches(loader, limit)
    bus.emit(PhaseStarted, source, aggregate, epoch, "train", total)
    results = loop.results("train")
    if progress.batch == 0:
        results.reset()
    bind_log(aggregate, results.logged)  # Aggregate.log goes to this phase's results until its end
    fit, owner = aggregate.fit, f"{type(aggregate).__name__}.fit"  # type: ignore[union-attr]
    to_device = strategy.batch_to_device
    context = strategy.train_step_context if strategy.needs_step_context() else None
    steps = strategy.steps  # what a bound optimizer.step() runs through (strategies.optimizer_step)
    accumulate = steps.accumulate_grad_batches
    listeners = bus.handlers(BatchTrained)
    wants_targets = results.metrics is not None or bool(listeners)
    read_targets = targets_reader(aggregate, results.metrics is not None, "train")
    reason: EndReason | None = None
    distributed = strategy.world_size > 1
    index = progress.batch - 1
    # per batch only when a validation can fall inside the epoch (val_check_interval), else one None check
    checks = None if validation is None or validation.checks.every is None else validation.checks
    if checks is not None and progress.batch and loop.validated_step != progress.step:
        reason = _validate_pending(run, aggregate, validation, minimum)  # type: ignore[arg-type]
    if reason is None:
        iterator = loop.position.open(loader, progress.batch)  # once per phase; skips consumed batches on resume
    else:
        iterator = _opened_unread(loop, loader)  # that validation stopped the fit: no batch is loaded
    profiled = run.profiler.phase("train") if run.profiler is not None else None
    if run.profiler is not None:
        fit, to_device, iterator = run.profiler.instrument("train", fit, owner, to_device, iterator)
    for index, batch in enumerate(iterator, start=progress.batch):
        if limit is not None and index >= limit:
            index -= 1
            break
        batch = to_device(batch)
        if accumulate > 1:
            steps.begin_batch(index, total)
        if context is None:
            predictions, loss = call_step(fit, batch, owner)
        else:
            with context():
                predictions, loss = call_step(fit, batch, owner)
        loss = loss.detach()  # the step is done with its graph: results and events keep the value only
        targets = read_targets(batch) if wants_targets else None
        results.update(loss, batch_size(batch), predictions, targets)
        progress.batch = index + 1
        progress.step += 1
        if not steps.accumulating:
            progress.global_step += 1
        if listeners:
            event = BatchTrained(source, aggregate, epoch, index, progress.step, predictions, loss, targets)
            for handler in listeners:
                handler(event)
        if distributed:  # every process must stop at the same batch, or the next all-reduce hangs
            deadline = _agree_to_stop(loop, strategy, deadline)
        if loop.should_stop and (reason := stop_reason(loop, minimum, bus, source, aggregate, epoch)):
            if reason != "interrupted" or not steps.accumulating:
                break
            # a signal inside an accumulation window: finish the window (a checkpoint holds no partial gradients),
            # validating where the uninterrupted run would (so the resumed run does not miss that validation)
            reason = None
            if checks is not None and checks.mid_epoch(progress.batch, progress.step):
                validate_mid_epoch(run, aggregate, validation)  # type: ignore[arg-type]
            continue
        if checks is not None and checks.mid_epoch(progress.batch, progress.step):
            validate_mid_epoch(run, aggregate, validation)  # type: ignore[arg-type]
            if loop.should_stop and (reason := stop_reason(loop, minimum, bus, source, aggregate, epoch)):
                if reason != "interrupted" or not steps.accumulating:
                    break
                reason = None  # as above: finish the window
                continue
        if max_steps is not None and progress.global_step >= max_steps:
            reason = "max_steps"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "max_time"
        else:
            continue
        break
    bind_log(aggregate, None)
    if profiled is not None:
        profiled()
    if steps.finish_window(aggregate):  # the loader ended inside an accumulation window of unknown length
        progress.global_step += 1
    if progress.batch == 0 and limit != 0:  # not one batch in a whole epoch: an empty iterable (no len to check)
        raise ValueError(
            f"Trainer.fit: the 'train' loader yielded no batch in epoch {epoch}: there is nothing to train on"
        )
    if reason == "interrupted":
        return {}, reason, True  # no results yet: folding the losses now would change the resumed sums
    cut_short = reason is not None and (total is None or index + 1 < total)
    return results.compute(run.reducer), reason, cut_short


def _validate_pending(
    run: Run, aggregate: Any, validation: MidEpochValidation, minimum: Minimum
) -> EndReason | None:
    """On a mid-epoch resume: run the validation due after the checkpoint's batch when it did not run before the
    checkpoint was written (a step checkpoint, an interruption). It runs before the loader is opened, from the
    generators' states of the checkpoint's moment, as in the uninterrupted run; the loader then continues from the
    states it leaves.

    Returns:
        Why the fit stops after it (``EarlyStopping`` may stop it there), or ``None``.
    """
    loop = run.loop
    progress = loop.progress
    if not validation.checks.mid_epoch(progress.batch, progress.step):
        return None
    loop.position.retake_moment()  # from now on the moment to return to is the generators' state as they are then
    validate_mid_epoch(run, aggregate, validation)
    return stop_reason(loop, minimum, run.bus, run.source, aggregate, progress.epoch)


def _opened_unread(loop: LoopState, loader: Iterable[Any]) -> Iterator[Any]:
    """Open the loader where the epoch stands (so a checkpoint written as the fit ends records that position) but
    read nothing: the global generators are left as they are now (reading the first batch is what would put them
    back to the checkpoint's moment)."""
    moment = rng_state()
    loop.position.open(loader, loop.progress.batch)
    load_rng_state(moment)
    return iter(())


def _agree_to_stop(loop: LoopState, strategy: Strategy, deadline: float | None) -> float | None:
    """Under several processes, agree after each training batch on whether to stop, since a signal, a clock or a
    callback may tell one process and not the others: the strongest request wins everywhere (one small all-reduce
    and one host read per batch, paid only by data-parallel runs).

    Returns:
        The deadline to check next, ``0.0`` when some process's ``max_time`` ran out.
    """
    timed_out = deadline is not None and time.monotonic() >= deadline
    local = 3 if timed_out else 2 if loop.stop_signalled else 1 if loop.should_stop else 0
    agreed = int(strategy.all_reduce(torch.tensor(local, device=strategy.root_device), "max").item())
    if agreed == 3:
        return 0.0
    if agreed and not loop.should_stop:
        loop.should_stop, loop.stop_signalled = True, agreed == 2
    return deadline


def evaluate_phase(run: Run, aggregate: Any, loader: Iterable[Any], phase: str, limit: Any) -> dict[str, float]:
    """Run one validation or test phase under ``torch.inference_mode()`` and emit its events.

    Args:
        run: the run.
        aggregate: the aggregate, set up.
        loader: the phase's loader (as the strategy adapted it).
        phase: ``"validation"`` or ``"test"``.
        limit: ``limit_val_batches``/``limit_test_batches`` (an ``int`` count or a ``float`` fraction), or ``None``.

    Returns:
        The phase's results.
    """
    batch_event, phase_event = _EVALUATION_EVENTS[phase]
    epoch = run.loop.progress.epoch
    limit = limit_of(loader, limit, "limit_val_batches" if phase == "validation" else f"limit_{phase}_batches")
    run.bus.emit(PhaseStarted, run.source, aggregate, epoch, phase, planned_batches(loader, limit))
    computed = evaluate_batches(run, aggregate, loader, run.loop.results(phase), phase, limit, batch_event)
    run.bus.emit(phase_event, run.source, aggregate, epoch, computed)
    return computed


def evaluate_batches(
    run: Run,
    aggregate: Any,
    loader: Iterable[Any],
    results: PhaseResults,
    phase: str,
    limit: int | None,
    batch_event: type | None,
    grad_mode: Callable[[], AbstractContextManager[Any]] = torch.inference_mode,
) -> dict[str, float]:
    """Evaluate up to ``limit`` batches of ``loader`` under ``grad_mode()`` into ``results`` (reset first),
    emitting ``batch_event`` per batch when someone handles it; no phase event.

    Args:
        run: the run.
        aggregate: the aggregate, set up (put in its ``'evaluation'`` phase here).
        loader: the loader (as the strategy adapted it).
        results: where the loss and metrics accumulate.
        phase: the phase's name, for error messages.
        limit: the number of batches, ``None`` for all.
        batch_event: ``BatchValidated``/``BatchTested``, or ``None`` for no batch event.
        grad_mode: ``torch.inference_mode`` (the phases), or ``torch.no_grad`` where the evaluation may be the
            first forward of the process (the sanity check): a buffer a module creates at its first forward, or a
            sharded strategy's gathered parameters, would otherwise be an inference tensor that training cannot use.

    Returns:
        The results, reduced over the processes.
    """
    strategy, loop, source = run.strategy, run.loop, run.source
    progress = loop.progress
    aggregate.phase = "evaluation"
    epoch = progress.epoch
    results.reset()
    previous = bind_log(aggregate, results.logged)
    evaluate, owner = aggregate.evaluate, f"{type(aggregate).__name__}.evaluate"  # type: ignore[union-attr]
    to_device = strategy.batch_to_device
    listeners = run.bus.handlers(batch_event) if batch_event is not None else ()
    wants_targets = results.metrics is not None or bool(listeners)
    read_targets = targets_reader(aggregate, results.metrics is not None, phase)
    profiled = run.profiler.phase(phase) if run.profiler is not None else None
    if run.profiler is not None:
        evaluate, to_device, loader = run.profiler.instrument(phase, evaluate, owner, to_device, loader)
    with grad_mode(), strategy.evaluation_context():
        for index, batch in enumerate(loader):
            if limit is not None and index >= limit:
                break
            batch = to_device(batch)
            predictions, loss = call_step(evaluate, batch, owner)
            targets = read_targets(batch) if wants_targets else None
            results.update(loss, batch_size(batch), predictions, targets)
            if listeners:
                event = batch_event(source, aggregate, epoch, index, progress.step, predictions, loss, targets)  # type: ignore[misc]
                for handler in listeners:
                    handler(event)
    bind_log(aggregate, previous)  # the training phase's, after a mid-epoch validation
    if profiled is not None:
        profiled()
    return results.compute(run.reducer)


def validate_mid_epoch(run: Run, aggregate: Any, validation: MidEpochValidation) -> dict[str, float]:
    """Run a validation phase in the middle of the training phase (``PhaseStarted("validation")``,
    ``BatchValidated``..., ``Validated``), put the aggregate back in its ``'train'`` phase, record the validation in
    the loop (``validated_step``; its results in ``callback_metrics``) and emit ``MidEpochValidated``.

    Returns:
        The flat results, ``{"validation/<name>": value}``.
    """
    loop = run.loop
    progress = loop.progress
    results = evaluate_phase(run, aggregate, validation.loader, "validation", validation.limit)
    aggregate.phase = "train"
    loop.validated_step = progress.step
    flat = {f"validation/{name}": value for name, value in results.items()}
    loop.callback_metrics = {**loop.callback_metrics, **flat}
    run.bus.emit(MidEpochValidated, run.source, aggregate, progress.epoch, flat, progress.batch, progress.step)
    return flat


def predict_phase(run: Run, aggregate: Any, loader: Iterable[Any], limit: int | float | None = None) -> list[Any]:
    """Predict the batches of ``loader`` (the aggregate set up, in the ``'evaluation'`` phase), at most ``limit``
    (``limit_predict_batches``: an ``int`` count or a ``float`` fraction); emits ``PhaseStarted``,
    ``BatchPredicted`` per batch and ``Predicted``. Returns one entry per batch."""
    aggregate.phase = "evaluation"
    bus, to_device, source = run.bus, run.strategy.batch_to_device, run.source
    count = limit_of(loader, limit, "limit_predict_batches")
    bus.emit(PhaseStarted, source, aggregate, run.loop.progress.epoch, "predict", planned_batches(loader, count))
    predict: Callable[[Any], Any] | None = getattr(aggregate, "predict", None)
    predictions: list[Any] = []
    with torch.inference_mode(), run.strategy.evaluation_context():
        for index, batch in enumerate(loader):
            if count is not None and index >= count:
                break
            batch = to_device(batch)
            output = predict(batch) if predict is not None else aggregate(_inputs_of(batch))
            predictions.append(output)
            bus.emit(BatchPredicted, source, aggregate, index, output)
    bus.emit(Predicted, source, aggregate, predictions)
    return predictions


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def planned_batches(loader: Iterable[Any], limit: int | None) -> int | None:
    """How many batches a phase will run: the loader's length, capped by ``limit`` (a count, see ``limit_of``);
    ``None`` if unknown."""
    length = _length(loader)
    if limit is None:
        return length
    return limit if length is None else min(limit, length)


def _inputs_of(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    raise TypeError(
        f"Trainer.predict: a batch is a tensor, or a tuple or list whose first element is the inputs; got a "
        f"{type(batch).__name__} (or give the aggregate a predict(batch) method)"
    )
