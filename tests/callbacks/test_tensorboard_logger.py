"""TensorBoardLogger: the event files it writes, read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EarlyStopping
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


def test_each_fit_gets_the_next_version_and_names_default_to_the_class_name(tmp_path):
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
    assert logger.log_dir == tmp_path / "logs" / "Classifier" / "final"  # a folder a person can read
    assert hparams_of(logger.log_dir)["aggregate/id"] == "abc123"  # the identity is a hyper-parameter
    assert next_version(tmp_path / "missing") == 0


def test_hyperparameters_of_registered_parts_read_back_with_their_types(tmp_path):
    aggregate = RegisteredClassifier()
    logger = TensorBoardLogger(version=0)
    trainer, _, _ = fit(tmp_path, logger, epochs=1, aggregate=aggregate, seed=3)
    expected = {key: "None" if value is None else value for key, value in hyperparameters(aggregate, trainer).items()}
    read = hparams_of(logger.log_dir)
    assert read == expected
    assert read["nn/tag"] == "x" and read["nn/activation/inplace"] is True and read["optimizer/nesterov"] is False
    assert read["optimizer/lr"] == 0.25 and read["trainer/seed"] == 3
    assert read["optimizer/foreach"] == "None" and read["trainer/max_epochs"] == 1


def test_the_hparams_tab_shows_every_run_with_its_best_final_and_test_values(tmp_path):
    """Read back as TensorBoard's HPARAMS tab does (its plugin's ListSessionGroups over the event files)."""
    from tensorboard import context
    from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    runs = {}
    for lr in (0.05, 0.2):
        logger, stopping = TensorBoardLogger(log_every_n_steps=1000), EarlyStopping(patience=10)
        trainer, aggregate, recorder = fit(tmp_path, logger, epochs=3, extra=[stopping], aggregate=Classifier(lr=lr))
        test = trainer.test(aggregate, make_data()[:2])
        runs[logger.log_dir.name] = (lr, stopping.best_score, recorder.results[-1][2], test)

    root = tmp_path / "tensorboard" / "Classifier"
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    plugin_context = base_plugin.TBContext(
        logdir=str(root), multiplexer=multiplexer, data_provider=MultiplexerDataProvider(multiplexer, str(root))
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=10, allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN]
    )
    response = list_session_groups.Handler(
        context.RequestContext(), backend_context.Context(plugin_context), "", request
    ).run()
    assert sorted(group.name for group in response.session_groups) == ["version_0", "version_1"]
    for group in response.session_groups:
        lr, best, last_validation, test = runs[group.name]
        assert group.hparams["optimizer/lr"].number_value == lr
        assert group.hparams["trainer/max_epochs"].number_value == 3
        values = {metric.name.tag: metric.value for metric in group.metric_values}
        assert values["best/validation/loss"] == f32(best)
        assert values["validation/loss"] == f32(last_validation["loss"])  # the final results
        assert values["test/loss"] == f32(test["loss"])
        assert values["epoch"] == 2
        assert [session.status for session in group.sessions] == [api_pb2.STATUS_SUCCESS]


def test_validate_and_test_after_a_fit_write_into_its_directory(tmp_path):
    logger = TensorBoardLogger(log_hyperparameters=False)
    trainer, aggregate, _ = fit(tmp_path, logger, epochs=1, validation=False)
    results = trainer.test(aggregate, make_data()[:2])
    again = trainer.test(aggregate, make_data()[2:])
    validated = trainer.validate(aggregate, make_data()[:1])
    assert logger.writer is None
    written = scalars(logger.log_dir)
    # stand-alone runs count on their own axis: two tests never write two points at one step
    assert sorted(written["test/loss"]) == [(0, f32(results["loss"])), (1, f32(again["loss"]))]
    assert written["validate/loss"] == [(0, f32(validated["loss"]))]
    assert sorted(written) == ["epoch", "test/loss", "train/loss", "validate/loss"]


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
    assert sorted(written["test/loss"]) == [(0, f32(first["loss"])), (1, f32(second["loss"]))]
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
