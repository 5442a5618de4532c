"""``plot``: a metric of several runs against the epoch, as a PNG (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torchsystem_trainer.tracking.tracker import Tracker

__all__ = ["plot_metric"]


def plot_metric(tracker: Tracker, metric: str, run_ids: Sequence[str], output: str | Path) -> Path:
    """Draw ``metric`` (``"validation/loss"``: phase, then name) of each run against its epochs.

    Args:
        tracker: the store.
        metric: ``"<phase>/<name>"``.
        run_ids: run ids or unique prefixes, one line each.
        output: the PNG file to write (its folder is created).

    Returns:
        The file written.

    Raises:
        ValueError: for a ``metric`` without a ``/``, or one that none of the runs recorded.
        ImportError: when matplotlib is not installed (``pip install torchsystem-trainer[plot]``).
        RunNotFoundError: for an id that matches no run, or several.
    """
    phase, slash, name = metric.partition("/")
    if not slash or not phase or not name:
        raise ValueError(f"plot: metric={metric!r} is invalid; valid: '<phase>/<name>', e.g. 'validation/loss'")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise ImportError("plot needs matplotlib: pip install torchsystem-trainer[plot]") from error
    figure, axes = pyplot.subplots(figsize=(7, 4))
    drawn = 0
    try:
        for run_id in run_ids:
            run = tracker.run(run_id)
            points = tracker.metrics(run.id, phase=phase, name=name)
            if points:
                axes.plot([p.epoch for p in points], [p.value for p in points], marker="o", markersize=3,
                          label=f"{run.id[:8]} ({run.model_name}, {run.experiment})")
                drawn += 1
        if not drawn:
            raise ValueError(f"plot: none of the runs {list(run_ids)} recorded {metric!r}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        axes.legend()
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        return path
    finally:
        pyplot.close(figure)
