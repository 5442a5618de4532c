"""ProgressBar: what it draws, read back from the file it draws to."""

from __future__ import annotations

import io
import re

import pytest
import torch
from tqdm import tqdm

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ConsoleLines, ModelSummary
from torchsystem_trainer.callbacks.progress_bar import ProgressBar


class ResultsRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.results: list[dict[str, float]] = []
        self.losses: list[torch.Tensor] = []

    def on_trained(self, event) -> None:
        self.results.append(dict(event.results))

    on_validated = on_tested = on_trained

    def on_batch_trained(self, event) -> None:
        self.losses.append(event.loss)


class Unsized:
    """A loader without a length."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def draws(output: str) -> list[list[str]]:
    """Each bar's successive drawings: lines are bars, ``\\r`` separates redraws."""
    return [[part for part in line.split("\r") if part] for line in output.split("\n") if line]


def counts(drawings: list[str]) -> list[int]:
    return [int(re.search(r"(\d+)(?:/\d+|batch) \[", d).group(1)) for d in drawings]


def run(bar: ProgressBar, epochs: int = 1, train=None, validation=None, **arguments) -> ResultsRecorder:
    torch.manual_seed(0)
    data = make_data()
    recorder = ResultsRecorder()
    trainer = Trainer(callbacks=[bar, recorder], max_epochs=epochs, enable_progress_bar=True, **arguments)
    loaders = [("train", data if train is None else train), ("validation", validation or data[:2])]
    trainer.fit(Classifier(), loaders)
    return recorder


def test_one_bar_per_phase_per_epoch_with_totals_and_results():
    file = io.StringIO()
    recorder = run(ProgressBar(mininterval=0, file=file), epochs=2)
    bars = draws(file.getvalue())
    titles = [(bar[-1].split(":")[0], counts(bar)[-1]) for bar in bars]
    assert titles == [("Epoch 0", 4), ("Validation", 2), ("Epoch 1", 4), ("Validation", 2)]
    for bar, results in zip(bars, recorder.results):
        postfix = ", ".join(f"{name}={tqdm.format_num(value)}" for name, value in results.items())
        assert re.fullmatch(r"[\w ]+: 100%\|.*\| (\d)/\1 \[.*, " + re.escape(postfix) + r"\] *", bar[-1]), bar[-1]


def test_the_training_bar_shows_the_mean_loss_since_its_last_drawing():
    file = io.StringIO()
    recorder = run(ProgressBar(refresh_rate=2, mininterval=0, file=file), train=make_data(samples=24))  # 6 batches
    train, validation = draws(file.getvalue())
    assert counts(train) == [0, 2, 4, 6, 6]  # opened, three drawings, closed with the results
    for drawing, first in zip(train[1:4], (0, 2, 4)):
        mean = float(torch.stack(recorder.losses[first : first + 2]).mean())
        assert drawing.rstrip().endswith(f"loss={tqdm.format_num(mean)}]"), drawing
    assert "loss=" not in "".join(validation[:-1])  # evaluation bars count batches only


