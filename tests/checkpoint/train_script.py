"""A small training run for the crash and signal tests: ``python train_script.py '<json config>'``.

It trains a tiny classifier with everything that makes exact resumption hard (``shuffle=True``, dropout, Adam, an
LR scheduler stepped per batch, ``EarlyStopping`` that stops the run after three epochs, augmentation drawn from the
global generator in the dataset when ``workers == 0``), checkpointing every 3 steps and every epoch, resumes from
``ckpt_path="last"``, and can kill itself with ``SIGKILL`` at a chosen point:

* ``{"event": "BatchTrained", "at": step}``: after training step ``step`` (before its checkpoint);
* ``{"event": "EpochStarted", "at": epoch}``: when ``epoch`` starts (right after the previous epoch's checkpoint);
* ``{"event": "FitEnded"}``: after the fit, before the final weights are written;
* ``{"event": "Validating", "at": step}``: inside the validation that follows training step ``step`` (after that
  step's checkpoint, before the validation's own);
* ``{"event": "replace", "at": n}``: in the ``n``-th ``os.replace`` (a complete temporary file not yet renamed);
* ``{"event": "torn", "at": n}``: in the ``n``-th ``torch.save``, after writing half of the file.

Options: ``"ema"`` adds ``EMA(decay=0.9)``; ``"swa"`` adds ``StochasticWeightAveraging`` from the second epoch;
``"restore_best"`` sets ``EarlyStopping(restore_best_weights=True)``. Each changes the final weights (the average,
or the best epoch's), so a resume that lost their state ends elsewhere. ``"loop_controls"`` validates every 3
training batches (``val_check_interval=3``: after batches 3 and 6 of each epoch, checked by ``EarlyStopping`` and
checkpointed by ``ModelCheckpoint``), has the Trainer step the scheduler (``LearningRateScheduler``, per optimizer
step) instead of the aggregate's ``fit``, and defers ``EarlyStopping``'s stop until ``min_epochs=4``. ``"async"``
writes the checkpoints in the background (``ModelCheckpoint(async_save=True)``: the ``torn``/``replace`` kills then
land in the writing thread); ``"slurm"`` adds ``SLURMRequeue()`` (``SIGUSR1`` stops the fit with a checkpoint, then
``scontrol requeue``).

When it runs to the end it writes ``{"weights", "reason", "epoch", "global_step", "interrupted"}`` to ``out``.
The tests run :func:`main` in processes forked from a forkserver that has imported this module (a fresh
interpreter costs seconds of imports per run) and, for the signal test, as a script with ``sys.executable``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import (
    EMA,
    Callback,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    SLURMRequeue,
    StochasticWeightAveraging,
)
from torchsystem_trainer.checkpoint import save_atomic

SAMPLES, FEATURES, CLASSES, BATCH = 64, 8, 3, 8  # 8 batches per epoch


class Net(Aggregate):
    """Linear-ReLU-Dropout-Linear, Adam, a StepLR stepped after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, CLASSES))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=5, gamma=0.7)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, loss = super().fit(inputs, targets)
        if self.steps_scheduler:
            self.scheduler.step()
        return outputs, loss

    steps_scheduler = True  # False: a LearningRateScheduler callback steps it


class Augmented(Dataset):  # type: ignore[type-arg]
    """Samples with noise drawn from torch's global generator each time they are read."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index] + 0.1 * torch.randn(FEATURES), self.targets[index]


def loaders(workers: int = 0, augment: bool = True, persistent: bool = False) -> list[tuple[str, Any]]:
    """The ``train`` (shuffled) and ``validation`` loaders of a fixed random dataset."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    targets = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    dataset = Augmented(inputs, targets) if augment else TensorDataset(inputs, targets)
    context = "fork" if workers else None  # in a forkserver's child the default would start another forkserver
    train = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=persistent,
        multiprocessing_context=context,
    )
    validation = DataLoader(TensorDataset(inputs[:16], targets[:16]), batch_size=BATCH)
    return [("train", train), ("validation", validation)]


