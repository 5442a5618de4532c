"""``ProgressBar``: one tqdm bar per phase per epoch, the Trainer's default when the output is a terminal.

Each phase (``PhaseStarted``) opens a bar whose total is ``PhaseStarted.batches`` (the loader's length after
``limit_*_batches``; no total, so no percentage, for a loader without a length). Its description follows
Lightning's ``TQDMProgressBar``: ``"Epoch <epoch>"`` (0-based) for training, ``"Validation"``, ``"Test"`` and
``"Predict"`` for the others. The bar is redrawn every ``refresh_rate`` batches and at the phase's end, where
its postfix shows the phase's results (``loss=0.693, accuracy=0.75``, numbers formatted by tqdm). A validation
inside an epoch (``val_check_interval``) draws its bar below the epoch's, which stays open, and erases it when done.

No per-batch loss is shown: reading a loss tensor synchronises host and device, and a progress bar must not slow
the loop. The batch counter comes from the events' ``batch`` index, a host int. The bar is closed at its phase's
end, when the next phase starts, and at ``FitEnded`` and ``StageEnded`` (so also when a fit, ``validate``,
``test`` or ``predict`` raised or was interrupted).

tqdm is imported when the first bar opens, not when this module is imported.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, ClassVar

from torchsystem_trainer.callbacks.callback import Callback

if TYPE_CHECKING:
    from tqdm import tqdm

    from torchsystem_trainer.events import (
        BatchPredicted,
        BatchTested,
        BatchTrained,
        BatchValidated,
        FitEnded,
        PhaseStarted,
        Predicted,
        StageEnded,
        Tested,
        Trained,
        Validated,
    )

__all__ = ["ProgressBar"]

_TITLES = {"validation": "Validation", "test": "Test", "predict": "Predict"}


class ProgressBar(Callback):
    """Draw a tqdm progress bar for every phase (see the module docstring).

    Args:
        refresh_rate: redraw the bar every this many batches (>= 0); 0 disables the bar altogether
            (Lightning's ``TQDMProgressBar(refresh_rate=0)``).
        leave: keep each finished bar on screen (tqdm's ``leave``); ``False`` erases it when its phase ends.
        file: where to draw; ``None`` is tqdm's default, ``sys.stderr``. Any object with ``write`` and ``flush``
            (an ``io.StringIO`` in tests).
        mininterval: the least time between two redraws, in seconds (tqdm's ``mininterval``), so a fast loop
            does not write a line per batch; 0 redraws at every ``refresh_rate``-th batch.

    Attributes:
        is_progress_bar: ``True``; the Trainer adds no default bar when a callback says so.
        bar: the ``tqdm`` of the running phase, ``None`` between phases.

    Raises:
        ValueError: for ``refresh_rate`` that is not an int >= 0.
    """

    is_progress_bar: ClassVar[bool] = True
    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self, refresh_rate: int = 1, leave: bool = True, file: IO[str] | None = None, mininterval: float = 0.1
    ) -> None:
        super().__init__()
        if isinstance(refresh_rate, bool) or not isinstance(refresh_rate, int) or refresh_rate < 0:
            raise ValueError(f"ProgressBar: refresh_rate={refresh_rate!r} is invalid; valid: an int >= 0 (0 disables)")
        self.refresh_rate = refresh_rate
        self.leave = bool(leave)
        self.file = file
        self.mininterval = float(mininterval)
        self.bar: tqdm[Any] | None = None
        self._training: tqdm[Any] | None = None  # the epoch's bar, kept while a mid-epoch validation draws its own
        self._phase: str | None = None

    @property
    def is_enabled(self) -> bool:
        """Whether bars are drawn (``refresh_rate > 0``)."""
        return self.refresh_rate > 0

    # -- hooks ------------------------------------------------------------------------------------------

    def on_phase_started(self, event: PhaseStarted) -> None:
        """Open the phase's bar, closing any bar a previous phase left open (but the training bar of a validation
        inside its epoch)."""
        inside = event.phase == "validation" and self.bar is not None and self._phase == "train"
        if inside:
            self._training, self.bar = self.bar, None
        else:
            self._close()
        self._phase = event.phase
        if not self.is_enabled:
            return
        from tqdm import tqdm  # lazily: keeps `import torchsystem_trainer` light

        description = f"Epoch {event.epoch}" if event.phase == "train" else _TITLES.get(event.phase, event.phase)
        self.bar = tqdm(
            total=event.batches,
            desc=description,
            leave=self.leave and not inside,
            file=self.file,
            dynamic_ncols=True,
            unit="batch",
            mininterval=self.mininterval,
            miniters=1,
        )

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Count the batch; redraw every ``refresh_rate`` batches."""
        self._advance(event.batch + 1)

    def on_batch_validated(self, event: BatchValidated) -> None:
        """Count the batch; redraw every ``refresh_rate`` batches."""
        self._advance(event.batch + 1)

    def on_batch_tested(self, event: BatchTested) -> None:
        """Count the batch; redraw every ``refresh_rate`` batches."""
        self._advance(event.batch + 1)

    def on_batch_predicted(self, event: BatchPredicted) -> None:
        """Count the batch; redraw every ``refresh_rate`` batches."""
        self._advance(event.batch + 1)

    def on_trained(self, event: Trained) -> None:
        """Show the training results and close the bar."""
        self._finish(event.results)

    def on_validated(self, event: Validated) -> None:
        """Show the validation results and close the bar; back to the epoch's bar after a mid-epoch validation."""
        self._finish(event.results)
        if self._training is not None:
            self.bar, self._training, self._phase = self._training, None, "train"

    def on_tested(self, event: Tested) -> None:
        """Show the test results and close the bar."""
        self._finish(event.results)

    def on_predicted(self, event: Predicted) -> None:
        """Close the bar."""
        self._finish({})

    def on_fit_ended(self, event: FitEnded) -> None:
        """Close a bar the fit left open (it raised, was interrupted, or stopped mid-phase)."""
        self._close()

    def on_stage_ended(self, event: StageEnded) -> None:
        """Close a bar ``validate``, ``test`` or ``predict`` left open (it raised or was interrupted)."""
        self._close()

    # -- helpers ----------------------------------------------------------------------------------------

    def _advance(self, count: int) -> None:
        bar = self.bar
        if bar is None:
            return
        if count % self.refresh_rate == 0:
            bar.update(count - bar.n)  # tqdm redraws at most every mininterval: no line per batch
        else:
            bar.n = count  # counted, drawn at the next refresh or when the phase ends

    def _finish(self, results: dict[str, float]) -> None:
        bar = self.bar
        if bar is not None:
            bar.set_postfix(results, refresh=False)
            self.bar = None
            bar.close()  # tqdm's close draws the final state when leave=True

    def _close(self) -> None:
        for bar in (self.bar, self._training):
            if bar is not None:
                bar.close()
        self.bar = self._training = None
