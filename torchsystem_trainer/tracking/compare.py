"""Comparing runs: final and best metrics, and the hyper-parameters that differ (``compare`` of the CLI).

"Best" is the minimum for a metric whose name contains ``loss`` or ``error`` (``validation/loss``) and the maximum
otherwise (``validation/accuracy``), as Lightning's ``ModelCheckpoint`` users choose ``mode``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torchsystem_trainer.tracking.records import Module, Run
from torchsystem_trainer.tracking.tracker import Tracker

__all__ = ["best_mode", "comparison", "hyperparameters_of"]


def best_mode(name: str) -> str:
    """``"min"`` for a name containing ``loss`` or ``error``, else ``"max"``."""
    lowered = name.lower()
    return "min" if "loss" in lowered or "error" in lowered else "max"


def _flatten(prefix: str, value: Any, flat: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, flat)
    else:
        flat[prefix] = value


def hyperparameters_of(run: Run, model_arguments: dict[str, Any], parts: Sequence[Module],
                       started: dict[str, Any]) -> dict[str, Any]:
    """The flat hyper-parameters a run started with: ``"model"``, ``"model/<argument>"``, and per part
    ``"<attribute>"`` (its name) and ``"<attribute>/<argument>"`` (an optimizer's first ``param_groups`` entry
    wins over its constructor arguments, so a changed learning rate shows).

    Args:
        run: the run.
        model_arguments: its model's constructor arguments.
        parts: every module record of its model, in the order written.
        started: run id -> start time of every run of the model (which parts were in effect for ``run``).
    """
    flat: dict[str, Any] = {"model": run.model_name}
    _flatten("model", model_arguments, flat)
    effective: dict[str, Module] = {}
    for part in parts:
        if started.get(part.run, run.started_at) <= run.started_at:
            effective[part.attribute] = part
    for attribute, part in effective.items():
        flat[attribute] = part.name
        settings = dict(part.arguments)
        if isinstance(part.hyperparameters, list) and part.hyperparameters:
            settings.update(part.hyperparameters[0])
        _flatten(attribute, settings, flat)
    return flat


def comparison(tracker: Tracker, run_ids: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The rows of ``compare``: one column per run; rows for identity, each metric's final and best value, and
    each hyper-parameter whose values differ between the runs.

    Raises:
        RunNotFoundError: for an id that matches no run, or several.
    """
    runs = [tracker.run(run_id) for run_id in run_ids]
    header = ["", *(run.id[:8] for run in runs)]
    rows: list[list[str]] = [
        ["experiment", *(run.experiment for run in runs)],
        ["model", *(f"{run.model_name} {run.model[:8]}" for run in runs)],
        ["status", *(run.status for run in runs)],
        ["epochs", *(f"{run.start_epoch}-{run.epoch}" for run in runs)],
    ]
    series: list[dict[str, list[float]]] = []
    for run in runs:
        values: dict[str, list[float]] = {}
        for metric in tracker.metrics(run.id):
            values.setdefault(f"{metric.phase}/{metric.name}", []).append(metric.value)
        series.append(values)
    for key in sorted({key for values in series for key in values}):
        mode = best_mode(key)
        rows.append([f"final {key}", *(_number(values[key][-1]) if key in values else "" for values in series)])
        rows.append([f"best {key} ({mode})", *(_number(_best(values.get(key, []), mode)) for values in series)])
    models = {model.hash: model for model in tracker.models()}
    flats = []
    for run in runs:
        parts = tracker.modules(run.model)
        started = {other.id: other.started_at for other in tracker.runs(model=run.model)}
        flats.append(hyperparameters_of(run, models[run.model].arguments, parts, started))
    for key in sorted({key for flat in flats for key in flat}):
        shown = [str(flat.get(key, "")) for flat in flats]
        if len(set(shown)) > 1:
            rows.append([key, *shown])
    return header, rows


def _best(values: list[float], mode: str) -> float | None:
    finite = [value for value in values if not math.isnan(value)]
    if not finite:
        return None
    return min(finite) if mode == "min" else max(finite)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
