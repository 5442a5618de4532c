"""History: one record per epoch, per-key series, skipped phases, and its state across a resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import History, ModelCheckpoint


class Scripted(Classifier):
    """Trains normally; its validation loss at epoch ``e`` is ``e + 0.5``."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__()

    def evaluate(self, inputs, targets):
        return self(inputs), torch.tensor(self.epoch + 0.5)


def fit(callbacks, tmp_path, max_epochs, ckpt_path=None, **trainer_args):
    data = make_data()
    trainer = Trainer(callbacks=callbacks, max_epochs=max_epochs, enable_progress_bar=False,
                      default_root_dir=tmp_path, **trainer_args)
    trainer.fit(Scripted(), [("train", data), ("validation", data[:1])], ckpt_path=ckpt_path)
    return trainer


def test_records_every_epoch(tmp_path):
    history = History()
    fit([history], tmp_path, max_epochs=3)
    assert len(history) == 3
    assert [record["epoch"] for record in history.epochs] == [0, 1, 2]
    assert set(history.epochs[0]) == {"epoch", "train/loss", "validation/loss"}
    assert history["validation/loss"] == [0.5, 1.5, 2.5]
    assert len(history["train/loss"]) == 3 and history["train/loss"][2] < history["train/loss"][0]
    assert history.keys() == ["train/loss", "validation/loss"]
    assert "train/loss" in history and "epoch" not in history and "test/loss" not in history


def test_epochs_without_validation_are_left_out_of_the_validation_series(tmp_path):
    history = History()
    fit([history], tmp_path, max_epochs=4, check_val_every_n_epoch=2)
    assert history.series("validation/loss") == [(1, 1.5), (3, 3.5)]
    assert len(history["train/loss"]) == 4


def test_an_unknown_key_raises_listing_the_recorded_ones(tmp_path):
    history = History()
    fit([history], tmp_path, max_epochs=1)
    with pytest.raises(KeyError, match=r"no epoch has 'val/loss'; recorded keys: \['train/loss', 'validation/loss'\]"):
        history["val/loss"]


def test_a_new_fit_starts_a_new_history(tmp_path):
    history = History()
    fit([history], tmp_path, max_epochs=2)
    fit([history], tmp_path, max_epochs=1)
    assert [record["epoch"] for record in history.epochs] == [0]


def test_state_round_trip_and_a_resumed_fit_continues_the_history(tmp_path):
    first = History()
    fit([first, ModelCheckpoint(save_last=True)], tmp_path, max_epochs=2)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["History"]
    assert state == first.state_dict() and len(state["epochs"]) == 2

    resumed = History()
    fit([resumed, ModelCheckpoint(save_last=True)], tmp_path, max_epochs=4, ckpt_path="last")
    assert [record["epoch"] for record in resumed.epochs] == [0, 1, 2, 3]
    assert resumed["validation/loss"] == [0.5, 1.5, 2.5, 3.5]
    assert resumed.epochs[:2] == first.epochs
