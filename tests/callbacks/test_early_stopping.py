"""EarlyStopping: the exact epoch it stops at, each rule, errors, and its state across a resume."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EarlyStopping, ModelCheckpoint, MonitorError

NAN = float("nan")


class Scripted(Classifier):
    """Trains normally; its validation loss at epoch ``e`` is ``script[e]`` (a constant per batch)."""

    def __init__(self, script: list[float]) -> None:
        torch.manual_seed(0)
        super().__init__()
        self.script = script

    def evaluate(self, inputs, targets):
        return self(inputs), torch.tensor(self.script[self.epoch])


def fit(script, callbacks, max_epochs=None, tmp_path=None, **trainer_args):
    aggregate = Scripted(script)
    data = make_data()
    trainer = Trainer(
        callbacks=callbacks if isinstance(callbacks, list) else [callbacks],
        max_epochs=len(script) if max_epochs is None else max_epochs,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        **trainer_args,
    )
    trainer.fit(aggregate, [("train", data), ("validation", data[:1])])
    return trainer


def test_stops_after_patience_checks_without_improvement(tmp_path):
    stopping = EarlyStopping(patience=3)
    trainer = fit([1.0, 0.9, 0.95, 0.95, 0.95, 0.5, 0.4], stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch == 4
    assert trainer.current_epoch == 5  # epoch 4 ran to its end, then the fit stopped
    assert stopping.wait_count == 3
    assert stopping.best_score == pytest.approx(0.9)
    assert "did not improve" in stopping.stopping_reason


def test_does_not_stop_while_improving(tmp_path):
    stopping = EarlyStopping(patience=1)
    trainer = fit([1.0, 0.9, 0.8, 0.7], stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch is None and stopping.stopping_reason is None
    assert trainer.current_epoch == 4 and not trainer.should_stop


@pytest.mark.parametrize(
    ("script", "arguments", "stopped_epoch", "reason"),
    [
        ([1.0, 0.95, 0.91, 0.88], {"min_delta": 0.1, "patience": 2}, 2, "did not improve by more than 0.1"),
        ([0.1, 0.2, 0.2, 0.3], {"mode": "max", "patience": 1}, 2, "did not improve"),
        ([1.0, 0.9, 0.9], {"patience": 0}, 2, "did not improve"),
        ([1.0, 0.6, 0.4, 0.3], {"stopping_threshold": 0.5, "patience": 9}, 2, "stopping threshold"),
        ([0.1, 0.6, 0.7], {"mode": "max", "stopping_threshold": 0.5, "patience": 9}, 1, "stopping threshold"),
        ([1.0, 2.0, 6.0, 0.1], {"divergence_threshold": 5.0, "patience": 9}, 2, "diverged"),
        ([1.0, 0.9, NAN, 0.1], {"patience": 9}, 2, "not finite"),
        ([1.0, math.inf, 0.1], {"patience": 9}, 1, "not finite"),
    ],
    ids=["min_delta", "max_mode", "patience_0", "threshold", "threshold_max", "divergence", "nan", "inf"],
)
def test_each_rule_stops_at_the_expected_epoch(tmp_path, script, arguments, stopped_epoch, reason):
    stopping = EarlyStopping(**arguments)
    trainer = fit(script, stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch == stopped_epoch
    assert reason in stopping.stopping_reason
    assert trainer.current_epoch == stopped_epoch + 1


def test_check_finite_false_lets_nan_count_as_no_improvement(tmp_path):
    stopping = EarlyStopping(patience=2, check_finite=False)
    fit([1.0, NAN, 0.5, NAN, NAN, 0.1], stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch == 4 and stopping.best_score == pytest.approx(0.5)


def test_epochs_without_validation_are_not_checks(tmp_path):
    stopping = EarlyStopping(patience=1)
    script = [9.0, 1.0, 9.0, 1.0, 9.0, 1.0]  # validation runs at epochs 1, 3, 5 only
    trainer = fit(script, stopping, tmp_path=tmp_path, check_val_every_n_epoch=2)
    assert stopping.stopped_epoch == 3 and trainer.current_epoch == 4


def test_a_train_monitor_works_without_validation(tmp_path):
    stopping = EarlyStopping(monitor="train/loss", mode="max", patience=0)
    trainer = Trainer(callbacks=[stopping], max_epochs=5, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(Scripted([0.0] * 5), make_data())  # training lowers the loss: no improvement for "max"
    assert stopping.stopped_epoch == 1


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        ("validation/accuracy", "the 'validation' phase ran but has no metric 'accuracy'"),
        ("val/loss", "keys are '<phase>/<name>'"),
        ("loss", "keys are '<phase>/<name>'"),
    ],
    ids=["metric_missing", "unknown_phase", "no_phase"],
)
def test_an_unknown_monitor_raises_listing_the_available_keys(tmp_path, monitor, message):
    with pytest.raises(MonitorError) as caught:
        fit([1.0, 1.0], EarlyStopping(monitor=monitor), tmp_path=tmp_path)
    text = str(caught.value)
    assert message in text and "available keys: 'train/loss', 'validation/loss'" in text
    assert text.startswith(f"EarlyStopping(monitor={monitor!r})")
    assert isinstance(caught.value, KeyError)


def test_an_unknown_phase_raises_even_on_an_epoch_without_validation(tmp_path):
    with pytest.raises(MonitorError, match="available keys: 'train/loss'$"):
        fit([1.0, 1.0], EarlyStopping(monitor="val/loss"), tmp_path=tmp_path, check_val_every_n_epoch=2)


def test_a_monitor_that_never_appears_warns_at_the_end(tmp_path):
    stopping = EarlyStopping()
    trainer = Trainer(callbacks=[stopping], max_epochs=2, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="never checked"):
        trainer.fit(Scripted([1.0, 1.0]), make_data())


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"mode": "avg"}, r"mode='avg' is invalid; valid: 'min', 'max'"),
        ({"patience": -1}, r"patience=-1 is invalid; valid: an int >= 0"),
        ({"patience": 1.5}, r"patience=1.5 is invalid"),
        ({"patience": True}, r"patience=True is invalid"),
        ({"min_delta": -0.1}, r"min_delta=-0.1 is invalid; valid: a finite number >= 0"),
        ({"stopping_threshold": NAN}, r"stopping_threshold=nan is invalid"),
        ({"divergence_threshold": "5"}, r"divergence_threshold='5' is invalid"),
        ({"monitor": ""}, r"monitor='' is invalid"),
    ],
    ids=["mode", "negative_patience", "float_patience", "bool_patience", "min_delta", "threshold", "divergence",
         "monitor"],
)
def test_invalid_arguments_raise_naming_them(arguments, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**arguments)


def test_state_is_plain_data_and_round_trips(tmp_path):
    stopping = EarlyStopping(patience=1)
    fit([1.0, 2.0, 2.0], stopping, tmp_path=tmp_path)
    torch.save(stopping.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state == {
        "monitor": "validation/loss", "mode": "min", "patience": 1, "wait_count": 1,
        "best_score": pytest.approx(1.0), "stopped_epoch": 1, "stopping_reason": stopping.stopping_reason,
        "best_epoch": 0, "best_weights": None, "trained_weights": None,
    }
    restored = EarlyStopping(patience=1)
    restored.load_state_dict(state)
    assert (restored.wait_count, restored.best_score, restored.stopped_epoch) == (1, pytest.approx(1.0), 1)


def test_a_state_for_another_monitor_is_not_restored():
    state = EarlyStopping(monitor="train/loss").state_dict() | {"wait_count": 2}
    stopping = EarlyStopping()
    with pytest.warns(UserWarning, match="starting from a fresh state"):
        stopping.load_state_dict(state)
    assert stopping.wait_count == 0


def test_a_resumed_fit_continues_counting_patience(tmp_path):
    script = [1.0, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1]
    first = EarlyStopping(patience=3)
    fit(script, [first, ModelCheckpoint()], max_epochs=3, tmp_path=tmp_path)  # checks: improve, wait 1, wait 2
    assert (first.wait_count, first.stopped_epoch) == (2, None)

    resumed = EarlyStopping(patience=3)
    trainer = Trainer(callbacks=[resumed, ModelCheckpoint()], max_epochs=8, enable_progress_bar=False,
                      default_root_dir=tmp_path)
    data = make_data()
    trainer.fit(Scripted(script), [("train", data), ("validation", data[:1])], ckpt_path="last")
    assert resumed.stopped_epoch == 3  # a fresh state would have stopped at epoch 6


def test_a_new_fit_without_a_checkpoint_starts_fresh(tmp_path):
    stopping = EarlyStopping(patience=1)
    fit([1.0, 2.0], stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch == 1
    fit([1.0, 0.5], stopping, tmp_path=tmp_path)
    assert stopping.stopped_epoch is None and stopping.wait_count == 0

