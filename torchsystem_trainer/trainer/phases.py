"""The phases of a run: the per-batch loops of training, evaluation and prediction.

They are the Trainer's hot path, kept apart from its orchestration (``trainer.py``): each resolves once, at the
phase's start, everything it uses per batch (the bound methods, the strategy's contexts, the handlers of the batch
event), builds a batch event only when some callback handles it, and reads nothing back from the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from torchsystem_trainer.events import (
    BatchPredicted,
    BatchTested,
    BatchTrained,
    BatchValidated,
    EndReason,
    PhaseStarted,
    Predicted,
    Tested,
    Validated,
)
from torchsystem_trainer.strategies.binding import find_optimizers
from torchsystem_trainer.trainer.loaders import batch_size, call_step, limit_of, targets_reader

if TYPE_CHECKING:
    from torchsystem_trainer.trainer.trainer import Trainer

__all__ = ["evaluate_phase", "predict_phase", "train_phase"]

_EVALUATION_EVENTS = {"validation": (BatchValidated, Validated), "test": (BatchTested, Tested)}


def train_phase(
    trainer: Trainer, aggregate: Any, loader: Iterable[Any], deadline: float | None
) -> tuple[dict[str, float], EndReason | None, bool]:
    """Run one training phase: the per-batch hot path.

    Returns:
        The phase's results, why the fit must stop (or ``None``), and whether the phase was cut short before the
        loader's end.
    """
    strategy, progress, bus = trainer.strategy, trainer.progress, trainer._bus
    aggregate.phase = "train"
    epoch = progress.epoch
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if callable(set_epoch):  # DistributedSampler and friends reshuffle per epoch
        set_epoch(epoch)
    limit = limit_of(loader, trainer.limit_train_batches, "limit_train_batches")
    total = _planned(loader, limit)
    bus.emit(PhaseStarted, trainer, aggregate, epoch, "train", total)
    results = trainer._results_of("train")
    if progress.batch == 0:
        results.reset()
    fit, owner = aggregate.fit, f"{type(aggregate).__name__}.fit"  # type: ignore[union-attr]
    to_device = strategy.batch_to_device
    context = strategy.train_step_context if strategy.needs_step_context() else None
    accumulate, max_steps = trainer.accumulate_grad_batches, trainer.max_steps
    listeners = bus.handlers(BatchTrained)
    wants_targets = results.metrics is not None or bool(listeners)
    read_targets = targets_reader(aggregate, results.metrics is not None, "train")
    reason: EndReason | None = None
    distributed = strategy.world_size > 1
    index = progress.batch - 1
    iterator = trainer._position.open(loader, progress.batch)  # once per phase; skips consumed batches on resume
    for index, batch in enumerate(iterator, start=progress.batch):
        if limit is not None and index >= limit:
            index -= 1
            break
        batch = to_device(batch)
        if accumulate > 1:
            position = index % accumulate
            strategy.window_start = position == 0
            strategy.accumulating = position != accumulate - 1 and index + 1 != total
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
        if not strategy.accumulating:
            progress.global_step += 1
        if listeners:
            event = BatchTrained(trainer, aggregate, epoch, index, progress.step, predictions, loss, targets)  # type: ignore[arg-type]
            for handler in listeners:
                handler(event)
        if distributed:  # every process must stop at the same batch, or the next all-reduce hangs
            deadline = trainer._agree_to_stop(deadline)
        if trainer.should_stop:
            reason = trainer._stop_reason()
            if reason == "interrupted" and strategy.accumulating:
                reason = None  # finish the accumulation window: a checkpoint holds no partial gradients
                continue
        elif max_steps is not None and progress.global_step >= max_steps:
            reason = "max_steps"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "max_time"
        else:
            continue
        break
    if strategy.accumulating:  # the loader ended inside an accumulation window of unknown length
        strategy.accumulating = False
        for optimizer in find_optimizers(aggregate):
            optimizer.step()
        progress.global_step += 1
    strategy.accumulating, strategy.window_start = False, True
    if reason == "interrupted":
        return {}, reason, True  # no results yet: folding the losses now would change the resumed sums
    cut_short = reason is not None and (total is None or index + 1 < total)
    return results.compute(trainer._reduce), reason, cut_short


def evaluate_phase(
    trainer: Trainer, aggregate: Any, loader: Iterable[Any], phase: str, limit_arg: Any
) -> dict[str, float]:
    """Run one validation or test phase under ``torch.inference_mode()`` and emit its events.

    Returns:
        The phase's results.
    """
    strategy, progress, bus = trainer.strategy, trainer.progress, trainer._bus
    batch_event, phase_event = _EVALUATION_EVENTS[phase]
    aggregate.phase = "evaluation"
    epoch = progress.epoch
    limit = limit_of(loader, limit_arg, "limit_val_batches")
    bus.emit(PhaseStarted, trainer, aggregate, epoch, phase, _planned(loader, limit))
    results = trainer._results_of(phase)
    results.reset()
    evaluate, owner = aggregate.evaluate, f"{type(aggregate).__name__}.evaluate"  # type: ignore[union-attr]
    to_device = strategy.batch_to_device
    listeners = bus.handlers(batch_event)
    wants_targets = results.metrics is not None or bool(listeners)
    read_targets = targets_reader(aggregate, results.metrics is not None, phase)
    with torch.inference_mode(), strategy.forward_context():
        for index, batch in enumerate(loader):
            if limit is not None and index >= limit:
                break
            batch = to_device(batch)
            predictions, loss = call_step(evaluate, batch, owner)
            targets = read_targets(batch) if wants_targets else None
            results.update(loss, batch_size(batch), predictions, targets)
            if listeners:
                event = batch_event(trainer, aggregate, epoch, index, progress.step, predictions, loss, targets)
                for handler in listeners:
                    handler(event)
    computed = results.compute(trainer._reduce)
    bus.emit(phase_event, trainer, aggregate, epoch, computed)
    return computed


def predict_phase(trainer: Trainer, aggregate: Any, loader: Iterable[Any]) -> list[Any]:
    """Predict every batch of ``loader`` (the aggregate set up, in the ``'evaluation'`` phase); emits
    ``PhaseStarted``, ``BatchPredicted`` per batch and ``Predicted``. Returns one entry per batch."""
    aggregate.phase = "evaluation"
    bus, to_device = trainer._bus, trainer.strategy.batch_to_device
    bus.emit(PhaseStarted, trainer, aggregate, trainer.progress.epoch, "predict", _length(loader))
    predict: Callable[[Any], Any] | None = getattr(aggregate, "predict", None)
    predictions: list[Any] = []
    with torch.inference_mode(), trainer.strategy.forward_context():
        for index, batch in enumerate(loader):
            batch = to_device(batch)
            output = predict(batch) if predict is not None else aggregate(_inputs_of(batch))
            predictions.append(output)
            bus.emit(BatchPredicted, trainer, aggregate, index, output)
    bus.emit(Predicted, trainer, aggregate, predictions)
    return predictions


def _length(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _planned(loader: Iterable[Any], limit: int | None) -> int | None:
    """How many batches a phase will run: the loader's length, capped by ``limit``; ``None`` if unknown."""
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
