"""The store's units of work: each a function of one open transaction, built from plain values.

A unit captures everything it writes when it is built (no live object is read later), identifies rows by natural
keys (an experiment's name, a model's hash, a run's id chosen by the writer) and is idempotent, so a unit kept in
memory while the store was unreachable can be run later, or again after a failure that left its transaction
rolled back. Every statement binds its values (SQLAlchemy Core); no SQL text is built from data.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from torchsystem_trainer.tracking.schema import checkpoints, experiments, iterations, metrics, models, modules, runs

__all__ = [
    "Unit",
    "end_run",
    "heartbeat",
    "is_process_alive",
    "mark_crashed",
    "record_checkpoints",
    "start_run",
    "write_epoch",
    "write_phase",
    "write_steps",
]

Unit = Callable[[Connection], None]
"""A unit of work: runs its statements on a connection inside the caller's transaction."""

HOST = socket.gethostname()


def is_process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (``os.kill(pid, 0)``; a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _insert_ignore(connection: Connection, table: Table, values: dict[str, Any], key: str) -> None:
    """Insert unless a row with the same ``key`` exists; safe when another process inserts it at the same time
    (``ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL)."""
    dialect = connection.dialect.name
    if dialect in ("sqlite", "postgresql"):
        builder = sqlite.insert if dialect == "sqlite" else postgresql.insert
        connection.execute(builder(table).values(**values).on_conflict_do_nothing(index_elements=[key]))
    elif connection.execute(select(table.c.id).where(table.c[key] == values[key])).first() is None:
        connection.execute(insert(table).values(**values))


def _id_of(connection: Connection, table: Table, key: str, value: Any) -> int:
    return int(connection.execute(select(table.c.id).where(table.c[key] == value)).scalar_one())


def mark_crashed(connection: Connection, now: int, stale_after: float, keep: str | None = None) -> None:
    """Set ``crashed`` on every ``running`` run whose heartbeat is older than ``stale_after`` seconds, or which ran
    on this host in a process that no longer exists (``keep``: a run id to leave alone)."""
    cutoff = now - int(stale_after * 1000)
    running = runs.c.status == "running"
    others = runs.c.id != (keep or "")  # run ids are 32 hex digits: "" matches none
    connection.execute(update(runs).where(running, others, runs.c.heartbeat_at < cutoff).values(status="crashed"))
    local = connection.execute(select(runs.c.id, runs.c.pid).where(running, others, runs.c.host == HOST)).all()
    dead = [run_id for run_id, pid in local if pid != os.getpid() and not is_process_alive(pid)]
    if dead:
        connection.execute(update(runs).where(runs.c.id.in_(dead), running).values(status="crashed"))


def start_run(run: dict[str, Any], model: dict[str, Any], described: list[dict[str, Any]], resume: bool,
              now: int, stale_after: float) -> Unit:
    """Open a run (or, with ``resume``, set an existing one of that id running again; a missing one is created).

    Args:
        run: the ``runs`` columns known to the writer: ``id``, ``experiment`` (a name), ``stage``, ``host``,
            ``pid``, ``world_size``, ``precision``, the versions, ``checkpoint_dir``, ``start_epoch``, ``step``.
        model: :func:`~torchsystem_trainer.tracking.describe.describe_model`'s description.
        described: :func:`~torchsystem_trainer.tracking.describe.describe_modules`' descriptions; a part is
            recorded when it differs from the model's last record of that attribute.
        resume: continue the run of that id (``Trainer.fit(ckpt_path=...)``).
        now: milliseconds since the Unix epoch.
        stale_after: seconds without a heartbeat after which another ``running`` run is marked ``crashed``.
    """
    run, model, described = dict(run), dict(model), [dict(part) for part in described]

    def unit(connection: Connection) -> None:
        mark_crashed(connection, now, stale_after, keep=run["id"])
        _insert_ignore(connection, experiments, {"name": run["experiment"], "created_at": now}, "name")
        experiment_id = _id_of(connection, experiments, "name", run["experiment"])
        _insert_ignore(connection, models, {
            "hash": model["hash"], "name": model["name"], "arguments": model["arguments"],
            "epoch": run["start_epoch"], "step": 0, "created_at": now, "updated_at": now,
        }, "hash")
        model_id, model_step = connection.execute(
            select(models.c.id, models.c.step).where(models.c.hash == model["hash"])
        ).one()
        columns = {
            "experiment_id": experiment_id, "model_id": model_id, "stage": run["stage"], "status": "running",
            "end_reason": None, "ended_at": None, "heartbeat_at": now, "host": run["host"], "pid": run["pid"],
            "world_size": run["world_size"], "precision": run["precision"], "torch_version": run["torch_version"],
            "library_version": run["library_version"], "python_version": run["python_version"],
            "checkpoint_dir": run["checkpoint_dir"], "epoch": run["start_epoch"], "step": run["step"],
        }
        resumed = resume and connection.execute(
            update(runs).where(runs.c.id == run["id"]).values(**columns)
        ).rowcount
        if not resumed:
            connection.execute(insert(runs).values(
                id=run["id"], started_at=now, start_epoch=run["start_epoch"], start_step=model_step, **columns
            ))
        for part in described:
            last = connection.execute(
                select(modules.c.name, modules.c.hash, modules.c.arguments, modules.c.hyperparameters)
                .where(modules.c.model_id == model_id, modules.c.attribute == part["attribute"])
                .order_by(modules.c.id.desc()).limit(1)
            ).first()
            current = (part["name"], part["hash"], part["arguments"], part["hyperparameters"])
            if last is None or tuple(last) != current:
                connection.execute(insert(modules).values(
                    model_id=model_id, run_id=run["id"], epoch=run["start_epoch"], created_at=now, **part
                ))

    return unit


def heartbeat(run_id: str, now: int, step: int) -> Unit:
    """Say the run is alive at ``now``, at the run's training batch ``step``; a run another reader marked
    ``crashed`` (a heartbeat came late) is ``running`` again."""

    def unit(connection: Connection) -> None:
        connection.execute(
            update(runs).where(runs.c.id == run_id, runs.c.status.in_(("running", "crashed")))
            .values(heartbeat_at=now, step=step, status="running")
        )

    return unit


def _value(value: float) -> float | None:
    return None if math.isnan(value) else value


def write_phase(run_id: str, phase: str, epoch: int, step: int, results: Mapping[str, float],
                loader: dict[str, Any] | None, now: int, steps: Iterable[dict[str, Any]] = ()) -> Unit:
    """A phase's end: its results as metrics, its iteration (with the loader's identity), and the phase's step
    values not written yet (see :func:`write_steps`), replacing any rows of the same run, phase, epoch, step and
    names a resumed run wrote before."""
    rows = [{"run_id": run_id, "phase": phase, "epoch": epoch, "step": step, "name": str(name),
             "value": _value(float(value))} for name, value in results.items()]
    iteration = {"run_id": run_id, "epoch": epoch, "phase": phase, "step": step, "created_at": now,
                 **(loader or {})}
    write_rows = write_steps(run_id, steps)

    def unit(connection: Connection) -> None:
        if rows:
            connection.execute(delete(metrics).where(
                metrics.c.run_id == run_id, metrics.c.phase == phase, metrics.c.epoch == epoch,
                metrics.c.step == step, metrics.c.name.in_([row["name"] for row in rows]),
            ))
            connection.execute(insert(metrics), rows)
        write_rows(connection)
        connection.execute(delete(iterations).where(
            iterations.c.run_id == run_id, iterations.c.epoch == epoch, iterations.c.phase == phase
        ))
        connection.execute(insert(iterations).values(**iteration))
        connection.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=now, step=step))

    return unit


