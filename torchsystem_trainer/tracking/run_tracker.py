"""``RunTracker``: the callback that writes every fit into the run store.

A consumer of the Trainer's events (:mod:`torchsystem_trainer.events`) that runs in the process of global rank 0
only. What it writes, and when (each line one transaction, run by the writer's thread in this order: the training
thread does not wait for the store; a fit's end waits until everything is written):

=======================  ==================================================================================
event                    written
=======================  ==================================================================================
``FitStarted``           the experiment and the model (by its identity, ``aggregate.id``) when new; the run
                         (status ``running``, host, pid, world size, precision, versions); each criterion,
                         optimizer, scheduler whose settings differ from the model's last record, from the
                         aggregate's epoch on. Runs found dead are marked ``crashed``
``Trained``,             the phase's results as metrics (``epoch``: the aggregate's, 0-based; ``step``: the
``Validated``,           run's training batches) and the phase's iteration (the loader's identity)
``Tested``
``Iterated``             the run's and the model's epochs completed and steps; checkpoint files written
``FitEnded``             the run's status (``completed`` for ``completed``/``max_steps``/``max_time``,
                         ``stopped``, ``interrupted``, ``failed`` for ``exception``) and end time
batch events             at most every ``heartbeat_interval`` seconds, the heartbeat (and the run's step)
=======================  ==================================================================================

Nothing is written per step except that heartbeat. When the aggregate logs values with ``on_step=True``
(``Aggregate.log``), those of every ``log_every_n_steps``-th batch are kept (as tensors, unread) and written with
the phase's results, in its transaction, read from the device at once (or in a transaction of their own every
200 rows): metrics named ``"<name>_step"`` at that batch's ``step`` (training), or at the count of the phase's
batches in the run (validation, test), as the loggers write them.

A fit resumed from a checkpoint (``ckpt_path=...``) continues the run the checkpoint was written by (the run's id is
this callback's ``state_dict``); any other fit is a new run, of the same model when the aggregate's identity is the
same, starting at the aggregate's ``epoch``.
``Trainer.validate``/``test`` after a fit add their results to that fit's run; without one they are runs of
their own (``stage`` ``"validate"``/``"test"``). Under ``fast_dev_run`` nothing is written.

The store never stops training: see :class:`~torchsystem_trainer.tracking.writer.Writer` (bounded retries, then a
warning and the rows kept in memory). Only opening the store fails, at construction when a ``url`` is given, else
at ``FitStarted`` (then the fit fails before any batch).

Checkpoints are seen through ``ModelCheckpoint``'s public attributes (``best_k_models``, ``last_model_path``,
``monitor``, ``dirpath``) at each epoch's start and at the fit's end: a file written at an epoch's end is recorded
with that epoch and step exactly; one written every ``every_n_steps`` with the step of the next epoch boundary.
"""

from __future__ import annotations

import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import torch
from typing_extensions import override

from torchsystem_trainer.callbacks.callback import Callback
from torchsystem_trainer.events import (
    BatchTested,
    BatchTrained,
    BatchValidated,
    EpochStarted,
    ExceptionRaised,
    FitEnded,
    FitStarted,
    Iterated,
    StageEnded,
    StageStarted,
    Tested,
    Trained,
    Validated,
)
from torchsystem_trainer.tracking import units
from torchsystem_trainer.tracking.describe import describe_loader, describe_model, describe_modules
from torchsystem_trainer.tracking.engine import default_url, library_version, now_ms, open_engine, redact
from torchsystem_trainer.tracking.writer import Writer
from torchsystem_trainer.trainer.logged import read_values

__all__ = ["RunTracker"]

_STEP_ROWS = 200  # step values kept before they are written in a transaction of their own

_STATUS = {"completed": "completed", "max_steps": "completed", "max_time": "completed", "stopped": "stopped",
           "interrupted": "interrupted", "exception": "failed"}


