"""The run store's schema: every table, as SQLAlchemy Core ``Table`` objects, and its version.

The data model follows the seed author's tracker (experiments, models by hash with their epoch, modules with their
arguments, iterations, metrics by phase and epoch) and MLflow's tracking store (runs with a status, start and end
times; times as integer milliseconds since the Unix epoch, UTC)::

    schema_version  (version, library_version, updated_at)                     one row
    experiments     (id, name, created_at)                                      name unique
    models          (id, hash, name, arguments, epoch, step, created_at, updated_at)
                                                                                hash unique: the registry identity
    runs            (id, experiment_id, model_id, stage, status, end_reason, started_at, ended_at, heartbeat_at,
                     host, pid, world_size, precision, torch_version, library_version, python_version,
                     checkpoint_dir, start_epoch, start_step, epoch, step)     id: 32 hex digits (uuid4)
    modules         (id, model_id, run_id, attribute, kind, name, hash, arguments, hyperparameters, epoch,
                     created_at)                                                one row per change, never updated
    iterations      (id, run_id, epoch, phase, step, dataset, dataset_name, dataset_hash, dataset_arguments,
                     samples, batches, batch_size, shuffle, created_at)        (run_id, epoch, phase) unique
    metrics         (id, run_id, phase, epoch, step, name, value)               (run_id, epoch, step, phase, name)
                                                                                unique; value NULL means NaN
    checkpoints     (id, run_id, path, epoch, step, monitor, score, created_at, updated_at)
                                                                                (run_id, path) unique

Counters: ``epoch`` columns of ``metrics``, ``iterations`` and ``modules`` are the 0-based index of the epoch they
belong to (``modules.epoch``: the first epoch the module applied to); ``models.epoch``, ``runs.epoch`` and
``checkpoints.epoch`` count epochs completed (the aggregate's ``epoch``). ``step`` columns count training batches
(the events' ``step``): ``runs.step`` and ``metrics.step`` since the run began, ``models.step`` since the model's
first run.

Every table is created by :func:`torchsystem_trainer.tracking.engine.open_engine`, which also refuses a store of
a newer :data:`SCHEMA_VERSION` and migrates an older one (:mod:`torchsystem_trainer.tracking.migrations`).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "checkpoints",
    "experiments",
    "iterations",
    "metadata",
    "metrics",
    "models",
    "modules",
    "runs",
    "schema_version",
]

SCHEMA_VERSION = 1
"""The version of the tables below. A store written at a higher version is refused; a lower one is migrated."""

STATUSES = ("running", "completed", "stopped", "failed", "interrupted", "crashed")
"""``runs.status``: ``running`` until the fit ends; ``crashed`` for a run whose process died without ending it
(a stale heartbeat, or a dead process on this host)."""

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only an INTEGER PRIMARY KEY
_MS = BigInteger  # milliseconds since the Unix epoch, UTC

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one row
    Column("version", Integer, nullable=False),
    Column("library_version", String(64), nullable=False),
    Column("updated_at", _MS, nullable=False),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    Column("created_at", _MS, nullable=False),
)

models = Table(
    "models",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("hash", String(255), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("arguments", JSON, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("created_at", _MS, nullable=False),
    Column("updated_at", _MS, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("experiment_id", _ID, ForeignKey("experiments.id"), nullable=False, index=True),
    Column("model_id", _ID, ForeignKey("models.id"), nullable=False, index=True),
    Column("stage", String(16), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("end_reason", String(32)),
    Column("started_at", _MS, nullable=False),
    Column("ended_at", _MS),
    Column("heartbeat_at", _MS, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("world_size", Integer, nullable=False),
    Column("precision", String(32)),
    Column("torch_version", String(64), nullable=False),
    Column("library_version", String(64), nullable=False),
    Column("python_version", String(64), nullable=False),
    Column("checkpoint_dir", Text),
    Column("start_epoch", Integer, nullable=False),
    Column("start_step", BigInteger, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
)

modules = Table(
    "modules",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("model_id", _ID, ForeignKey("models.id"), nullable=False),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False, index=True),
    Column("attribute", Text, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("hash", String(255)),
    Column("arguments", JSON, nullable=False),
    Column("hyperparameters", JSON),
    Column("epoch", Integer, nullable=False),
    Column("created_at", _MS, nullable=False),
    Index(None, "model_id", "attribute"),
)

iterations = Table(
    "iterations",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("phase", Text, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("dataset", Text),
    Column("dataset_name", Text),
    Column("dataset_hash", String(255)),
    Column("dataset_arguments", JSON),
    Column("samples", BigInteger),
    Column("batches", BigInteger),
    Column("batch_size", Integer),
    Column("shuffle", Boolean),
    Column("created_at", _MS, nullable=False),
    UniqueConstraint("run_id", "epoch", "phase"),
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False),
    Column("phase", Text, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("name", Text, nullable=False),
    Column("value", Float(precision=53)),  # NULL: NaN (SQLite stores a NaN as NULL anyway)
    UniqueConstraint("run_id", "epoch", "step", "phase", "name"),  # also the order Tracker.metrics reads in
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("runs.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("monitor", Text),
    Column("score", Float(precision=53)),
    Column("created_at", _MS, nullable=False),
    Column("updated_at", _MS, nullable=False),
    UniqueConstraint("run_id", "path"),
)
