"""Logger: which calls a logger gets for the Trainer's events, and that a failing logger never stops a fit."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EarlyStopping, Logger, LoggerWarning, TensorBoardLogger
from torchsystem_trainer.callbacks.csv_logger import CSVLogger


class MemoryLogger(Logger):
    """What an MLflow or W&B logger looks like: one short class (here it keeps the calls in a list)."""

    def __init__(self, fail_at: str | None = None, **arguments) -> None:
        super().__init__(**arguments)
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def _call(self, *call) -> None:
        self.calls.append(call)
        if call[0] == self.fail_at:
            raise OSError(f"disk full in {call[0]}")

    def start(self, trainer, aggregate, run) -> None:
        self._call("start", run)

    def log_hyperparams(self, params) -> None:
        self._call("log_hyperparams", dict(params))

    def log_metrics(self, metrics, step) -> None:
        self._call("log_metrics", dict(metrics), step)

    def save(self) -> None:
        self._call("save")

    def finalize(self, status) -> None:
        self._call("finalize", status)

    def names(self) -> list:
        return [call[0] if call[0] != "log_metrics" else (sorted(call[1]), call[2]) for call in self.calls]


class Seen(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.losses: dict[int, float] = {}
        self.epochs: list[dict[str, float]] = []

    def on_batch_trained(self, event) -> None:
        self.losses[event.step] = event.loss.item()

    def on_iterated(self, event) -> None:
        self.epochs.append(dict(event.results))


def fit(logger, *, epochs=2, extra=(), validation=True, aggregate=None, **arguments):
    torch.manual_seed(0)
    data = make_data()
    seen = Seen()
    trainer = Trainer(
        callbacks=[logger, seen, *extra], max_epochs=epochs, enable_progress_bar=False, enable_model_summary=False,
        verbose=False, **arguments,
    )
    aggregate = aggregate or Classifier()
    trainer.fit(aggregate, [("train", data), ("validation", data[:2])] if validation else [("train", data)])
    return trainer, aggregate, seen


def test_a_fit_and_two_tests_give_these_calls_in_this_order(tmp_path):
    logger = MemoryLogger(log_every_n_steps=3)
    stopping = EarlyStopping(patience=5)
    trainer, aggregate, seen = fit(logger, extra=[stopping], default_root_dir=tmp_path)
    trainer.test(aggregate, make_data()[:2])
    trainer.test(aggregate, make_data()[2:])
    epoch_keys = ["epoch", "train/loss", "validation/loss"]
    assert logger.names() == [
        "start",
        "log_hyperparams",
        (["train/loss_step"], 3),
        (epoch_keys, 4),
        "save",
        (["train/loss_step"], 6),
        (epoch_keys, 8),
        "save",
        (["best/validation/loss"], 8),
        "save",
        "finalize",
        "start",
        (["test/loss"], 0),  # stand-alone runs: counted on their own axis, never two points at one step
        "save",
        "finalize",
        "start",
        (["test/loss"], 1),
        "save",
        "finalize",
    ]
    calls = logger.calls
    assert calls[0] == ("start", "fit") and calls[11] == ("start", "test")
    assert calls[2][1] == {"train/loss_step": seen.losses[3]} and calls[5][1] == {"train/loss_step": seen.losses[6]}
    assert calls[3][1] == {**seen.epochs[0], "epoch": 0} and calls[6][1] == {**seen.epochs[1], "epoch": 1}
    assert calls[8][1] == {"best/validation/loss": stopping.best_score}
    assert calls[10] == ("finalize", "completed")
    assert calls[1][1]["aggregate"] == "Classifier" and calls[1][1]["trainer/max_epochs"] == 2


def test_a_logger_without_its_two_methods_cannot_be_built():
    class Incomplete(Logger):
        def log_metrics(self, metrics, step) -> None: ...

    with pytest.raises(TypeError, match="log_hyperparams"):
        Incomplete()


@pytest.mark.parametrize("steps", [0, -1, True, 2.0], ids=["zero", "negative", "bool", "float"])
def test_invalid_log_every_n_steps(steps):
    with pytest.raises(ValueError, match=r"MemoryLogger: log_every_n_steps=.* is invalid; valid: an int >= 1"):
        MemoryLogger(log_every_n_steps=steps)


@pytest.mark.parametrize("failing", ["start", "log_hyperparams", "log_metrics", "save", "finalize"])
def test_a_failing_logger_warns_once_goes_quiet_and_the_fit_goes_on(failing):
    torch.manual_seed(0)
    reference = Classifier()
    Trainer(max_epochs=2, enable_progress_bar=False, enable_model_summary=False, verbose=False).fit(
        reference, make_data()
    )
    logger, healthy = MemoryLogger(fail_at=failing, log_every_n_steps=1), MemoryLogger(log_every_n_steps=1)
    with pytest.warns(LoggerWarning) as warned:
        trainer, aggregate, seen = fit(logger, extra=[healthy], validation=False)
    assert len(warned) == 1
    assert str(warned[0].message).startswith(f"MemoryLogger.{failing} raised OSError('disk full in {failing}')")
    assert isinstance(logger.failed, OSError)
    names = [call[0] for call in logger.calls]
    assert names.index(failing) == len(names) - 1 - (failing != "finalize")  # nothing after it but finalize
    assert names[-1] == "finalize"
    assert seen.names()[-1] == "FitEnded" and trainer.current_epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(aggregate.parameters(), reference.parameters()))
    assert len(healthy.calls) == 2 + 8 + 2 * 2 + 2  # the logger next to it got everything


def test_the_next_run_starts_afresh_after_a_failure():
    logger = MemoryLogger(fail_at="log_hyperparams")
    with pytest.warns(LoggerWarning):
        trainer, aggregate, _ = fit(logger, epochs=1, validation=False)
    logger.fail_at = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.test(aggregate, make_data()[:1])
    assert logger.failed is None
    assert [call[0] for call in logger.calls[-4:]] == ["start", "log_metrics", "save", "finalize"]


def test_file_loggers_that_cannot_create_their_folder_do_not_stop_the_fit(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    loggers = [TensorBoardLogger(save_dir=blocker), CSVLogger(save_dir=blocker)]
    with pytest.warns(LoggerWarning) as warned:
        trainer, _, _ = fit(loggers[0], extra=[loggers[1]])
    assert sorted(str(w.message).split(" raised")[0] for w in warned) == ["CSVLogger.start", "TensorBoardLogger.start"]
    assert trainer.current_epoch == 2 and all(logger.failed is not None for logger in loggers)


def test_results_of_an_epoch_that_did_not_end_are_written_when_the_fit_ends():
    class FailsInValidation(Classifier):
        def evaluate(self, inputs, targets):
            raise RuntimeError("boom")

    logger = MemoryLogger(log_every_n_steps=100)
    with pytest.raises(RuntimeError, match="boom"):  # no sanity check, which would fail before any training
        fit(logger, aggregate=FailsInValidation(), num_sanity_val_steps=0)
    assert logger.names()[-3:] == [(["epoch", "train/loss"], 4), "save", "finalize"]
    assert logger.calls[-1] == ("finalize", "exception")


def test_fast_dev_run_writes_nothing():
    logger = MemoryLogger(log_every_n_steps=1)
    trainer, aggregate, _ = fit(logger, fast_dev_run=True)
    trainer.test(aggregate, make_data()[:1])
    assert logger.calls == []


def test_step_values_are_read_from_the_device_only_on_logging_steps(monkeypatch):
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def reads_of(callbacks) -> int:
        reads["n"] = 0
        torch.manual_seed(0)
        Trainer(callbacks=callbacks, max_epochs=1, enable_progress_bar=False).fit(Classifier(), make_data(samples=64))
        return reads["n"]

    without = reads_of([])
    assert reads_of([MemoryLogger(log_every_n_steps=4, log_hyperparameters=False)]) - without == 4  # 16 steps


def test_each_mid_epoch_validation_is_written_at_its_own_step():
    logger = MemoryLogger(log_every_n_steps=100, log_hyperparameters=False)
    fit(logger, epochs=2, val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    written = [(sorted(call[1]), call[1]["epoch"], call[2]) for call in logger.calls if call[0] == "log_metrics"]
    assert written == [
        (["epoch", "validation/loss"], 0, 3),  # after step 3, inside epoch 0
        (["epoch", "train/loss"], 0, 4),  # epoch 0's end: no validation there
        (["epoch", "validation/loss"], 1, 6),
        (["epoch", "train/loss"], 1, 8),
    ]
