"""What :class:`~torchsystem_trainer.tracking.Tracker` returns: frozen dataclasses, in :class:`Records` tuples.

Times are timezone-aware ``datetime`` objects in UTC (the store keeps milliseconds since the Unix epoch). Counters
mean what the schema's say (:mod:`torchsystem_trainer.tracking.schema`): ``epoch`` of a metric or an iteration is
the 0-based index of its epoch; ``epoch`` of a model, a run or a checkpoint counts epochs completed; ``step``
counts training batches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from pandas import DataFrame

__all__ = ["Checkpoint", "Experiment", "Iteration", "Metric", "Model", "Module", "Records", "Run", "to_datetime"]

_R = TypeVar("_R")


def to_datetime(milliseconds: int | None) -> datetime | None:
    """A UTC ``datetime`` from the store's milliseconds since the Unix epoch (``None`` stays ``None``)."""
    if milliseconds is None:
        return None
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


class Records(tuple, Generic[_R]):  # type: ignore[type-arg]
    """A tuple of records of one kind, with :meth:`to_pandas`.

    Args:
        items: the records.
        kind: their dataclass (the columns of an empty frame).
    """

    kind: type

    def __new__(cls, items: Any = (), kind: type = object) -> Records[_R]:
        records = super().__new__(cls, items)
        records.kind = kind
        return records

    def to_pandas(self) -> DataFrame:
        """The records as a ``pandas.DataFrame``, one row per record, one column per field.

        Raises:
            ImportError: when pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas
        except ImportError as error:
            raise ImportError("Records.to_pandas needs pandas: pip install pandas") from error
        names = [field.name for field in fields(self.kind)] if self.kind is not object else []
        return pandas.DataFrame([tuple(getattr(item, name) for name in names) for item in self], columns=names)


@dataclass(frozen=True, slots=True)
class Experiment:
    """A named group of runs.

    Attributes:
        name: the name given to ``RunTracker(experiment=...)``.
        created_at: when its first run started.
        runs: how many runs it has.
    """

    name: str
    created_at: datetime
    runs: int


@dataclass(frozen=True, slots=True)
class Model:
    """A model, by its registry identity.

    Attributes:
        hash: the aggregate's ``id`` (its registry hash, e.g. ``gethash(nn)``).
        name: the registered name of the object with that hash (``"MLP"``), else the aggregate's class name.
        arguments: that object's constructor arguments (``getarguments``), as JSON values.
        epoch: epochs completed (the aggregate's ``epoch`` after its last epoch).
        step: training batches over all its runs.
        created_at, updated_at: its first run's start; its last write.
        runs: how many runs it has.
    """

    hash: str
    name: str
    arguments: dict[str, Any]
    epoch: int
    step: int
    created_at: datetime
    updated_at: datetime
    runs: int


@dataclass(frozen=True, slots=True)
class Module:
    """A part of a model's training (criterion, optimizer, scheduler...) from the epoch it applied.

    A new row is written when a run starts with a part whose name, hash, arguments or hyper-parameters differ from
    the model's last row for that attribute: a change of learning rate is history, not an overwrite.

    Attributes:
        model: the model's hash.
        run: the run that started with it.
        attribute: where the aggregate holds it (``"optimizer"``, ``"optimizers.0"``).
        kind: ``"criterion"``, ``"optimizer"``, ``"scheduler"`` or ``"module"`` (another registered part).
        name: its registered name, else its class name.
        hash: its registry hash, ``None`` when its class is not registered.
        arguments: its constructor arguments when registered, else its public settings.
        hyperparameters: an optimizer's ``param_groups`` (without the parameters) as the run started; ``None``
            for other kinds.
        epoch: the first epoch (0-based index) it applied to.
        created_at: when it was recorded.
    """

    model: str
    run: str
    attribute: str
    kind: str
    name: str
    hash: str | None
    arguments: dict[str, Any]
    hyperparameters: Any
    epoch: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Run:
    """One ``fit`` (or a resumed series of fits of one checkpoint lineage), or a stand-alone ``validate``/``test``.

    Attributes:
        id: 32 hex digits; the CLI and ``Tracker`` accept any unique prefix.
        experiment: the experiment's name.
        model: the model's hash.
        model_name: the model's name.
        stage: ``"fit"``, ``"validate"`` or ``"test"``.
        status: ``"running"``, ``"completed"``, ``"stopped"``, ``"failed"``, ``"interrupted"`` or ``"crashed"``
            (its process died without ending it: on this host a dead ``pid``, anywhere a heartbeat older than
            the reader's ``stale_after``).
        end_reason: ``FitEnded.reason`` (``"completed"``, ``"max_steps"``, ``"max_time"``, ``"stopped"``,
            ``"interrupted"``, ``"exception"``), ``None`` while running.
        started_at, ended_at, heartbeat_at: when it started, ended (``None`` while running), last said it was alive.
        host, pid: where it ran.
        world_size, precision: processes and the strategy's precision.
        torch_version, library_version, python_version: the versions it ran with.
        checkpoint_dir: the ``ModelCheckpoint`` folder, if any.
        start_epoch, epoch: the model's epochs completed when it started, and now.
        start_step, step: the model's training batches when it started; the run's own since it started.
    """

    id: str
    experiment: str
    model: str
    model_name: str
    stage: str
    status: str
    end_reason: str | None
    started_at: datetime
    ended_at: datetime | None
    heartbeat_at: datetime
    host: str
    pid: int
    world_size: int
    precision: str | None
    torch_version: str
    library_version: str
    python_version: str
    checkpoint_dir: str | None
    start_epoch: int
    start_step: int
    epoch: int
    step: int


@dataclass(frozen=True, slots=True)
class Iteration:
    """One phase of one epoch of a run, and the data it ran on.

    Attributes:
        run: the run's id.
        epoch: 0-based index of the epoch.
        phase: ``"train"``, ``"validation"``, ``"test"``...
        step: the run's training batches at the phase's end.
        dataset: the dataset's class name (``None`` when the loader was not seen, or has no ``dataset``).
        dataset_name, dataset_hash, dataset_arguments: the dataset's registry identity when its class is
            registered, else ``None``.
        samples: ``len(dataset)``; batches: ``len(loader)``; batch_size, shuffle: the ``DataLoader``'s (shuffle:
            whether its sampler is a ``RandomSampler``); each ``None`` when unknown.
    """

    run: str
    epoch: int
    phase: str
    step: int
    dataset: str | None
    dataset_name: str | None
    dataset_hash: str | None
    dataset_arguments: dict[str, Any] | None
    samples: int | None
    batches: int | None
    batch_size: int | None
    shuffle: bool | None


@dataclass(frozen=True, slots=True)
class Metric:
    """One value: a phase's result at an epoch's end (``"loss"``, ``"accuracy"``...).

    Attributes:
        run: the run's id.
        phase: ``"train"``, ``"validation"``, ``"test"``...
        epoch: 0-based index of the epoch.
        step: the run's training batches when it was recorded.
        name: the result's name.
        value: the value (``nan`` for a NaN).
    """

    run: str
    phase: str
    epoch: int
    step: int
    name: str
    value: float


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A checkpoint file a run's ``ModelCheckpoint`` wrote.

    Attributes:
        run: the run's id.
        model: the model's hash.
        path: the file (it may have been deleted since, e.g. by ``save_top_k``).
        epoch: epochs completed when it was written; step: the run's training batches then.
        monitor, score: the monitored key and its value, ``None`` without one (``last.ckpt``).
        created_at, updated_at: first seen; last seen rewritten.
    """

    run: str
    model: str
    path: str
    epoch: int
    step: int
    monitor: str | None
    score: float | None
    created_at: datetime
    updated_at: datetime
