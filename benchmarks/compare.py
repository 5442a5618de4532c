"""Side by side: the raw PyTorch loop, the Trainer (bare and with the standard callbacks) and Lightning.

One invocation runs every (workload, variant) pair ``--rounds`` times, each run in a fresh process
(:mod:`benchmarks.variants`), interleaved: round 1 runs every variant once, then round 2, with the variants'
order rotated each round so that no variant always runs first or after the same neighbour. It then reports, per
workload, the median fit time (wall clock, and the process's CPU time), the ratio of each variant's median to
its baseline's and the median of the per-round ratios, the per-step overhead in microseconds
(``(median - baseline median) / steps``), the peak RSS, and the budget verdicts of the issue:

* ``trainer / raw <= 1.02`` on the MLP and the CNN;
* ``trainer-std / raw-full <= 1.05`` (the standard set against a hand-written loop doing the same work:
  validation, metric, TensorBoard scalars, a checkpoint per epoch);
* ``trainer-loggers / raw-loggers <= 1.03`` (``TensorBoardLogger`` and ``CSVLogger`` against the same writing done
  by hand);
* ``trainer-tracked / trainer-std <= 1.01`` on the MLP (the standard set plus ``RunTracker`` on SQLite);
* ``lightning / trainer >= 1.25`` on the MLP;
* the bare Trainer's final weights bit-identical (``torch.equal``) to the raw loop's;
* ``import torchsystem_trainer`` at most 0.15 s over ``import torch`` (:mod:`benchmarks.import_time`).

Usage (from the repository root)::

    python -m benchmarks.compare                      # everything, 5 rounds (about 15 minutes on 2 cores)
    python -m benchmarks.compare --quick --rounds 2   # a smoke run: fewer samples, numbers not meaningful
    python -m benchmarks.compare --workloads mlp --variants raw,trainer --candidate /tmp/patched-tree

``--candidate DIR`` adds ``trainer@cand`` and ``trainer-std@cand`` (``--candidate-name`` renames the suffix):
the same variants, importing ``torchsystem_trainer`` from the source tree in ``DIR`` instead, so a change to the
loop is measured before and after in one interleaved run. ``--threads`` defaults to 1: on a small shared machine, torch's default of one
thread per core makes the OpenMP workers spin against whatever else runs, and the timings scatter by 10x.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from math import nan
from pathlib import Path
from typing import Any

from benchmarks import import_time
from benchmarks.variants import MARKER, VARIANTS
from benchmarks.workloads import WORKLOADS, mnist_dir

__all__ = ["BASELINES", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINES = {
    "trainer": "raw",
    "trainer-std": "raw-full",
    "trainer-loggers": "raw-loggers",
    "trainer-tracked": "trainer-std",
    "lightning": "raw",
    "lightning-full": "raw-full",
}
PARITY = {
    "trainer": "raw",
    "trainer-std": "raw-full",
    "trainer-loggers": "raw-loggers",
    "trainer-tracked": "raw-full",
    "lightning": "raw",
    "lightning-full": "raw-full",
}
BUDGET_BARE, BUDGET_STD, BUDGET_LIGHTNING, BUDGET_LOGGERS = 1.02, 1.05, 1.25, 1.03
BUDGET_TRACKED = 1.01  # issue 14: the standard set plus RunTracker on SQLite against the standard set alone


def _base(label: str) -> str:
    return label.split("@", 1)[0]


def _lightning_installed() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("lightning", "pytorch_lightning"))


def _run_child(label: str, workload: str, args: argparse.Namespace, weights_out: Path | None) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.variants",
        "--workload",
        workload,
        "--variant",
        _base(label),
    ]
    command += [
        "--loader",
        args.loader,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.quick:
        command.append("--quick")
    if args.data_dir is not None:
        command += ["--data-dir", str(args.data_dir)]
    if args.no_warmup:
        command.append("--no-warmup")
    if "@" in label:
        command += ["--trainer-path", str(args.candidate)]
    if weights_out is not None:
        command += ["--weights-out", str(weights_out)]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])  # type: ignore[no-any-return]
    raise RuntimeError(
        f"{workload}/{label} failed (exit {completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
    )


def _parity(
    weights: dict[tuple[str, str], Path], workload: str, labels: list[str]
) -> list[tuple[str, str, bool, float]]:
    import torch

    rows = []
    for label in labels:
        reference = PARITY.get(_base(label))
        if reference is None or (workload, reference) not in weights or (workload, label) not in weights:
            continue
        a = torch.load(weights[(workload, reference)], weights_only=True)
        b = torch.load(weights[(workload, label)], weights_only=True)
        equal = a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        diff = max(float((a[key] - b[key]).abs().max()) for key in a) if a.keys() == b.keys() else float("nan")
        rows.append((label, reference, equal, diff))
    return rows


def bootstrap_ratio(
    numerator: dict[int, float], denominator: dict[int, float], resamples: int = 2000
) -> tuple[float, float]:
    """A 95 % interval for ``median(numerator) / median(denominator)``: the rounds both ran are resampled with
    replacement (a round keeps its two values together, so a slow period of the machine moves both), ``resamples``
    times, with a fixed seed; the 2.5th and 97.5th percentiles of the resampled ratios (Efron's percentile
    bootstrap). ``(nan, nan)`` with fewer than 3 common rounds."""
    rounds = sorted(set(numerator) & set(denominator))
    if len(rounds) < 3:
        return nan, nan
    generator = random.Random(0)
    ratios = []
    for _ in range(resamples):
        sample = [generator.choice(rounds) for _ in rounds]
        ratios.append(
            statistics.median(numerator[r] for r in sample) / statistics.median(denominator[r] for r in sample)
        )
    ratios.sort()
    return ratios[int(0.025 * (resamples - 1))], ratios[int(0.975 * (resamples - 1))]


def _summarise(samples: list[dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Per label: medians, per-round values, and the ratios to its baseline (``None`` for a baseline)."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        by_label[sample["label"]].append(sample)
    summary: dict[str, dict[str, Any]] = {}
    for label in labels:
        runs = sorted(by_label[label], key=lambda s: s["round"])
        if not runs:
            continue
        summary[label] = {
            "wall": statistics.median(s["fit_s"] for s in runs),
            "cpu": statistics.median(s["cpu_s"] for s in runs),
            "cpu_min": min(s["cpu_s"] for s in runs),
            "cold": statistics.median(s.get("cold_fit_s", s["fit_s"]) for s in runs),
            "walls": [s["fit_s"] for s in runs],
            "cpus": [s["cpu_s"] for s in runs],
            "rounds": [s["round"] for s in runs],
            "steps": runs[0]["steps"],
            "epochs": runs[0].get("epochs"),
            "peak_rss_mib": statistics.median(s["peak_rss_kib"] for s in runs) / 1024,
            "rss_before_mib": statistics.median(s["rss_before_fit_kib"] for s in runs) / 1024,
            "data": runs[0]["data"],
            "package": runs[0]["package"],
        }
    for label, info in summary.items():
        base = BASELINES.get(_base(label))
        if base is None or base not in summary:
            continue
        reference = summary[base]
        walls = dict(zip(reference["rounds"], reference["walls"]))
        paired = [wall / walls[r] for r, wall in zip(info["rounds"], info["walls"]) if r in walls]
        info["baseline"] = base
        info["ratio"] = info["wall"] / reference["wall"]
        info["ratio_cpu"] = info["cpu"] / reference["cpu"]
        info["ratio_min"] = info["cpu_min"] / reference["cpu_min"]
        info["ratio_cold"] = info["cold"] / reference["cold"]
        info["paired"] = statistics.median(paired) if paired else float("nan")
        info["ratio_ci"] = bootstrap_ratio(dict(zip(info["rounds"], info["walls"])), walls)
        info["overhead_us"] = (info["wall"] - reference["wall"]) / info["steps"] * 1e6
        info["overhead_cpu_us"] = (info["cpu"] - reference["cpu"]) / info["steps"] * 1e6
    return summary


def _table(workload: str, summary: dict[str, dict[str, Any]]) -> list[str]:
    first = next(iter(summary.values()))
    spec = WORKLOADS[workload]
    lines = [
        f"\n== {workload}: {first['steps']} steps ({first['epochs']} epoch(s), batch {spec.batch_size}), data: {first['data']}",
        (
            f"{'variant':<18}{'wall s':>9}{'cpu s':>9}{'baseline':>10}{'ratio':>8}{'paired':>8}{'cpu ratio':>10}"
            f"{'cpu min':>9}{'cold':>7}{'us/step':>9}{'cpu us/step':>12}{'RSS MiB before':>15}{'peak':>6}{'vs raw':>8}"
        ),
    ]
    raw_rss = summary.get("raw", {}).get("peak_rss_mib")
    for label, info in summary.items():
        ratio = info.get("ratio")
        if ratio is not None:  # reports written before these columns existed
            info.setdefault("ratio_min", float("nan"))
            info.setdefault("ratio_cold", float("nan"))
        cells = (
            f"{info['baseline']:>10}{ratio:>8.3f}{info['paired']:>8.3f}{info['ratio_cpu']:>10.3f}{info['ratio_min']:>9.3f}{info['ratio_cold']:>7.3f}"
            f"{info['overhead_us']:>+9.1f}{info['overhead_cpu_us']:>+12.1f}"
            if ratio is not None
            else f"{'-':>10}{'-':>8}{'-':>8}{'-':>10}{'-':>9}{'-':>7}{'-':>9}{'-':>12}"
        )
        rss_delta = f"{info['peak_rss_mib'] - raw_rss:>+8.0f}" if raw_rss is not None else f"{'-':>8}"
        lines.append(
            f"{label:<18}{info['wall']:>9.3f}{info['cpu']:>9.3f}{cells}{info['rss_before_mib']:>15.0f}"
            f"{info['peak_rss_mib']:>6.0f}{rss_delta}"
        )
    return lines


def _judge(ratio: float, interval: tuple[float, float], bound: float, at_most: bool) -> str:
    """``PASS`` when the whole 95 % interval is on the right side of ``bound``, ``FAIL`` when the whole of it is on
    the wrong side, else ``WITHIN NOISE`` naming the side of the median. Without an interval (fewer than 3
    rounds), the median alone decides."""
    low, high = interval
    good = (lambda value: value <= bound) if at_most else (lambda value: value >= bound)
    if math.isnan(low):  # too few rounds for an interval
        return "PASS" if good(ratio) else "FAIL"
    if good(low) and good(high):
        return "PASS"
    if not good(low) and not good(high):
        return "FAIL"
    return f"WITHIN NOISE (median {'passes' if good(ratio) else 'fails'}; more rounds, or a quieter machine)"


def _verdicts(summaries: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's budget on the wall-clock ratio of medians and its bootstrap interval; CPU-time and first-fit
    ratios beside it."""
    lines = [
        (
            "\n== budget (issue 6): ratio of wall-clock medians (95 % bootstrap interval over rounds) "
            "[CPU-time ratio; each process's first fit]"
        ),
        "   PASS / FAIL when the whole interval is on one side of the bound, WITHIN NOISE when it straddles it",
    ]

    def line(workload: str, text: str, info: dict[str, float], bound: float, at_most: bool | None) -> str:
        low, high = info["ci"]
        sign = "<=" if at_most else ">="
        judged = f"({sign} {bound})  {_judge(info['wall'], info['ci'], bound, at_most)}" if at_most is not None else ""
        return (
            f"  {workload:<5} {text} = {info['wall']:.3f} ({low:.3f}-{high:.3f}) "
            f"[cpu {info['cpu']:.3f}; cold {info['cold']:.3f}]  {judged or '(for information)'}"
        )

    def of(info: dict[str, Any]) -> dict[str, Any]:
        return {
            "wall": info["ratio"],
            "cpu": info["ratio_cpu"],
            "cold": info.get("ratio_cold", nan),
            "ci": tuple(info.get("ratio_ci", (nan, nan))),
        }

    for workload, summary in summaries.items():
        for label in [label for label in summary if _base(label) == "trainer" and "ratio" in summary[label]]:
            judged = True if workload in ("mlp", "cnn") else None
            lines.append(line(workload, f"{label} / raw", of(summary[label]), BUDGET_BARE, judged))
        for label in [label for label in summary if _base(label) == "trainer-std" and "ratio" in summary[label]]:
            lines.append(line(workload, f"{label} / raw-full", of(summary[label]), BUDGET_STD, True))
        for label in [label for label in summary if _base(label) == "trainer-loggers" and "ratio" in summary[label]]:
            lines.append(line(workload, f"{label} / raw-loggers", of(summary[label]), BUDGET_LOGGERS, True))
        for label in [label for label in summary if _base(label) == "trainer-tracked" and "ratio" in summary[label]]:
            judged = True if workload == "mlp" else None
            lines.append(line(workload, f"{label} / trainer-std", of(summary[label]), BUDGET_TRACKED, judged))
        for ours, theirs in (("trainer", "lightning"), ("trainer-std", "lightning-full")):
            for label in [label for label in summary if _base(label) == ours]:
                if theirs not in summary:
                    continue
                a, b = summary[theirs], summary[label]
                info = {
                    "wall": a["wall"] / b["wall"],
                    "cpu": a["cpu"] / b["cpu"],
                    "cold": a.get("cold", nan) / b.get("cold", nan),
                    "ci": bootstrap_ratio(dict(zip(a["rounds"], a["walls"])), dict(zip(b["rounds"], b["walls"]))),
                }
                judged = False if workload == "mlp" and ours == "trainer" else None
                lines.append(line(workload, f"{theirs} / {label}", info, BUDGET_LIGHTNING, judged))
    return lines


