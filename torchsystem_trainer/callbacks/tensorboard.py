"""``TensorBoardLogger``: a :class:`~torchsystem_trainer.callbacks.logger.Logger` writing TensorBoard event files,
in Lightning's layout::

    <save_dir>/<name>/version_<N>/events.out.tfevents.*

``save_dir`` defaults to ``trainer.default_root_dir / "tensorboard"``, ``name`` to the aggregate's class name (the
aggregate's identity, its registry hash, is the ``aggregate/id`` hyper-parameter). With ``version=None`` every
fit gets the next free ``version_N`` (see :mod:`~torchsystem_trainer.callbacks.log_folder`);
``Trainer.validate``/``test`` after a fit write into that fit's folder, and without one into the next free one.

What it writes: every key of the :class:`Logger` table as a scalar of that tag (``train/loss_step``,
``train/loss``, ``validation/accuracy``, ``epoch``, ``best/validation/loss``, ``test/loss``...), and the
hyper-parameters as the hparams plugin's session-start summary in the run's own folder (as Lightning's
``log_hyperparams`` does; ``SummaryWriter.add_hparams`` would write them into a separate timestamped run). No
experiment summary is written, so TensorBoard's HPARAMS tab builds it from every run: a column per hyper-parameter
of any run, and a metric column per scalar tag, showing its last value (the final results, the best monitored
value, the test results), so runs can be sorted and compared there.

The writer is flushed after each epoch and closed when the run ends (``FitEnded``, or ``StageEnded`` of a
``validate``/``test``), also when it raised or was interrupted. While it is open, :attr:`writer` is a
``SummaryWriter`` other callbacks may write to (``LearningRateMonitor`` does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchsystem_trainer.callbacks.hyperparameters import HParam, hyperparameters
from torchsystem_trainer.callbacks.log_folder import check_version, next_version, run_folder
from torchsystem_trainer.callbacks.logger import Logger, RunKind

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardLogger", "hyperparameters", "next_version"]


class TensorBoardLogger(Logger):
    """Write losses, phase results and hyper-parameters to TensorBoard event files (see the module docstring).

    Args:
        save_dir: the root of the logs; default ``trainer.default_root_dir / "tensorboard"``.
        name: the experiment's folder under ``save_dir``; default the aggregate's class name.
        version: ``None`` (the next free ``version_N`` at each fit), an ``int`` N (``version_N``) or a ``str``
            (the folder's name as given).
        log_every_n_steps: write ``train/loss_step`` every this many training batches (>= 1).
        log_hyperparameters: write the hyper-parameters at each fit's start.

    Attributes:
        log_dir: the folder of the current (or last) run's event files; ``None`` before the first run.
        writer: the open ``SummaryWriter`` during a run, else ``None``.

    Raises:
        ValueError: for ``log_every_n_steps`` < 1, or a ``version`` that is neither ``None``, an int >= 0 nor a
            non-empty string.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        version: int | str | None = None,
        log_every_n_steps: int = 50,
        log_hyperparameters: bool = True,
    ) -> None:
        super().__init__(log_every_n_steps, log_hyperparameters)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.name = name
        self.version = check_version("TensorBoardLogger", version)
        self.log_dir: Path | None = None
        self.writer: SummaryWriter | None = None
        self._fit_session = False

    def start(self, trainer: Any, aggregate: Any, run: RunKind) -> None:
        """Choose the run's folder (a new one for a fit) and open the writer.

        Raises:
            OSError: when the folder cannot be created.
        """
        if run == "fit" or self.log_dir is None:
            save_dir = self.save_dir or Path(trainer.default_root_dir) / "tensorboard"
            self.log_dir = run_folder(save_dir, self.name, self.version, aggregate)
        from torch.utils.tensorboard import SummaryWriter  # lazily: importing tensorboard costs ~0.5 s

        self._close()
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._fit_session = run == "fit"

    def log_hyperparams(self, params: Mapping[str, HParam]) -> None:
        """Write the hparams plugin's session-start summary: bools, numbers and strings as they are (torch's
        ``hparams`` would turn bools into numbers), ``None`` as ``"None"``."""
        self._file_writer().add_summary(_session_start(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Write each value as a scalar of its key's tag at ``step``."""
        writer = self._open_writer()
        for key, value in metrics.items():
            writer.add_scalar(key, value, step)

    def save(self) -> None:
        """Flush the event file."""
        if self.writer is not None:
            self.writer.flush()

    def finalize(self, status: str) -> None:
        """Write the session's end (its status, which the HPARAMS tab shows) after a fit, and close the writer."""
        if self.writer is not None and self._fit_session:
            self._file_writer().add_summary(_session_end(status))
        self._close()

    def _file_writer(self) -> Any:
        # SummaryWriter writes summaries through its FileWriter, the public `file_writer` attribute its __init__
        # creates; it has no public method for a summary built elsewhere.
        file_writer = getattr(self._open_writer(), "file_writer", None)
        if file_writer is None:
            import torch

            raise RuntimeError(f"torch {torch.__version__}: SummaryWriter has no file_writer to write hparams to")
        return file_writer

    def _open_writer(self) -> SummaryWriter:
        if self.writer is None:
            raise RuntimeError("TensorBoardLogger: no open writer (start was not called for this run)")
        return self.writer

    def _close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()


def _session_start(params: Mapping[str, HParam]) -> Any:
    """The hparams plugin's session-start summary, built as tensorboard's own ``summary_v2.hparams_pb`` builds it
    (its ``summary.session_start_pb`` needs TensorFlow)."""
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionStartInfo

    info = SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        if isinstance(value, bool):  # before int: a bool is an int
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    return _summary(metadata.SESSION_START_INFO_TAG, HParamsPluginData(session_start_info=info))


def _session_end(status: str) -> Any:
    """The hparams plugin's session-end summary: ``STATUS_SUCCESS`` for a fit that ended by a limit or a stop,
    ``STATUS_FAILURE`` for one that raised, ``STATUS_UNKNOWN`` for an interrupted one (a resumed fit continues
    it in another folder)."""
    from tensorboard.plugins.hparams import api_pb2, metadata
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    code = {"exception": api_pb2.STATUS_FAILURE, "interrupted": api_pb2.STATUS_UNKNOWN}.get(
        status, api_pb2.STATUS_SUCCESS
    )
    info = SessionEndInfo(status=code, end_time_secs=time.time())
    return _summary(metadata.SESSION_END_INFO_TAG, HParamsPluginData(session_end_info=info))


def _summary(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata

    return Summary(
        value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)]
    )
