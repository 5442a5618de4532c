"""``RichProgressBar``: the progress bars drawn with ``rich`` (Lightning's ``RichProgressBar``), for users of rich.

The same bars as ``ProgressBar`` (see :mod:`~torchsystem_trainer.callbacks.progress_base`: one per phase, the
training bar showing the mean loss since its last drawing with one host read per drawing, each bar its phase's
results at its end), as rows of one ``rich.progress.Progress`` display: title, bar, ``batches/total``, elapsed and
remaining time, values. The display is refreshed only when a bar is drawn (no background refresh thread), started
at the first phase and stopped at ``FitEnded``/``StageEnded``.

``rich`` is an optional extra (``pip install 'torchsystem-trainer[rich]'``); it is imported when the first bar
opens.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from torchsystem_trainer.callbacks.progress_base import ProgressBarBase

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from torchsystem_trainer.events import FitEnded, StageEnded

__all__ = ["RichProgressBar"]


class RichProgressBar(ProgressBarBase):
    """Draw each phase's bar as a row of a ``rich`` progress display (see the module docstring).

    Args:
        refresh_rate: redraw a bar every this many batches at most (>= 0); 0 disables the bars.
        leave: keep each finished phase's row; ``False`` removes it when its phase ends.
        console: the ``rich.console.Console`` to draw on; ``None`` for one on ``sys.stderr``.
        mininterval: the least time between two drawings, in seconds.

    Attributes:
        progress: the ``rich.progress.Progress`` display while a run draws, else ``None``.

    Raises:
        ModuleNotFoundError: when ``rich`` is not installed, naming the extra that installs it.
        ValueError: for ``refresh_rate`` that is not an int >= 0, or a negative ``mininterval``.
    """

    def __init__(
        self, refresh_rate: int = 1, leave: bool = True, console: Console | None = None, mininterval: float = 0.1
    ) -> None:
        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError(
                "RichProgressBar needs rich: pip install 'torchsystem-trainer[rich]' (or use ProgressBar, tqdm's)",
                name="rich",
            )
        super().__init__(refresh_rate, mininterval)
        self.leave = bool(leave)
        self.console = console
        self.progress: Progress | None = None
        self._task: TaskID | None = None

    def open_bar(self, title: str, total: int | None) -> None:
        """Add the phase's row (starting the display first, at a run's first phase)."""
        if self.progress is None:
            self.progress = _display(self.console)
            self.progress.start()
        self._task = self.progress.add_task(title, total=total, values="")
        self.progress.refresh()

    def draw(self, count: int, values: dict[str, float]) -> None:
        """Move the row to ``count``, show ``values``, and refresh the display."""
        if self.progress is not None and self._task is not None:
            self.progress.update(self._task, completed=count, values=_format(values))
            self.progress.refresh()

    def close_bar(self, count: int, results: dict[str, float] | None) -> None:
        """Show the final count and the results; remove the row unless ``leave``."""
        progress, task, self._task = self.progress, self._task, None
        if progress is None or task is None:
            return
        fields: dict[str, Any] = {} if results is None else {"values": _format(results)}
        progress.update(task, completed=count, **fields)
        if not self.leave:
            progress.remove_task(task)
        progress.refresh()

    def on_fit_ended(self, event: FitEnded) -> None:
        """Close any open row and stop the display."""
        super().on_fit_ended(event)
        self._stop()

    def on_stage_ended(self, event: StageEnded) -> None:
        """Close any open row and stop the display."""
        super().on_stage_ended(event)
        self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            progress, self.progress = self.progress, None
            progress.stop()


def _display(console: Console | None) -> Progress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[values]}"),
        console=console if console is not None else Console(stderr=True),
        auto_refresh=False,
    )


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in values.items())
