"""Helpers of the checkpoint tests: a snapshot callback, a crash, a recorder of batch events, and a run."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import torch
import torchmetrics

from tests.checkpoint.train_script import Net
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping
from torchsystem_trainer.checkpoint import checkpoint_state, save_atomic


class Crash(Exception):
    """Stands for the process dying (in-process: the fit raises it)."""


class Snapshot(Callback):
    """Writes ``checkpoint_state`` to ``path`` after training step ``step`` or at the end of epoch ``epoch``,
    then (with ``crash``) makes the fit fail ``crash`` steps later, as a process dying after its checkpoint."""

    def __init__(self, path: Path, step: int | None = None, epoch: int | None = None, crash: int | None = 2) -> None:
        self.path, self.step, self.epoch, self.crash = path, step, epoch, crash
        self.saved_at: int | None = None

    def on_batch_trained(self, event: Any) -> None:
        if self.step is not None and event.step == self.step:
            self._save(event)
        if self.crash is not None and self.saved_at is not None and event.step == self.saved_at + self.crash:
            raise Crash

    def on_iterated(self, event: Any) -> None:
        if self.epoch is not None and event.epoch == self.epoch:
            self._save(event)

    def _save(self, event: Any) -> None:
        save_atomic(checkpoint_state(event.trainer, event.aggregate), self.path)
        self.saved_at = event.trainer.progress.step


class Log(Callback):
    """Records ``(epoch, batch, step)`` of every trained batch and each epoch's ``Iterated.results``."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []
        self.epochs: list[dict[str, float]] = []

    def on_batch_trained(self, event: Any) -> None:
        self.batches.append((event.epoch, event.batch, event.step))

    def on_iterated(self, event: Any) -> None:
        self.epochs.append(dict(event.results))


def scramble_rng() -> None:
    """Move every global generator elsewhere, as a fresh process would have them."""
    torch.manual_seed(987654)
    random.seed(13)
    numpy.random.seed(17)


def run(
    loaders: Callable[[], Any],
    *,
    extra: tuple[Any, ...] = (),
    ckpt_path: Any = None,
    max_epochs: int = 3,
    early_stopping: bool = True,
    metrics: bool = True,
    **trainer_arguments: Any,
) -> tuple[Net, Trainer, Log]:
    """One fit of ``train_script.Net`` on ``loaders()``; a :class:`Crash` ends it quietly."""
    torch.manual_seed(0)
    aggregate = Net()
    log = Log()
    callbacks: list[Any] = []
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="validation/loss", patience=2, min_delta=10.0))
    metric = torchmetrics.Accuracy("multiclass", num_classes=3) if metrics else None
    trainer = Trainer(
        callbacks=[*callbacks, log, *extra],
        max_epochs=max_epochs,
        seed=123,
        metrics=metric,
        enable_progress_bar=False,
        **trainer_arguments,
    )
    if ckpt_path is not None:
        scramble_rng()
    try:
        trainer.fit(aggregate, loaders(), ckpt_path=ckpt_path)
    except Crash:
        pass
    return aggregate, trainer, log


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return list(a) == list(b) and all(torch.equal(a[key], b[key]) for key in a)
