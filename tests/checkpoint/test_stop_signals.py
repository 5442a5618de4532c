"""SIGTERM and SIGINT during a fit: the current step finishes, a checkpoint is written, the end events fire, and the
fit resumes exactly; a second SIGINT raises KeyboardInterrupt at once; handlers are put back after the fit."""

from __future__ import annotations

import signal
import threading
from typing import Any

import pytest

from tests.checkpoint import train_script
from tests.checkpoint.helpers import run, same_weights
from tests.conftest import Recorder
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*was in no epoch's results:UserWarning")


def loaders():
    return train_script.loaders(0, augment=True)


class Raise(Callback):
    """Raises ``number`` (``times`` times) in this process at a chosen event, once our handler is in place."""

    def __init__(self, number: int, step: int | None = None, validation_batch: int | None = None, times: int = 1):
        self.number, self.step, self.validation_batch, self.times = number, step, validation_batch, times
        self.done = False

    def _raise(self) -> None:
        handler = signal.getsignal(self.number)
        assert getattr(handler, "__self__", None).__class__.__name__ == "StopSignals", "fit did not install its handler"
        self.done = True
        for _ in range(self.times):
            signal.raise_signal(self.number)

    def on_batch_trained(self, event: Any) -> None:
        if not self.done and event.step == self.step:
            self._raise()

    def on_batch_validated(self, event: Any) -> None:
        if not self.done and self.validation_batch is not None and event.batch == self.validation_batch:
            self._raise()


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_after_the_step_writes_last_and_the_fit_resumes_exactly(number, tmp_path):
    reference, _, _ = run(loaders)
    recorder = Recorder()
    checkpoint = ModelCheckpoint(tmp_path, every_n_epochs=1)
    _, trainer, log = run(loaders, extra=(recorder, Raise(number, step=13), checkpoint))
    assert trainer.interrupted and trainer.received_signal == number
    assert log.batches[-1] == (1, 4, 13)  # the step that was running finished, no other started
    assert recorder.events[-2:] == [("BatchTrained", 1, 4, 13), ("FitEnded", "interrupted")]
    assert "ExceptionRaised" not in recorder.names() and recorder.names().count("Trained") == 1
    last = read_checkpoint(tmp_path / "last.ckpt")
    assert last["loop"]["progress"] == {"epoch": 1, "batch": 5, "step": 13, "global_step": 13}
    assert last["loop"]["should_stop"] is False  # a resumed run continues
    resumed, _, after = run(loaders, extra=(ModelCheckpoint(tmp_path, every_n_epochs=1),), ckpt_path="last")
    assert after.batches[0] == (1, 5, 14)
    assert same_weights(resumed, reference)


def test_a_second_sigint_raises_keyboard_interrupt_at_once_and_writes_no_checkpoint(tmp_path):
    recorder = Recorder()
    checkpoint = ModelCheckpoint(tmp_path, every_n_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run(loaders, extra=(recorder, Raise(signal.SIGINT, step=3, times=2), checkpoint))
    assert recorder.events[-3:] == [
        ("BatchTrained", 0, 2, 3),
        ("ExceptionRaised", "KeyboardInterrupt"),
        ("FitEnded", "interrupted"),
    ]
    assert not list(tmp_path.iterdir())  # the state may be mid-step: no graceful last.ckpt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_while_accumulating_finishes_the_window(tmp_path):
    _, trainer, log = run(loaders, extra=(Raise(signal.SIGINT, step=2),), accumulate_grad_batches=4)
    assert trainer.interrupted and log.batches[-1] == (0, 3, 4) and trainer.global_step == 1


def test_a_signal_during_validation_ends_that_epoch_first(tmp_path):
    recorder = Recorder()
    checkpoint = ModelCheckpoint(tmp_path, every_n_epochs=0, save_last=True)
    _, trainer, _ = run(loaders, extra=(recorder, Raise(signal.SIGTERM, validation_batch=0), checkpoint))
    assert trainer.interrupted and trainer.current_epoch == 1
    assert recorder.names()[-3:] == ["Validated", "Iterated", "FitEnded"]
    assert read_checkpoint(tmp_path / "last.ckpt")["loop"]["progress"]["batch"] == 0


def test_handlers_are_put_back_and_a_previous_python_handler_is_called(tmp_path):
    calls = []

    def previous(number, frame):
        calls.append(number)

    before_int = signal.getsignal(signal.SIGINT)
    old = signal.signal(signal.SIGTERM, previous)
    try:
        _, trainer, _ = run(loaders, extra=(Raise(signal.SIGTERM, step=2),))
        assert trainer.interrupted and calls == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is previous
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_ignored_signal_stays_ignored(tmp_path):
    seen = []

    class Look(Callback):
        def on_batch_trained(self, event):
            seen.append(signal.getsignal(signal.SIGINT))

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run(loaders, extra=(Look(),), max_epochs=1)
    finally:
        signal.signal(signal.SIGINT, old)
    assert set(seen) == {signal.SIG_IGN}


def test_a_fit_outside_the_main_thread_installs_no_handler():
    seen = []

    class Look(Callback):
        def on_batch_trained(self, event):
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=run, args=(loaders,), kwargs={"extra": (Look(),), "max_epochs": 1})
    thread.start()
    thread.join(60)
    assert seen and set(seen) == {signal.SIG_DFL}
