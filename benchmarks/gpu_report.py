"""The GPU benchmark's report (:mod:`benchmarks.gpu`): medians over rounds, ratios with their bootstrap intervals,
the issue's verdicts, and the Markdown table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from benchmarks.compare import _judge, bootstrap_ratio

__all__ = ["LIGHTNING_BOUND", "THROUGHPUT_BOUND", "markdown", "plain", "summarise", "verdicts"]

THROUGHPUT_BOUND, LIGHTNING_BOUND = 0.98, 1.1


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per workload and variant: medians over rounds, and ratios to the raw loop (throughput, with its interval)
    and, for Lightning, to the Trainer (time, with its interval)."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for sample in samples:
        summary.setdefault(sample["workload"], {}).setdefault(sample["variant"], {"runs": []})["runs"].append(sample)
    for variants in summary.values():
        for info in variants.values():
            runs = info.pop("runs")
            steps, samples_per_step = runs[0]["steps"], runs[0]["samples"]
            info["windows"] = {run["round"]: run["window_s"] for run in runs}
            info["fits"] = {run["round"]: run["fit_s"] for run in runs}
            window = statistics.median(info["windows"].values())
            probe = _median(run["probe_step_s"] for run in runs)
            peaks = [run["peak_bytes"] for run in runs if run["peak_bytes"] is not None]
            info.update(
                steps=steps,
                batch_size=samples_per_step,
                rounds=len(runs),
                samples_per_s=steps * samples_per_step / window,
                step_ms=window / steps * 1e3,
                fit_s=statistics.median(info["fits"].values()),
                cpu_us_per_step=statistics.median(run["window_cpu_s"] for run in runs) / steps * 1e6,
                host_us_per_step=None if probe is None else probe * 1e6,
                peak_mib=max(peaks) / 2**20 if peaks else None,
                max_weight_diff=_median(run["max_weight_diff"] for run in runs),
            )
        raw, ours = variants.get("raw"), variants.get("trainer")
        for name, info in variants.items():
            if raw is not None:
                info["throughput_vs_raw"] = _ratio(raw["windows"], info["windows"])
                if info["host_us_per_step"] is not None and raw["host_us_per_step"] is not None:
                    info["host_overhead_us"] = info["host_us_per_step"] - raw["host_us_per_step"]
            if name == "lightning" and ours is not None:
                info["fit_time_vs_trainer"] = _ratio(info["fits"], ours["fits"])
                info["window_time_vs_trainer"] = _ratio(info["windows"], ours["windows"])
    return summary


def _ratio(numerator: dict[int, float], denominator: dict[int, float]) -> dict[str, Any]:
    """``median(numerator) / median(denominator)`` and its 95 % bootstrap interval over rounds."""
    low, high = bootstrap_ratio(numerator, denominator)
    value = statistics.median(numerator.values()) / statistics.median(denominator.values())
    return {"value": value, "interval": [low, high]}


def verdicts(summary: dict[str, dict[str, dict[str, Any]]], judged: bool = True) -> list[dict[str, Any]]:
    """The issue's targets, judged on the interval (``benchmarks.compare``'s rule); ``judged=False`` (a smoke run)
    states the ratios without a verdict."""
    found = []
    for name, variants in summary.items():
        gpt = name == "gpt"
        checks = [
            ("trainer", "throughput_vs_raw", "Trainer / raw throughput", THROUGHPUT_BOUND, True),
            ("lightning", "fit_time_vs_trainer", "Lightning / Trainer time (whole fit)", LIGHTNING_BOUND, gpt),
            ("lightning", "window_time_vs_trainer", "Lightning / Trainer time (window)", LIGHTNING_BOUND, False),
        ]
        for variant, key, claim, bound, applies in checks:
            ratio = variants.get(variant, {}).get(key)
            if ratio is None:
                continue
            interval = tuple(ratio["interval"])
            if not judged:
                verdict = "not judged (smoke run)"
            elif applies:
                verdict = _judge(ratio["value"], interval, bound, at_most=False)  # type: ignore[arg-type]
            else:
                verdict = "for information"
            found.append(
                {"workload": name, "claim": claim, "value": ratio["value"], "interval": list(interval), "bound": bound,
                 "verdict": verdict}
            )
    return found


def plain(value: Any) -> Any:
    """JSON-ready: NaN and infinity as ``None``, the per-round dicts' keys as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, form)


def _with_interval(ratio: dict[str, Any] | None) -> str:
    if ratio is None:
        return "-"
    low, high = ratio["interval"]
    inside = "" if low is None or math.isnan(low) else f" ({low:.3f}-{high:.3f})"
    return f"{ratio['value']:.3f}{inside}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the environment, one table per workload, the verdicts."""
    env = report["environment"]
    lines = [
        "# GPU benchmark: raw loop, Trainer, Lightning",
        "",
        f"{env['device_name']} ({env['device']}), torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), "
        f"Lightning {env['lightning'] or 'not installed'}, Python {env['python']}; {env['rounds']} interleaved rounds, "
        f"{env['steps']} timed steps after {env['warmup']} per fit; host time on {env['probe_steps']} launch-bound "
        f"steps; {env['time']}." + (" QUICK SMOKE RUN: the numbers mean nothing." if env["quick"] else ""),
    ]
    header = (
        "| variant | samples/s | throughput vs raw (95 % CI) | step ms | fit s | Lightning / Trainer time: fit, window "
        "| peak MiB | CPU us/step | host us/step | host overhead us/step | max weight diff vs raw |"
    )
    for name, variants in report["workloads"].items():
        lines += ["", f"## {name}: {report['descriptions'][name]}", "", header, "|" + "---|" * 11]
        for variant, info in variants.items():
            versus = "-"
            if "fit_time_vs_trainer" in info:
                fit, window = info["fit_time_vs_trainer"], info["window_time_vs_trainer"]
                versus = f"{_with_interval(fit)}, {_with_interval(window)}"
            throughput = _with_interval(info.get("throughput_vs_raw"))
            lines.append(
                f"| {variant} | {_cell(info['samples_per_s'], ',.0f')} | {throughput} "
                f"| {_cell(info['step_ms'], '.2f')} | {_cell(info['fit_s'], '.2f')} | {versus} "
                f"| {_cell(info['peak_mib'], ',.0f')} | {_cell(info['cpu_us_per_step'], ',.0f')} "
                f"| {_cell(info['host_us_per_step'], ',.0f')} | {_cell(info.get('host_overhead_us'), '+,.0f')} "
                f"| {_cell(info['max_weight_diff'], '.2e')} |"
            )
    lines += ["", "## Targets (issue 17)", ""]
    for found in report["verdicts"]:
        low, high = found["interval"]
        inside = "" if low is None or math.isnan(low) else f" ({low:.3f}-{high:.3f})"
        lines.append(
            f"- {found['workload']}: {found['claim']} = {found['value']:.3f}{inside}, target >= {found['bound']}: "
            f"{found['verdict']}"
        )
    for skipped in report["skipped"]:
        lines.append(f"- left out: {skipped}")
    return "\n".join(lines) + "\n"
