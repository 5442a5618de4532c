"""CSVLogger: metrics.csv and hparams.yaml, read back with the csv module and PyYAML."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import CSVLogger, hyperparameters
from torchsystem_trainer.callbacks.csv_logger import to_yaml


class Seen(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[int, float] = {}
        self.epochs: list[dict[str, float]] = []

    def on_batch_trained(self, event) -> None:
        self.losses[event.step] = event.loss.item()

    def on_iterated(self, event) -> None:
        self.epochs.append(dict(event.results))


def fit(tmp_path, logger, epochs=2, extra=(), **arguments):
    torch.manual_seed(0)
    data, seen = make_data(), Seen()
    trainer = Trainer(
        callbacks=[logger, seen, *extra], max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False,
        verbose=False, default_root_dir=tmp_path, **arguments,
    )
    aggregate = Classifier()
    trainer.fit(aggregate, [("train", data), ("validation", data[:2])])
    return trainer, aggregate, seen


def read(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def test_layout_columns_and_rows(tmp_path):
    logger = CSVLogger(log_every_n_steps=3)
    trainer, aggregate, seen = fit(tmp_path, logger)
    assert logger.log_dir == tmp_path / "csv" / "Classifier" / "version_0"
    assert logger.metrics_file == logger.log_dir / "metrics.csv"
    columns, rows = read(logger.metrics_file)
    assert columns == ["step", "epoch", "train/loss_step", "train/loss", "validation/loss"]
    expected = [
        {"step": "3", "train/loss_step": seen.losses[3]},
        {"step": "4", "epoch": "0", **seen.epochs[0]},
        {"step": "6", "train/loss_step": seen.losses[6]},
        {"step": "8", "epoch": "1", **seen.epochs[1]},
    ]
    assert rows == [{column: str(row.get(column, "")) for column in columns} for row in expected]
    assert yaml.safe_load((logger.log_dir / "hparams.yaml").read_text()) == hyperparameters(aggregate, trainer)


def test_a_step_value_and_the_epoch_results_at_the_same_step_share_a_row(tmp_path):
    logger = CSVLogger(log_every_n_steps=4)
    _, _, seen = fit(tmp_path, logger, epochs=1)
    _, rows = read(logger.metrics_file)
    assert rows == [
        {"step": "4", "epoch": "0", "train/loss_step": str(seen.losses[4]),
         **{key: str(value) for key, value in seen.epochs[0].items()}},
    ]


def test_new_columns_rewrite_the_file_with_one_header_and_keep_every_row(tmp_path):
    logger = CSVLogger(log_every_n_steps=100)
    trainer, aggregate, _ = fit(tmp_path, logger)
    _, before = read(logger.metrics_file)
    results = trainer.test(aggregate, make_data()[:2])
    columns, rows = read(logger.metrics_file)
    assert columns == ["step", "epoch", "train/loss", "validation/loss", "test/loss"]
    assert [{key: value for key, value in row.items() if key != "test/loss"} for row in rows[:2]] == before
    empty = {"epoch": "", "train/loss": "", "validation/loss": ""}
    assert rows[2] == {"step": "0", **empty, "test/loss": str(results["loss"])}
    assert logger.metrics_file.read_text().count("step,") == 1
    assert sorted(path.name for path in logger.log_dir.iterdir()) == ["hparams.yaml", "metrics.csv"]  # no leftovers


def test_a_second_fit_into_the_same_version_appends(tmp_path):
    logger = CSVLogger(version=0, log_every_n_steps=100)
    fit(tmp_path, logger, epochs=1)
    fit(tmp_path, logger, epochs=1)
    columns, rows = read(logger.metrics_file)
    assert columns == ["step", "epoch", "train/loss", "validation/loss"]
    assert [row["step"] for row in rows] == ["4", "4"]


def test_rows_are_on_disk_at_each_epochs_end(tmp_path):
    class ReadsTheFile(Recorder):
        def __init__(self, logger: CSVLogger) -> None:
            super().__init__()
            self.logger, self.rows_at_epoch_start = logger, []

        def on_epoch_started(self, event) -> None:
            path = self.logger.metrics_file
            self.rows_at_epoch_start.append(len(read(path)[1]) if path.is_file() else None)

    logger = CSVLogger(log_every_n_steps=100)
    reader = ReadsTheFile(logger)
    fit(tmp_path, logger, epochs=3, extra=[reader])
    assert reader.rows_at_epoch_start == [None, 1, 2]


def test_each_fit_gets_the_next_version_and_save_dir_name_are_used(tmp_path):
    (tmp_path / "logs" / "mine" / "version_2").mkdir(parents=True)
    logger = CSVLogger(save_dir=tmp_path / "logs", name="mine")
    fit(tmp_path, logger, epochs=1)
    assert logger.log_dir == tmp_path / "logs" / "mine" / "version_3"


@pytest.mark.parametrize("version", [-1, "", True], ids=["negative", "empty", "bool"])
def test_invalid_version(version):
    with pytest.raises(ValueError, match=r"CSVLogger: version=.* is invalid; valid: None, an int >= 0"):
        CSVLogger(version=version)


def test_yaml_reads_back_what_was_written():
    params = {
        "lr": 1e-05,
        "big": 1e20,
        "small": -2.5e-300,
        "plain": 0.1,
        "inf": math.inf,
        "minus_inf": -math.inf,
        "flag": True,
        "off": False,
        "nothing": None,
        "count": 3,
        "yes": "yes",
        "number text": "1.0",
        "colon": "a: b",
        "quote": 'say "hi"\n',
        "unicode": "épsilon",
        "on": 1,
        "nn/activation/inplace": False,
    }
    assert yaml.safe_load(to_yaml(params)) == params
    nan = yaml.safe_load(to_yaml({"x": math.nan}))["x"]
    assert math.isnan(nan)
    assert yaml.safe_load(to_yaml({})) == {}
    assert to_yaml({"nn/hidden_size": 256, "optimizer/lr": 0.001}) == "nn/hidden_size: 256\noptimizer/lr: 0.001\n"


def test_learning_rates_from_the_monitor_reach_the_csv_too(tmp_path):
    from torchsystem_trainer.callbacks import LearningRateMonitor

    logger = CSVLogger(log_every_n_steps=100)
    fit(tmp_path, logger, epochs=2, extra=[LearningRateMonitor()])
    columns, rows = read(logger.metrics_file)
    assert columns == ["step", "epoch", "lr-SGD", "train/loss", "validation/loss"]
    assert [(row["step"], row["lr-SGD"]) for row in rows if row["lr-SGD"]] == [("0", "0.1"), ("4", "0.1")]
