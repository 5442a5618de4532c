"""The benchmarks' own logic: the verdict's interval, and that a variant still runs (a smoke run, not a timing)."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.compare import _judge, bootstrap_ratio
from benchmarks.variants import run

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_the_interval_holds_the_ratio_of_medians_and_widens_with_noise():
    steady = {r: 1.0 for r in range(9)}
    assert bootstrap_ratio({r: 1.1 for r in range(9)}, steady) == (1.1, 1.1)
    noisy = {r: 1.1 + (0.2 if r % 2 else -0.2) for r in range(9)}
    low, high = bootstrap_ratio(noisy, steady)
    assert low < 1.1 < high
    assert high - low > 0.1


def test_the_interval_pairs_rounds_and_needs_three_of_them():
    # a slow round slows both variants: paired resampling keeps the ratio at exactly 2
    numerator = {0: 2.0, 1: 4.0, 2: 2.2, 3: 6.0}
    denominator = {0: 1.0, 1: 2.0, 2: 1.1, 3: 3.0}
    assert bootstrap_ratio(numerator, denominator) == (2.0, 2.0)
    assert all(math.isnan(value) for value in bootstrap_ratio({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0, 2: 1.0}))


def test_the_verdict_needs_the_whole_interval_on_one_side():
    assert _judge(1.01, (1.00, 1.015), 1.02, at_most=True) == "PASS"
    assert _judge(1.05, (1.03, 1.07), 1.02, at_most=True) == "FAIL"
    assert _judge(1.03, (1.00, 1.05), 1.02, at_most=True).startswith("WITHIN NOISE (median fails")
    assert _judge(1.40, (1.30, 1.50), 1.25, at_most=False) == "PASS"
    assert _judge(1.30, (1.20, 1.35), 1.25, at_most=False).startswith("WITHIN NOISE (median passes")
    assert _judge(1.01, (math.nan, math.nan), 1.02, at_most=True) == "PASS"  # too few rounds: the median decides


def test_the_raw_loop_and_the_trainer_variants_train_the_same_weights(tmp_path):
    raw = run("lstm", "raw", quick=True, weights_out=tmp_path / "raw.pt", warmup=False)
    ours = run("lstm", "trainer", quick=True, weights_out=tmp_path / "trainer.pt")
    assert raw["steps"] == ours["steps"] > 0 and ours["fit_s"] > 0 and ours["cold_fit_s"] > 0
    a, b = torch.load(tmp_path / "raw.pt", weights_only=True), torch.load(tmp_path / "trainer.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_the_logger_variants_train_the_same_weights(tmp_path):
    raw = run("lstm", "raw-loggers", quick=True, weights_out=tmp_path / "raw.pt", warmup=False)
    ours = run("lstm", "trainer-loggers", quick=True, weights_out=tmp_path / "trainer.pt", warmup=False)
    assert raw["steps"] == ours["steps"] > 0
    a, b = torch.load(tmp_path / "raw.pt", weights_only=True), torch.load(tmp_path / "trainer.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_the_gpu_benchmarks_clock_times_as_many_steps_with_a_batch_fetched_ahead():
    from benchmarks.gpu import Clock

    def steps_in_window(ahead: int) -> list[int]:
        batches = [(torch.tensor(i), torch.tensor(i)) for i in range(8)]
        clock = Clock(batches, start=2, end=6, device=torch.device("cpu"))
        timed, iterator = [], iter(clock)
        fetched = [next(iterator) for _ in range(ahead)]
        for batch in iterator:  # as Lightning's fetcher: take the next batch before running the step on the previous
            fetched.append(batch)
            inputs, _ = fetched.pop(0)
            if "start" in clock.marks and "end" not in clock.marks:
                timed.append(int(inputs))
        assert clock.window()[0] >= 0
        return timed

    assert steps_in_window(ahead=0) == [2, 3, 4, 5]
    assert steps_in_window(ahead=1) == [1, 2, 3, 4]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_cpu_and_writes_its_report(tmp_path):
    command = [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "gpu-benchmark.json").read_text())
    # whether Lightning is there, without importing it here (it replaces torch.compile in this process)
    lightning = any(importlib.util.find_spec(name) for name in ("lightning", "pytorch_lightning"))
    variants = ["raw", "trainer"] + (["lightning"] if lightning else [])
    assert report["environment"]["quick"] is True and report["environment"]["variants"] == variants
    assert list(report["workloads"]) == ["resnet18", "gpt"]
    for by_variant in report["workloads"].values():
        assert list(by_variant) == variants
        for info in by_variant.values():
            assert (info["steps"], info["rounds"], info["peak_mib"]) == (1, 2, None)  # no GPU memory on the CPU
            assert info["samples_per_s"] > 0 and info["fit_s"] > 0 and info["host_us_per_step"] > 0
            assert info["throughput_vs_raw"]["value"] > 0 and info["max_weight_diff"] is not None
        assert by_variant["raw"]["max_weight_diff"] == 0.0
    claims = {(found["workload"], found["claim"]) for found in report["verdicts"]}
    assert {("resnet18", "Trainer / raw throughput"), ("gpt", "Trainer / raw throughput")} <= claims
    assert all(found["verdict"] == "not judged (smoke run)" for found in report["verdicts"])
    assert len(report["samples"]) == 2 * 2 * len(variants)  # rounds x workloads x variants
    table = (tmp_path / "gpu-benchmark.md").read_text()
    assert "QUICK SMOKE RUN" in table and "| trainer |" in table and table in done.stdout


@pytest.mark.slow
def test_the_checkpoint_benchmark_runs_its_variants_and_writes_its_report(tmp_path):
    command = [sys.executable, "-m", "benchmarks.checkpoint", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    report = json.loads((tmp_path / "checkpoint-benchmark.json").read_text())
    assert [(run["variant"], len(run["stalls_s"])) for run in report["runs"]] == [("none", 0), ("sync", 2), ("async", 2)]
    summary = report["summary"]["quick"]
    sync_bytes, async_bytes = summary["sync"]["checkpoint_bytes"], summary["async"]["checkpoint_bytes"]
    assert sync_bytes > 0 and abs(async_bytes - sync_bytes) < 1024  # the same state (the folders' names differ)
    assert summary["async_stall_over_sync_save"] > 0 and "| quick |" in done.stdout
