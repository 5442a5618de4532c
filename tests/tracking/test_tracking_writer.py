"""The run store's writer thread: the training thread never waits for the store, units keep their order, and what
the thread warns about is raised in the caller's thread."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, insert, select

from torchsystem_trainer.tracking import schema
from torchsystem_trainer.tracking.engine import open_engine
from torchsystem_trainer.tracking.writer import Writer


def _experiment(name: str, started: threading.Event | None = None, release: threading.Event | None = None):
    def unit(connection) -> None:
        if started is not None and release is not None:
            started.set()
            assert release.wait(30), "the test never released the unit"
        connection.execute(insert(schema.experiments).values(name=name, created_at=1))

    return unit


def _names(url: str) -> list[str]:
    """The experiments' names, read on an engine of its own (the store's begins every transaction with a write
    lock, which the writer thread holds while a unit runs)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = select(schema.experiments.c.name).order_by(schema.experiments.c.id)
            return list(connection.execute(query).scalars())
    finally:
        engine.dispose()


def test_submit_returns_while_the_store_is_busy_and_flush_writes_everything_in_order(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    writer = Writer(engine, retry_timeout=5.0)
    started, release = threading.Event(), threading.Event()
    try:
        writer.submit("first", _experiment("first", started, release))  # blocks the writer thread, not this one
        assert started.wait(30)
        writer.submit("second", _experiment("second"))  # returns although the first unit has not finished
        assert len(writer.pending) == 2 and _names(sqlite_url) == []
        release.set()
        assert writer.flush()
        assert _names(sqlite_url) == ["first", "second"] and not writer.pending
        writer.submit("third", _experiment("third"))  # a new thread after a flush
        assert writer.flush() and _names(sqlite_url) == ["first", "second", "third"]
    finally:
        release.set()
        engine.dispose()


def test_a_unit_that_cannot_succeed_is_dropped_with_a_warning_in_the_callers_thread(sqlite_url: str) -> None:
    engine = open_engine(sqlite_url)
    writer = Writer(engine, retry_timeout=5.0)

    def broken(connection) -> None:
        raise ValueError("not a transient error")

    try:
        writer.submit("broken unit", broken)
        writer.submit("next", _experiment("next"))
        with pytest.warns(UserWarning, match="dropped the broken unit for the run store at sqlite:.*ValueError"):
            assert writer.flush()
        assert _names(sqlite_url) == ["next"]  # the units after it were written
    finally:
        engine.dispose()
