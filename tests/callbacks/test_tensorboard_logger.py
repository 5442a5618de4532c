"""TensorBoardLogger: the event files it writes, read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks.tensorboard import TensorBoardLogger, hyperparameters, next_version
from torchsystem_trainer.registry import register


def f32(value: float) -> float:
    """What TensorBoard stores for a Python float: its float32 rounding."""
    return torch.tensor(value, dtype=torch.float32).item()


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def hparams_of(log_dir: Path) -> dict[str, object]:
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in values.items()}


class ResultsRecorder(Recorder):
    """A Recorder that also keeps the results of every phase event."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[tuple[str, int, dict[str, float]]] = []

    def on_trained(self, event) -> None:
        self.results.append(("train", event.epoch, dict(event.results)))

    def on_validated(self, event) -> None:
        self.results.append(("validation", event.epoch, dict(event.results)))

    def on_tested(self, event) -> None:
        self.results.append(("test", event.epoch, dict(event.results)))


class LossRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[int, float] = {}

    def on_batch_trained(self, event) -> None:
        self.losses[event.step] = event.loss.item()


@register
class Net(nn.Module):
    def __init__(self, features: int, classes: int, activation: nn.Module | None = None, tag: str = "x") -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.activation = activation


@register
class Scale(nn.Module):
    def __init__(self, factor: float, inplace: bool = False) -> None:
        super().__init__()


class RegisteredSGD(torch.optim.SGD):
    pass


register(RegisteredSGD, excluded_args=[0])


class RegisteredClassifier(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.nn = Net(4, 2, activation=Scale(0.5, inplace=True))
        self.optimizer = RegisteredSGD(self.nn.parameters(), lr=0.25, momentum=0.0, nesterov=False)

    def forward(self, inputs):
        return self.nn.linear(inputs)


def fit(tmp_path, logger, *, epochs=2, extra=(), validation=True, **trainer_args):
    torch.manual_seed(0)
    data = make_data()
    aggregate = trainer_args.pop("aggregate", None) or Classifier()
    recorder = ResultsRecorder()
    trainer = Trainer(
        callbacks=[logger, recorder, *extra], max_epochs=epochs, enable_progress_bar=False,
        default_root_dir=tmp_path, **trainer_args,
    )
    loaders = [("train", data), ("validation", data[:2])] if validation else [("train", data)]
    trainer.fit(aggregate, loaders)
    return trainer, aggregate, recorder


def test_epoch_results_are_written_per_phase_at_the_training_step(tmp_path):
    logger = TensorBoardLogger()
    _, _, recorder = fit(tmp_path, logger)
    assert logger.log_dir == tmp_path / "tensorboard" / "Classifier" / "version_0"
    assert logger.writer is None  # closed at FitEnded
    expected: dict[str, list[tuple[int, float]]] = {"epoch": []}
    for phase, epoch, results in recorder.results:
        step = 4 * (epoch + 1)  # 4 training batches per epoch
        for name, value in results.items():
            expected.setdefault(f"{phase}/{name}", []).append((step, f32(value)))
        if phase == "train":
            expected["epoch"].append((step, float(epoch)))
    assert scalars(logger.log_dir) == expected
    assert sorted(expected) == ["epoch", "train/loss", "validation/loss"]


def test_training_loss_is_written_every_n_steps(tmp_path):
    logger = TensorBoardLogger(log_every_n_steps=3, log_hyperparameters=False)
    losses = LossRecorder()
    fit(tmp_path, logger, epochs=2, extra=[losses], validation=False)
    written = scalars(logger.log_dir)["train/loss_step"]
    assert written == [(step, f32(losses.losses[step])) for step in (3, 6)]


def test_the_loss_is_read_only_on_logging_steps():
    class Untouchable:
        def __getattr__(self, name: str):
            raise AssertionError(f"loss.{name} was read on a step that does not log")

        def __float__(self) -> float:
            raise AssertionError("the loss was read on a step that does not log")

    class Writer:
        def __init__(self) -> None:
            self.calls: list[tuple[str, float, int]] = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    logger = TensorBoardLogger(log_every_n_steps=2)
    logger.writer = Writer()
    for step in (1, 3, 5):
        logger.on_batch_trained(SimpleNamespace(step=step, loss=Untouchable()))
    logger.on_batch_trained(SimpleNamespace(step=4, loss=torch.tensor(0.5)))
    assert logger.writer.calls == [("train/loss_step", 0.5, 4)]


def test_each_fit_gets_the_next_version_and_names_default_to_the_identity(tmp_path):
    (tmp_path / "tensorboard" / "run" / "version_4").mkdir(parents=True)
    (tmp_path / "tensorboard" / "run" / "version_x").mkdir()
    logger = TensorBoardLogger(name="run")
    fit(tmp_path, logger, epochs=1)
    assert logger.log_dir == tmp_path / "tensorboard" / "run" / "version_5"
    fit(tmp_path, logger, epochs=1)
    assert logger.log_dir == tmp_path / "tensorboard" / "run" / "version_6"

    identified = Classifier()
    identified.initialize("abc123")
    logger = TensorBoardLogger(save_dir=tmp_path / "logs", version="final")
    fit(tmp_path, logger, epochs=1, aggregate=identified)
    assert logger.log_dir == tmp_path / "logs" / "abc123" / "final"
    assert next_version(tmp_path / "missing") == 0


def test_hyperparameters_of_registered_parts_read_back(tmp_path):
    aggregate = RegisteredClassifier()
    expected = {
        "nn": "Net",
        "nn/features": 4,
        "nn/classes": 2,
        "nn/activation": "Scale",
        "nn/activation/factor": 0.5,
        "nn/activation/inplace": "True",
        "optimizer": "RegisteredSGD",
        "optimizer/lr": 0.25,
        "optimizer/momentum": 0.0,
        "optimizer/nesterov": "False",
    }
    assert hyperparameters(aggregate) == expected
    logger = TensorBoardLogger(version=0)
    fit(tmp_path, logger, epochs=1, aggregate=aggregate)
    assert hparams_of(logger.log_dir) == expected


def test_validate_and_test_after_a_fit_write_into_its_directory(tmp_path):
    logger = TensorBoardLogger(log_hyperparameters=False)
    trainer, aggregate, recorder = fit(tmp_path, logger, epochs=1, validation=False)
    results = trainer.test(aggregate, make_data()[:2])
    assert logger.writer is None
    written = scalars(logger.log_dir)
    assert written["test/loss"] == [(4, f32(results["loss"]))]
    assert sorted(written) == ["epoch", "test/loss", "train/loss"]


def test_the_writer_is_closed_when_the_fit_raises(tmp_path):
    class Boom(Recorder):
        def on_batch_trained(self, event) -> None:
            if event.step == 5:
                raise RuntimeError("boom")

    logger = TensorBoardLogger(log_hyperparameters=False)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, logger, epochs=2, extra=[Boom()], validation=False)
    assert logger.writer is None
    assert sorted(scalars(logger.log_dir)) == ["epoch", "train/loss"]


