"""``ProgressBar``: tqdm bars, one per phase per epoch; the Trainer's default when stderr is a terminal.

What is drawn and when is :class:`~torchsystem_trainer.callbacks.progress_base.ProgressBarBase`'s: the training
bar shows the mean training loss since its previous drawing (one host read per drawing, never one per step), every
bar shows its phase's results when the phase ends (``loss=0.693, accuracy=0.75``, numbers formatted by tqdm).

Bars come from ``tqdm.auto``: a notebook gets a widget bar (where ``ipywidgets`` is installed), a terminal a text
bar. tqdm is imported when the first bar opens, not when this module is imported. ``RichProgressBar`` draws the
same with ``rich``.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

from torchsystem_trainer.callbacks.progress_base import ProgressBarBase

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["ProgressBar"]


class ProgressBar(ProgressBarBase):
    """Draw a tqdm bar for every phase (see the module docstring); Lightning's ``TQDMProgressBar``.

    Args:
        refresh_rate: redraw a bar every this many batches at most (>= 0); 0 disables the bar altogether
            (Lightning's ``TQDMProgressBar(refresh_rate=0)``).
        leave: keep each finished bar on screen (tqdm's ``leave``); ``False`` erases it when its phase ends.
        file: where to draw; ``None`` is tqdm's default, ``sys.stderr``. Any object with ``write`` and ``flush``
            (an ``io.StringIO`` in tests).
        mininterval: the least time between two drawings of a bar, in seconds (tqdm's ``mininterval``), so a fast
            loop does not write a line per batch; 0 redraws at every ``refresh_rate``-th batch.

    Attributes:
        is_progress_bar: ``True``; the Trainer adds no default bar when a callback says so.
        bar: the ``tqdm`` of the running phase, ``None`` between phases.

    Raises:
        ValueError: for ``refresh_rate`` that is not an int >= 0, or a negative ``mininterval``.
    """

    def __init__(
        self, refresh_rate: int = 1, leave: bool = True, file: IO[str] | None = None, mininterval: float = 0.1
    ) -> None:
        super().__init__(refresh_rate, mininterval)
        self.leave = bool(leave)
        self.file = file
        self.bar: tqdm[Any] | None = None

    def open_bar(self, title: str, total: int | None) -> None:
        """Open a tqdm bar (drawn at once, at 0)."""
        from tqdm.auto import tqdm  # lazily: keeps `import torchsystem_trainer` light

        self.bar = tqdm(
            total=total,
            desc=title,
            leave=self.leave,
            file=self.file,
            dynamic_ncols=True,
            unit="batch",
            mininterval=self.mininterval,
            miniters=1,
        )

    def draw(self, count: int, values: dict[str, float]) -> None:
        """Move the bar to ``count`` and redraw it with ``values`` as its postfix."""
        bar = self.bar
        if bar is not None:
            bar.n = count
            if values:
                bar.set_postfix(values, refresh=False)
            bar.refresh()

    def close_bar(self, count: int, results: dict[str, float] | None) -> None:
        """Show the final count and the results, and close the bar (tqdm draws it once more when ``leave``)."""
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.n = count
            if results is not None:
                bar.set_postfix(results, refresh=False)
            bar.close()
