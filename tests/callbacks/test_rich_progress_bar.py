"""RichProgressBar: the same bars drawn with rich, read back from a console writing to a string."""

from __future__ import annotations

import importlib.util
import io
import re

import pytest
import torch
from rich.console import Console

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import RichProgressBar


def console() -> tuple[Console, io.StringIO]:
    file = io.StringIO()
    return Console(file=file, force_terminal=True, width=140, color_system=None), file


class Probe(Recorder):
    """Listed before the bar: reads its rows at FitEnded, before the bar stops its display."""

    def __init__(self, bar: RichProgressBar) -> None:
        super().__init__()
        self.bar, self.rows, self.results = bar, [], []

    def on_trained(self, event) -> None:
        self.results.append(event.results)

    on_validated = on_trained

    def on_fit_ended(self, event) -> None:
        self.rows = [(t.description, t.completed, t.total, t.fields["values"]) for t in self.bar.progress.tasks]


def fit(bar: RichProgressBar, batches: int = 4) -> tuple[Trainer, Probe]:
    torch.manual_seed(0)
    data = make_data(samples=4 * batches)
    probe = Probe(bar)
    trainer = Trainer(callbacks=[probe, bar], max_epochs=2, enable_model_summary=False, verbose=False)
    trainer.fit(Classifier(), [("train", data), ("validation", data[:2])])
    return trainer, probe


def test_rows_per_phase_with_counts_and_results():
    screen, file = console()
    bar = RichProgressBar(console=screen, mininterval=0)
    trainer, probe = fit(bar)
    shown = [" ".join(f"{name}={value:.4g}" for name, value in results.items()) for results in probe.results]
    assert probe.rows == [
        ("Epoch 0", 4, 4, shown[0]), ("Validation", 2, 2, shown[1]), ("Epoch 1", 4, 4, shown[2]),
        ("Validation", 2, 2, shown[3]),
    ]
    assert bar.progress is None  # stopped at FitEnded
    drawn = file.getvalue()
    assert "Epoch 1" in drawn and "4/4" in drawn and re.search(r"Epoch 0 \S+ +2/4 .* loss=\d", drawn)
    results = trainer.test(Classifier(), make_data()[:2])
    assert re.search(r"Test \S+ 2/2 .* loss=" + re.escape(f"{results['loss']:.4g}"), file.getvalue())


def test_leave_false_removes_finished_rows():
    screen, _ = console()
    bar = RichProgressBar(console=screen, leave=False, mininterval=0)
    _, probe = fit(bar)
    assert probe.rows == []


def test_it_reads_the_loss_once_per_drawing(monkeypatch):
    reads = {"n": 0}
    original = torch.Tensor.__float__

    def counting(self):
        reads["n"] += 1
        return original(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counting)
    screen, _ = console()
    fit(RichProgressBar(console=screen, refresh_rate=4, mininterval=0), batches=16)  # the probe reads nothing
    assert reads["n"] == 2 * 4  # two epochs of 16 batches, a drawing every 4


def test_without_rich_it_says_which_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rich" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchsystem-trainer\[rich\]'"):
        RichProgressBar()


def test_it_is_a_progress_bar_for_the_trainer():
    trainer = Trainer(callbacks=[RichProgressBar()], enable_progress_bar=None)
    assert sum(getattr(callback, "is_progress_bar", False) for callback in trainer.callbacks) == 1
    with pytest.raises(ValueError, match="enable_progress_bar=False, but callbacks holds a progress bar"):
        Trainer(callbacks=[RichProgressBar()], enable_progress_bar=False)
