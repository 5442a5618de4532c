"""Fits whose stderr goes to a file, as under CI: ``python -m tests.callbacks.console_script DIR SCENARIO...``.

Runs the scenarios one after the other in this process (one interpreter start for all); each writes in
``DIR/SCENARIO``: ``stderr.txt``, what the fit printed (file descriptor 2 redirected there), and ``out.json``, the
results of every epoch and test (so the test can format the expected lines).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TensorBoardLogger


class Results(Callback):
    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.tests: list[dict[str, float]] = []
        self.best: float | None = None

    def on_iterated(self, event) -> None:
        self.epochs.append(dict(event.results))

    def on_tested(self, event) -> None:
        self.tests.append(dict(event.results))


class SendsSignal(Callback):
    def on_batch_trained(self, event) -> None:
        if event.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)


class FailsAtStep3(Classifier):
    steps = 0

    def fit(self, inputs, targets):
        self.steps += 1
        if self.steps == 3:
            raise RuntimeError("boom")
        return super().fit(inputs, targets)


def main(scenario: str, folder: Path) -> None:
    torch.manual_seed(0)
    data = make_data()
    loaders = [("train", data), ("validation", data[:2])]
    results = Results()

    def checkpoint_callback() -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder / "checkpoints", monitor="validation/loss", save_last=True)

    checkpoint = checkpoint_callback()
    callbacks = [results, checkpoint]
    arguments: dict = {"max_epochs": 5}
    if scenario == "completed":
        callbacks += [TensorBoardLogger(save_dir=folder / "tb"), CSVLogger(save_dir=folder / "csv")]
        arguments["max_epochs"] = 2
    elif scenario == "resume":
        Trainer(callbacks=[checkpoint_callback()], max_epochs=1, verbose=False, enable_model_summary=False).fit(
            Classifier(), loaders
        )
        arguments["max_epochs"] = 3
    elif scenario == "early":
        callbacks.append(EarlyStopping(patience=0, min_delta=10.0))
    elif scenario == "max_steps":
        arguments["max_steps"] = 6
    elif scenario == "max_time":
        arguments["max_time"] = 1e-6
    elif scenario == "interrupt":
        callbacks.append(SendsSignal())
    trainer = Trainer(callbacks=callbacks, enable_model_summary=False, **arguments)
    aggregate = FailsAtStep3() if scenario == "exception" else Classifier()
    try:
        trainer.fit(aggregate, loaders, ckpt_path="last" if scenario == "resume" else None)
    except RuntimeError:
        pass
    if scenario == "completed":
        trainer.test(aggregate, data[:2])
        trainer.validate(aggregate, data[:1])
    out = {"epochs": results.epochs, "tests": results.tests, "best": checkpoint.best_model_score}
    (folder / "out.json").write_text(json.dumps(out))


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (where ``sys.stderr`` writes) to ``path`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    for name in sys.argv[2:]:
        (root / name).mkdir(parents=True)
        with stderr_to(root / name / "stderr.txt"):
            main(name, root / name)
