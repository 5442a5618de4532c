"""val_check_interval: validations inside the epoch (Lightning's positions), MidEpochValidated, the callbacks that
react to each validation, and exact resumption between two of them."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tests.checkpoint.helpers import Crash, Snapshot, same_weights
from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint, ProgressBar, Timer
from torchsystem_trainer.callbacks import timer as timer_module
from torchsystem_trainer.checkpoint import checkpoint_state, save_atomic
from torchsystem_trainer.trainer.val_check import ValCheck


class Everything(Recorder):
    def on_mid_epoch_validated(self, event):
        self.events.append(("MidEpochValidated", event.epoch, event.batch, event.step, sorted(event.results)))


def fit(batches=4, validation_batches=1, max_epochs=1, callbacks=(), aggregate=None, **arguments):
    recorder = Everything()
    arguments.setdefault("enable_progress_bar", False)
    trainer = Trainer(callbacks=[recorder, *callbacks], max_epochs=max_epochs, num_sanity_val_steps=0, **arguments)
    aggregate = aggregate or Classifier()
    validation = make_data(samples=4 * validation_batches)
    trainer.fit(aggregate, [("train", make_data(samples=4 * batches)), ("validation", validation)])
    return trainer, recorder


def validated_after(recorder: Everything) -> list[tuple[int, int]]:
    """(epoch, step) of every validation phase, from the batch event before it."""
    found, last = [], (0, 0)
    for event in recorder.events:
        if event[0] == "BatchTrained":
            last = (event[1], event[3])
        elif event[0] == "PhaseStarted" and event[2] == "validation":
            found.append(last)
    return found


def test_half_an_epoch_validates_in_the_middle_and_at_the_end_in_this_order():
    _, recorder = fit(val_check_interval=0.5)
    step = [e for e in recorder.events if e[0] != "GradientsComputed"]
    assert step == [
        ("FitStarted",),
        ("EpochStarted", 0),
        ("PhaseStarted", 0, "train"),
        ("BatchTrained", 0, 0, 1),
        ("BatchTrained", 0, 1, 2),
        ("PhaseStarted", 0, "validation"),
        ("BatchValidated", 0, 0, 2),
        ("Validated", 0),
        ("MidEpochValidated", 0, 2, 2, ["validation/loss"]),
        ("BatchTrained", 0, 2, 3),
        ("BatchTrained", 0, 3, 4),
        ("Trained", 0),
        ("PhaseStarted", 0, "validation"),
        ("BatchValidated", 0, 0, 4),
        ("Validated", 0),
        ("Iterated", 0),
        ("FitEnded", "completed"),
    ]


@pytest.mark.parametrize(
    ("batches", "interval", "every_n_epochs", "max_epochs", "expected"),
    [
        (4, 1.0, 1, 2, [(0, 4), (1, 8)]),  # the default: the epochs' ends
        (10, 0.25, 1, 1, [(0, 2), (0, 4), (0, 6), (0, 8), (0, 10)]),  # int(10 * 0.25) = 2, as Lightning
        (10, 0.3, 1, 1, [(0, 3), (0, 6), (0, 9)]),  # 3 does not divide 10: no validation at the end (Lightning)
        (4, 3, 1, 2, [(0, 3), (1, 7)]),  # every 3 batches of each epoch
        (4, 2, 2, 2, [(1, 6), (1, 8)]),  # in every 2nd epoch only
        (4, 3, None, 3, [(0, 3), (1, 6), (2, 9), (2, 12)]),  # every 3 batches of the run, across epochs
        (4, 5, None, 3, [(1, 5), (2, 10)]),  # longer than an epoch
    ],
    ids=["default", "quarter", "no-end", "int", "every-2nd-epoch", "across-epochs", "longer-than-an-epoch"],
)
def test_validations_fall_where_lightning_puts_them(batches, interval, every_n_epochs, max_epochs, expected):
    _, recorder = fit(
        batches=batches, max_epochs=max_epochs, val_check_interval=interval, check_val_every_n_epoch=every_n_epochs
    )
    assert validated_after(recorder) == expected
    ends = {event[1] for event in recorder.events if event[0] == "Iterated"}
    mid = [(e[1], e[3]) for e in recorder.events if e[0] == "MidEpochValidated"]
    last_steps = {epoch: (epoch + 1) * batches for epoch in ends}
    assert mid == [(epoch, step) for epoch, step in expected if step != last_steps[epoch]]


def test_an_epoch_end_validation_is_reported_by_iterated_a_mid_epoch_one_by_mid_epoch_validated():
    _trainer, recorder = fit(batches=4, max_epochs=3, val_check_interval=3, check_val_every_n_epoch=None)
    iterated = [e for e in recorder.events if e[0] == "Iterated"]
    assert len(iterated) == 3
    results = {}

    class Keep(Callback):
        def on_iterated(self, event):
            results[event.epoch] = sorted(event.results)

    fit(batches=4, max_epochs=3, val_check_interval=3, check_val_every_n_epoch=None, callbacks=[Keep()])
    assert results == {0: ["train/loss"], 1: ["train/loss"], 2: ["train/loss", "validation/loss"]}


def test_callback_metrics_take_each_mid_epoch_validation_as_it_ends():
    seen = []

    class Read(Callback):
        def on_mid_epoch_validated(self, event):
            seen.append(dict(event.trainer.callback_metrics))

    trainer, _ = fit(batches=4, max_epochs=2, val_check_interval=0.5, callbacks=[Read()])
    assert sorted(seen[0]) == ["validation/loss"]  # nothing before the first epoch ended
    assert sorted(seen[1]) == ["train/loss", "validation/loss"]  # the first epoch's, with the latest validation
    assert sorted(trainer.callback_metrics) == ["train/loss", "validation/loss"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"val_check_interval": 0.0}, r"val_check_interval=0.0 is invalid; valid: None, a float in \(0.0, 1.0\]"),
        ({"val_check_interval": 1.5}, r"val_check_interval=1.5 is invalid"),
        ({"val_check_interval": 0}, r"val_check_interval=0 is invalid"),
        ({"val_check_interval": True}, r"val_check_interval=True is invalid"),
        ({"check_val_every_n_epoch": None}, r"val_check_interval=1.0 with check_val_every_n_epoch=None is invalid"),
        ({"check_val_every_n_epoch": 0}, r"check_val_every_n_epoch=0 is invalid; valid: None or an int >= 1"),
    ],
    ids=["zero", "above-one", "int-zero", "bool", "fraction-across-epochs", "every-0-epochs"],
)
def test_invalid_values_are_refused_at_construction(arguments, message):
    with pytest.raises(ValueError, match=message):
        Trainer(**arguments)


def test_an_interval_longer_than_the_epoch_or_a_fraction_of_an_unsized_loader_is_refused_before_training():
    recorder = Everything()
    with pytest.raises(ValueError, match=r"val_check_interval=5 is more than the 4 training batches of an epoch"):
        Trainer(callbacks=[recorder], val_check_interval=5, enable_progress_bar=False).fit(
            Classifier(), [("train", make_data()), ("validation", make_data())]
        )
    assert "BatchTrained" not in recorder.names()
    with pytest.raises(ValueError, match=r"val_check_interval=0.5 is a fraction of the epoch, but the training"):
        Trainer(val_check_interval=0.5, enable_progress_bar=False).fit(
            Classifier(), [("train", iter(make_data())), ("validation", make_data())]
        )


def test_an_int_interval_validates_an_unsized_loader_once_at_its_last_batch():
    recorder = Everything()
    Trainer(callbacks=[recorder], val_check_interval=2, num_sanity_val_steps=0, enable_progress_bar=False).fit(
        Classifier(), [("train", (batch for batch in make_data())), ("validation", make_data(samples=4))]
    )
    assert validated_after(recorder) == [(0, 2), (0, 4)]  # batch 4, not known to be the last: mid-epoch, once
    assert [e[3] for e in recorder.events if e[0] == "MidEpochValidated"] == [2, 4]


def test_validations_inside_accumulation_windows_warn_that_their_checkpoints_cannot_be_exact():
    with pytest.warns(UserWarning, match=r"val_check_interval=3 puts validations inside gradient accumulation"):
        fit(batches=4, val_check_interval=3, accumulate_grad_batches=2)


def test_epoch_checks_plan():
    assert ValCheck(1.0, 1).plan(None).every is None
    checks = ValCheck(0.5, 1).plan(10)
    assert checks.every == 5 and checks.mid_epoch(5, 5) and not checks.mid_epoch(10, 10) and checks.at_end(10, 10)
    across = ValCheck(3, None).plan(4)
    assert across.by_step and across.mid_epoch(2, 6) and not across.at_end(4, 8) and across.at_end(4, 12)
    assert across.inside_windows(2) and not ValCheck(4, 1).plan(8).inside_windows(2)


# -- callbacks that react to each validation -------------------------------------------------------------------------


class Scripted(Classifier):
    """Its validation loss is read from a script: one value per validation, in order."""

    def __init__(self, losses: list[float]) -> None:
        super().__init__()
        self.losses = list(losses)
        self.validations = 0

    def evaluate(self, inputs, targets):
        predictions, _ = super().evaluate(inputs, targets)
        loss = torch.tensor(self.losses[self.validations])
        self.validations += 1
        return predictions, loss


def test_early_stopping_checks_every_validation_and_stops_in_the_middle_of_an_epoch():
    stopping = EarlyStopping(monitor="validation/loss", patience=2)
    aggregate = Scripted([1.0, 0.5, 0.6, 0.7, 0.1, 0.1])
    trainer, recorder = fit(
        batches=4, max_epochs=5, val_check_interval=0.5, callbacks=[stopping], aggregate=aggregate
    )
    # validations: (0, 2) 1.0, (0, 4) 0.5, (1, 6) 0.6 waited 1, (1, 8) 0.7 waited 2 -> stops at the epoch's end
    assert aggregate.validations == 4 and stopping.stopped_epoch == 1
    assert recorder.events[-1] == ("FitEnded", "stopped")

    stopping = EarlyStopping(monitor="validation/loss", patience=0)
    aggregate = Scripted([1.0, 2.0, 0.1])
    trainer, recorder = fit(
        batches=4, max_epochs=5, val_check_interval=0.5, callbacks=[stopping], aggregate=aggregate
    )
    names = [e[0] for e in recorder.events if e[0] not in ("GradientsComputed", "BatchValidated")]
    # 1.0 at batch 2, 2.0 at batch 4 (the end of epoch 0): stops there; patience counts validations, not epochs
    assert aggregate.validations == 2 and stopping.stopped_epoch == 0 and trainer.global_step == 4
    assert names[-3:] == ["Validated", "Iterated", "FitEnded"]

    stopping = EarlyStopping(monitor="validation/loss", patience=0)
    aggregate = Scripted([1.0, 0.5, 0.6, 0.1])
    trainer, recorder = fit(
        batches=4, max_epochs=5, val_check_interval=0.5, callbacks=[stopping], aggregate=aggregate
    )
    names = [e[0] for e in recorder.events if e[0] not in ("GradientsComputed", "BatchValidated")]
    # 0.6 after batch 2 of epoch 1 does not improve: the fit stops right there, the epoch cut short
    assert aggregate.validations == 3 and trainer.global_step == 6 and stopping.stopped_epoch == 1
    assert names[-7:] == [
        "BatchTrained", "PhaseStarted", "Validated", "MidEpochValidated", "Trained", "Iterated", "FitEnded"
    ]


def test_restore_best_weights_keeps_a_mid_epoch_validations_trained_weights_whatever_the_callback_order():
    kept: dict[int, dict[str, torch.Tensor]] = {}

    class Keep(Callback):
        def on_mid_epoch_validated(self, event):
            kept[event.step] = {k: v.clone() for k, v in event.aggregate.state_dict().items()}

    for order in ("ema-first", "ema-last"):
        kept.clear()
        torch.manual_seed(0)
        stopping = EarlyStopping(monitor="validation/loss", patience=10, restore_best_weights=True)
        ema = EMA(decay=0.5)
        callbacks = [ema, stopping, Keep()] if order == "ema-first" else [stopping, Keep(), ema]
        aggregate = Scripted([1.0, 2.0, 0.5, 3.0, 4.0, 5.0])
        fit(batches=4, max_epochs=3, val_check_interval=0.5, callbacks=callbacks, aggregate=aggregate)
        # the best, 0.5, is the validation after batch 2 of epoch 1 (step 6): its trained (not averaged) weights,
        # restored, then EMA gives the aggregate its average at the fit's end: compare the kept copy
        assert stopping.best_epoch == 1 and stopping.best_weights is not None
        assert all(torch.equal(stopping.best_weights[key], kept[6][key]) for key in kept[6]), order


def test_model_checkpoint_saves_after_every_validation_ranked_by_its_results(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="validation/loss", save_top_k=2, save_last=True)
    aggregate = Scripted([3.0, 1.0, 2.0, 0.5])
    fit(batches=4, max_epochs=2, val_check_interval=0.5, callbacks=[checkpoint], aggregate=aggregate)
    assert {Path(path).name: score for path, score in checkpoint.best_k_models.items()} == {
        "epoch=0-step=4.ckpt": 1.0,  # the end of epoch 0
        "epoch=1-step=8.ckpt": 0.5,  # the end of epoch 1
    }
    assert checkpoint.best_model_score == 0.5

    checkpoint = ModelCheckpoint(tmp_path / "mid", monitor="validation/loss", save_top_k=1)
    aggregate = Scripted([3.0, 1.0, 0.2, 2.0])
    fit(batches=4, max_epochs=2, val_check_interval=0.5, callbacks=[checkpoint], aggregate=aggregate)
    (best,) = checkpoint.best_k_models
    assert Path(best).name == "epoch=1-step=6.ckpt" and checkpoint.best_model_score == pytest.approx(0.2)


def test_a_checkpoint_written_at_a_mid_epoch_validation_resumes_after_it(tmp_path):
    class SaveAt(Callback):
        def on_mid_epoch_validated(self, event):
            if event.step == 14:
                save_atomic(checkpoint_state(event.trainer, event.aggregate), tmp_path / "mid.ckpt")
                raise Crash

    torch.manual_seed(0)
    reference, _ = resumable_fit(tmp_path, [])
    torch.manual_seed(0)
    with pytest.raises(Crash):
        resumable_fit(tmp_path, [SaveAt()])
    torch.manual_seed(0)
    resumed, recorder = resumable_fit(tmp_path, [], ckpt_path=tmp_path / "mid.ckpt")
    assert same_weights(resumed, reference)
    first = [e for e in recorder.events if e[0] in ("BatchTrained", "PhaseStarted", "MidEpochValidated")][:3]
    assert first == [("PhaseStarted", 1, "train"), ("BatchTrained", 1, 6, 15), ("BatchTrained", 1, 7, 16)]


def resumable_fit(tmp_path, callbacks, ckpt_path=None):
    """Dropout, a shuffled loader and EarlyStopping's state: what a resume must get exactly right."""
    from tests.checkpoint.train_script import Net, loaders

    aggregate = Net()
    recorder = Everything()
    trainer = Trainer(
        callbacks=[recorder, EarlyStopping(monitor="validation/loss", patience=50), *callbacks], max_epochs=3,
        seed=11, val_check_interval=3, enable_progress_bar=False,
    )
    trainer.fit(aggregate, loaders(), ckpt_path=ckpt_path)
    return aggregate, recorder