def write_steps(run_id: str, steps: Iterable[dict[str, Any]]) -> Unit:
    """Step values the aggregate logged (``{"phase", "epoch", "step", "name", "value"}`` each, ``name`` as
    ``"<name>_step"``), replacing rows of the same keys (a resumed run writes again the steps after its checkpoint).
    """
    rows: list[dict[str, Any]] = [
        {"run_id": run_id, "phase": str(row["phase"]), "epoch": int(row["epoch"]), "step": int(row["step"]),
         "name": str(row["name"]), "value": _value(float(row["value"]))}
        for row in steps
    ]
    groups: dict[tuple[str, int], tuple[set[int], set[str]]] = {}
    for row in rows:
        found = groups.setdefault((row["phase"], row["epoch"]), (set(), set()))
        found[0].add(row["step"])
        found[1].add(row["name"])

    def unit(connection: Connection) -> None:
        for (phase, epoch), (step_numbers, names) in groups.items():
            connection.execute(delete(metrics).where(
                metrics.c.run_id == run_id, metrics.c.phase == phase, metrics.c.epoch == epoch,
                metrics.c.step.in_(sorted(step_numbers)), metrics.c.name.in_(sorted(names)),
            ))
        if rows:
            connection.execute(insert(metrics), rows)

    return unit


