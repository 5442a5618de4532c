"""RunTracker: what a fit writes, runs continuing a model's epochs, resumes continuing a run, statuses, modules'
history, checkpoints, stand-alone stages, names stored verbatim."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, func, select
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import make_data
from tests.tracking.conftest import make_model
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.registry import gethash
from torchsystem_trainer.tracking import ModelIdentityError, RunTracker, Tracker, schema


def _trainer(tracker: RunTracker, *more, max_epochs: int = 2, **kwargs) -> Trainer:
    return Trainer(callbacks=[tracker, *more], max_epochs=max_epochs, enable_progress_bar=False, **kwargs)


def _loaders():
    return [("train", make_data()), ("validation", make_data(seed=1))]


def test_a_fit_writes_experiment_model_run_iterations_and_metrics(store_url: str) -> None:
    model = make_model()
    history: dict = {}

    class Keep(Callback):
        def on_trained(self, event) -> None:
            history[("train", event.epoch)] = event.results["loss"]

        def on_validated(self, event) -> None:
            history[("validation", event.epoch)] = event.results["loss"]

    tracker = RunTracker(store_url, experiment="mnist")
    _trainer(tracker, Keep()).fit(model, _loaders())

    with Tracker(store_url) as store:
        assert [(e.name, e.runs) for e in store.experiments()] == [("mnist", 1)]
        (stored,) = store.models()
        assert (stored.hash, stored.name, stored.arguments) == (model.id, "Net", {"features": 4, "classes": 2})
        assert (stored.epoch, stored.step, stored.runs) == (2, 8, 1)
        (run,) = store.runs()
        assert run.id == tracker.run_id and len(run.id) == 32
        assert (run.experiment, run.model, run.stage, run.status, run.end_reason) == (
            "mnist", model.id, "fit", "completed", "completed")
        assert (run.start_epoch, run.epoch, run.start_step, run.step, run.world_size) == (0, 2, 0, 8, 1)
        assert run.precision == "32-true" and run.torch_version == torch.__version__ and run.ended_at is not None
        got = {(m.phase, m.epoch): m.value for m in store.metrics(run.id, name="loss")}
        assert got == history  # exactly the results the events carried
        assert [(m.phase, m.epoch, m.step) for m in store.metrics(run.id)] == [
            ("train", 0, 4), ("validation", 0, 4), ("train", 1, 8), ("validation", 1, 8)]
        assert [(i.epoch, i.phase, i.batches) for i in store.iterations(run.id)] == [
            (0, "train", 4), (0, "validation", 4), (1, "train", 4), (1, "validation", 4)]
        assert store.current_epoch(model.id) == 2 and store.current_step(model.id) == 8
        assert store.current_epoch("unknown") == 0


def test_the_loader_identity_of_a_dataloader_is_recorded(sqlite_url: str) -> None:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(16, 4, generator=generator), torch.randint(0, 2, (16,), generator=generator))
    train = DataLoader(dataset, batch_size=4, shuffle=True, generator=generator)
    tracker = RunTracker(sqlite_url)
    _trainer(tracker, max_epochs=1).fit(make_model(), [("train", train), ("validation", DataLoader(dataset, 8))])
    with Tracker(sqlite_url) as store:
        train_it, validation_it = store.iterations(tracker.run_id or "")
    assert (train_it.dataset, train_it.samples, train_it.batches, train_it.batch_size, train_it.shuffle) == (
        "TensorDataset", 16, 4, 4, True)
    assert (validation_it.batches, validation_it.batch_size, validation_it.shuffle) == (2, 8, False)
    assert train_it.dataset_hash is None  # TensorDataset is not registered


def test_a_new_fit_of_the_same_model_is_a_new_run_continuing_its_epochs(store_url: str) -> None:
    """Under the shared decision (the aggregate's epoch is the truth) the second run starts where the model
    stands in the store; the compile step of the seed sets it with Tracker.current_epoch."""
    first = make_model()
    _trainer(RunTracker(store_url), max_epochs=2).fit(first, _loaders())
    second = make_model(seed=1)  # same hyper-parameters: same identity
    assert second.id == first.id
    with Tracker(store_url) as store:
        second.epoch = store.current_epoch(second.id)
    tracker = RunTracker(store_url)
    _trainer(tracker, max_epochs=4).fit(second, _loaders())
    with Tracker(store_url) as store:
        runs = store.runs(model=first.id)
        assert len(runs) == 2 and runs[1].id == tracker.run_id != runs[0].id
        assert runs[1].start_epoch == 2 and runs[1].start_step == 8
        epochs = sorted({m.epoch for m in store.metrics(runs[1].id)})
        assert epochs[0] == 2 and epochs == list(range(2, 2 + len(epochs)))  # consecutive, from the model's epoch
        (stored,) = store.models()
        assert stored.epoch == int(second.epoch) == 2 + len(epochs)
        assert stored.step == 8 + runs[1].step
        assert store.current_epoch(first.id) == stored.epoch


def test_a_fit_resumed_from_a_checkpoint_continues_the_same_run(sqlite_url: str, tmp_path: Path) -> None:
    class Crash(Callback):  # after epoch 1's training results were written, before its end
        def on_validated(self, event) -> None:
            if event.epoch == 1:
                raise RuntimeError("node lost")

    tracker = RunTracker(sqlite_url)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_steps=1, save_last=True)
    with pytest.raises(RuntimeError, match="node lost"):
        _trainer(tracker, checkpoint, Crash(), max_epochs=3).fit(make_model(), _loaders())
    first_run = tracker.run_id
    with Tracker(sqlite_url) as store:
        assert store.run(first_run or "").status == "failed"
        assert [m.epoch for m in store.metrics(first_run, phase="train")] == [0, 1]

    tracker2 = RunTracker(sqlite_url)
    _trainer(tracker2, ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_steps=1, save_last=True), max_epochs=3).fit(
        make_model(), _loaders(), ckpt_path="last"
    )
    assert tracker2.run_id == first_run
    with Tracker(sqlite_url) as store:
        (run,) = store.runs()
        assert (run.id, run.status, run.end_reason, run.step) == (first_run, "completed", "completed", 12)
        assert [(m.phase, m.epoch) for m in store.metrics(run.id, phase="train")] == [
            ("train", 0), ("train", 1), ("train", 2)]  # epoch 1 written once, though it was cut and trained again
        assert {c.path for c in store.checkpoints(run.id)} >= {str(tmp_path / "ckpt" / "last.ckpt")}


def test_a_second_fit_with_the_same_tracker_and_no_checkpoint_is_a_new_run(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    model = make_model()
    _trainer(tracker, max_epochs=1).fit(model, _loaders())
    first = tracker.run_id
    tracker.load_state_dict(tracker.state_dict())  # what a data-parallel launcher does after its fit
    _trainer(tracker, max_epochs=1).fit(model, _loaders())
    assert tracker.run_id != first
    with Tracker(sqlite_url) as store:
        assert len(store.runs()) == 2


@pytest.mark.parametrize(
    ("make_callback", "status", "reason"),
    [
        (lambda: _StopAt(5), "stopped", "stopped"),
        (lambda: _RaiseAt(5), "failed", "exception"),
    ],
    ids=["stopped", "failed"],
)
def test_the_run_status_follows_how_the_fit_ended(sqlite_url: str, make_callback, status: str, reason: str) -> None:
    tracker = RunTracker(sqlite_url)
    try:
        _trainer(tracker, make_callback(), max_epochs=3).fit(make_model(), _loaders())
    except ValueError:
        pass
    with Tracker(sqlite_url) as store:
        run = store.run(tracker.run_id or "")
    assert (run.status, run.end_reason) == (status, reason)


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_trained(self, event) -> None:
        if event.step == self.step:
            event.trainer.should_stop = True


class _RaiseAt(_StopAt):
    def on_batch_trained(self, event) -> None:
        if event.step == self.step:
            raise ValueError("boom")


def test_max_steps_completes_and_max_epochs_reached(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    _trainer(tracker, max_epochs=None, max_steps=6).fit(make_model(), _loaders())
    with Tracker(sqlite_url) as store:
        run = store.run(tracker.run_id or "")
    assert (run.status, run.end_reason, run.step) == ("completed", "max_steps", 6)


def test_modules_are_history_a_changed_learning_rate_is_a_new_row(store_url: str) -> None:
    model = make_model(lr=0.1)
    _trainer(RunTracker(store_url), max_epochs=1).fit(model, _loaders())
    _trainer(RunTracker(store_url), max_epochs=2).fit(model, _loaders())  # nothing changed: no new row
    for group in model.optimizer.param_groups:
        group["lr"] = 0.01  # a scheduler, or the user, changed it
    changed_at = int(model.epoch)
    _trainer(RunTracker(store_url), max_epochs=3).fit(model, _loaders())
    with Tracker(store_url) as store:
        parts = store.modules(model.id)
    optimizers = [p for p in parts if p.kind == "optimizer"]
    assert [(p.name, p.arguments["lr"], p.hyperparameters[0]["lr"]) for p in optimizers] == [
        ("SGD", 0.1, 0.1), ("SGD", 0.1, 0.01)]
    assert optimizers[0].hash == optimizers[1].hash == gethash(model.optimizer)  # the constructor's lr: same hash
    assert (optimizers[0].epoch, optimizers[1].epoch) == (0, changed_at)  # from the third fit's start
    (criterion,) = [p for p in parts if p.kind == "criterion"]
    assert (criterion.attribute, criterion.name, criterion.hash) == ("criterion", "CrossEntropyLoss", None)
    assert criterion.arguments["reduction"] == "mean"
    assert all(p.kind != "module" or p.hash != model.id for p in parts)  # the model itself is not a module


def test_a_scheduler_is_recorded_with_its_settings(sqlite_url: str) -> None:
    model = make_model()
    model.scheduler = torch.optim.lr_scheduler.StepLR(model.optimizer, step_size=3, gamma=0.5)
    _trainer(RunTracker(sqlite_url), max_epochs=1).fit(model, _loaders())
    with Tracker(sqlite_url) as store:
        (scheduler,) = [p for p in store.modules(model.id) if p.kind == "scheduler"]
    assert (scheduler.attribute, scheduler.name) == ("scheduler", "StepLR")
    assert (scheduler.arguments["step_size"], scheduler.arguments["gamma"]) == (3, 0.5)


def test_checkpoints_are_recorded_with_their_epoch_step_and_score(sqlite_url: str, tmp_path: Path) -> None:
    tracker = RunTracker(sqlite_url)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="validation/loss", save_top_k=-1, save_last=True)
    _trainer(tracker, checkpoint, max_epochs=2).fit(make_model(), _loaders())
    with Tracker(sqlite_url) as store:
        files = {Path(c.path).name: c for c in store.checkpoints(tracker.run_id)}
        run = store.run(tracker.run_id or "")
    assert set(files) == {"epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"}
    assert (files["epoch=0-step=4.ckpt"].epoch, files["epoch=0-step=4.ckpt"].step) == (1, 4)
    assert (files["last.ckpt"].epoch, files["last.ckpt"].step, files["last.ckpt"].score) == (2, 8, None)
    scores = checkpoint.best_k_models
    assert files["epoch=1-step=8.ckpt"].score == scores[str(tmp_path / "ckpt" / "epoch=1-step=8.ckpt")]
    assert files["epoch=1-step=8.ckpt"].monitor == "validation/loss"
    assert run.checkpoint_dir == str(tmp_path / "ckpt")


def test_test_after_a_fit_goes_into_the_fits_run(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    trainer = _trainer(tracker, max_epochs=1)
    model = make_model()
    trainer.fit(model, _loaders())
    results = trainer.test(model, make_data(seed=2))
    with Tracker(sqlite_url) as store:
        (run,) = store.runs()
        (test,) = store.metrics(run.id, phase="test")
    assert (test.name, test.epoch, test.value) == ("loss", 1, results["loss"])
    assert run.status == "completed"


def test_a_stand_alone_validate_is_a_run_of_its_own(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    results = _trainer(tracker).validate(make_model(), make_data())
    with Tracker(sqlite_url) as store:
        (run,) = store.runs()
        (metric,) = store.metrics(run.id)
    assert (run.stage, run.status, run.end_reason) == ("validate", "completed", "completed")
    assert (metric.phase, metric.value) == ("validation", results["loss"])


def test_fast_dev_run_writes_nothing(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    Trainer(callbacks=[tracker], fast_dev_run=True, enable_progress_bar=False).fit(make_model(), _loaders())
    with Tracker(sqlite_url) as store:
        assert len(store.runs()) == 0


def test_the_default_store_is_runs_db_under_default_root_dir(tmp_path: Path) -> None:
    tracker = RunTracker()
    _trainer(tracker, max_epochs=1, default_root_dir=tmp_path / "root").fit(make_model(), _loaders())
    assert (tmp_path / "root" / "runs.db").is_file()
    assert tracker.url == f"sqlite:///{tmp_path / 'root' / 'runs.db'}"


def test_an_aggregate_without_identity_fails_at_fit_start_saying_how(sqlite_url: str) -> None:
    from tests.conftest import Classifier  # an unregistered nn.Linear and no id

    with pytest.raises(ModelIdentityError, match="define an `id` property"):
        _trainer(RunTracker(sqlite_url)).fit(Classifier(), _loaders())


NASTY = ["it's; DROP TABLE runs; --", 'say "hi"', "SELECT * FROM metrics WHERE 1=1", "ünïcode ✓", "a\nb"]


@pytest.mark.parametrize("name", NASTY, ids=["quote-semicolon", "double-quotes", "sql", "unicode", "newline"])
def test_experiment_phase_and_metric_names_are_stored_verbatim(store_url: str, name: str) -> None:
    tracker = RunTracker(store_url, experiment=name)
    _trainer(tracker, max_epochs=1).fit(make_model(), [("train", make_data())])
    from torchsystem_trainer.tracking import units
    from torchsystem_trainer.tracking.engine import now_ms

    # a phase and a metric of that name, through the same unit of work the callback uses
    assert tracker._writer is not None
    tracker._writer.submit("test", units.write_phase(tracker.run_id or "", name, 0, 4, {name: 1.5}, None, now_ms()))
    assert tracker.flush()
    with Tracker(store_url) as store:
        assert [e.name for e in store.experiments()] == [name]
        assert store.runs(experiment=name)[0].id == tracker.run_id
        (metric,) = store.metrics(tracker.run_id, phase=name)
        assert (metric.phase, metric.name, metric.value) == (name, name, 1.5)
    engine = create_engine(store_url)
    with engine.connect() as connection:  # nothing was dropped
        assert connection.execute(select(func.count()).select_from(schema.runs)).scalar_one() == 1
    engine.dispose()


def test_nan_and_infinite_results_read_back(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    _trainer(tracker, max_epochs=1).fit(make_model(), [("train", make_data())])
    from torchsystem_trainer.tracking import units
    from torchsystem_trainer.tracking.engine import now_ms

    assert tracker._writer is not None
    tracker._writer.submit("t", units.write_phase(tracker.run_id or "", "x", 0, 4,
                                                  {"nan": math.nan, "inf": math.inf}, None, now_ms()))
    assert tracker.flush()
    with Tracker(sqlite_url) as store:
        values = {m.name: m.value for m in store.metrics(tracker.run_id, phase="x")}
    assert math.isnan(values["nan"]) and values["inf"] == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"experiment": ""}, "experiment=''"),
        ({"heartbeat_interval": 0}, "heartbeat_interval=0"),
        ({"retry_timeout": -1}, "retry_timeout=-1"),
        ({"stale_after": "x"}, "stale_after='x'"),
    ],
    ids=["empty-experiment", "zero-heartbeat", "negative-retry", "text-stale"],
)
def test_invalid_arguments_name_themselves(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunTracker(**kwargs)


def test_the_heartbeat_is_written_from_batch_events_at_most_every_interval(sqlite_url: str, monkeypatch) -> None:
    from torchsystem_trainer.tracking import run_tracker as module

    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(module.time, "monotonic", lambda: float(next(clock)))
    beats: list[int] = []
    original = module.units.heartbeat
    monkeypatch.setattr(module.units, "heartbeat", lambda run, now, step: beats.append(step) or original(run, now, step))
    tracker = RunTracker(sqlite_url, heartbeat_interval=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trainer(tracker, max_epochs=1).fit(make_model(), [("train", make_data(samples=64))])
    assert beats and len(beats) < 16  # not every batch
    assert beats == sorted(beats)


def test_logged_values_are_metrics_and_step_values_are_written_batched(sqlite_url: str) -> None:
    from tests.tracking.conftest import Model

    class Logging(Model):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log("scaled", loss * 10, on_step=True)
            return outputs, loss

        def evaluate(self, inputs, targets):
            outputs, loss = super().evaluate(inputs, targets)
            self.log("half", loss / 2, on_step=True)
            return outputs, loss

    transactions: list[str] = []

    class Steps(Callback):
        def __init__(self) -> None:
            self.losses: dict[int, float] = {}

        def on_batch_trained(self, event) -> None:
            self.losses[event.step] = event.loss.item()

    from torchsystem_trainer.tracking.writer import Writer

    submit = Writer.submit

    def spy(self, description, unit):  # the transactions the tracker makes
        transactions.append(description)
        return submit(self, description, unit)

    torch.manual_seed(0)
    model, steps = Logging(), Steps()
    tracker = RunTracker(sqlite_url, log_every_n_steps=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Writer, "submit", spy)
        _trainer(tracker, steps).fit(model, _loaders())

    assert not any("step" in description for description in transactions)  # only with the phases' results
    with Tracker(sqlite_url) as store:
        scaled = [(m.epoch, m.step, m.value) for m in store.metrics(tracker.run_id, name="scaled_step")]
        assert [(epoch, step) for epoch, step, _ in scaled] == [(0, 2), (0, 4), (1, 6), (1, 8)]
        for _, step, value in scaled:
            assert value == pytest.approx(10 * steps.losses[step], rel=1e-6)
        half = [(m.phase, m.epoch, m.step) for m in store.metrics(tracker.run_id, name="half_step")]
        assert half == [("validation", 0, 2), ("validation", 0, 4), ("validation", 1, 6), ("validation", 1, 8)]
        epochs = {(m.phase, m.epoch) for m in store.metrics(tracker.run_id, name="scaled")}
        assert epochs == {("train", 0), ("train", 1)}


def test_many_step_values_are_written_in_batches_of_their_own(sqlite_url: str) -> None:
    from tests.tracking.conftest import Model
    from torchsystem_trainer.tracking.writer import Writer

    class Logging(Model):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log("scaled", loss * 10, on_step=True, on_epoch=False)
            return outputs, loss

    transactions: list[str] = []
    submit = Writer.submit

    def spy(self, description, unit):
        transactions.append(description)
        return submit(self, description, unit)

    torch.manual_seed(0)
    tracker = RunTracker(sqlite_url, log_every_n_steps=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Writer, "submit", spy)
        _trainer(tracker, max_epochs=1).fit(Logging(), make_data(samples=4 * 450))
    assert transactions.count("step values") == 2  # rows 1-200 and 201-400; the last 50 with the phase's results
    with Tracker(sqlite_url) as store:
        assert [m.step for m in store.metrics(tracker.run_id, name="scaled_step")] == list(range(1, 451))