@pytest.mark.parametrize("step", [3, 11], ids=["epoch-0", "epoch-1"])
def test_a_checkpoint_written_between_a_batch_and_its_validation_runs_that_validation_first(tmp_path, step):
    torch.manual_seed(0)
    reference, reference_log = resumable_fit(tmp_path, [])
    snapshot = Snapshot(tmp_path / "between.ckpt", step=step, crash=2)  # at BatchTrained: before the validation
    torch.manual_seed(0)
    with pytest.raises(Crash):
        resumable_fit(tmp_path, [snapshot])
    torch.manual_seed(0)
    resumed, recorder = resumable_fit(tmp_path, [], ckpt_path=tmp_path / "between.ckpt")
    assert same_weights(resumed, reference)
    epoch = step // 8
    assert recorder.events[:6] == [
        ("FitStarted",),
        ("EpochStarted", epoch),
        ("PhaseStarted", epoch, "train"),
        ("PhaseStarted", epoch, "validation"),
        ("BatchValidated", epoch, 0, step),
        ("BatchValidated", epoch, 1, step),
    ]
    reference_validations = [e for e in reference_log.events if e[0] == "MidEpochValidated"]
    validations = [e for e in recorder.events if e[0] == "MidEpochValidated"]
    assert validations == [e for e in reference_validations if e[3] >= step]


