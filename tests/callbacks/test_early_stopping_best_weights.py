"""EarlyStopping's restore_best_weights (Keras; Lightning #1415) and start_from_epoch (Keras)."""

from __future__ import annotations

import pytest
import torch

from tests.callbacks.test_early_stopping import Scripted, fit
from tests.checkpoint.helpers import same_weights
from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint


class Weights(Callback):
    """The aggregate's weights at the end of every epoch (``Iterated``)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_iterated(self, event) -> None:
        self.epochs.append({key: value.clone() for key, value in event.aggregate.state_dict().items()})


def same(first, second) -> bool:
    return list(first) == list(second) and all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize(
    ("script", "arguments", "reason"),
    [
        ([1.0, 0.5, 0.9, 0.9, 0.9], {"patience": 2}, "stopped"),
        ([1.0, 0.5, 0.9], {"patience": 9}, "completed"),
        ([1.0, 0.5, 0.9, 0.8], {"patience": 9, "max_steps": 12}, "max_steps"),
    ],
    ids=["early-stop", "max_epochs", "max_steps"],
)
def test_the_best_epochs_weights_are_restored_bit_for_bit(tmp_path, script, arguments, reason):
    ending = []
    weights = Weights()

    class Ending(Callback):  # runs after EarlyStopping's on_fit_ended
        def on_fit_ended(self, event) -> None:
            ending.append((event.reason, {key: value.clone() for key, value in event.aggregate.state_dict().items()}))

    max_steps = arguments.pop("max_steps", None)
    stopping = EarlyStopping(restore_best_weights=True, **arguments)
    fit(script, [stopping, weights, Ending()], tmp_path=tmp_path, max_steps=max_steps)
    (ended, final), = ending
    assert ended == reason and stopping.best_epoch == 1
    assert len(weights.epochs) >= 3 and not same(weights.epochs[-1], weights.epochs[1])
    assert same(final, weights.epochs[1]) and same(stopping.best_weights, weights.epochs[1])


def test_restored_into_the_aggregate(tmp_path):
    weights = Weights()
    stopping = EarlyStopping(restore_best_weights=True, patience=1)
    aggregate = Scripted([1.0, 0.5, 0.9, 0.9])
    Trainer(callbacks=[stopping, weights], max_epochs=4, enable_progress_bar=False).fit(
        aggregate, [("train", make_data()), ("validation", make_data()[:1])]
    )
    assert stopping.stopped_epoch == 2
    assert same(aggregate.state_dict(), weights.epochs[1])
    assert not same(weights.epochs[2], weights.epochs[1])


def test_without_the_flag_the_last_weights_stay(tmp_path):
    weights = Weights()
    stopping = EarlyStopping(patience=1)
    aggregate = Scripted([1.0, 0.5, 0.9, 0.9])
    Trainer(callbacks=[stopping, weights], max_epochs=4, enable_progress_bar=False).fit(
        aggregate, [("train", make_data()), ("validation", make_data()[:1])]
    )
    assert stopping.best_weights is None
    assert same(aggregate.state_dict(), weights.epochs[-1])


def test_not_restored_when_the_fit_raises(tmp_path):
    class Boom(Callback):
        def on_epoch_started(self, event) -> None:
            if event.epoch == 2:
                raise RuntimeError("boom")

    weights = Weights()
    stopping = EarlyStopping(restore_best_weights=True, patience=9)
    aggregate = Scripted([1.0, 0.5, 0.9, 0.9])
    with pytest.raises(RuntimeError, match="boom"):
        Trainer(callbacks=[stopping, weights, Boom()], max_epochs=4, enable_progress_bar=False).fit(
            aggregate, [("train", make_data()), ("validation", make_data()[:1])]
        )
    assert same(aggregate.state_dict(), weights.epochs[-1])


def test_best_weights_on_cpu_are_copies(tmp_path):
    stopping = EarlyStopping(restore_best_weights=True, best_weights_on_cpu=True, patience=9)
    aggregate = Scripted([1.0, 0.5])
    Trainer(callbacks=[stopping], max_epochs=1, enable_progress_bar=False).fit(aggregate, [("train", make_data()), ("validation", make_data()[:1])])
    assert all(value.device.type == "cpu" for value in stopping.best_weights.values())
    assert stopping.best_weights["nn.weight"].data_ptr() != aggregate.nn.weight.data_ptr()


def test_best_weights_are_checkpointed_and_a_resumed_fit_restores_the_same(tmp_path):
    script = [1.0, 0.5, 0.9, 0.9, 0.9, 0.9]

    def run(max_epochs, ckpt_path=None, folder="checkpoints"):
        aggregate = Scripted(script)
        stopping = EarlyStopping(restore_best_weights=True, patience=3)
        checkpoint = ModelCheckpoint(tmp_path / folder, save_last=True)
        trainer = Trainer(callbacks=[stopping, checkpoint], max_epochs=max_epochs, enable_progress_bar=False, seed=0)
        trainer.fit(aggregate, [("train", make_data()), ("validation", make_data()[:1])], ckpt_path=ckpt_path)
        return aggregate, stopping

    reference, _ = run(6, folder="reference")
    run(3)  # epochs 0-2; the last checkpoint holds the best (epoch 1) weights
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(state["callbacks"]["EarlyStopping"]["best_weights"]) == {"nn.weight", "nn.bias"}
    resumed, stopping = run(6, "last")
    assert stopping.stopped_epoch == 4 and stopping.best_epoch == 1
    assert same(resumed.state_dict(), reference.state_dict())


def test_start_from_epoch_ignores_the_warm_up_epochs(tmp_path):
    script = [0.1, 0.2, 1.0, 0.9, 0.95, 0.95, 0.95]
    plain = EarlyStopping(patience=1)
    fit(script, plain, tmp_path=tmp_path)
    assert plain.stopped_epoch == 1
    warm = EarlyStopping(patience=1, start_from_epoch=2)
    fit(script, warm, tmp_path=tmp_path)
    assert (warm.stopped_epoch, warm.best_epoch, warm.best_score) == (4, 3, pytest.approx(0.9))


def test_start_from_epoch_is_checked():
    with pytest.raises(ValueError, match=r"start_from_epoch=-1 is invalid; valid: an int >= 0"):
        EarlyStopping(start_from_epoch=-1)


class _Scripted(Classifier):
    """Its validation loss at epoch ``e`` is ``LOSSES[e]``: epoch 0 is the best of the first two, epoch 3 of all."""

    LOSSES = (0.5, 0.9, 0.4, 0.3)

    def evaluate(self, inputs, targets):
        predictions, _ = super().evaluate(inputs, targets)
        return predictions, torch.tensor(self.LOSSES[self.epoch])


def _fit_scripted(callbacks, max_epochs, ckpt_path=None, save=None):
    torch.manual_seed(0)
    aggregate = _Scripted()
    trainer = Trainer(callbacks=callbacks, max_epochs=max_epochs, enable_progress_bar=False, seed=1)
    data = make_data()
    trainer.fit(aggregate, [("train", data), ("validation", data)], ckpt_path=ckpt_path)
    if save is not None:
        trainer.save_checkpoint(save)
    return aggregate


@pytest.mark.parametrize("order", ["early-stopping-only", "ema-first", "early-stopping-first"])
def test_a_checkpoint_written_after_the_best_weights_were_restored_resumes_from_the_trained_ones(tmp_path, order):
    # the first fit ends with epoch 0's weights restored (and EMA's average, in the order the callbacks give); a fit
    # resumed from a checkpoint written then continues from the weights training reached, as the uninterrupted run
    # does, whichever weight-replacing callback comes first
    def callbacks():
        stopping = EarlyStopping(monitor="validation/loss", patience=10, restore_best_weights=True)
        return {
            "early-stopping-only": [stopping],
            "ema-first": [EMA(decay=0.5), stopping],
            "early-stopping-first": [stopping, EMA(decay=0.5)],
        }[order]

    reference = _fit_scripted(callbacks(), max_epochs=4)
    _fit_scripted(callbacks(), max_epochs=2, save=tmp_path / "end.ckpt")
    resumed = _fit_scripted(callbacks(), max_epochs=4, ckpt_path=tmp_path / "end.ckpt")
    assert same_weights(resumed, reference)
