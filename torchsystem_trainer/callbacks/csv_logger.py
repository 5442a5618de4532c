"""``CSVLogger``: a :class:`~torchsystem_trainer.callbacks.logger.Logger` writing plain files, in Lightning's
``CSVLogger`` layout::

    <save_dir>/<name>/version_<N>/metrics.csv     one row per logged step (step values, an epoch's results...)
    <save_dir>/<name>/version_<N>/hparams.yaml    the hyper-parameters, one "key: value" line each

``save_dir`` defaults to ``trainer.default_root_dir / "csv"``, ``name`` to the aggregate's class name, ``version``
as for ``TensorBoardLogger`` (:mod:`~torchsystem_trainer.callbacks.log_folder`).

``metrics.csv`` has a ``step`` column, an ``epoch`` column, then one column per key in the order the keys first
appeared; a row leaves empty the keys it has no value for. Values written at the same step in one epoch (the
last training step's ``train/loss_step`` and the epoch's results) share a row. Rows are written at each epoch's
end and when the run ends (so a fit killed with ``SIGKILL`` loses at most its current epoch's rows). When a key
appears that the file has no column for (a test run after a fit, a value logged only later), the whole file is
rewritten with the wider header (to a temporary file, then renamed over the old one), so it stays a valid CSV
with one header. A run that reuses a folder (``version`` given, or ``validate``/``test`` after a fit) appends to
its ``metrics.csv``.

``hparams.yaml`` is written atomically at each fit's start: flat keys (quoted when YAML needs it), strings
double-quoted, ``None`` as ``null``, floats in a form YAML 1.1 and 1.2 both read as floats (``1.0e-05``,
``.inf``, ``.nan``); ``yaml.safe_load`` reads it back as the dict that was written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchsystem_trainer.callbacks.hyperparameters import HParam
from torchsystem_trainer.callbacks.log_folder import check_version, run_folder
from torchsystem_trainer.callbacks.logger import Logger, RunKind

__all__ = ["CSVLogger", "to_yaml"]

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "nan", "inf"}


class CSVLogger(Logger):
    """Write ``metrics.csv`` and ``hparams.yaml`` (see the module docstring).

    Args:
        save_dir: the root of the logs; default ``trainer.default_root_dir / "csv"``.
        name: the experiment's folder under ``save_dir``; default the aggregate's class name.
        version: ``None`` (the next free ``version_N`` at each fit), an ``int`` N or a ``str`` folder name.
        log_every_n_steps: write ``train/loss_step`` every this many training batches (>= 1).
        log_hyperparameters: write ``hparams.yaml`` at each fit's start.

    Attributes:
        log_dir: the folder of the current (or last) run; ``None`` before the first run.
        metrics_file: ``log_dir / "metrics.csv"``; ``None`` before the first run.

    Raises:
        ValueError: for ``log_every_n_steps`` < 1, or an invalid ``version``.
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

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
        self.version = check_version("CSVLogger", version)
        self.log_dir: Path | None = None
        self._rows: list[dict[str, Any]] = []  # logged, not yet written
        self._columns: list[str] = []  # the header of the file on disk

    @property
    def metrics_file(self) -> Path | None:
        """``log_dir / "metrics.csv"``, ``None`` before the first run."""
        return None if self.log_dir is None else self.log_dir / self.METRICS_FILE

    def start(self, trainer: Any, aggregate: Any, run: RunKind) -> None:
        """Choose the run's folder (a new one for a fit), create it, and read the header of an existing
        ``metrics.csv`` there.

        Raises:
            OSError: when the folder cannot be created or the file cannot be read.
        """
        if run == "fit" or self.log_dir is None:
            save_dir = self.save_dir or Path(trainer.default_root_dir) / "csv"
            self.log_dir = run_folder(save_dir, self.name, self.version, aggregate)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._rows = []
        self._columns = _header(self.log_dir / self.METRICS_FILE)

    def log_hyperparams(self, params: Mapping[str, HParam]) -> None:
        """Write ``hparams.yaml`` (atomically: a temporary file renamed over it)."""
        _write_atomically(self._folder() / self.HPARAMS_FILE, to_yaml(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Keep a row for the next :meth:`save`; values at the step of the previous row join it when they name
        other keys."""
        self._folder()
        last = self._rows[-1] if self._rows else None
        if last is not None and last["step"] == step and not (set(metrics) & set(last)):
            last.update(metrics)
        else:
            self._rows.append({"step": step, **metrics})

    def save(self) -> None:
        """Write the kept rows: appended under the file's header, or the whole file rewritten with a wider one.

        Raises:
            OSError: when the file cannot be written.
        """
        if not self._rows:
            return
        path = self._folder() / self.METRICS_FILE
        rows, self._rows = self._rows, []
        keys = [key for row in rows for key in row]
        if self._columns and set(keys) <= set(self._columns):
            with open(path, "a", newline="", encoding="utf-8") as file:
                csv.DictWriter(file, self._columns).writerows(rows)
            return
        old = _read_rows(path) if self._columns else []
        columns = _order([*self._columns, *keys])
        _write_atomically(path, _csv_text(columns, [*old, *rows]))
        self._columns = columns

    def finalize(self, status: str) -> None:
        """Write any kept rows (the base calls :meth:`save` first)."""
        self.save()

    def _folder(self) -> Path:
        if self.log_dir is None:
            raise RuntimeError("CSVLogger: no folder yet (start was not called)")
        return self.log_dir


def to_yaml(params: Mapping[str, HParam]) -> str:
    """Flat hyper-parameters as YAML, one ``key: value`` line each (see the module docstring).

    Args:
        params: ``{key: bool | int | float | str | None}``.

    Returns:
        The document, ending with a newline (``"{}\\n"`` when ``params`` is empty).
    """
    if not params:
        return "{}\n"
    return "".join(f"{_yaml_key(key)}: {_yaml_value(value)}\n" for key, value in params.items())


def _yaml_key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key)


def _yaml_value(value: HParam) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # 1e-05: YAML 1.1 (PyYAML) reads a float only with a dot
            text = f"{mantissa}.0e{exponent}"
        return text
    return json.dumps(str(value))


def _header(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return next(csv.reader(file), [])


def _read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _order(keys: list[str]) -> list[str]:
    unique = list(dict.fromkeys(keys))
    first = [key for key in ("step", "epoch") if key in unique]
    return first + [key for key in unique if key not in first]


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file and rename it over ``path``: a reader sees the old file or the new one, never half
    of one. No ``fsync``: these are logs, not checkpoints, and a sync costs a short fit milliseconds."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)
