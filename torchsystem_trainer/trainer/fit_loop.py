"""The epoch loop of a fit: epochs -> phases, from the aggregate's ``epoch`` until a limit or a stop.

The Trainer hands it a :class:`~.phases.Run` and its :class:`FitLimits`; the fit runs the sanity check first
(:mod:`.sanity_check`), then each epoch runs the training phase (with the validations ``val_check_interval`` puts
inside it, :mod:`.val_check`), then the epoch's end-of-epoch validation when due (:mod:`.phases`), then advances the
aggregate's ``epoch``, which fires its ``onepoch``. One epoch counter: the aggregate's ``epoch`` (epochs completed);
``max_epochs`` is the total it reaches (Lightning's meaning); with no limit at all a fit trains one more epoch
(Keras' ``epochs=1``). A requested stop ends the fit once ``min_epochs``/``min_steps`` are reached
(:mod:`.stopping`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from torchsystem_trainer.checkpoint import aggregate_epoch
from torchsystem_trainer.events import EndReason, EpochStarted, Iterated, Trained
from torchsystem_trainer.trainer.loaders import limit_of
from torchsystem_trainer.trainer.phases import MidEpochValidation, Run, evaluate_phase, planned_batches, train_phase
from torchsystem_trainer.trainer.sanity_check import sanity_check
from torchsystem_trainer.trainer.stopping import Minimum, stop_reason
from torchsystem_trainer.trainer.val_check import EpochChecks, ValCheck

__all__ = ["FitLimits", "advance_epoch", "fit_order", "loader_length", "run_epochs", "warn_empty"]


@dataclass(frozen=True, slots=True)
class FitLimits:
    """The Trainer's limits on a fit (its arguments of the same names).

    Attributes:
        max_epochs: the epoch count the aggregate reaches, or ``None`` (no epoch limit, ``max_epochs=-1`` too).
        one_more_epoch: no limit at all (or ``fast_dev_run``): train one more epoch.
        max_steps: optimizer steps of this run, or ``None``.
        max_time: seconds, or ``None``.
        limit_train_batches, limit_val_batches: batches per epoch (``int``) or a fraction (``float``), or ``None``.
        check_val_every_n_epoch: validate in every n-th epoch; ``None``: every ``val_check_interval`` batches of
            the run, across epochs.
        val_check_interval: a fraction of the epoch (``float`` in ``(0, 1]``) or a number of batches (``int``).
        min_epochs, min_steps: before these, a requested stop is deferred; ``None``: no minimum.
        num_sanity_val_steps: validation batches of the sanity check (``-1``: all; ``0``: none, as on a resumed fit).
    """

    max_epochs: int | None
    one_more_epoch: bool
    max_steps: int | None
    max_time: float | None
    limit_train_batches: int | float | None
    limit_val_batches: int | float | None
    check_val_every_n_epoch: int | None
    val_check_interval: int | float = 1.0
    min_epochs: int | None = None
    min_steps: int | None = None
    num_sanity_val_steps: int = 0


def run_epochs(run: Run, aggregate: Any, loaders: list[tuple[str, Iterable[Any]]], limits: FitLimits) -> EndReason:
    """The epochs of a fit, from ``aggregate.epoch`` until a limit or a stop (the order of events is in
    ``Trainer.fit``'s docstring).

    Args:
        run: the run (its loop already restored from a checkpoint when resuming).
        aggregate: the aggregate, set up.
        loaders: ``(phase, loader)`` pairs in :func:`fit_order`, as the strategy adapted them.
        limits: the Trainer's limits.

    Returns:
        Why the fit ended (``FitEnded.reason``), short of an exception.

    Raises:
        ValueError: for a training loader that yields no batch in a whole epoch.
        Exception: whatever the aggregate, a loader or a callback raises.
    """
    loop, bus, source = run.loop, run.bus, run.source
    progress = loop.progress
    deadline = None if limits.max_time is None else time.monotonic() + limits.max_time
    minimum = Minimum(limits.min_epochs, limits.min_steps)
    if loop.should_stop:  # restored from a checkpoint written as the fit was stopping, or a signal came
        stopped = stop_reason(loop, minimum, bus, source, aggregate, max(progress.epoch - 1, 0))
        if stopped is not None:
            return stopped
    if limits.max_steps is not None and limits.max_steps <= progress.global_step:  # 0, or restored at its limit
        return "max_steps"
    last = progress.epoch + 1 if limits.one_more_epoch else limits.max_epochs  # the epoch count to reach
    if last is not None and progress.epoch >= last:
        warnings.warn(
            f"Trainer.fit: the aggregate is at epoch {progress.epoch} and max_epochs={last}, so there is nothing "
            f"to train (max_epochs is the total the aggregate reaches, as in Lightning: raise it to train more)",
            stacklevel=7,  # the caller of fit: run_epochs < _fit < _in_process < launch < _launch < fit
        )
        return "completed"
    checks, validation = _validation_plan(loaders, limits)
    if checks is not None and checks.inside_windows(run.strategy.steps.accumulate_grad_batches):
        warnings.warn(
            f"Trainer.fit: val_check_interval={limits.val_check_interval!r} puts validations inside gradient "
            f"accumulation windows (accumulate_grad_batches={run.strategy.steps.accumulate_grad_batches}); a "
            f"checkpoint written there (ModelCheckpoint at MidEpochValidated) does not hold the partly accumulated "
            f"gradients, so a fit resumed from it is not exact: use a multiple of accumulate_grad_batches",
            stacklevel=7,
        )
    if validation is not None and limits.num_sanity_val_steps:
        sanity_check(run, aggregate, validation, limits.num_sanity_val_steps, limits.limit_val_batches)
    schedule = ValCheck(limits.val_check_interval, limits.check_val_every_n_epoch)  # which epochs validate
    reason: EndReason | None = None
    empty: set[str] = set()  # evaluation phases whose loader yielded nothing, warned once
    while last is None or progress.epoch < last:
        epoch = progress.epoch
        bus.emit(EpochStarted, source, aggregate, epoch)
        flat: dict[str, float] = {}
        cut_short = False
        mid_epoch = None
        if checks is not None and validation is not None and schedule.epoch_due(epoch):
            mid_epoch = MidEpochValidation(checks, validation, limits.limit_val_batches)
        for phase, loader in loaders:  # training first, then validation (see fit_order)
            if phase == "train":
                results, reason, cut_short = train_phase(
                    run, aggregate, loader, limit=limits.limit_train_batches, max_steps=limits.max_steps,
                    deadline=deadline, minimum=minimum, validation=mid_epoch,
                )
                if reason == "interrupted":  # the epoch is unfinished: a resumed fit completes it
                    return reason
                bus.emit(Trained, source, aggregate, epoch, results)
            elif (
                cut_short
                or mid_epoch is None
                or not mid_epoch.checks.at_end(progress.batch, progress.step)
                or loop.validated_step == progress.step  # the last batch of a loader without len: validated
            ):
                continue  # no validation at this epoch's end
            else:
                results = evaluate_phase(run, aggregate, loader, phase, limits.limit_val_batches)
                if not results and phase not in empty:
                    empty.add(phase)
                    warn_empty(phase, "fit")
            flat.update({f"{phase}/{name}": value for name, value in results.items()})
        loop.callback_metrics = {**_mid_epoch_results(loop), **flat}
        progress.batch = 0
        try:
            progress.epoch = advance_epoch(aggregate)  # fires the aggregate's onepoch
        except StopIteration:  # the seed's early stopping: a StopIteration committed at onepoch
            progress.epoch = aggregate_epoch(aggregate) or epoch + 1
            loop.should_stop = True  # so a checkpoint written at Iterated records the stop
        bus.emit(Iterated, source, aggregate, epoch, flat)
        if reason is None and loop.should_stop:
            reason = stop_reason(loop, minimum, bus, source, aggregate, epoch)  # None: deferred by the minimum
        if reason is not None:
            return reason
    return "completed"


def _mid_epoch_results(loop: Any) -> dict[str, float]:
    """The results of this epoch's latest mid-epoch validation, which ``trainer.callback_metrics`` keeps at the epoch's
    end when the end itself does not validate (a ``val_check_interval`` that does not divide the epoch, a stop in
    its middle), as Lightning keeps the latest logged values: what an epoch-end consumer of ``callback_metrics``
    reads (``LearningRateScheduler``'s monitor, a step checkpoint's rank); ``{}`` when none ran in this epoch."""
    progress = loop.progress
    validated = loop.validated_step
    if validated is None or validated <= progress.step - progress.batch:  # none since this epoch's first batch
        return {}
    return {key: value for key, value in loop.callback_metrics.items() if key.startswith("validation/")}


def _validation_plan(
    loaders: list[tuple[str, Iterable[Any]]], limits: FitLimits
) -> tuple[EpochChecks | None, Iterable[Any] | None]:
    """Where the fit's validations fall in each epoch, and the validation loader; ``(None, None)`` without a
    validation loader or with ``limit_val_batches`` resolving to 0 batches (no validation at all, as in Lightning).

    Raises:
        ValueError: for a ``val_check_interval`` the training loader does not allow (see ``ValCheck.plan``).
        TypeError: for a fraction ``limit_train_batches``/``limit_val_batches`` of a loader without a length.
    """
    by_phase = dict(loaders)
    validation = by_phase.get("validation")
    if validation is None or limit_of(validation, limits.limit_val_batches, "limit_val_batches") == 0:
        return None, None
    train = by_phase["train"]
    batches = planned_batches(train, limit_of(train, limits.limit_train_batches, "limit_train_batches"))
    return ValCheck(limits.val_check_interval, limits.check_val_every_n_epoch).plan(batches), validation


def fit_order(pairs: list[tuple[str, Iterable[Any]]]) -> list[tuple[str, Iterable[Any]]]:
    """The phases of every epoch in the order they run, training first whatever the order given (Lightning's);
    an empty training loader is refused, an empty validation loader dropped with a warning.

    Raises:
        ValueError: for a training loader of length 0, naming the phase.
    """
    ordered: list[tuple[str, Iterable[Any]]] = []
    for phase, loader in sorted(pairs, key=lambda pair: pair[0] != "train"):
        if loader_length(loader) != 0:
            ordered.append((phase, loader))
        elif phase == "train":
            raise ValueError(
                "Trainer.fit: the 'train' loader is empty (len 0): there is nothing to train on; check the dataset "
                "and the loader's batch_size/drop_last"
            )
        else:
            warn_empty(phase, "fit")
    return ordered


def loader_length(loader: Iterable[Any]) -> int | None:
    """``len(loader)``, or ``None`` for an iterable without one."""
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def warn_empty(phase: str, method: str) -> None:
    """Say that the ``phase`` loader is empty, so that phase gives no results."""
    warnings.warn(
        f"Trainer.{method}: the {phase!r} loader is empty, so the {phase!r} phase has no results (no loss, no metrics)",
        stacklevel=4,
    )


def advance_epoch(aggregate: Any) -> int:
    """Count one more epoch completed on ``aggregate.epoch`` (a plain assignment, which fires an Aggregate's
    ``onepoch``; a tensor buffer gets a tensor of its own dtype and device).

    Returns:
        The new count.
    """
    current = getattr(aggregate, "epoch", None)
    count = (aggregate_epoch(aggregate) or 0) + 1
    aggregate.epoch = current.new_tensor(count) if isinstance(current, Tensor) else count
    return count