def _upsert_checkpoints(connection: Connection, run_id: str, files: Iterable[dict[str, Any]], now: int) -> None:
    for file in files:
        changed = connection.execute(
            update(checkpoints).where(checkpoints.c.run_id == run_id, checkpoints.c.path == file["path"])
            .values(updated_at=now, **file)
        ).rowcount
        if not changed:
            connection.execute(insert(checkpoints).values(run_id=run_id, created_at=now, updated_at=now, **file))


def record_checkpoints(run_id: str, files: list[dict[str, Any]], now: int) -> Unit:
    """Checkpoint files seen written (``path``, ``epoch``, ``step``, ``monitor``, ``score``); a path seen again is
    updated (``last.ckpt`` is rewritten every epoch)."""
    files = [dict(file) for file in files]

    def unit(connection: Connection) -> None:
        _upsert_checkpoints(connection, run_id, files, now)

    return unit


def write_epoch(run_id: str, model_hash: str, epoch: int, step: int, checkpoint_dir: str | None,
                files: list[dict[str, Any]], now: int) -> Unit:
    """An epoch's end: the model and the run reached ``epoch`` epochs completed and the run ``step`` training
    batches (the model: its run's ``start_step`` plus that); checkpoints seen since the last write."""
    files = [dict(file) for file in files]

    def unit(connection: Connection) -> None:
        start_step = connection.execute(select(runs.c.start_step).where(runs.c.id == run_id)).scalar_one()
        values: dict[str, Any] = {"epoch": epoch, "step": step, "heartbeat_at": now}
        if checkpoint_dir is not None:
            values["checkpoint_dir"] = checkpoint_dir
        connection.execute(update(runs).where(runs.c.id == run_id).values(**values))
        connection.execute(update(models).where(models.c.hash == model_hash)
                           .values(epoch=epoch, step=start_step + step, updated_at=now))
        _upsert_checkpoints(connection, run_id, files, now)

    return unit


def end_run(run_id: str, status: str, reason: str, epoch: int | None, step: int, files: list[dict[str, Any]],
            now: int, stale_after: float) -> Unit:
    """Close the run: its final ``status`` and ``FitEnded.reason``, its end time (``epoch``: epochs completed, or
    ``None`` to leave it), checkpoints seen since the last write; other runs found dead are marked ``crashed``
    (see :func:`mark_crashed`)."""
    files = [dict(file) for file in files]

    def unit(connection: Connection) -> None:
        mark_crashed(connection, now, stale_after, keep=run_id)
        values: dict[str, Any] = {"status": status, "end_reason": reason, "ended_at": now, "heartbeat_at": now,
                                  "step": step}
        if epoch is not None:
            values["epoch"] = epoch
        connection.execute(update(runs).where(runs.c.id == run_id).values(**values))
        _upsert_checkpoints(connection, run_id, files, now)

    return unit

