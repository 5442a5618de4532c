"""Tracker and the command line: queries, filters, run prefixes, pandas, the tables, compare and plot."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_data
from tests.tracking.conftest import make_model
from torchsystem_trainer import Trainer
from torchsystem_trainer.tracking import RunNotFoundError, RunTracker, Tracker
from torchsystem_trainer.tracking.cli import format_table, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_runs(sqlite_url: str) -> tuple[str, list[str]]:
    """Two runs of one model in two experiments; the second with another learning rate."""
    ids = []
    for experiment, lr, epochs in (("baseline", 0.1, 2), ("smaller lr", 0.01, 3)):
        model = make_model(lr=lr)
        tracker = RunTracker(sqlite_url, experiment=experiment)
        Trainer(callbacks=[tracker], max_epochs=epochs, enable_progress_bar=False).fit(
            model, [("train", make_data()), ("validation", make_data(seed=1))])
        ids.append(tracker.run_id or "")
    return sqlite_url, ids


def test_runs_filter_by_model_experiment_and_status(two_runs) -> None:
    url, (first, second) = two_runs
    with Tracker(url) as store:
        assert [r.id for r in store.runs()] == [first, second]
        assert [r.id for r in store.runs(experiment="smaller lr")] == [second]
        assert store.runs(model="nope") == ()
        assert [r.id for r in store.runs(status="completed")] == [first, second]
        assert store.runs(status=["failed", "crashed"]) == ()
        with pytest.raises(ValueError, match="status='done' is invalid; valid: running, completed"):
            store.runs(status="done")


def test_a_unique_prefix_names_a_run_and_an_ambiguous_or_unknown_one_says_why(two_runs) -> None:
    url, (first, second) = two_runs
    with Tracker(url) as store:
        assert store.run(first[:8]).id == first
        with pytest.raises(RunNotFoundError, match="matches 0 runs"):
            store.run("ffffffffffffffff" if not first.startswith("ffff") else "0000000000000000")
        with pytest.raises(RunNotFoundError, match="not a run id"):
            store.run("'; DROP TABLE runs; --")
        common = "" if first[0] != second[0] else first[0]
        if common:
            with pytest.raises(RunNotFoundError, match="matches 2 runs"):
                store.run(common)


def test_metrics_of_a_model_span_its_runs_and_filter(two_runs) -> None:
    url, (first, second) = two_runs
    with Tracker(url) as store:
        model = store.models()[0].hash
        losses = store.metrics(model=model, phase="validation", name="loss")
        assert [(m.run, m.epoch) for m in losses] == [(first, 0), (first, 1), (second, 0), (second, 1), (second, 2)]
        frame = losses.to_pandas()
        assert list(frame.columns) == ["run", "phase", "epoch", "step", "name", "value"]
        assert frame["value"].tolist() == [m.value for m in losses]
        assert store.metrics(first, name="absent").to_pandas().shape == (0, 6)


def test_format_table_aligns_text_left_and_numbers_right() -> None:
    assert format_table(["A", "N"], [["x", "1"], ["long", "10.5"]]).splitlines() == [
        "A        N", "x        1", "long  10.5"]


def _run_cli(*argv: str) -> str:
    out = io.StringIO()
    assert main(list(argv), out=out) == 0
    return out.getvalue()


def test_the_cli_prints_experiments_models_runs_and_metrics(two_runs) -> None:
    url, (first, second) = two_runs
    experiments = _run_cli("--url", url, "experiments").splitlines()
    assert experiments[0].split() == ["EXPERIMENT", "RUNS", "CREATED"]
    assert experiments[1].startswith("baseline  ") and experiments[2].startswith("smaller lr")
    models = _run_cli("--url", url, "models").splitlines()
    assert models[1].split()[1:5] == ["Net", "3", "20", "2"]  # epoch of the last run, steps of both
    runs = _run_cli("--url", url, "runs", "--experiment", "baseline").splitlines()
    assert len(runs) == 2 and runs[1].split()[:1] == [first[:8]] and "completed" in runs[1]
    metrics = _run_cli("--url", url, "metrics", second[:8], "--phase", "validation").splitlines()
    assert metrics[0].split() == ["RUN", "EPOCH", "validation/loss"] and len(metrics) == 4


def test_compare_shows_final_best_and_only_the_hyperparameters_that_differ(two_runs) -> None:
    url, (first, second) = two_runs
    lines = _run_cli("--url", url, "compare", first[:8], second[:8]).splitlines()
    labels = [line.split("  ")[0].strip() for line in lines]
    assert "final validation/loss" in labels and "best validation/loss (min)" in labels
    assert "optimizer/lr" in labels  # 0.1 against 0.01
    assert "model/features" not in labels and "criterion" not in labels  # the same in both
    (lr,) = [line for line in lines if line.startswith("optimizer/lr")]
    assert lr.split()[1:] == ["0.1", "0.01"]
    with Tracker(url) as store:
        final = store.metrics(second, phase="validation", name="loss")[-1].value
    (row,) = [line for line in lines if line.startswith("final validation/loss")]
    assert float(row.split()[-1]) == pytest.approx(final, rel=1e-5)


def test_plot_writes_a_png(two_runs, tmp_path: Path) -> None:
    url, ids = two_runs
    output = tmp_path / "plots" / "loss.png"
    assert _run_cli("--url", url, "plot", "--metric", "validation/loss", *ids, "--output", str(output)).strip() == (
        f"wrote {output}")
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_go_to_stderr_with_status_1(two_runs, capsys) -> None:
    url, _ = two_runs
    assert main(["--url", url, "metrics", "zzz"]) == 1
    assert "error: run='zzz' is not a run id" in capsys.readouterr().err
    assert main(["--url", url, "plot", "--metric", "loss", "0"]) == 1
    assert "metric='loss' is invalid" in capsys.readouterr().err
    assert main(["--url", "sqlite:////nonexistent/runs.db", "runs"]) == 1
    assert "no run store" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli(two_runs) -> None:
    url, (first, _) = two_runs
    result = subprocess.run([sys.executable, "-m", "torchsystem_trainer.tracking", "--url", url, "runs"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert first[:8] in result.stdout


def test_importing_the_package_does_not_import_sqlalchemy() -> None:
    code = "import sys, torchsystem_trainer, torchsystem_trainer.callbacks; print('sqlalchemy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr
