"""``Tuner``: tools that drive a Trainer (Lightning's ``lightning.pytorch.tuner.Tuner``)."""

from __future__ import annotations

import math
from typing import Any

from torch.nn import Module

from torchsystem_trainer.trainer import Trainer
from torchsystem_trainer.trainer.loaders import normalize_loaders
from torchsystem_trainer.tuner.lr_finder import LRFinder, LRSearch, Mode, schedule
from torchsystem_trainer.tuner.snapshot import TrainingSnapshot

__all__ = ["Tuner"]

_MODES = ("exponential", "linear")


class Tuner:
    """Runs tuning tools with a Trainer's configuration (strategy, precision, accumulation, clipping, seed,
    determinism), leaving the trainer, its callbacks and the aggregate as they were.

    Args:
        trainer: the Trainer whose configuration the tools use; its callbacks see nothing of them (no checkpoint,
            no log, no early stopping state).

    Example:
        >>> finder = Tuner(trainer).lr_find(classifier, loaders)
        >>> finder.suggestion()
        0.0012
    """

    def __init__(self, trainer: Trainer) -> None:
        if not isinstance(trainer, Trainer):
            raise TypeError(f"Tuner: trainer is a {type(trainer).__name__}; valid: a torchsystem_trainer Trainer")
        self.trainer = trainer

    def lr_find(
        self,
        aggregate: Module,
        loaders: Any,
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: Mode = "exponential",
        early_stop_threshold: float | None = 4.0,
    ) -> LRFinder:
        """The learning-rate range test (Lightning's ``Tuner.lr_find``, same names and meanings).

        Trains ``num_training`` optimizer steps on the ``"train"`` loader (cycled when shorter; no validation),
        the ``i``-th with learning rate ``min_lr * (max_lr / min_lr) ** (i / (num_training - 1))`` (``"exponential"``)
        or evenly spaced (``"linear"``) on every parameter group of the aggregate's one optimizer, and records the
        smoothed loss of each (:class:`~torchsystem_trainer.tuner.lr_finder.LRSearch`). It runs as a fit of a
        separate Trainer with this trainer's strategy and settings and no callbacks of yours; the aggregate's
        ``onepoch`` hook runs at the end of each epoch of it, as in any fit.

        Leaves no trace (unlike Lightning's issue #6675): afterwards the aggregate's weights and buffers, optimizer
        state and learning rates, LR schedulers, ``epoch``, modules' training modes, the global random generators,
        the loaders' generators and the strategy's state (the fp16 scaler) are bit-identical to before, whether
        the search ended, stopped early or raised. Under several processes (DDP) each step's loss is averaged over
        the processes and rank 0's results are broadcast, so every process gets the same suggestion.

        Args:
            aggregate: the aggregate, with exactly one optimizer.
            loaders: as ``Trainer.fit`` takes them; only ``"train"`` is used.
            min_lr: the first rate (> 0 in ``"exponential"`` mode, >= 0 in ``"linear"``).
            max_lr: the last rate (> ``min_lr``).
            num_training: optimizer steps (>= 2).
            mode: ``"exponential"`` or ``"linear"``.
            early_stop_threshold: stop once the smoothed loss exceeds this times the best one (> 0); ``None``: never.

        Returns:
            The :class:`~torchsystem_trainer.tuner.lr_finder.LRFinder`: ``results``, ``suggestion()``, ``plot(path)``.

        Raises:
            ValueError: for an invalid argument (naming it, the value and what is valid), loaders without
                ``"train"``, or an aggregate without exactly one optimizer.
            Exception: whatever the fit raises, after everything was put back.
        """
        _check(min_lr, max_lr, num_training, mode, early_stop_threshold)
        pairs = dict(normalize_loaders(loaders, ("train", "validation"), "lr_find"))
        if "train" not in pairs:
            raise ValueError("Tuner.lr_find: loaders has no 'train' loader; give [('train', loader), ...]")
        train = pairs["train"]
        trainer = self.trainer
        search = LRSearch(schedule(min_lr, max_lr, num_training, mode), early_stop_threshold)
        tuner = Trainer(
            callbacks=[search],
            strategy=trainer.strategy,
            max_steps=num_training,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            gradient_clip_val=trainer.gradient_clip_val,
            gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            enable_progress_bar=False,
            default_root_dir=trainer.default_root_dir,
            seed=trainer.seed,
            deterministic=trainer.deterministic,
        )
        snapshot = TrainingSnapshot(aggregate, [train], trainer.strategy)
        try:
            tuner.fit(aggregate, [("train", train)])
        finally:
            snapshot.restore()
        return LRFinder(mode, search.results)


def _check(min_lr: Any, max_lr: Any, num_training: Any, mode: Any, threshold: Any) -> None:
    def real(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if mode not in _MODES:
        raise ValueError(f"Tuner.lr_find: mode={mode!r} is invalid; valid: 'exponential', 'linear'")
    low = 0.0 if mode == "linear" else None
    if not real(min_lr) or (min_lr <= 0 if low is None else min_lr < 0):
        valid = "a number >= 0" if low is not None else "a number > 0 (the scale is logarithmic)"
        raise ValueError(f"Tuner.lr_find: min_lr={min_lr!r} is invalid in {mode!r} mode; valid: {valid}")
    if not real(max_lr) or not max_lr > min_lr:
        raise ValueError(f"Tuner.lr_find: max_lr={max_lr!r} is invalid; valid: a finite number > min_lr={min_lr!r}")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 2:
        raise ValueError(f"Tuner.lr_find: num_training={num_training!r} is invalid; valid: an int >= 2")
    if threshold is not None and (not real(threshold) or threshold <= 0):
        raise ValueError(
            f"Tuner.lr_find: early_stop_threshold={threshold!r} is invalid; valid: None or a number > 0"
        )
