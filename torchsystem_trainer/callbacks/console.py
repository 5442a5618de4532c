"""``ConsoleLines``: what a person reading a log file sees (CI, ``nohup``, a Slurm job), on by default
(``Trainer(verbose=False)`` turns it off), printed to ``sys.stderr`` by the process of global rank 0::

    Resumed from runs/checkpoints/last.ckpt at epoch 3/10, step 129
    epoch 4/10, step 172: train loss=0.3121 accuracy=0.9034 | validation loss=0.2876 accuracy=0.9133 | 1.31 s
    epoch 5/10, step 215: train loss=0.2637 accuracy=0.9210 | validation loss=0.2901 accuracy=0.9127 | 1.28 s
    Stopped early at epoch 5/10, step 215: EarlyStopping: validation/loss did not improve ... (best 0.2876)
    Checkpoints: runs/checkpoints (best: epoch=3-step=172.ckpt, validation/loss=0.2876; last: last.ckpt)
    Logs: runs/tensorboard/Classifier/version_1 (TensorBoardLogger)

Lines, in order:

- At ``FitStarted``, when the fit resumes from a checkpoint (``trainer.ckpt_path``): the file, the epoch and the
  step it resumes at; when it starts at an aggregate's epoch above 0 without one, that epoch.
- At each ``Iterated``: ``epoch k/N`` (``k``: the epochs completed, the aggregate's ``epoch``; ``N``:
  ``max_epochs``, left out when there is none or it is -1), the step (``trainer.global_step``: optimizer steps, what
  ``max_steps`` counts), every phase's results, the epoch's wall time. Only when no progress bar draws (the
  default bar draws only when stderr is a terminal, and shows the same results), unless ``epochs=True``.
- At each ``MidEpochValidated`` (``val_check_interval``), under the same condition as the epoch lines: where the
  epoch stands (``epoch k/N + b batches, step s``) and the validation's results.
- At ``StopDeferred``, always: a stop was requested before ``min_epochs``/``min_steps``, which of them holds it
  back, and that training goes on (Lightning logs the same).
- At ``FitEnded``, one line for how it ended: completed (epochs, steps, wall time), stopped (the callback's reason,
  as ``EarlyStopping.stopping_reason``, or ``trainer.should_stop``), ``max_steps``/``max_time`` reached,
  interrupted (the signal, or ``KeyboardInterrupt``), failed (the exception); then where the checkpoints went
  (each checkpoint callback's folder, best and last files) and where the logs went (each callback's ``log_dir``).
  It runs after the checkpoint callbacks, so the files they write at ``FitEnded`` are named.
- ``Trainer.validate``/``test`` outside a fit, when no bar draws: one line with the results and the wall time.

Lines are written with ``tqdm.write``, above any progress bar. The epoch lines cost nothing per step: they read
the results the events carry.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import IO, TYPE_CHECKING, Any, ClassVar

from torchsystem_trainer.callbacks.callback import Callback

if TYPE_CHECKING:
    from torchsystem_trainer.events import (
        EpochStarted,
        ExceptionRaised,
        FitEnded,
        FitStarted,
        Iterated,
        MidEpochValidated,
        StageEnded,
        StageStarted,
        StopDeferred,
        Tested,
        Validated,
    )

__all__ = ["ConsoleLines", "format_duration", "format_number", "format_results"]


class ConsoleLines(Callback):
    """Print a line per epoch and a line for each way a fit starts and ends (see the module docstring).

    Args:
        file: where to print; ``None`` for ``sys.stderr`` at the time of printing.
        epochs: print the epoch lines: ``None`` when no progress bar draws, ``True`` always, ``False`` never.

    Attributes:
        runs_after_checkpoints: ``True``: the Trainer runs this callback after the checkpoint callbacks, so the
            files they write at ``FitEnded`` are named.
        lines: every line printed, in order (for a program or a test to read).
    """

    rank_zero_only: ClassVar[bool] = True
    runs_after_checkpoints: ClassVar[bool] = True
    is_console_lines: ClassVar[bool] = True

    def __init__(self, file: IO[str] | None = None, epochs: bool | None = None) -> None:
        super().__init__()
        self.file = file
        self.epochs = epochs
        self.lines: list[str] = []
        self._epoch_lines = True
        self._fit_started = self._epoch_started = self._stage_started = 0.0
        self._exception: BaseException | None = None
        self._stage: str | None = None  # the validate/test running outside a fit

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Decide whether epoch lines print; say where a resumed fit starts."""
        trainer = event.trainer
        self._epoch_lines = self._shows_epochs(trainer)
        self._fit_started, self._exception = time.perf_counter(), None
        resumed = getattr(trainer, "ckpt_path", None)
        if resumed is not None:
            self._write(f"Resumed from {resumed} at {_position(trainer, event.aggregate, done=False)}")
        elif trainer.current_epoch > 0:
            self._write(f"Continuing {type(event.aggregate).__name__} at {_position(trainer, event.aggregate, False)}")

    def on_epoch_started(self, event: EpochStarted) -> None:
        """Start the epoch's clock."""
        self._epoch_started = time.perf_counter()

    def on_iterated(self, event: Iterated) -> None:
        """The epoch's line."""
        if self._epoch_lines:
            elapsed = format_duration(time.perf_counter() - self._epoch_started)
            results = format_results(event.results)
            self._write(f"{_position(event.trainer, event.aggregate, done=True)}: {results} | {elapsed}")

    def on_mid_epoch_validated(self, event: MidEpochValidated) -> None:
        """A mid-epoch validation's line."""
        if self._epoch_lines:
            where = _position(event.trainer, event.aggregate, done=False)
            self._write(f"{where}: {format_results(event.results)}")

    def on_stop_deferred(self, event: StopDeferred) -> None:
        """Say that a requested stop waits for ``min_epochs``/``min_steps``."""
        trainer = event.trainer
        waiting = []
        if event.min_epochs is not None and trainer.current_epoch < event.min_epochs:
            waiting.append(f"min_epochs={event.min_epochs}")
        if event.min_steps is not None and trainer.global_step < event.min_steps:
            waiting.append(f"min_steps={event.min_steps}")
        where = _position(trainer, event.aggregate, done=trainer.progress.batch == 0)
        self._write(f"Stop requested at {where}, deferred until {' and '.join(waiting)}: training goes on")

    def on_exception_raised(self, event: ExceptionRaised) -> None:
        """Keep the exception for the last line."""
        self._exception = event.exception

    def on_fit_ended(self, event: FitEnded) -> None:
        """How the fit ended, and where its files went."""
        trainer = event.trainer
        # let go of the exception: its traceback holds the fit's frames (loaders, their worker processes)
        exception, self._exception = self._exception, None
        self._write(_ending(trainer, event.aggregate, event.reason, exception, self._fit_started))
        for line in (_checkpoints(trainer), _logs(trainer)):
            if line:
                self._write(line)

    def on_stage_started(self, event: StageStarted) -> None:
        """Start the stage's clock."""
        self._epoch_lines = self._shows_epochs(event.trainer)
        self._stage, self._stage_started = event.stage, time.perf_counter()

    def on_validated(self, event: Validated) -> None:
        """Outside a fit: the results line (inside one, the epoch line has them)."""
        self._stage_line(event)

    def on_tested(self, event: Tested) -> None:
        """The results line."""
        self._stage_line(event)

    def on_stage_ended(self, event: StageEnded) -> None:
        """The stage is over."""
        self._stage = None

    # -- helpers ----------------------------------------------------------------------------------------

    def _shows_epochs(self, trainer: Any) -> bool:
        if self.epochs is not None:
            return self.epochs
        return not any(
            getattr(c, "is_progress_bar", False) and getattr(c, "is_enabled", True) for c in trainer.callbacks
        )

    def _stage_line(self, event: Validated | Tested) -> None:
        if self._epoch_lines and self._stage is not None:
            elapsed = format_duration(time.perf_counter() - self._stage_started)
            self._write(f"{self._stage}: {_pairs(event.results)} | {elapsed}")

    def _write(self, line: str) -> None:
        from tqdm import tqdm  # already loaded with torch

        self.lines.append(line)
        tqdm.write(line, file=self.file if self.file is not None else sys.stderr)