def test_the_progress_bar_keeps_the_epochs_bar_through_a_mid_epoch_validation():
    stream = io.StringIO()
    bar = ProgressBar(file=stream, mininterval=0)
    fit(batches=4, val_check_interval=0.5, callbacks=[bar], enable_progress_bar=None)
    text = stream.getvalue()
    assert "Epoch 0: 100%" in text and "4/4" in text


def test_the_timer_counts_a_mid_epoch_validation_as_validation(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(timer_module.time, "monotonic", lambda: now["t"])

    class Timed(Classifier):
        def fit(self, inputs, targets):
            now["t"] += 1.0
            return super().fit(inputs, targets)

        def evaluate(self, inputs, targets):
            now["t"] += 10.0
            return super().evaluate(inputs, targets)

    timer = Timer()
    fit(batches=4, val_check_interval=0.5, callbacks=[timer], aggregate=Timed())
    assert timer.time_elapsed("train") == 4.0 and timer.time_elapsed("validation") == 20.0


def test_a_checkpoint_written_by_the_validation_a_resumed_fit_ran_first_resumes_exactly(tmp_path):
    class SaveAtValidation(Callback):
        def on_mid_epoch_validated(self, event):
            save_atomic(checkpoint_state(event.trainer, event.aggregate), tmp_path / "second.ckpt")
            raise Crash

    torch.manual_seed(0)
    reference, _ = resumable_fit(tmp_path, [])
    torch.manual_seed(0)
    with pytest.raises(Crash):  # a checkpoint after batch 3, before its validation
        resumable_fit(tmp_path, [Snapshot(tmp_path / "first.ckpt", step=3, crash=1)])
    torch.manual_seed(0)
    with pytest.raises(Crash):  # resumed: the validation of batch 3 runs first, and a checkpoint is written there
        resumable_fit(tmp_path, [SaveAtValidation()], ckpt_path=tmp_path / "first.ckpt")
    torch.manual_seed(0)
    resumed, recorder = resumable_fit(tmp_path, [], ckpt_path=tmp_path / "second.ckpt")
    assert same_weights(resumed, reference)
    assert next(e for e in recorder.events if e[0] == "BatchTrained") == ("BatchTrained", 0, 3, 4)
