"""Opening a store: SQLite's settings, the schema version (newer refused, older migrated), bad URLs and paths."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, create_engine, inspect, select, text, update

from torchsystem_trainer.tracking import RunTracker, SchemaVersionError, StoreError, Tracker
from torchsystem_trainer.tracking import migrations, schema
from torchsystem_trainer.tracking.engine import default_url, open_engine, redact


def test_a_new_sqlite_store_has_every_table_the_version_and_its_settings(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    try:
        assert set(schema.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            assert connection.execute(select(schema.schema_version.c.version)).scalar_one() == schema.SCHEMA_VERSION
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    finally:
        engine.dispose()


def test_opening_twice_creates_once_and_keeps_the_rows(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(schema.experiments.insert().values(name="kept", created_at=1))
    engine.dispose()
    engine = open_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(select(schema.experiments.c.name)).scalars().all() == ["kept"]
    engine.dispose()


def test_a_new_store_another_process_is_creating_is_waited_for_not_failed(tmp_path: Path) -> None:
    # Another process creating the same new file holds its lock before the file is in WAL mode; SQLite refuses a
    # journal-mode change then at once ("database is locked", without the busy timeout): opening waits instead.
    path = tmp_path / "runs.db"
    creator = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    creator.execute("BEGIN IMMEDIATE")
    creator.execute("CREATE TABLE elsewhere (id INTEGER)")
    released = threading.Timer(0.5, creator.execute, ("COMMIT",))
    released.start()
    try:
        engine = open_engine(f"sqlite:///{path}", busy_timeout=10.0)
    finally:
        released.join()
        creator.close()
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert schema.schema_version.name in inspect(connection).get_table_names()
    engine.dispose()


def test_a_store_of_a_newer_schema_is_refused_naming_both_versions(store_url: str) -> None:
    open_engine(store_url).dispose()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=f"schema version {schema.SCHEMA_VERSION + 1}.*upgrade"):
        Tracker(store_url)
    with pytest.raises(SchemaVersionError):
        RunTracker(store_url)


def test_an_older_store_is_migrated_in_place_keeping_its_rows(store_url: str, monkeypatch) -> None:
    """A store at version 1 opened by a library at version 2 runs the 1 -> 2 migration (Alembic operations in the
    opening transaction), keeps its rows and records version 2."""
    engine = open_engine(store_url)
    with engine.begin() as connection:
        connection.execute(schema.experiments.insert().values(name="old", created_at=1))
    engine.dispose()

    def add_notes(op) -> None:  # type: ignore[no-untyped-def]
        op.add_column("experiments", Column("notes", Integer, nullable=True))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(migrations.MIGRATIONS, 1, add_notes)
    engine = open_engine(store_url)
    try:
        assert "notes" in {column["name"] for column in inspect(engine).get_columns("experiments")}
        with engine.connect() as connection:
            assert connection.execute(select(schema.schema_version.c.version)).scalar_one() == 2
            assert connection.execute(text("SELECT name FROM experiments")).scalars().all() == ["old"]
    finally:
        engine.dispose()


def test_a_failed_migration_leaves_the_store_as_it_was(sqlite_url: str, monkeypatch) -> None:
    open_engine(sqlite_url).dispose()

    def broken(op) -> None:  # type: ignore[no-untyped-def]
        op.add_column("experiments", Column("notes", Integer))
        raise RuntimeError("migration bug")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(migrations.MIGRATIONS, 1, broken)
    with pytest.raises(RuntimeError, match="migration bug"):
        open_engine(sqlite_url)
    monkeypatch.undo()
    engine = open_engine(sqlite_url)
    try:
        assert "notes" not in {column["name"] for column in inspect(engine).get_columns("experiments")}
        with engine.connect() as connection:
            assert connection.execute(select(schema.schema_version.c.version)).scalar_one() == 1
    finally:
        engine.dispose()


def test_tables_of_the_same_names_that_are_not_a_store_are_refused(sqlite_url: str) -> None:
    Path(sqlite_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE runs (x INTEGER)"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"tables named \['runs'\].*not a run store"):
        open_engine(sqlite_url)


def test_a_missing_sqlite_file_is_not_created_by_a_reader(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no run store"):
        Tracker(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def test_an_unwritable_path_fails_at_construction_naming_the_url(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    url = f"sqlite:///{blocker / 'sub' / 'runs.db'}"
    with pytest.raises(StoreError, match=f"cannot create the run store at {url}"):
        RunTracker(url)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_at_construction(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="cannot"):
            RunTracker(f"sqlite:///{folder / 'runs.db'}")
    finally:
        folder.chmod(0o700)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_server_fails_at_construction_with_the_password_hidden() -> None:
    url = f"postgresql+psycopg://user:s3cret@127.0.0.1:{_free_port()}/store"
    with pytest.raises(StoreError) as raised:
        RunTracker(url)
    message = str(raised.value)
    assert "s3cret" not in message and "user:***@127.0.0.1" in message
    assert "OperationalError" in message  # the cause


@pytest.mark.parametrize("url", ["not a url", "nosuchdriver://x/y"], ids=["garbage", "unknown-driver"])
def test_a_bad_url_fails_at_construction_naming_it(url: str) -> None:
    with pytest.raises(StoreError, match="url|cannot open"):
        RunTracker(url)


def test_redact_hides_only_the_password() -> None:
    assert redact("postgresql+psycopg://me:pw@host:5432/db") == "postgresql+psycopg://me:***@host:5432/db"
    assert redact("sqlite:///runs/runs.db") == "sqlite:///runs/runs.db"


def test_the_default_url_is_an_absolute_sqlite_file_under_the_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_url("runs") == f"sqlite:///{tmp_path / 'runs' / 'runs.db'}"
