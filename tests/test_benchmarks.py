"""The benchmarks' own logic: the verdict's interval, and that a variant still runs (a smoke run, not a timing)."""

import math

import torch

from benchmarks.compare import _judge, bootstrap_ratio
from benchmarks.variants import run


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
