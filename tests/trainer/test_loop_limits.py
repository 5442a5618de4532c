"""min_epochs and min_steps (a stop requested earlier is deferred, StopDeferred says so once), max_epochs=-1,
limit_test_batches and limit_predict_batches."""

from __future__ import annotations

import io
import signal

import pytest

from tests.checkpoint.helpers import Crash, Snapshot
from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ConsoleLines, EarlyStopping
from torchsystem_trainer.trainer.arguments import LIGHTNING_ONLY


class Deferrals(Recorder):
    def on_stop_deferred(self, event):
        self.events.append(("StopDeferred", event.epoch, event.step, event.min_epochs, event.min_steps))


class StopAt(Callback):
    """Requests a stop after the training batch that brings the run to ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_trained(self, event):
        if event.step == self.step:
            event.trainer.should_stop = True


def fit(callbacks=(), loaders=None, **arguments):
    recorder = Deferrals()
    trainer = Trainer(callbacks=[recorder, *callbacks], enable_progress_bar=False, **arguments)
    aggregate = Classifier()
    trainer.fit(aggregate, loaders or make_data())
    return trainer, recorder, aggregate


def test_a_stop_before_min_epochs_waits_for_the_minimum_and_says_so_once():
    trainer, recorder, aggregate = fit([StopAt(2)], max_epochs=10, min_epochs=3)
    assert aggregate.epoch == 3 and trainer.global_step == 12
    assert recorder.events[-1] == ("FitEnded", "stopped")
    assert [e for e in recorder.events if e[0] == "StopDeferred"] == [("StopDeferred", 0, 2, 3, None)]
    deferred = recorder.events.index(("StopDeferred", 0, 2, 3, None))
    assert recorder.events[deferred - 1] == ("BatchTrained", 0, 1, 2)  # right after the batch that asked


def test_a_stop_before_min_steps_ends_the_fit_at_the_minimum_even_mid_epoch():
    trainer, recorder, aggregate = fit([StopAt(1)], max_epochs=10, min_steps=6)
    assert trainer.global_step == 6 and aggregate.epoch == 2  # epoch 1 cut short after its 2nd batch, and ended
    assert recorder.events[-1] == ("FitEnded", "stopped")
    assert [e for e in recorder.events if e[0] == "StopDeferred"] == [("StopDeferred", 0, 1, None, 6)]


def test_both_minimums_must_be_reached():
    trainer, _, aggregate = fit([StopAt(1)], max_epochs=10, min_epochs=1, min_steps=6)
    assert trainer.global_step == 6 and aggregate.epoch == 2
    trainer, _, aggregate = fit([StopAt(1)], max_epochs=10, min_epochs=3, min_steps=6)
    assert trainer.global_step == 12 and aggregate.epoch == 3


def test_a_withdrawn_request_lets_the_fit_run_on_to_its_limit():
    class Withdraw(Callback):
        def on_iterated(self, event):
            event.trainer.should_stop = False

    _trainer, recorder, aggregate = fit([StopAt(1), Withdraw()], max_epochs=4, min_epochs=2)
    assert aggregate.epoch == 4 and recorder.events[-1] == ("FitEnded", "completed")


def test_early_stopping_and_the_aggregates_stop_iteration_are_deferred_too():
    stopping = EarlyStopping(monitor="train/loss", patience=0, min_delta=100.0)  # never improves after the first
    _, recorder, aggregate = fit([stopping], max_epochs=10, min_epochs=4)
    assert stopping.stopped_epoch == 3 and aggregate.epoch == 4  # it asks at every check: the last one is kept
    assert [e[:2] for e in recorder.events if e[0] == "StopDeferred"] == [("StopDeferred", 1)]

    class StopsAtOnce(Classifier):
        def onepoch(self):
            raise StopIteration

    recorder = Deferrals()
    aggregate = StopsAtOnce()
    Trainer(callbacks=[recorder], max_epochs=10, min_epochs=3, enable_progress_bar=False).fit(aggregate, make_data())
    assert aggregate.epoch == 3 and recorder.events[-1] == ("FitEnded", "stopped")


def test_a_signal_is_never_deferred():
    class Signal(Callback):
        def on_batch_trained(self, event):
            if event.step == 2:
                signal.raise_signal(signal.SIGTERM)

    trainer, recorder, _ = fit([Signal()], max_epochs=10, min_epochs=5)
    assert trainer.interrupted and trainer.global_step == 2 and recorder.events[-1] == ("FitEnded", "interrupted")
    assert "StopDeferred" not in recorder.names()


def test_a_fit_resumed_from_a_checkpoint_written_while_a_stop_was_deferred_defers_it_again(tmp_path):
    path = tmp_path / "deferred.ckpt"
    with pytest.raises(Crash):
        fit([StopAt(2), Snapshot(path, epoch=1, crash=2)], max_epochs=10, min_epochs=4)
    trainer, recorder, aggregate = Trainer, Deferrals(), Classifier()
    trainer = Trainer(callbacks=[recorder], max_epochs=10, min_epochs=4, enable_progress_bar=False)
    trainer.fit(aggregate, make_data(), ckpt_path=path)
    assert aggregate.epoch == 4 and recorder.events[-1] == ("FitEnded", "stopped")
    assert recorder.events[1] == ("StopDeferred", 1, 8, 4, None)  # at once: the checkpoint's stop, still early


def test_max_epochs_minus_one_has_no_epoch_limit():
    trainer, recorder, aggregate = fit(max_epochs=-1, max_steps=10)
    assert trainer.max_epochs == -1 and trainer.global_step == 10 and aggregate.epoch == 3
    assert recorder.events[-1] == ("FitEnded", "max_steps")
    trainer, recorder, aggregate = fit([StopAt(21)], max_epochs=-1)
    assert aggregate.epoch == 6 and recorder.events[-1] == ("FitEnded", "stopped")


def test_a_minimum_without_a_maximum_trains_until_a_stop_after_it():
    _trainer, recorder, aggregate = fit([StopAt(1)], min_epochs=3)  # no limit: not Keras' one more epoch
    assert aggregate.epoch == 3 and recorder.events[-1] == ("FitEnded", "stopped")


@pytest.mark.parametrize(
    ("limit", "batches"), [(None, 4), (2, 2), (0.5, 2), (0.3, 1), (0, 0)], ids=["none", "int", "half", "floor", "zero"]
)
def test_limit_test_and_predict_batches(limit, batches, classifier, data):
    recorder = Recorder()
    trainer = Trainer(
        callbacks=[recorder], limit_test_batches=limit, limit_predict_batches=limit, enable_progress_bar=False
    )
    if batches:
        trainer.test(classifier, [("test", data)])
    predictions = trainer.predict(classifier, [inputs for inputs, _ in data])
    assert len(predictions) == batches
    assert recorder.names().count("BatchTested") == (batches if batches else 0)
    assert ("PhaseStarted", 0, "predict") in recorder.events


def test_limits_are_checked_and_fast_dev_run_sets_them():
    for name in ("limit_test_batches", "limit_predict_batches"):
        with pytest.raises(ValueError, match=rf"{name}=1.5 is invalid"):
            Trainer(**{name: 1.5})
    for name in ("min_epochs", "min_steps"):
        with pytest.raises(ValueError, match=rf"{name}=-1 is invalid; valid: None or an int >= 0"):
            Trainer(**{name: -1})
    fast = Trainer(fast_dev_run=2, val_check_interval=0.5, num_sanity_val_steps=5)
    assert (fast.limit_test_batches, fast.limit_predict_batches, fast.num_sanity_val_steps) == (2, 2, 0)
    assert fast.val_check_interval == 1.0
    with pytest.raises(TypeError, match=r"limit_predict_batches=0.5 is a fraction, but the loader"):
        Trainer(limit_predict_batches=0.5, enable_progress_bar=False).predict(
            Classifier(), (inputs for inputs, _ in make_data())
        )


def test_the_new_arguments_are_no_longer_refused_as_lightning_only():
    names = ("val_check_interval", "num_sanity_val_steps", "limit_test_batches", "limit_predict_batches",
             "min_epochs", "min_steps")
    assert not set(names) & set(LIGHTNING_ONLY)
    trainer = Trainer(val_check_interval=3, num_sanity_val_steps=-1, limit_test_batches=1, limit_predict_batches=1,
                      min_epochs=1, min_steps=1)
    assert (trainer.val_check_interval, trainer.num_sanity_val_steps, trainer.min_epochs) == (3, -1, 1)


def test_the_console_says_when_a_stop_is_deferred_and_prints_mid_epoch_validations():
    console = ConsoleLines(file=io.StringIO(), epochs=True)
    data = make_data()
    fit([StopAt(2), console], loaders=[("train", data), ("validation", data[:1])], max_epochs=10, min_epochs=2,
        val_check_interval=2, num_sanity_val_steps=0)
    deferred = [line for line in console.lines if line.startswith("Stop requested")]
    expected = "Stop requested at epoch 0/10 + 2 batches, step 2, deferred until min_epochs=2: training goes on"
    assert deferred == [expected]
    mid = [line for line in console.lines if "+ 2 batches" in line and "validation loss=" in line]
    assert [line.split(":")[0] for line in mid] == ["epoch 0/10 + 2 batches, step 2", "epoch 1/10 + 2 batches, step 6"]
    assert console.lines[-1].startswith("Stopped at epoch 2/10, step 8")
    unlimited = ConsoleLines(file=io.StringIO(), epochs=True)
    fit([unlimited], max_epochs=-1, max_steps=4)
    assert unlimited.lines[0].startswith("epoch 1, step 4: train loss=")  # no "/-1"