class RunTracker(Callback):
    """Write experiments, models, runs, their modules, iterations, metrics and checkpoints into the run store.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path/runs.db``, ``postgresql+psycopg://user:pw@host/db``); ``None``:
            SQLite at ``<trainer.default_root_dir>/runs.db``, opened when the fit starts.
        experiment: the experiment the runs belong to (any non-empty string).
        heartbeat_interval: seconds between heartbeats at most (> 0); written from batch events.
        retry_timeout: seconds to retry a locked or unreachable store before keeping rows in memory (>= 0).
        stale_after: seconds without a heartbeat after which another ``running`` run counts as ``crashed`` (> 0).
        log_every_n_steps: keep the aggregate's step values of every this many batches (an int >= 1).

    Attributes:
        run_id: the current (or last) run's id, ``None`` before the first.
        url: the store's URL (password hidden), once known.

    Raises:
        ValueError: for an empty ``experiment``, a non-positive interval or ``log_every_n_steps`` < 1, naming the
            argument.
        StoreError: when ``url`` is given and the store cannot be opened (the message names the URL, password
            hidden, and the cause); ``SchemaVersionError`` when a newer library wrote it.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self,
        url: str | None = None,
        experiment: str = "default",
        *,
        heartbeat_interval: float = 5.0,
        retry_timeout: float = 10.0,
        stale_after: float = 60.0,
        log_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"RunTracker: log_every_n_steps={log_every_n_steps!r} is invalid; valid: an int >= 1")
        self.log_every_n_steps = log_every_n_steps
        if not isinstance(experiment, str) or not experiment:
            raise ValueError(f"RunTracker: experiment={experiment!r} is invalid; valid: a non-empty str")
        for name, value, low in (("heartbeat_interval", heartbeat_interval, 0.0), ("stale_after", stale_after, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(f"RunTracker: {name}={value!r} is invalid; valid: a number of seconds > 0")
        if isinstance(retry_timeout, bool) or not isinstance(retry_timeout, (int, float)) or retry_timeout < 0:
            raise ValueError(f"RunTracker: retry_timeout={retry_timeout!r} is invalid; valid: a number of seconds >= 0")
        self.experiment = experiment
        self.heartbeat_interval = float(heartbeat_interval)
        self.retry_timeout = float(retry_timeout)
        self.stale_after = float(stale_after)
        self._url = url
        self.url: str | None = None if url is None else redact(url)
        self.run_id: str | None = None
        self._writer: Writer | None = None
        self._loaded_run_id: str | None = None
        self._model_hash = ""
        self._active = False
        self._stage_run = False
        self._failed = False
        self._next_beat = 0.0
        self._seen: dict[str, tuple[int, int]] = {}
        self._files: list[dict[str, Any]] = []
        self._checkpoint_dir: str | None = None
        self._steps: list[tuple[str, int, int, dict[str, Any]]] = []  # (phase, epoch, step, unread values)
        self._phase_batches: dict[str, int] = {}
        if url is not None:
            self._open(url)

    # -- the store --------------------------------------------------------------------------------------

    def _open(self, url: str) -> Writer:
        if self._writer is None or self._writer.engine.url != _parsed(url):
            busy = max(0.05, min(5.0, self.retry_timeout))
            self._writer = Writer(open_engine(url, busy_timeout=busy), self.retry_timeout)
            self.url = self._writer.url
        return self._writer

    def _submit(self, description: str, unit: units.Unit) -> None:
        if self._writer is not None:
            self._writer.submit(description, unit)
            self._next_beat = time.monotonic() + self.heartbeat_interval

    def flush(self) -> bool:
        """Write now what the store did not accept before (bounded retries); a fit's end and the next fit do it
        too.

        Returns:
            Whether nothing is left in memory.
        """
        return True if self._writer is None else self._writer.flush()

    @property
    def pending(self) -> int:
        """Units of work kept in memory because the store did not accept them yet."""
        return 0 if self._writer is None else len(self._writer.pending)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (a data-parallel launcher sends callbacks to its processes): the engine and the rows kept in
        memory stay in this process; a process opens the store again at its fit's start."""
        state = dict(self.__dict__)
        state["_writer"] = None
        return state

    # -- a fit ------------------------------------------------------------------------------------------

    def on_fit_started(self, event: FitStarted) -> None:
        """Open the store, then write the experiment, the model, the run and the modules that changed.

        Raises:
            StoreError: when the store cannot be opened (no ``url`` was given at construction).
            ModelIdentityError: when the aggregate has no identity (see ``describe_model``).
        """
        trainer, aggregate = event.trainer, event.aggregate
        self._active = not trainer.fast_dev_run
        if not self._active:
            return
        self._open(self._url or default_url(trainer.default_root_dir))
        model = describe_model(aggregate)
        self._model_hash = model["hash"]
        resume = self._loaded_run_id is not None and trainer.progress.step > 0
        self.run_id = self._loaded_run_id if resume else uuid.uuid4().hex
        self._loaded_run_id, self._failed, self._stage_run = None, False, False
        self._steps, self._phase_batches = [], {}
        self._submit("start of the run", units.start_run(
            self._run_columns(trainer, aggregate, "fit"), model, describe_modules(aggregate, model["hash"]),
            resume, now_ms(), self.stale_after,
        ))
        if resume:  # a checkpoint written as the last fit ended (an interruption's last.ckpt) is seen only now
            self._observe_checkpoints(trainer, aggregate)
            if self._files and self.run_id is not None:
                self._submit("checkpoints", units.record_checkpoints(self.run_id, self._take_files(), now_ms()))

    def on_epoch_started(self, event: EpochStarted) -> None:
        """Note the checkpoint files written at the last epoch's end (``ModelCheckpoint`` runs after this)."""
        if self._active:
            self._observe_checkpoints(event.trainer, event.aggregate)

    def on_batch_trained(self, event: BatchTrained) -> None:
        """Keep the step values of every ``log_every_n_steps``-th batch; the heartbeat, at most every
        ``heartbeat_interval`` seconds."""
        if not self._active:
            return
        if event.step % self.log_every_n_steps == 0:
            self._keep_steps(event.trainer, "train", event.epoch, event.step)
        if time.monotonic() >= self._next_beat:
            self._beat(event.trainer)

    def on_batch_validated(self, event: BatchValidated) -> None:
        """Keep step values, as for training; the heartbeat during long validations."""
        self._evaluation_batch(event, "validation")

    def on_batch_tested(self, event: BatchTested) -> None:
        """Keep step values, as for training; the heartbeat during long tests."""
        self._evaluation_batch(event, "test")

    def _evaluation_batch(self, event: BatchValidated | BatchTested, phase: str) -> None:
        if not self._active:
            return
        count = self._phase_batches[phase] = self._phase_batches.get(phase, 0) + 1
        if count % self.log_every_n_steps == 0:
            self._keep_steps(event.trainer, phase, event.epoch, count)
        if time.monotonic() >= self._next_beat:
            self._beat(event.trainer)

    def _keep_steps(self, trainer: Any, phase: str, epoch: int, step: int) -> None:
        values = trainer.loop.step_values(phase)
        if values:
            self._steps.append((phase, epoch, step, values))
            if len(self._steps) * len(values) >= _STEP_ROWS and self.run_id is not None:
                self._submit("step values", units.write_steps(self.run_id, self._take_steps()))

    def on_trained(self, event: Trained) -> None:
        """Write the training phase's results and iteration."""
        self._write_phase(event, "train")

    def on_validated(self, event: Validated) -> None:
        """Write a validation phase's results and iteration (in a fit, or ``Trainer.validate``)."""
        self._write_phase(event, "validation")

    def on_tested(self, event: Tested) -> None:
        """Write the test phase's results (``Trainer.test``) into the last fit's run, or the test's own run."""
        self._write_phase(event, "test")

    def on_iterated(self, event: Iterated) -> None:
        """Write the epochs completed and steps of the run and the model."""
        if not self._active or self.run_id is None:
            return
        trainer = event.trainer
        self._submit(f"end of epoch {event.epoch}", units.write_epoch(
            self.run_id, self._model_hash, _epoch(event.aggregate), trainer.progress.step, self._checkpoint_dir,
            self._take_files(), now_ms(),
        ))

    def on_exception_raised(self, event: ExceptionRaised) -> None:
        """Remember that the fit or stage failed."""
        self._failed = True

    def on_fit_ended(self, event: FitEnded) -> None:
        """Write the run's status and end, then everything still kept in memory (bounded retries)."""
        if not self._active or self.run_id is None:
            return
        trainer = event.trainer
        self._observe_checkpoints(trainer, event.aggregate)
        self._submit(f"end of the run ({event.reason})", units.end_run(
            self.run_id, _STATUS[event.reason], event.reason, _epoch(event.aggregate), trainer.progress.step,
            self._take_files(), now_ms(), self.stale_after,
        ))
        self._active = False
        if self._writer is not None:
            self._writer.flush()

    # -- validate and test outside a fit --------------------------------------------------------------------

    def on_stage_started(self, event: StageStarted) -> None:
        """``validate``/``test``: write into the last fit's run, or open a run of their own."""
        trainer = event.trainer
        if event.stage == "predict" or trainer.fast_dev_run:
            return
        self._active, self._failed = True, False
        self._steps, self._phase_batches = [], {}
        if self.run_id is not None and self._writer is not None:
            return
        self._open(self._url or default_url(trainer.default_root_dir))
        model = describe_model(event.aggregate)
        self._model_hash, self.run_id, self._stage_run = model["hash"], uuid.uuid4().hex, True
        self._submit(f"start of the {event.stage} run", units.start_run(
            self._run_columns(trainer, event.aggregate, event.stage), model,
            describe_modules(event.aggregate, model["hash"]), False, now_ms(), self.stale_after,
        ))

    def on_stage_ended(self, event: StageEnded) -> None:
        """Close a stage's own run; write what is kept in memory."""
        if not self._active:
            return
        self._active = False
        if self._stage_run and self.run_id is not None:
            status = {"completed": "completed", "interrupted": "interrupted"}.get(event.reason, "failed")
            self._submit(f"end of the {event.stage} run", units.end_run(
                self.run_id, status, event.reason, None, 0, [], now_ms(), self.stale_after,
            ))
        if self._writer is not None:
            self._writer.flush()

    # -- helpers ----------------------------------------------------------------------------------------

    def _write_phase(self, event: Trained | Validated | Tested, phase: str) -> None:
        if not self._active or self.run_id is None:
            return
        trainer = event.trainer
        epoch = _epoch(event.aggregate)  # the domain's epoch: the 0-based index of the epoch running
        loader = trainer.loop.loaders.get(phase)  # the fit's loaders as the strategy adapted them ({} outside)
        self._submit(f"{phase} results of epoch {epoch}", units.write_phase(
            self.run_id, phase, epoch, trainer.progress.step, dict(event.results),
            None if loader is None else describe_loader(loader), now_ms(), self._take_steps(),
        ))

    def _take_steps(self) -> list[dict[str, Any]]:
        """The kept step values as rows, read from the device at once."""
        kept, self._steps = self._steps, []
        flat = {(index, key): value for index, (_, _, _, values) in enumerate(kept) for key, value in values.items()}
        read = read_values(flat)
        return [
            {"phase": phase, "epoch": epoch, "step": step, "name": key.split("/", 1)[1], "value": read[(index, key)]}
            for index, (phase, epoch, step, values) in enumerate(kept)
            for key in values
        ]

    def _beat(self, trainer: Any) -> None:
        if self.run_id is not None:
            self._submit("heartbeat", units.heartbeat(self.run_id, now_ms(), trainer.progress.step))

    def _run_columns(self, trainer: Any, aggregate: Any, stage: str) -> dict[str, Any]:
        strategy = trainer.strategy
        precision = getattr(getattr(strategy, "precision", None), "precision", None)
        return {
            "id": self.run_id, "experiment": self.experiment, "stage": stage, "host": units.HOST, "pid": os.getpid(),
            "world_size": int(trainer.world_size), "precision": None if precision is None else str(precision),
            "torch_version": torch.__version__, "library_version": library_version(),
            "python_version": platform.python_version(), "checkpoint_dir": self._checkpoint_dir,
            "start_epoch": int(getattr(aggregate, "epoch", 0)), "step": trainer.progress.step,
        }

    def _observe_checkpoints(self, trainer: Any, aggregate: Any) -> None:
        """Files of ``ModelCheckpoint``-like callbacks (public ``best_k_models``, ``last_model_path``) that are new
        or rewritten since the last look: at an epoch's start or the fit's end, the epoch and step now are those of
        their writing."""
        for callback in trainer.callbacks:
            kept = getattr(callback, "best_k_models", None)
            if not isinstance(kept, dict):
                continue
            folder = getattr(callback, "dirpath", None)
            if folder is not None:
                self._checkpoint_dir = str(folder)
            candidates: dict[str, float | None] = dict(kept)
            last = getattr(callback, "last_model_path", None)
            if last:
                candidates.setdefault(str(last), None)
            for path, score in candidates.items():
                try:
                    status = Path(path).stat()
                except OSError:
                    continue
                signature = (status.st_mtime_ns, status.st_size)
                if self._seen.get(path) == signature:
                    continue
                self._seen[path] = signature
                self._files.append({
                    "path": str(path), "epoch": _epoch(aggregate), "step": trainer.progress.step,
                    "monitor": getattr(callback, "monitor", None) if path in kept else None,
                    "score": None if score is None else float(score),
                })

    def _take_files(self) -> list[dict[str, Any]]:
        files, self._files = self._files, []
        return files

    # -- state ------------------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        """``{"run_id": ...}``: saved in checkpoints, so a fit resumed from one continues its run."""
        return {"run_id": self.run_id}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run ``state["run_id"]`` at the next fit, when that fit resumes a position (its restored
        step is > 0); a fresh fit is a new run."""
        run_id = state.get("run_id")
        self._loaded_run_id = run_id if isinstance(run_id, str) and run_id else None
        if self._loaded_run_id is not None:
            self.run_id = self._loaded_run_id


def _epoch(aggregate: Any) -> int:
    """The aggregate's ``epoch`` (epochs completed; the 0-based index of the epoch running) as an int, also when
    it is a tensor buffer."""
    return int(aggregate.epoch)


def _parsed(url: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(url)
