"""``TensorBoardLogger``: the seed's tensorboard consumer as a callback, with Lightning's directory layout.

Where it writes (Lightning's ``TensorBoardLogger`` layout)::

    <save_dir>/<name>/version_<N>/events.out.tfevents.*

``save_dir`` defaults to ``trainer.default_root_dir / "tensorboard"``; ``name`` to the aggregate's identity
(``str(aggregate.id)``, e.g. its registry hash) when it has one, else its class name. With ``version=None`` every
``fit`` gets the next free ``version_N`` (0 when there is none; the largest existing N plus one otherwise, as
Lightning does); ``Trainer.validate``/``test`` after a fit write into that fit's directory.

What it writes, all on one x-axis, ``step`` = training batches since the run began (``trainer.progress.step``,
the ``BatchTrained.step`` counter; equal to Lightning's ``global_step`` without gradient accumulation):

==========================  ======================================  ========================================
tag                         value                                   step
==========================  ======================================  ========================================
``train/loss_step``         ``float(BatchTrained.loss)``            every ``log_every_n_steps``-th step
``train/<name>``            ``Trained.results[name]``               ``trainer.progress.step`` at phase end
``validation/<name>``       ``Validated.results[name]``             the same
``test/<name>``             ``Tested.results[name]``                the same
``epoch``                   0-based epoch (to map steps to epochs)  with each ``Trained``
hparams plugin data         registered parts' arguments (below)     once per ``fit``, at ``FitStarted``
==========================  ======================================  ========================================

Hyperparameters: for every attribute of the aggregate (submodules first, then other public attributes such as
the optimizer) whose class is registered (:func:`~torchsystem_trainer.registry.register`), ``"<attr>"`` is its
:func:`~torchsystem_trainer.registry.getname` and ``"<attr>/<argument>"`` each of its
:func:`~torchsystem_trainer.registry.getarguments`. Nested registered objects flatten the same way
(``"nn/activation"``, ``"nn/activation/inplace"``); plain dicts flatten by key; ints and floats stay numbers,
strings stay strings, and everything else (``bool``, ``None``, lists) is written as its ``str``. They are written
as TensorBoard's hparams summaries in the run's own directory (as Lightning's ``log_hyperparams`` does), so the
HPARAMS tab shows them and ``EventAccumulator.PluginTagToContent("hparams")`` reads them back.

The writer is flushed at every ``Iterated`` and closed at ``FitEnded``, which also ends fits that raised or
were interrupted. ``Trainer.validate`` and ``test`` outside a fit open it at ``StageStarted`` (creating the
directory) and close it at ``StageEnded``, whatever the reason they ended; ``predict`` writes nothing. Under
``fast_dev_run`` nothing is written and no directory is created.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.registry import UnregisteredError, getarguments, getname

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from torchsystem_trainer.events import (
        BatchTrained,
        FitEnded,
        FitStarted,
        Iterated,
        StageEnded,
        StageStarted,
        Tested,
        Trained,
        Validated,
    )

__all__ = ["TensorBoardLogger", "hyperparameters"]


class TensorBoardLogger(Callback):
    """Write losses, phase results and hyperparameters to TensorBoard event files (see the module docstring).

    Args:
        save_dir: the root of the logs; default ``trainer.default_root_dir / "tensorboard"``.
        name: the experiment's folder under ``save_dir``; default the aggregate's identity, else its class name.
        version: ``None`` (the next free ``version_N`` at each fit), an ``int`` N (``version_N``) or a ``str``
            (the folder's name as given).
        log_every_n_steps: write the training loss every this many training batches (>= 1). Reading a loss
            synchronises host and device, so the other batches' losses are never read.
        log_hyperparameters: write the registered parts' arguments at each fit's start.

    Attributes:
        log_dir: the folder of the current (or last) fit's event files; ``None`` before the first write.
        writer: the open ``SummaryWriter`` between ``FitStarted`` and ``FitEnded``, and between ``StageStarted``
            and ``StageEnded`` of ``validate``/``test``; else ``None``. Other callbacks (``LearningRateMonitor``)
            write their scalars through it.

    Raises:
        ValueError: for ``log_every_n_steps`` < 1, or a ``version`` that is neither ``None``, an int >= 0 nor a
            non-empty string.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        version: int | str | None = None,
        log_every_n_steps: int = 50,
        log_hyperparameters: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(
                f"TensorBoardLogger: log_every_n_steps={log_every_n_steps!r} is invalid; valid: an int >= 1"
            )
        valid_int = isinstance(version, int) and not isinstance(version, bool) and version >= 0
        if not (version is None or valid_int or (isinstance(version, str) and version)):
            raise ValueError(
                f"TensorBoardLogger: version={version!r} is invalid; valid: None, an int >= 0 or a non-empty str"
            )
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.name = name
        self.version = version
        self.log_every_n_steps = log_every_n_steps
        self.log_hyperparameters = bool(log_hyperparameters)
        self.log_dir: Path | None = None
        self.writer: SummaryWriter | None = None
        self._stage_writer = False  # the writer was opened by StageStarted, so StageEnded closes it

    # -- hooks ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Choose this fit's ``log_dir``, open the writer and write the hyperparameters."""
        if event.trainer.fast_dev_run:
            return
        self.log_dir = self._next_log_dir(event.trainer, event.aggregate)
        self.writer = _open(self.log_dir)
        if self.log_hyperparameters:
            params = hyperparameters(event.aggregate)
            if params:
                from torch.utils.tensorboard.summary import hparams

                # Into the run's own directory, as Lightning's log_hyperparams does; SummaryWriter.add_hparams
                # would write them, and copies of the metrics, into a separate timestamped run.
                file_writer = self.writer._get_file_writer()
                for summary in hparams(params, {}):
                    file_writer.add_summary(summary)

    def on_stage_started(self, event: StageStarted) -> None:
        """``validate``/``test`` outside a fit: open the writer in the last fit's ``log_dir`` (else the next free
        one). ``predict``, a run inside a fit that holds the writer open, and ``fast_dev_run`` open nothing."""
        if event.stage == "predict" or self.writer is not None or event.trainer.fast_dev_run:
            return
        if self.log_dir is None:
            self.log_dir = self._next_log_dir(event.trainer, event.aggregate)
        self.writer = _open(self.log_dir)
        self._stage_writer = True

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Every ``log_every_n_steps``-th step, write ``train/loss_step`` (one host-device sync)."""
        if self.writer is not None and event.step % self.log_every_n_steps == 0:
            self.writer.add_scalar("train/loss_step", float(event.loss.detach()), event.step)

    def on_trained(self, event: Trained) -> None:
        """Write ``train/<name>`` for each result, and ``epoch``."""
        self._write_results(event, "train")

    def on_validated(self, event: Validated) -> None:
        """Write ``validation/<name>`` for each result (in or outside a fit)."""
        self._write_results(event, "validation")

    def on_tested(self, event: Tested) -> None:
        """Write ``test/<name>`` for each result (``Trainer.test`` runs outside a fit)."""
        self._write_results(event, "test")

    def on_iterated(self, event: Iterated) -> None:
        """Flush the epoch's scalars to disk."""
        if self.writer is not None:
            self.writer.flush()

    def on_fit_ended(self, event: FitEnded) -> None:
        """Close the writer, whatever the reason the fit ended."""
        self._close()

    def on_stage_ended(self, event: StageEnded) -> None:
        """Close the writer ``StageStarted`` opened, whatever the reason ``validate``/``test`` ended."""
        if self._stage_writer:
            self._close()

    # -- helpers ----------------------------------------------------------------------------------------

    def _write_results(self, event: Trained | Validated | Tested, phase: str) -> None:
        if self.writer is not None:
            _add_results(self.writer, phase, event, event.trainer.progress.step)

    def _close(self) -> None:
        self._stage_writer = False
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()

    def _next_log_dir(self, trainer: Any, aggregate: Any) -> Path:
        root = (self.save_dir or Path(trainer.default_root_dir) / "tensorboard") / (self.name or _identity(aggregate))
        if isinstance(self.version, str):
            return root / self.version
        if isinstance(self.version, int):
            return root / f"version_{self.version}"
        return root / f"version_{next_version(root)}"


def next_version(root: Path) -> int:
    """The next free version number under ``root``: one more than the largest ``version_N`` there, else 0.

    Args:
        root: the experiment folder (``<save_dir>/<name>``); it need not exist.

    Returns:
        N >= 0.

    Raises:
        OSError: when ``root`` exists but cannot be listed.
    """
    if not root.is_dir():
        return 0
    taken = [
        int(entry.name[len("version_"):])
        for entry in root.iterdir()
        if entry.is_dir() and entry.name.startswith("version_") and entry.name[len("version_"):].isdigit()
    ]
    return max(taken) + 1 if taken else 0


def hyperparameters(aggregate: Any) -> dict[str, int | float | str]:
    """The captured constructor arguments of the aggregate's registered parts, flat (see the module docstring).

    Args:
        aggregate: the aggregate; its submodules and public attributes are inspected, the aggregate itself not.

    Returns:
        ``{"nn": "MLP", "nn/input_size": 784, ..., "optimizer": "Adam", "optimizer/lr": 0.001}``; empty when no
        part is registered.

    Raises:
        Nothing: unregistered parts are left out, by definition.
    """
    parts: dict[str, Any] = dict(aggregate.named_children()) if hasattr(aggregate, "named_children") else {}
    for attribute, value in vars(aggregate).items():
        if not attribute.startswith("_") and attribute not in parts:
            parts[attribute] = value
    flat: dict[str, int | float | str] = {}
    for attribute, part in parts.items():
        try:
            arguments = getarguments(part)
        except UnregisteredError:
            continue
        flat[attribute] = getname(part)
        for key, value in arguments.items():
            _flatten(f"{attribute}/{key}", value, flat)
    return flat


def _flatten(key: str, value: Any, flat: dict[str, int | float | str]) -> None:
    if isinstance(value, dict):
        if set(value) == {"name", "arguments"} and isinstance(value["arguments"], dict):  # a registered object
            flat[key] = str(value["name"])
            value = value["arguments"]
        for inner, item in value.items():
            _flatten(f"{key}/{inner}", item, flat)
    elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
        flat[key] = value
    else:
        flat[key] = str(value)


def _identity(aggregate: Any) -> str:
    try:
        identity = aggregate.id
    except (ValueError, TypeError, AttributeError):  # not initialized, or unregistered parts
        identity = None
    return type(aggregate).__name__ if identity is None else str(identity)


def _open(log_dir: Path) -> SummaryWriter:
    from torch.utils.tensorboard import SummaryWriter  # lazily: importing tensorboard costs ~0.5 s

    return SummaryWriter(log_dir=str(log_dir))


def _add_results(writer: SummaryWriter, phase: str, event: Trained | Validated | Tested, step: int) -> None:
    for name, value in event.results.items():
        writer.add_scalar(f"{phase}/{name}", value, step)
    if phase == "train":
        writer.add_scalar("epoch", event.epoch, step)