class RaisesOnSecondBatch(Classifier):
    def __init__(self, error: BaseException) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.error, self.calls = error, 0

    def forward(self, inputs):
        self.calls += 1
        if self.calls == 2:
            raise self.error
        return super().forward(inputs)


class WriterSeen(Recorder):
    """Records whether the logger's writer was open at ``Tested``."""

    def __init__(self, logger: TensorBoardLogger) -> None:
        super().__init__()
        self.logger = logger
        self.open_at_tested: list[bool] = []

    def on_tested(self, event) -> None:
        self.open_at_tested.append(self.logger.writer is not None)


def test_test_outside_a_fit_opens_the_writer_at_stage_started_and_closes_it_at_stage_ended(tmp_path):
    logger = TensorBoardLogger()
    seen = WriterSeen(logger)
    trainer = Trainer(callbacks=[logger, seen], enable_progress_bar=False, default_root_dir=tmp_path)
    torch.manual_seed(0)
    aggregate, data = Classifier(), make_data()
    first = trainer.test(aggregate, data)
    assert logger.log_dir == tmp_path / "tensorboard" / "Classifier" / "version_0"
    assert logger.writer is None and seen.open_at_tested == [True]
    assert scalars(logger.log_dir) == {"test/loss": [(0, f32(first["loss"]))]}
    second = trainer.test(aggregate, data[:2])  # the same directory, a writer of its own
    assert logger.writer is None and seen.open_at_tested == [True, True]
    written = scalars(logger.log_dir)  # two event files; EventAccumulator's order of them is not the runs' order
    assert sorted(written) == ["test/loss"]
    assert sorted(written["test/loss"]) == sorted([(0, f32(first["loss"])), (0, f32(second["loss"]))])
    assert [path.name for path in (tmp_path / "tensorboard" / "Classifier").iterdir()] == ["version_0"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"])
def test_the_writer_is_closed_when_a_test_run_raises(tmp_path, error):
    logger = TensorBoardLogger()
    trainer = Trainer(callbacks=[logger], enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(type(error)):
        trainer.test(RaisesOnSecondBatch(error), make_data())
    assert logger.writer is None
    assert scalars(logger.log_dir) == {}  # Tested never fired
    results = trainer.test(Classifier(), make_data())  # the logger still works afterwards
    assert logger.writer is None and scalars(logger.log_dir) == {"test/loss": [(0, f32(results["loss"]))]}


def test_predict_opens_no_writer_and_creates_no_directory(tmp_path):
    logger = TensorBoardLogger()
    Trainer(callbacks=[logger], enable_progress_bar=False, default_root_dir=tmp_path).predict(Classifier(), make_data())
    assert logger.log_dir is None and logger.writer is None
    assert not (tmp_path / "tensorboard").exists()


def test_fast_dev_run_writes_nothing(tmp_path):
    logger = TensorBoardLogger()
    trainer, aggregate, _ = fit(tmp_path, logger, fast_dev_run=True)
    trainer.test(aggregate, make_data()[:1])
    assert logger.log_dir is None and logger.writer is None
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    "arguments", [{"log_every_n_steps": 0}, {"log_every_n_steps": True}, {"version": -1}, {"version": ""}],
    ids=["steps-0", "steps-bool", "version-negative", "version-empty"],
)
def test_invalid_arguments_are_rejected(arguments):
    with pytest.raises(ValueError, match="TensorBoardLogger: .* is invalid; valid"):
        TensorBoardLogger(**arguments)


def test_it_runs_on_rank_zero_only():
    assert TensorBoardLogger.rank_zero_only is True