class Kill(Callback):
    """Sends this process ``SIGKILL`` at a chosen event."""

    def __init__(self, event: str, at: int | None) -> None:
        self.event, self.at = event, at

    def _kill(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def on_batch_trained(self, event: Any) -> None:
        if self.event == "BatchTrained" and event.step == self.at:
            self._kill()

    def on_epoch_started(self, event: Any) -> None:
        if self.event == "EpochStarted" and event.epoch == self.at:
            self._kill()

    def on_fit_ended(self, event: Any) -> None:
        if self.event == "FitEnded":
            self._kill()

    def on_batch_validated(self, event: Any) -> None:
        if self.event == "Validating" and event.step == self.at:
            self._kill()


class Slow(Callback):
    """Sleeps after each training batch, so that a kill at a random moment lands inside the run."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_batch_trained(self, event: Any) -> None:
        time.sleep(self.seconds)


class Report(Callback):
    """Prints ``step <n>`` after each training step, so that a test driving this script can wait for a step."""

    def on_batch_trained(self, event: Any) -> None:
        print(f"step {event.step}", flush=True)


class SignalAt(Callback):
    """Sends this process a signal after a chosen training step (delivered like one from outside)."""

    def __init__(self, number: int, at: int) -> None:
        self.number, self.at = number, at

    def on_batch_trained(self, event: Any) -> None:
        if event.step == self.at:
            os.kill(os.getpid(), self.number)


def _kill_in_writes(kind: str, at: int) -> None:
    """Make the ``at``-th ``os.replace`` (or ``torch.save``, leaving half a file) kill this process."""
    calls = {"n": 0}
    if kind == "replace":
        replace = os.replace

        def killing_replace(*args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            replace(*args, **kwargs)

        os.replace = killing_replace  # type: ignore[assignment]
    else:
        save = torch.save

        def torn_save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
            calls["n"] += 1
            if calls["n"] != at:
                return save(obj, handle, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = torn_save  # type: ignore[assignment]


def main(config: dict[str, Any], ready: Any = None) -> None:
    """Train (resuming from ``last`` when ``config["resume"]``), as described in the module docstring.

    Args:
        config: ``{"dirpath", "out", "workers", "augment", "persistent", "resume", "kill", "slow",
            "report", "signal": [number, step], "ema", "swa", "restore_best", "loop_controls", "async",
            "slurm"}``.
        ready: an event to set once the imports are done and the fit is about to start.
    """
    torch.set_num_threads(1)
    kill = config.get("kill") or {}
    if kill.get("event") in ("replace", "torn"):
        _kill_in_writes(kill["event"], int(kill["at"]))
    best = bool(config.get("restore_best"))
    callbacks: list[Any] = [
        EarlyStopping(monitor="validation/loss", patience=2, min_delta=10.0, restore_best_weights=best)
    ]
    if config.get("ema"):
        callbacks.append(EMA(decay=0.9))
    if config.get("swa"):
        callbacks.append(StochasticWeightAveraging(swa_lrs=0.002, swa_epoch_start=2, annealing_epochs=2))
    checkpoint = ModelCheckpoint(
        config["dirpath"],
        every_n_steps=3,
        every_n_epochs=1,
        save_top_k=2,
        save_last=True,
        async_save=bool(config.get("async")),
    )
    callbacks.append(checkpoint)
    if config.get("slurm"):
        callbacks.append(SLURMRequeue())
    if kill.get("event") in ("BatchTrained", "EpochStarted", "FitEnded", "Validating"):
        callbacks.append(Kill(kill["event"], kill.get("at")))
    if config.get("slow"):
        callbacks.append(Slow(float(config["slow"])))
    if config.get("report"):
        callbacks.append(Report())
    if config.get("signal"):
        callbacks.append(SignalAt(*config["signal"]))
    torch.manual_seed(0)
    aggregate = Net()
    controls: dict[str, Any] = {}
    if config.get("loop_controls"):
        aggregate.steps_scheduler = False
        callbacks.insert(0, LearningRateScheduler(aggregate.scheduler, interval="step"))
        controls = {"val_check_interval": 3, "min_epochs": 4}
    trainer = Trainer(callbacks=callbacks, max_epochs=5, seed=123, enable_progress_bar=False, **controls)
    data = loaders(int(config.get("workers", 0)), bool(config.get("augment", True)), bool(config.get("persistent")))
    if ready is not None:
        ready.set()
    print("ready", flush=True)
    trainer.fit(aggregate, data, ckpt_path="last" if config.get("resume", True) else None)
    result = {
        "weights": aggregate.state_dict(),
        "reason": "interrupted" if trainer.interrupted else "done",
        "epoch": trainer.progress.epoch,
        "global_step": trainer.progress.global_step,
        "interrupted": trainer.interrupted,
    }
    save_atomic(result, config["out"])


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