def test_the_bar_reads_the_loss_once_per_drawing_never_per_step(monkeypatch):
    reads = {"n": 0}
    for name in ("item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            reads["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def reads_of(bar) -> int:
        reads["n"] = 0
        torch.manual_seed(0)
        Trainer(callbacks=[bar], max_epochs=1, enable_model_summary=False, verbose=False).fit(
            Classifier(), make_data(samples=64)  # 16 batches
        )
        return reads["n"]

    without = reads_of(ProgressBar(refresh_rate=0))
    assert reads_of(ProgressBar(refresh_rate=4, mininterval=0, file=io.StringIO())) - without == 4
    assert reads_of(ProgressBar(refresh_rate=1, mininterval=3600, file=io.StringIO())) - without == 0


def test_bars_come_from_tqdm_auto():
    from tqdm.auto import tqdm as auto_tqdm

    bar = ProgressBar(file=io.StringIO())
    bar.open_bar("Epoch 0", 3)
    assert isinstance(bar.bar, auto_tqdm)
    bar.close_bar(0, None)
    assert bar.bar is None


def test_the_bar_is_redrawn_every_refresh_rate_batches():
    file = io.StringIO()
    run(ProgressBar(refresh_rate=3, mininterval=0, file=file), train=make_data(samples=28))  # 7 training batches
    train, validation = draws(file.getvalue())
    assert counts(train) == [0, 3, 6, 7]  # opened, two refresh points, the phase's end
    assert counts(validation) == [0, 2]


def test_a_loader_without_length_has_no_total():
    file = io.StringIO()
    run(ProgressBar(mininterval=0, file=file), train=Unsized(make_data()))
    train, _ = draws(file.getvalue())
    assert re.match(r"Epoch 0: 4batch \[", train[-1]), train[-1]


def test_refresh_rate_zero_draws_nothing_and_leave_false_erases():
    file = io.StringIO()
    run(ProgressBar(refresh_rate=0, mininterval=0, file=file))
    assert file.getvalue() == ""
    file = io.StringIO()
    run(ProgressBar(leave=False, mininterval=0, file=file))
    assert "\n" not in file.getvalue() and file.getvalue().endswith("\r")


def test_test_and_predict_bars():
    file = io.StringIO()
    bar = ProgressBar(refresh_rate=2, mininterval=0, file=file)
    trainer = Trainer(callbacks=[bar], enable_progress_bar=True)
    aggregate, data = Classifier(), make_data()
    trainer.test(aggregate, data[:1])
    trainer.predict(aggregate, data[:3])
    test, predict = draws(file.getvalue())
    assert test[-1].startswith("Test: 100%") and counts(test) == [0, 1]
    assert predict[-1].startswith("Predict: 100%") and counts(predict) == [0, 2, 3]
    assert bar.bar is None


def test_a_bar_left_open_by_an_exception_is_closed_at_fit_end():
    class Boom(Recorder):
        def on_batch_trained(self, event) -> None:
            if event.step == 2:
                raise RuntimeError("boom")

    file = io.StringIO()
    bar = ProgressBar(mininterval=0, file=file)
    trainer = Trainer(callbacks=[bar, Boom()], max_epochs=1, enable_progress_bar=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Classifier(), make_data())
    assert bar.bar is None
    (train,) = draws(file.getvalue())
    assert counts(train) == [0, 1, 2, 2]


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_a_bar_left_open_by_a_raising_stand_alone_run_is_closed_at_stage_end(stage):
    class RaisesOnSecondBatch(Classifier):
        calls = 0

        def forward(self, inputs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return super().forward(inputs)

    file = io.StringIO()
    bar = ProgressBar(mininterval=0, file=file)
    trainer = Trainer(callbacks=[bar], enable_progress_bar=True)
    with pytest.raises(RuntimeError, match="boom"):
        getattr(trainer, stage)(RaisesOnSecondBatch(), make_data())
    assert bar.bar is None
    (drawn,) = draws(file.getvalue())
    assert file.getvalue().endswith("\n")  # tqdm's close (leave=True) ends the bar's line
    assert counts(drawn) == [0, 1, 1]  # opened, one batch, drawn once more as it closed


def test_the_trainer_adds_one_when_asked(capsys):
    trainer = Trainer(max_epochs=1, enable_progress_bar=True)
    assert [type(c) for c in trainer.callbacks] == [ProgressBar, ModelSummary, ConsoleLines]
    trainer.fit(Classifier(), make_data())
    assert "Epoch 0: 100%" in capsys.readouterr().err


@pytest.mark.parametrize("rate", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_invalid_refresh_rate(rate):
    with pytest.raises(ValueError, match=r"ProgressBar: refresh_rate=.* is invalid; valid: an int >= 0"):
        ProgressBar(refresh_rate=rate)


@pytest.mark.parametrize("interval", [-0.1, "1", True], ids=["negative", "str", "bool"])
def test_invalid_mininterval(interval):
    with pytest.raises(ValueError, match=r"ProgressBar: mininterval=.* is invalid; valid: a number of seconds >= 0"):
        ProgressBar(mininterval=interval)


def test_flags():
    assert ProgressBar.is_progress_bar is True and ProgressBar.rank_zero_only is True


def test_a_fast_loop_is_not_drawn_once_per_batch_by_default():
    file = io.StringIO()
    run(ProgressBar(file=file), train=make_data(samples=2000, batch=4))  # 500 batches in well under a second
    (train, _) = draws(file.getvalue())
    assert counts(train)[-1] == 500
    assert len(train) < 100
