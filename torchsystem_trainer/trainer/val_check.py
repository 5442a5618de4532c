"""When a fit validates: Lightning's ``val_check_interval`` and ``check_val_every_n_epoch``.

A validation runs after the training batches whose count is a multiple of ``val_check_batch``, in the epochs
``check_val_every_n_epoch`` allows (Lightning's ``_TrainingEpochLoop._should_check_val_fx``):

* ``val_check_interval=1.0`` (the default): ``val_check_batch`` is the whole epoch, so one validation at its end;
* a ``float`` in ``(0, 1)``: ``val_check_batch = max(1, int(batches * val_check_interval))``, with ``batches`` the
  training batches of an epoch after ``limit_train_batches`` (``0.25`` of 10 batches validates after batches 2, 4,
  6, 8 and 10, as Lightning does);
* an ``int`` n: every n training batches. The count is the batch's within its epoch, or, with
  ``check_val_every_n_epoch=None``, the run's (``progress.step``), so validations fall across epoch boundaries.

A validation due at an epoch's last training batch is the epoch's end-of-epoch validation: it runs after
``Trained``, as without ``val_check_interval``, and ``Iterated`` reports it. One due at any other batch runs right
after that batch's ``BatchTrained`` and is reported by ``MidEpochValidated``. Lightning's rule, kept here: when
``val_check_batch`` does not divide the epoch (an ``int`` interval, or a fraction such as ``0.3`` of 10 batches),
the epoch's end is not a validation.

Where the next validation falls is a function of the loop's counters (``progress.batch``, ``progress.step``),
which checkpoints hold; :attr:`~torchsystem_trainer.trainer.loop_state.LoopState.validated_step` says whether the
validation due at the current position already ran, so a fit resumed from a checkpoint written between a batch and
its validation (a step checkpoint, or an interruption) runs that validation first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["EpochChecks", "ValCheck"]


@dataclass(frozen=True, slots=True)
class EpochChecks:
    """The validations of one epoch's training phase.

    Attributes:
        every: ``val_check_batch``: training batches between two validations; ``None``: only at the epoch's end.
        by_step: count the run's training batches (``progress.step``, ``check_val_every_n_epoch=None``) rather than
            the epoch's (``progress.batch``).
        total: the epoch's planned training batches, ``None`` when unknown.
    """

    every: int | None
    by_step: bool
    total: int | None

    def due(self, batch: int, step: int) -> bool:
        """Whether a validation falls after the training batch that brought the epoch's count to ``batch`` and the
        run's to ``step``."""
        every = self.every
        if every is None:
            return False
        return (step if self.by_step else batch) % every == 0

    def mid_epoch(self, batch: int, step: int) -> bool:
        """Whether a validation falls after that batch and it is not the epoch's last (a mid-epoch validation)."""
        return batch != self.total and self.due(batch, step)

    def inside_windows(self, accumulate_grad_batches: int) -> bool:
        """Whether some mid-epoch validations fall inside a gradient-accumulation window (between two optimizer
        steps), where a checkpoint cannot hold the partly accumulated gradients."""
        every, accumulate = self.every, accumulate_grad_batches
        if every is None or accumulate == 1:
            return False
        return every % accumulate != 0 or (self.by_step and self.total is not None and self.total % accumulate != 0)

    def at_end(self, batch: int, step: int) -> bool:
        """Whether the epoch's end, reached after ``batch`` training batches (the run at ``step``), is a validation."""
        return self.every is None or self.due(batch, step)


@dataclass(frozen=True, slots=True)
class ValCheck:
    """The Trainer's ``val_check_interval`` and ``check_val_every_n_epoch``.

    Attributes:
        interval: ``val_check_interval``: a float in ``(0, 1]`` (a fraction of the epoch) or an int >= 1 (batches).
        every_n_epochs: ``check_val_every_n_epoch``: validate in every n-th epoch; ``None``: in every epoch, every
            ``interval`` batches of the run (``interval`` is an int then).
    """

    interval: int | float
    every_n_epochs: int | None

    def epoch_due(self, epoch: int) -> bool:
        """Whether the 0-based ``epoch`` validates at all."""
        return self.every_n_epochs is None or (epoch + 1) % self.every_n_epochs == 0

    def plan(self, batches: int | None) -> EpochChecks:
        """The validations of an epoch of ``batches`` training batches (after ``limit_train_batches``).

        Args:
            batches: the epoch's planned training batches; ``None`` for a loader without a length.

        Returns:
            The epoch's :class:`EpochChecks`.

        Raises:
            ValueError: for a fraction other than 1.0 of a loader without a length, or (with
                ``check_val_every_n_epoch`` set) an int interval longer than the epoch, as Lightning refuses them.
        """
        interval = self.interval
        if isinstance(interval, float):
            if interval == 1.0:
                return EpochChecks(None, False, batches)
            if batches is None:
                raise ValueError(
                    f"val_check_interval={interval!r} is a fraction of the epoch, but the training loader has no "
                    f"len(); give an int number of batches, or 1.0"
                )
            return EpochChecks(max(1, math.floor(batches * interval)), False, batches)
        if self.every_n_epochs is not None and batches is not None and interval > batches:
            raise ValueError(
                f"val_check_interval={interval!r} is more than the {batches} training batches of an epoch; give at "
                f"most {batches}, or check_val_every_n_epoch=None to count batches across epochs (limit_val_batches=0 "
                f"turns validation off)"
            )
        return EpochChecks(interval, self.every_n_epochs is None, batches)
