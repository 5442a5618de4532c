"""Opening a store: the SQLAlchemy engine for a URL, SQLite's settings, and the schema's version check.

Any SQLAlchemy URL works. The embedded default is SQLite at ``<default_root_dir>/runs.db``; PostgreSQL (through
psycopg 3: ``postgresql+psycopg://user:password@host/database``) suits a team sharing one store.

SQLite connections run with the write-ahead log (``journal_mode=WAL``: readers never block the writer), a busy
timeout (a locked store is waited for, not failed at once), ``synchronous=NORMAL`` (no fsync per commit in WAL
mode; a power cut may lose the last transactions, never corrupt the file) and foreign keys enforced. Every
transaction on SQLite starts with ``BEGIN IMMEDIATE``, so two processes writing at once queue on the busy timeout
instead of failing a read-then-write upgrade with "database is locked" (SQLAlchemy's documented recipe for
pysqlite's transaction handling).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, insert, inspect, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from torchsystem_trainer.checkpoint import library_version
from torchsystem_trainer.tracking import schema
from torchsystem_trainer.tracking.migrations import migrate

__all__ = ["SchemaVersionError", "StoreError", "default_url", "library_version", "now_ms", "open_engine", "redact"]

_PG_LOCK = 7_406_315_112  # pg_advisory_xact_lock key: one process at a time creates or migrates the tables


class StoreError(RuntimeError):
    """The store cannot be opened or used: the message names the URL (password hidden) and the cause."""


class SchemaVersionError(StoreError):
    """The store was written by a newer version of the library (its schema version is higher than ours)."""


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC): the store's time unit."""
    return time.time_ns() // 1_000_000


def redact(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for messages.

    Args:
        url: a SQLAlchemy URL or its string; a string that is not a URL is returned as it is.

    Returns:
        The printable URL.
    """
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def default_url(root: str | Path) -> str:
    """The embedded store of a Trainer whose ``default_root_dir`` is ``root``: ``sqlite:///<root>/runs.db``.

    Args:
        root: the folder (made absolute, so the URL does not depend on the working directory later).

    Returns:
        The SQLite URL.
    """
    return f"sqlite:///{(Path(root).expanduser().absolute() / 'runs.db').as_posix()}"


def open_engine(url: str | URL, *, create: bool = True, busy_timeout: float = 5.0) -> Engine:
    """An engine for ``url`` whose tables exist and are of this library's schema version.

    Creates the tables in an empty database (and, for SQLite, the file and its folder when ``create``); migrates a
    store of an older version (:mod:`~torchsystem_trainer.tracking.migrations`); refuses a newer one. Creating and
    migrating run in one transaction, serialized between processes (SQLite's write lock, PostgreSQL's advisory
    lock), so two processes opening a new store at once create it once.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/runs.db``, ``postgresql+psycopg://user:pw@host/db``...
        create: create a missing SQLite file; ``False`` (readers) raises ``FileNotFoundError`` instead.
        busy_timeout: seconds a SQLite connection waits for another process's write lock.

    Returns:
        The engine, connected once.

    Raises:
        StoreError: for a URL SQLAlchemy cannot parse, a driver that is not installed, a store that cannot be
            reached, created or written (an unwritable path, a refused connection), or one holding tables of the
            same names that are not this store's; the message names the URL (password hidden) and the cause.
        FileNotFoundError: for a SQLite file that does not exist when ``create`` is ``False``.
        SchemaVersionError: for a store written by a newer version of the library.
    """
    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise StoreError(f"url={str(url)!r} is not a database URL ({error}); e.g. 'sqlite:///runs/runs.db'") from error
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database or "")
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no run store at {shown}: {str(path)!r} does not exist")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create the run store at {shown}: {error}") from error
    try:
        engine = _engine(parsed, sqlite, busy_timeout)
    except (ArgumentError, ImportError) as error:
        raise StoreError(f"cannot open the run store at {shown}: {error!r}") from error
    try:
        _ensure_schema(engine, shown)
    except SQLAlchemyError as error:
        engine.dispose()
        raise StoreError(f"cannot open the run store at {shown}: {_cause(error)}") from error
    except BaseException:
        engine.dispose()
        raise
    return engine


def _cause(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    return f"{type(original or error).__name__}: {str(original or error).strip().splitlines()[0]}"


def _engine(url: URL, sqlite: bool, busy_timeout: float) -> Engine:
    if not sqlite:
        options: dict[str, Any] = {"pool_pre_ping": True}
        if url.get_backend_name() == "postgresql":
            options["connect_args"] = {"connect_timeout": 10}
        return create_engine(url, **options)
    engine = create_engine(url, connect_args={"timeout": busy_timeout})
    milliseconds = max(0, int(busy_timeout * 1000))

    @event.listens_for(engine, "connect")
    def _configure(connection: Any, record: Any) -> None:
        connection.isolation_level = None  # the driver's own BEGIN handling off; "begin" below emits ours
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {milliseconds}")  # an int we computed, not user input
        _write_ahead_log(cursor, busy_timeout)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _write_ahead_log(cursor: Any, busy_timeout: float) -> None:
    """Put the database in WAL mode (a setting the file keeps), waiting up to ``busy_timeout`` seconds for it.

    SQLite answers a journal-mode change that another connection's lock blocks (another process creating the same
    new store) with "database is locked" at once, without its busy handler, so the change is retried here.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return  # another process set it already: nothing to change, no lock needed
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _ensure_schema(engine: Engine, shown: str) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_PG_LOCK)))
        names = set(inspect(connection).get_table_names())
        if schema.schema_version.name not in names:
            clashing = sorted(names & set(schema.metadata.tables))
            if clashing:
                raise StoreError(
                    f"the database at {shown} holds tables named {clashing} but no schema_version table: they are "
                    f"not a run store's; use another database"
                )
            schema.metadata.create_all(connection)
            connection.execute(
                insert(schema.schema_version).values(
                    id=1, version=schema.SCHEMA_VERSION, library_version=library_version(), updated_at=now_ms()
                )
            )
            return
        found = connection.execute(select(schema.schema_version.c.version)).scalar_one()
        if found > schema.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the run store at {shown} has schema version {found}, written by a newer torchsystem-trainer; this "
                f"is {library_version()} (schema version {schema.SCHEMA_VERSION}): upgrade torchsystem-trainer"
            )
        if found < schema.SCHEMA_VERSION:
            migrate(connection, found, schema.SCHEMA_VERSION)
            connection.execute(
                update(schema.schema_version).values(
                    version=schema.SCHEMA_VERSION, library_version=library_version(), updated_at=now_ms()
                )
            )
