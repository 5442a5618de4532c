"""ConsoleLines: what a fit prints when its stderr goes to a file (CI, nohup, Slurm), and the Trainer's verbose."""

from __future__ import annotations

import gc
import io
import json
import re
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ConsoleLines, ProgressBar
from torchsystem_trainer.callbacks.console import format_duration, format_number, format_results

ROOT = Path(__file__).resolve().parents[2]
TIME = r"\d+\.\d\d s"


SCENARIOS = ["completed", "resume", "early", "max_steps", "max_time", "interrupt", "exception"]


@pytest.fixture(scope="module")
def console_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every scenario of the console script, run once in one process with stderr going to files."""
    root = tmp_path_factory.mktemp("console")
    subprocess.run(
        [sys.executable, "-m", "tests.callbacks.console_script", str(root), *SCENARIOS],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    return root


def run(scenario: str, root: Path) -> tuple[list[str], dict, Path]:
    """A scenario's stderr lines, the script's results, and the folder it wrote in."""
    folder = root / scenario
    return (folder / "stderr.txt").read_text().splitlines(), json.loads((folder / "out.json").read_text()), folder


def matches(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), "\n".join(lines)
    for line, pattern in zip(lines, patterns):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}"


def epoch_line(k: int, total: int, step: int, results: dict[str, float]) -> str:
    return re.escape(f"epoch {k}/{total}, step {step}: {format_results(results)} | ") + TIME


@pytest.mark.slow
def test_a_completed_fit_its_tests_and_where_the_files_went(console_runs):
    lines, out, folder = run("completed", console_runs)
    first, second = out["epochs"]
    assert first.keys() == {"train/loss", "validation/loss"}
    matches(lines, [
        epoch_line(1, 2, 4, first),
        epoch_line(2, 2, 8, second),
        r"Fit completed at epoch 2/2, step 8 in " + TIME,
        re.escape(f"Checkpoints: {folder / 'checkpoints'} (best: epoch=1-step=8.ckpt, "
                  f"validation/loss={format_number(out['best'])}; last: last.ckpt)"),
        re.escape(f"Logs: {folder / 'tb' / 'Classifier' / 'version_0'} (TensorBoardLogger), "
                  f"{folder / 'csv' / 'Classifier' / 'version_0'} (CSVLogger)"),
        re.escape(f"test: loss={format_number(out['tests'][0]['loss'])} | ") + TIME,
        r"validate: loss=\d\.\d+ \| " + TIME,
    ])
    assert lines[0].startswith(f"epoch 1/2, step 4: train loss={first['train/loss']:.4f} | validation loss=")


@pytest.mark.slow
def test_a_resumed_fit_says_from_where(console_runs):
    lines, out, folder = run("resume", console_runs)
    matches(lines, [
        re.escape(f"Resumed from {folder / 'checkpoints' / 'last.ckpt'} at epoch 1/3, step 4"),
        epoch_line(2, 3, 8, out["epochs"][0]),
        epoch_line(3, 3, 12, out["epochs"][1]),
        r"Fit completed at epoch 3/3, step 12 in " + TIME,
        r"Checkpoints: .*",
    ])


@pytest.mark.slow
@pytest.mark.parametrize(
    "scenario, ending, epochs",
    [
        (
            "early",
            (
                r"Stopped early at epoch 2/5, step 8: EarlyStopping: validation/loss did not improve by more than "
                r"10 in the last 1 check\(s\) \(best 0\.\d+\)"
            ),
            [(1, 4), (2, 8)],
        ),
        ("max_steps", r"Stopped: max_steps=6 reached at epoch 2/5, step 6", [(1, 4), (2, 6)]),
        ("max_time", r"Stopped: max_time=1e-06 s elapsed at epoch 1/5, step 1", [(1, 1)]),
        ("interrupt", r"Interrupted by SIGTERM at epoch 1/5 \+ 2 batches, step 6", [(1, 4)]),
        ("exception", r"Failed at epoch 0/5 \+ 2 batches, step 2: RuntimeError: boom", []),
    ],
    ids=["early-stopping", "max-steps", "max-time", "signal", "exception"],
)
def test_each_way_a_fit_ends_has_its_line(console_runs, scenario, ending, epochs):
    lines, out, folder = run(scenario, console_runs)
    lines = [line for line in lines if not re.match(r"\S+\.py:\d+: \w*Warning|  ", line)]  # a monitor never seen
    expected = [epoch_line(k, 5, step, results) for (k, step), results in zip(epochs, out["epochs"])]
    checkpoints = "none written" if scenario == "exception" else r".*last: last\.ckpt"
    matches(lines, [*expected, ending, re.escape(f"Checkpoints: {folder / 'checkpoints'} (") + checkpoints + r"\)"])


def fit(capfd, **arguments) -> str:
    torch.manual_seed(0)
    data = make_data()
    trainer = Trainer(max_epochs=2, enable_model_summary=False, **arguments)
    trainer.fit(Classifier(), [("train", data), ("validation", data[:2])])
    return capfd.readouterr().err


def test_enable_progress_bar_false_silences_the_bar_not_the_lines(capfd):
    err = fit(capfd, enable_progress_bar=False)
    assert [line.split(",")[0] for line in err.splitlines()] == ["epoch 1/2", "epoch 2/2", "Fit completed at epoch 2/2"]


def test_verbose_false_prints_nothing_and_refuses_a_console(capfd):
    assert fit(capfd, enable_progress_bar=False, verbose=False) == ""
    with pytest.raises(ValueError, match="verbose=False, but callbacks holds a ConsoleLines"):
        Trainer(callbacks=[ConsoleLines()], verbose=False)
    with pytest.raises(TypeError, match="Trainer: verbose=1 is invalid; valid: True or False"):
        Trainer(verbose=1)


def test_with_a_bar_drawing_only_the_ending_lines_print(capfd):
    err = fit(capfd, callbacks=[ProgressBar(file=io.StringIO())])
    assert [line.split(" at ")[0] for line in err.splitlines()] == ["Fit completed"]
    err = fit(capfd, callbacks=[ProgressBar(refresh_rate=0)])  # a bar that draws nothing: the lines print
    assert len(err.splitlines()) == 3


@pytest.mark.parametrize("epochs, printed", [(True, 3), (False, 1)], ids=["always", "never"])
def test_epoch_lines_can_be_forced_either_way(capfd, epochs, printed):
    file = io.StringIO()
    console = ConsoleLines(file=file, epochs=epochs)
    fit(capfd, callbacks=[console, ProgressBar(file=io.StringIO())])
    assert len(file.getvalue().splitlines()) == printed and console.lines == file.getvalue().splitlines()


def test_trainer_ckpt_path_is_the_file_a_fit_resumed_from(tmp_path):
    from torchsystem_trainer.callbacks import ModelCheckpoint

    def trainer(epochs: int) -> Trainer:
        return Trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], max_epochs=epochs,
                       enable_progress_bar=False, verbose=False, enable_model_summary=False)

    first = trainer(1)
    first.fit(Classifier(), make_data(), ckpt_path="last")  # nothing to resume from yet
    assert first.ckpt_path is None
    second = trainer(2)
    second.fit(Classifier(), make_data(), ckpt_path="last")
    assert second.ckpt_path == tmp_path / "last.ckpt"
    second.fit(Classifier(), make_data())
    assert second.ckpt_path is None


@pytest.mark.parametrize(
    "seconds, text", [(0.0, "0.00 s"), (1.234, "1.23 s"), (59.994, "59.99 s"), (75, "1 min 15 s"), (3725, "1 h 2 min")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_results_groups_by_phase():
    results = {"train/loss": 0.123456, "train/acc": 0.5, "validation/loss": 2.0, "plain": 1e-7}
    assert format_results(results) == "train loss=0.1235 acc=0.5000 | validation loss=2.0000 | plain=1e-07"


@pytest.mark.parametrize(
    "value, text",
    [(0.0, "0.0000"), (0.36, "0.3600"), (-1.5, "-1.5000"), (0.001, "0.0010"), (9999.5, "9999.5000"),
     (1.234567e-5, "1.235e-05"), (123456.0, "1.235e+05"), (float("nan"), "nan"), (float("inf"), "inf")],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_a_fit_that_starts_at_the_aggregates_epoch_says_so(capfd):
    torch.manual_seed(0)
    aggregate = Classifier()
    aggregate.epoch = 2  # as the seed's compilation step sets it from a store
    Trainer(max_epochs=3, enable_progress_bar=False, enable_model_summary=False).fit(aggregate, make_data())
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "Continuing Classifier at epoch 2/3, step 0"
    assert lines[1].startswith("epoch 3/3, step 4: train loss=") and lines[2].startswith("Fit completed at epoch 3/3")


def test_the_exception_of_a_failed_fit_is_not_kept(capfd):
    # the traceback holds the fit's frames: kept, it kept a loader's persistent workers alive until the cyclic GC,
    # which then waited 5 s per worker to shut them down
    class Marker:
        pass

    markers: list[weakref.ref] = []

    class Failing(Classifier):
        def fit(self, inputs, targets):
            marker = Marker()  # only the failing frame holds it
            markers.append(weakref.ref(marker))
            raise RuntimeError("boom")

    trainer = Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Failing(), make_data())
    gc.collect()
    assert markers and markers[0]() is None
    assert "Failed at epoch 0/1" in capfd.readouterr().err
