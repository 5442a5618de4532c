"""``python -m torchsystem_trainer.tracking [--url URL] COMMAND``: the run store as aligned text tables.

Commands:

- ``experiments``: name, runs, created.
- ``models``: hash, name, epochs completed, steps, runs, constructor arguments.
- ``runs [--model HASH] [--experiment NAME] [--status STATUS]``: one line per run.
- ``metrics (RUN | --model HASH) [--phase PHASE] [--name NAME]``: one line per run and epoch, one column per
  ``<phase>/<name>``.
- ``compare RUN RUN...``: final and best metrics and the hyper-parameters that differ, side by side.
- ``plot --metric validation/loss RUN... [--output FILE]``: a PNG (needs matplotlib).

``RUN`` is a run id or any unique prefix of it (the 8 digits the tables show). The exit status is 0 on success,
2 for a bad command line, and 1 for an error (a missing store, an unknown run), with the message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from torchsystem_trainer.tracking.compare import comparison
from torchsystem_trainer.tracking.engine import StoreError
from torchsystem_trainer.tracking.schema import STATUSES
from torchsystem_trainer.tracking.tracker import RunNotFoundError, Tracker

__all__ = ["format_table", "main"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with two spaces between them; numbers right-aligned, text left-aligned.

    Args:
        header: the column titles.
        rows: the cells, as strings.

    Returns:
        The table, one line per row after the header, no trailing spaces.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [all(_is_number(row[i]) for row in rows if row[i] != "") and any(row[i] for row in rows)
               for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        aligned = (str(c).rjust(w) if n else str(c).ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True))
        return "  ".join(aligned).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(run_started: datetime, run_ended: datetime | None, heartbeat: datetime) -> str:
    seconds = ((run_ended or heartbeat) - run_started).total_seconds()
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.1f}m"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torchsystem_trainer.tracking",
                                     description="Read the run store written by RunTracker.")
    parser.add_argument("--url", default=None, help="SQLAlchemy URL of the store (default: sqlite:///runs/runs.db)")
    parser.add_argument("--stale-after", type=float, default=60.0,
                        help="seconds without a heartbeat after which a running run is reported crashed")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("experiments", help="experiments and their number of runs")
    commands.add_parser("models", help="models by hash, with their epochs completed")
    runs = commands.add_parser("runs", help="runs, oldest first")
    runs.add_argument("--model", help="a model's hash")
    runs.add_argument("--experiment", help="an experiment's name")
    runs.add_argument("--status", choices=STATUSES)
    metrics = commands.add_parser("metrics", help="metrics per epoch of a run, or of every run of a model")
    metrics.add_argument("run", nargs="?", help="a run id or unique prefix")
    metrics.add_argument("--model", help="a model's hash, instead of a run")
    metrics.add_argument("--phase")
    metrics.add_argument("--name")
    compare = commands.add_parser("compare", help="final and best metrics and differing hyper-parameters")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    plot = commands.add_parser("plot", help="a metric of runs against the epoch, as a PNG")
    plot.add_argument("--metric", required=True, help="'<phase>/<name>', e.g. validation/loss")
    plot.add_argument("--output", type=Path, default=None, help="the PNG (default: <phase>_<name>.png)")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command.

    Args:
        argv: the arguments without the program name; ``None`` reads ``sys.argv[1:]``.
        out: where tables go (default ``sys.stdout``).

    Returns:
        The exit status: 0, or 1 after printing an error to stderr.

    Raises:
        SystemExit: for ``--help`` or a bad command line (status 2).
    """
    options = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        with Tracker(options.url, stale_after=options.stale_after) as tracker:
            print(_command(tracker, options), file=out)
    except (StoreError, FileNotFoundError, RunNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _command(tracker: Tracker, options: argparse.Namespace) -> str:
    command = options.command
    if command == "experiments":
        return format_table(["EXPERIMENT", "RUNS", "CREATED"],
                            [[e.name, str(e.runs), _when(e.created_at)] for e in tracker.experiments()])
    if command == "models":
        return format_table(["MODEL", "NAME", "EPOCH", "STEP", "RUNS", "ARGUMENTS"],
                            [[m.hash, m.name, str(m.epoch), str(m.step), str(m.runs), json.dumps(m.arguments)]
                             for m in tracker.models()])
    if command == "runs":
        found = tracker.runs(model=options.model, experiment=options.experiment, status=options.status)
        return format_table(
            ["RUN", "EXPERIMENT", "MODEL", "NAME", "STAGE", "STATUS", "EPOCHS", "STEPS", "STARTED", "TIME"],
            [[r.id[:8], r.experiment, r.model[:8], r.model_name, r.stage, r.status, f"{r.start_epoch}-{r.epoch}",
              str(r.step), _when(r.started_at), _duration(r.started_at, r.ended_at, r.heartbeat_at)] for r in found],
        )
    if command == "metrics":
        if (options.run is None) == (options.model is None):
            raise ValueError("metrics: give a RUN or --model HASH (one of them)")
        values_of = tracker.metrics(options.run, model=options.model, phase=options.phase, name=options.name)
        columns = sorted({f"{m.phase}/{m.name}" for m in values_of})
        table: dict[tuple[str, int], dict[str, float]] = {}
        for m in values_of:
            table.setdefault((m.run, m.epoch), {})[f"{m.phase}/{m.name}"] = m.value
        return format_table(["RUN", "EPOCH", *columns],
                            [[run[:8], str(epoch), *(f"{values[c]:.6g}" if c in values else "" for c in columns)]
                             for (run, epoch), values in table.items()])
    if command == "compare":
        header, rows = comparison(tracker, options.runs)
        return format_table(header, rows)
    from torchsystem_trainer.tracking.plot import plot_metric

    output = options.output or Path(options.metric.replace("/", "_") + ".png")
    return f"wrote {plot_metric(tracker, options.metric, options.runs, output)}"
