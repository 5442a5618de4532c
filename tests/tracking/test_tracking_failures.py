"""The store never stops training, and never loses a row: a locked SQLite file, a PostgreSQL server that goes
away, a process killed with SIGKILL, two processes writing at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, update

from tests.conftest import make_data
from tests.tracking import _postgres
from tests.tracking.conftest import make_model
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.tracking import RunTracker, Tracker, schema
from torchsystem_trainer.tracking.units import HOST

SCRIPT = Path(__file__).with_name("track_script.py")
ROOT = Path(__file__).resolve().parents[2]


def _loaders():
    return [("train", make_data()), ("validation", make_data(seed=1))]


def _complete(store: Tracker, run_id: str, epochs: int) -> None:
    run = store.run(run_id)
    assert (run.status, run.epoch) == ("completed", epochs)
    assert [(m.phase, m.epoch) for m in store.metrics(run_id)] == [
        (phase, epoch) for epoch in range(epochs) for phase in ("train", "validation")]


def test_a_locked_sqlite_store_warns_keeps_the_rows_and_writes_them_later(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url, retry_timeout=0.2)
    locker = create_engine(sqlite_url)
    connection = locker.connect()
    connection.exec_driver_sql("BEGIN EXCLUSIVE")  # another process holding the write lock for the whole fit
    try:
        with pytest.warns(UserWarning, match="did not accept the start of the run within 0.2 s.*locked"):
            Trainer(callbacks=[tracker], max_epochs=2, enable_progress_bar=False).fit(make_model(), _loaders())
        assert tracker.pending > 0
    finally:
        connection.exec_driver_sql("ROLLBACK")
        connection.close()
        locker.dispose()
    assert tracker.flush() and tracker.pending == 0
    with Tracker(sqlite_url) as store:
        _complete(store, tracker.run_id or "", 2)


@pytest.mark.slow
def test_a_postgresql_server_that_goes_away_mid_fit_loses_nothing(tmp_path: Path) -> None:
    reason = _postgres.skip_reason()
    if reason:
        pytest.skip(reason)
    with _postgres.postgres_server() as socket_folder:
        url = f"postgresql+psycopg://postgres@/postgres?host={socket_folder}"

        class Outage(Callback):
            def on_epoch_started(self, event) -> None:
                if event.epoch == 1:
                    _postgres.stop(socket_folder)

        tracker = RunTracker(url, retry_timeout=0.3)
        with pytest.warns(UserWarning, match="did not accept"):
            Trainer(callbacks=[tracker, Outage()], max_epochs=3, enable_progress_bar=False).fit(
                make_model(), _loaders())
        assert tracker.pending > 0
        _postgres.restart(socket_folder)
        assert tracker.flush()
        with Tracker(url) as store:
            _complete(store, tracker.run_id or "", 3)


def test_a_dead_run_on_another_host_is_crashed_once_its_heartbeat_is_stale(sqlite_url: str) -> None:
    tracker = RunTracker(sqlite_url)
    Trainer(callbacks=[tracker], max_epochs=1, enable_progress_bar=False).fit(make_model(), _loaders())
    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(update(schema.runs).values(status="running", host="elsewhere", heartbeat_at=1_000))
    with Tracker(sqlite_url) as store:
        assert store.runs()[0].status == "crashed"
        assert store.runs(status="crashed")[0].id == tracker.run_id
    with engine.begin() as connection:
        connection.execute(update(schema.runs).values(heartbeat_at=schema_now()))
    with Tracker(sqlite_url) as store:
        assert store.runs()[0].status == "running"  # alive elsewhere: a fresh heartbeat
    engine.dispose()


def schema_now() -> int:
    from torchsystem_trainer.tracking.engine import now_ms

    return now_ms()


def _start(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), *arguments], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    if not line:
        process.kill()
        process.wait(timeout=30)
        raise AssertionError(f"no line from the training process within {timeout} s: {process.stderr.read() if process.stderr else ''}")
    return line[0]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_stays_running_and_is_reported_then_marked_crashed(sqlite_url: str) -> None:
    process = _start(sqlite_url, "killed", "1000", "--ready-at", "20", "--sleep", "0.01", "--heartbeat", "0.05")
    try:
        assert _read_line(process, 120).strip() == "READY"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(select(schema.runs.c.status, schema.runs.c.host)).one() == ("running", HOST)
    with Tracker(sqlite_url, stale_after=3600) as store:  # not stale: the dead pid on this host tells
        (run,) = store.runs()
        assert run.status == "crashed" and run.end_reason is None and run.step >= 1
    with engine.connect() as connection:  # reading changed nothing
        assert connection.execute(select(schema.runs.c.status)).scalar_one() == "running"
    Trainer(callbacks=[RunTracker(sqlite_url)], max_epochs=1, enable_progress_bar=False).fit(make_model(), _loaders())
    with engine.connect() as connection:  # the next write marked it
        assert connection.execute(select(schema.runs.c.status).where(schema.runs.c.id == run.id)).scalar_one() == "crashed"
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()


def _two_processes(url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    processes = [_start(url, f"experiment {i}", "6", "--heartbeat", "0.001", "--go", str(go)) for i in (0, 1)]
    go.touch()
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        outputs.append(out.split())
    with Tracker(url) as store:
        runs = store.runs()
        assert sorted(r.id for r in runs) == sorted(out[1] for out in outputs)
        assert all(out[2] == "0" for out in outputs)  # nothing left in memory
        for run in runs:
            _complete(store, run.id, 6)
            assert len(store.iterations(run.id)) == 12
        (model,) = store.models()
        assert model.runs == 2 and len(store.experiments()) == 2


@pytest.mark.slow
def test_two_processes_tracking_into_one_sqlite_file_lose_nothing(sqlite_url: str, tmp_path: Path) -> None:
    _two_processes(sqlite_url, tmp_path)
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    engine.dispose()


@pytest.mark.slow
def test_two_processes_tracking_into_one_postgresql_database_lose_nothing(postgres_url: str, tmp_path: Path) -> None:
    _two_processes(postgres_url, tmp_path)