def format_results(results: dict[str, float]) -> str:
    """``{"train/loss": 0.5, "validation/loss": 0.4}`` -> ``"train loss=0.5000 | validation loss=0.4000"``:
    grouped by phase in the order given, each value as :func:`format_number` writes it.

    Args:
        results: ``"<phase>/<name>"`` keys (``Iterated.results``).

    Returns:
        The text.
    """
    groups: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        phase, separator, name = key.partition("/")
        if not separator:
            phase, name = "", key
        groups.setdefault(phase, {})[name] = value
    return " | ".join(f"{phase} {_pairs(values)}".strip() for phase, values in groups.items())


def _pairs(values: dict[str, float]) -> str:
    return " ".join(f"{name}={format_number(value)}" for name, value in values.items())


def format_number(value: float) -> str:
    """Four decimals where that keeps four significant digits, so epoch lines align (Keras prints ``0.3601``);
    otherwise four significant digits (``1.235e-05``, ``1.234e+05``).

    Args:
        value: a result.

    Returns:
        The text: ``0.36`` -> ``"0.3600"``, ``0`` -> ``"0.0000"``, ``nan`` -> ``"nan"``.
    """
    if value == 0 or 0.001 <= abs(value) < 10_000:
        return f"{value:.4f}"
    return f"{value:.4g}"