def _machine(args: argparse.Namespace) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lightning = "not installed"
    for name in ("lightning", "pytorch_lightning"):
        if importlib.util.find_spec(name) is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                lightning = f"{name} {version(name)}"
            except PackageNotFoundError:
                lightning = name
            break
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, torch {torch.__version__}, "
        f"{lightning}; threads per run: {args.threads or 'torch default'}; device {args.device}; "
        f"loader: {args.loader}; load average at start: {os.getloadavg()[0]:.2f}"
    )


def _render(
    samples: list[dict[str, Any]],
    workloads: list[str],
    labels: list[str],
    parity: dict[str, list[Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Print the tables, the parity lines and the verdicts; returns the summaries."""
    summaries = {
        workload: _summarise([s for s in samples if s["workload"] == workload], labels) for workload in workloads
    }
    for workload in workloads:
        for line in _table(workload, summaries[workload]):
            print(line)
        for label, reference, equal, diff in parity.get(workload, []):
            print(f"  parity {label} vs {reference}: torch.equal on every tensor = {equal}  (max |diff| {diff:.3g})")
    for line in _verdicts(summaries):
        print(line)
    return summaries


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring and ``--help``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp,cnn,lstm", help="comma-separated: mlp, cnn, lstm")
    parser.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, default all of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="time each process's first fit only (default: fit twice, time both)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples / epochs: a smoke run")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (0: torch's default)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loader", default="tensors", choices=["tensors", "dataloader"])
    parser.add_argument("--data-dir", type=Path, default=None, help="the MNIST IDX folder")
    parser.add_argument(
        "--candidate",
        type=Path,
        default=None,
        help="a source tree to measure as trainer@cand",
    )
    parser.add_argument(
        "--candidate-name",
        default="cand",
        help="the label suffix of the candidate's variants",
    )
    parser.add_argument(
        "--import-runs",
        type=int,
        default=7,
        help="fresh processes per import measurement (0: skip)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write every sample and the summary here",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="print the report of a --json file; run nothing",
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        labels = list(dict.fromkeys(sample["label"] for sample in saved["samples"]))
        workloads = list(dict.fromkeys(sample["workload"] for sample in saved["samples"]))
        print(f"machine: {saved['machine']}\ncommand: {' '.join(saved['argv'])}")
        _render(saved["samples"], workloads, labels, saved["parity"])
        for name, report in (saved.get("imports") or {}).items():
            print(f"\nimports ({name}):")
            print(import_time.format_report(report))
        return

    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if args.variants is None:
        labels = [v for v in VARIANTS if _lightning_installed() or not v.startswith("lightning")]
    else:
        labels = [name.strip() for name in args.variants.split(",") if name.strip()]
        for label in labels:
            if _base(label) not in VARIANTS:
                parser.error(f"unknown variant {label!r}; known: {', '.join(VARIANTS)}")
    if args.candidate is not None:
        labels += [
            f"{label}@{args.candidate_name}" for label in labels if label in ("trainer", "trainer-std", "trainer-loggers")
        ]

    machine = _machine(args)
    print(f"machine: {machine}")
    print(f"MNIST: {mnist_dir(args.data_dir) or 'not found, random data of the same shape'}")
    print(f"plan: {args.rounds} rounds x {len(workloads)} workloads x {len(labels)} variants, one process each")
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as folder:
        weights: dict[tuple[str, str], Path] = {}
        for round_index in range(args.rounds):
            for workload in workloads:
                shift = round_index % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    out = None
                    if round_index == 0:
                        out = weights[(workload, label)] = Path(folder) / f"{workload}-{label}.pt"
                    result = _run_child(label, workload, args, out)
                    result.update(label=label, round=round_index)
                    samples.append(result)
                    print(
                        f"  round {round_index + 1}/{args.rounds} {workload:<5} {label:<20} {result['fit_s']:8.3f} s"
                        f"  (cpu {result['cpu_s']:.3f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
        parity = {workload: _parity(weights, workload, labels) for workload in workloads}

    summaries = _render(samples, workloads, labels, parity)
    imports: dict[str, Any] = {}
    if args.import_runs:
        trees = {"": None} if args.candidate is None else {"": None, "@" + args.candidate_name: args.candidate}
        for suffix, tree in trees.items():
            imports[suffix or "repository"] = report = import_time.measure(args.import_runs, tree, lightning=not suffix)
            print(f"\n{'candidate tree ' + str(tree) if tree else 'this tree'}:")
            print(import_time.format_report(report))
    print(f"\ntotal benchmark time: {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "machine": machine,
                    "samples": samples,
                    "summaries": summaries,
                    "parity": parity,
                    "imports": imports,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
