"""The loop's rules a user meets first: the order of phases, the one epoch counter, empty loaders."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint import read_checkpoint


def fit(aggregate, loaders, **arguments):
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], enable_progress_bar=False, **arguments)
    trainer.fit(aggregate, loaders)
    return trainer, recorder


# -- the order of phases ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dict", "pairs"])
def test_training_runs_first_whatever_the_order_of_the_loaders(classifier, data, form):
    loaders = {"validation": data, "train": data} if form == "dict" else [("validation", data), ("train", data)]
    trainer, recorder = fit(classifier, loaders, max_epochs=2)
    phases = [event[2] for event in recorder.events if event[0] == "PhaseStarted"]
    assert phases == ["train", "validation", "train", "validation"]
    assert set(trainer.callback_metrics) == {"train/loss", "validation/loss"}


# -- one epoch counter --------------------------------------------------------------------------------------


class EpochsSeen(Callback):
    """For every event with an epoch: (event epoch, trainer.current_epoch, aggregate.epoch)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int]] = []

    def _record(self, event) -> None:
        self.seen.append((type(event).__name__, event.epoch, event.trainer.current_epoch, int(event.aggregate.epoch)))

    on_epoch_started = on_phase_started = on_batch_trained = on_trained = on_validated = _record


def test_max_epochs_is_the_total_the_aggregate_reaches(classifier, data):
    classifier.epoch = 10
    seen = EpochsSeen()
    trainer = Trainer(callbacks=[seen], max_epochs=12, enable_progress_bar=False)
    trainer.fit(classifier, [("train", data), ("validation", data)])
    assert sorted({epoch for _, epoch, _, _ in seen.seen}) == [10, 11]
    assert all(epoch == current == aggregate for _, epoch, current, aggregate in seen.seen)
    assert classifier.epoch == trainer.current_epoch == 12


def test_consecutive_fits_keep_one_counter_and_a_fit_with_nothing_to_do_warns(classifier, data):
    trainer = Trainer(max_epochs=2, enable_progress_bar=False)
    trainer.fit(classifier, data)
    assert classifier.epoch == trainer.current_epoch == 2
    before = classifier.nn.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"at epoch 2 and max_epochs=2, so there is nothing to train"):
        trainer.fit(classifier, data)
    assert classifier.epoch == trainer.current_epoch == 2
    assert torch.equal(classifier.nn.weight, before)


def test_with_no_limit_a_fit_trains_one_more_epoch(classifier, data):
    classifier.epoch = 3
    trainer, recorder = fit(classifier, data)
    assert [event for event in recorder.events if event[0] == "EpochStarted"] == [("EpochStarted", 3)]
    assert classifier.epoch == trainer.current_epoch == 4