def format_duration(seconds: float) -> str:
    """``1.234`` -> ``"1.23 s"``, ``75`` -> ``"1 min 15 s"``, ``3725`` -> ``"1 h 2 min"``.

    Args:
        seconds: a duration >= 0.

    Returns:
        The text.
    """
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _position(trainer: Any, aggregate: Any, done: bool) -> str:
    """``epoch k/N, step s``: ``k`` the epochs completed (the aggregate's ``epoch``), ``+ b batches`` inside an
    unfinished epoch."""
    epoch = getattr(aggregate, "epoch", None)
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        epoch = trainer.current_epoch
    total = trainer.max_epochs
    text = f"epoch {epoch}" + ("" if total is None or total < 0 else f"/{total}")  # -1: no epoch limit
    batch = trainer.progress.batch
    if not done and batch:
        text += f" + {batch} batches"
    return f"{text}, step {trainer.global_step}"


def _ending(trainer: Any, aggregate: Any, reason: str, exception: BaseException | None, started: float) -> str:
    where = _position(trainer, aggregate, done=False)
    if reason == "completed":
        return f"Fit completed at {where} in {format_duration(time.perf_counter() - started)}"
    if reason == "max_steps":
        return f"Stopped: max_steps={trainer.max_steps} reached at {where}"
    if reason == "max_time":
        limit = trainer.max_time
        return f"Stopped: max_time={f'{limit:g} s' if limit < 60 else format_duration(limit)} elapsed at {where}"
    if reason == "stopped":
        for callback in trainer.callbacks:
            why = getattr(callback, "stopping_reason", None)
            if isinstance(why, str) and why and getattr(callback, "stopped_epoch", None) is not None:
                return f"Stopped early at {where}: {type(callback).__name__}: {why}"
        return f"Stopped at {where}: trainer.should_stop was set (by a callback, or the aggregate's StopIteration)"
    if reason == "interrupted":
        number = getattr(trainer, "received_signal", None)
        cause = _signal_name(number) if number is not None else type(exception).__name__ if exception else "a stop"
        return f"Interrupted by {cause} at {where}"
    return f"Failed at {where}: {type(exception).__name__ if exception else 'an exception'}: {exception}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _checkpoints(trainer: Any) -> str:
    parts = []
    for callback in trainer.callbacks:
        if not callable(getattr(callback, "checkpoint_path", None)):
            continue
        folder = getattr(callback, "dirpath", None)
        best, last = getattr(callback, "best_model_path", None), getattr(callback, "last_model_path", None)
        files = []
        if best:
            score, monitor = getattr(callback, "best_model_score", None), getattr(callback, "monitor", None)
            shown = f", {monitor}={format_number(score)}" if isinstance(score, float) and monitor else ""
            files.append(f"best: {_name(best)}{shown}")
        if last:
            files.append(f"last: {_name(last)}")
        parts.append(f"{folder} ({'; '.join(files) if files else 'none written'})")
    return "Checkpoints: " + ", ".join(parts) if parts else ""


def _logs(trainer: Any) -> str:
    folders: dict[str, list[str]] = {}
    for callback in trainer.callbacks:
        folder = getattr(callback, "log_dir", None)
        if folder is not None:
            folders.setdefault(str(folder), []).append(type(callback).__name__)
    parts = [f"{folder} ({', '.join(names)})" for folder, names in folders.items()]
    return "Logs: " + ", ".join(parts) if parts else ""


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]
