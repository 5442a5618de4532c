"""What the aggregate logs reaches every logger: epoch values with the results, step values every
``log_every_n_steps`` steps (read back from metrics.csv and the TensorBoard event files), and the console lines."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ConsoleLines, CSVLogger, TensorBoardLogger


class Logging(Classifier):
    """Per training step: ``scaled`` (the loss times ten, with step values) and ``batch`` (the step's number);
    per validation step: ``half`` (half the loss, with step values)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.count += 1
        self.log("scaled", loss * 10, on_step=True)
        self.log("batch", float(self.count), reduce_fx="max")
        return outputs, loss

    def evaluate(self, inputs, targets):
        outputs, loss = super().evaluate(inputs, targets)
        self.log("half", loss / 2, on_step=True)
        return outputs, loss


class Seen(Callback):
    """Each training step's loss, and each epoch's results."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.validation_losses: list[float] = []  # every validation batch's, in order
        self.epochs: list[dict[str, float]] = []

    def on_batch_trained(self, event) -> None:
        self.losses[event.step] = event.loss.item()

    def on_batch_validated(self, event) -> None:
        self.validation_losses.append(event.loss.item())

    def on_iterated(self, event) -> None:
        self.epochs.append(dict(event.results))


def fit(tmp_path, loggers, epochs=2):
    torch.manual_seed(0)
    seen = Seen()
    trainer = Trainer(
        callbacks=[*loggers, seen], max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False,
        verbose=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    trainer.fit(Logging(), [("train", make_data()), ("validation", make_data(samples=12, seed=1))])
    return trainer, seen


def f32(value: float) -> float:
    return torch.tensor(value, dtype=torch.float32).item()


def test_csv_has_step_values_at_log_every_n_steps_and_epoch_values_with_the_results(tmp_path):
    logger = CSVLogger(log_every_n_steps=2)
    _, seen = fit(tmp_path, [logger])
    with open(logger.metrics_file, newline="") as file:
        reader = csv.DictReader(file)
        columns, rows = reader.fieldnames, list(reader)
    assert columns == [
        "step", "epoch", "train/loss_step", "train/scaled_step", "validation/half_step", "train/loss", "train/scaled",
        "train/batch", "validation/loss", "validation/half",
    ]
    training_steps = {int(row["step"]): row for row in rows if row["train/loss_step"]}
    assert sorted(training_steps) == [2, 4, 6, 8]
    for step, row in training_steps.items():
        assert float(row["train/scaled_step"]) == pytest.approx(10 * seen.losses[step], rel=1e-6)
    epochs = [row for row in rows if row["epoch"]]
    assert [float(row["train/batch"]) for row in epochs] == [4.0, 8.0]
    for row, results in zip(epochs, seen.epochs, strict=True):
        assert float(row["train/scaled"]) == pytest.approx(10 * results["train/loss"], rel=1e-6)
        assert float(row["validation/half"]) == pytest.approx(results["validation/loss"] / 2, rel=1e-6)
    # 3 validation batches per epoch: the 2nd, 4th and 6th of the run, at their own count
    assert [int(row["step"]) for row in rows if row["validation/half_step"]] == [2, 4, 6]


def test_tensorboard_reads_back_the_step_and_epoch_values(tmp_path):
    logger = TensorBoardLogger(log_every_n_steps=4)
    _, seen = fit(tmp_path, [logger])
    accumulator = EventAccumulator(str(logger.log_dir))
    accumulator.Reload()
    scalars = {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
               for tag in accumulator.Tags()["scalars"]}
    assert [step for step, _ in scalars["train/scaled_step"]] == [4, 8]
    for step, value in scalars["train/scaled_step"]:
        assert value == pytest.approx(f32(10 * seen.losses[step]), rel=1e-6)
    assert scalars["train/batch"] == [(4, 4.0), (8, 8.0)]
    assert [value for _, value in scalars["validation/half"]] == [
        f32(results["validation/half"]) for results in seen.epochs
    ]
    # 3 validation batches per epoch: the run's 4th is the one written
    assert scalars["validation/half_step"] == [(4, pytest.approx(f32(seen.validation_losses[3] / 2), rel=1e-6))]


def test_console_lines_show_logged_values():
    stream = io.StringIO()
    torch.manual_seed(0)
    Trainer(callbacks=[ConsoleLines(file=stream, epochs=True)], max_epochs=1, enable_progress_bar=False,
            enable_model_summary=False).fit(Logging(), [("train", make_data()), ("validation", make_data(seed=1))])
    line = stream.getvalue().splitlines()[0]
    assert "train loss=" in line and " scaled=" in line and " batch=4" in line and "validation loss=" in line
    assert " half=" in line