class Plain(nn.Module):
    """Any module with fit and evaluate is accepted; it may have no epoch, or an epoch buffer."""

    def __init__(self, epoch: torch.Tensor | None = None) -> None:
        super().__init__()
        self.nn = nn.Linear(4, 2)
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)
        if epoch is not None:
            self.register_buffer("epoch", epoch)

    def fit(self, inputs, targets):
        self.optimizer.zero_grad()
        outputs = self.nn(inputs)
        loss = nn.functional.cross_entropy(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return outputs, loss

    def evaluate(self, inputs, targets):
        outputs = self.nn(inputs)
        return outputs, nn.functional.cross_entropy(outputs, targets)


def test_a_module_without_epoch_starts_at_zero(data):
    module = Plain()
    trainer, recorder = fit(module, data, max_epochs=2)
    started = [event for event in recorder.events if event[0] == "EpochStarted"]
    assert started == [("EpochStarted", 0), ("EpochStarted", 1)]
    assert module.epoch == trainer.current_epoch == 2


def test_an_epoch_buffer_is_read_and_advanced_as_a_tensor(data):
    module = Plain(epoch=torch.tensor(5))
    trainer, recorder = fit(module, data, max_epochs=7)
    started = [event for event in recorder.events if event[0] == "EpochStarted"]
    assert started == [("EpochStarted", 5), ("EpochStarted", 6)]
    assert isinstance(module.epoch, torch.Tensor) and module.epoch.dtype == torch.int64
    assert "epoch" in dict(module.named_buffers()) and int(module.epoch) == trainer.current_epoch == 7


def test_checkpoints_and_resume_agree_with_the_aggregate(classifier, data, tmp_path):
    classifier.epoch = 4
    Trainer(callbacks=[ModelCheckpoint(tmp_path, save_last=True)], max_epochs=6, enable_progress_bar=False).fit(
        classifier, data
    )
    state = read_checkpoint(tmp_path / "last.ckpt")
    assert state["aggregate"]["epoch"] == state["loop"]["progress"]["epoch"] == 6
    torch.manual_seed(0)
    fresh = Classifier()
    seen = EpochsSeen()
    trainer = Trainer(callbacks=[seen], max_epochs=7, enable_progress_bar=False)
    trainer.fit(fresh, data, ckpt_path=tmp_path / "last.ckpt")
    assert {epoch for _, epoch, _, _ in seen.seen} == {6}
    assert all(epoch == current == aggregate for _, epoch, current, aggregate in seen.seen)
    assert fresh.epoch == trainer.current_epoch == 7


def test_validate_reads_the_aggregates_epoch(classifier, data):
    classifier.epoch = 5
    seen = EpochsSeen()
    Trainer(callbacks=[seen], enable_progress_bar=False).validate(classifier, data)
    assert [(name, epoch, current) for name, epoch, current, _ in seen.seen] == [
        ("PhaseStarted", 5, 5),
        ("Validated", 5, 5),
    ]


# -- empty loaders ------------------------------------------------------------------------------------------


def _empty_loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize("empty", [[], "dataloader"], ids=["list", "dataloader"])
def test_an_empty_training_loader_fails_the_fit_before_any_event(classifier, data, empty):
    loader = _empty_loader() if empty == "dataloader" else empty
    recorder = Recorder()
    with pytest.raises(ValueError, match=r"'train' loader is empty"):
        Trainer(callbacks=[recorder], enable_progress_bar=False).fit(
            classifier, [("train", loader), ("validation", data)]
        )
    assert recorder.events == []


def test_an_empty_unsized_training_loader_fails_the_fit_naming_the_phase(classifier):
    with pytest.raises(ValueError, match=r"'train' loader yielded no batch"):
        Trainer(enable_progress_bar=False).fit(classifier, iter(()))


def test_an_empty_validation_loader_warns_once_and_gives_no_results(classifier, data):
    metric = torchmetrics.Accuracy("multiclass", num_classes=2)
    with pytest.warns(UserWarning, match=r"'validation' loader is empty") as caught:
        trainer, recorder = fit(
            classifier, [("train", data), ("validation", _empty_loader())], max_epochs=2, metrics=metric
        )
    assert sum("'validation' loader is empty" in str(w.message) for w in caught) == 1
    assert set(trainer.callback_metrics) == {"train/loss", "train/MulticlassAccuracy"}  # never a fake 0.0
    assert "Validated" not in recorder.names()


def test_an_empty_unsized_validation_loader_warns_once_and_gives_no_results(classifier, data):
    class Empty:
        def __iter__(self):
            return iter(())

    metric = torchmetrics.Accuracy("multiclass", num_classes=2)
    with pytest.warns(UserWarning, match=r"'validation' loader is empty") as caught:
        trainer, _ = fit(classifier, [("train", data), ("validation", Empty())], max_epochs=3, metrics=metric)
    assert sum("'validation' loader is empty" in str(w.message) for w in caught) == 1
    assert set(trainer.callback_metrics) == {"train/loss", "train/MulticlassAccuracy"}


@pytest.mark.parametrize("method", ["validate", "test"])
def test_an_empty_evaluation_loader_warns_and_returns_no_results(classifier, method):
    metric = torchmetrics.Accuracy("multiclass", num_classes=2)
    trainer = Trainer(metrics=metric, enable_progress_bar=False)
    phase = "validation" if method == "validate" else "test"
    with pytest.warns(UserWarning, match=rf"'{phase}' loader is empty"):
        assert getattr(trainer, method)(classifier, _empty_loader()) == {}


def test_test_with_no_loader_raises(classifier):
    with pytest.raises(ValueError, match=r"Trainer.test: loaders is empty"):
        Trainer(enable_progress_bar=False).test(classifier, [])


def test_a_fit_with_data_warns_nothing(classifier):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(classifier, [("train", make_data()), ("validation", make_data())])
