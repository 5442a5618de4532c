"""ModelCheckpoint(async_save=True): the state is staged at the checkpoint's moment and written in the background;
the files are those of a synchronous run, byte for byte in what they hold; one write at a time; the fit waits for the
last; a failed background write fails the fit naming the file; the CRC switch of save_atomic is safe across threads.

A gate holds every background write until the training thread has moved on (an event, not a sleep), so a write
that read live tensors instead of a staged copy would hold the next step's weights, and the tests would see it.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint import CheckpointError, load_file, read_checkpoint, save_atomic
from torchsystem_trainer.checkpoint import io as checkpoint_io
from torchsystem_trainer.checkpoint.async_writer import AsyncWriter
from torchsystem_trainer.checkpoint.staging import Stager

WAIT_S = 30  # the most a gated write waits for the training thread: a bound on a broken test, never reached


class Gate(Callback):
    """Counts the training thread's moves (each trained batch, the fit's end); a background write of the checkpoint of
    step ``n`` held by the gate waits until the training thread has trained step ``n + 1`` (or ended)."""

    def __init__(self) -> None:
        self.moves = 0
        self.changed = threading.Condition()
        self.writes: list[int] = []  # per background write: how many others were running when it started
        self.running = 0
        self.ended = False

    def on_batch_trained(self, event: Any) -> None:
        with self.changed:
            self.moves += 1
            self.changed.notify_all()

    def on_fit_ended(self, event: Any) -> None:
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def hold(self, step: int) -> None:
        """Called by the background write of step ``step``'s checkpoint as it starts: wait until the training thread
        has moved past that step."""
        with self.changed:
            start = step
            self.writes.append(self.running)
            self.running += 1
            moved = self.changed.wait_for(lambda: self.moves > start or self.ended, WAIT_S)
            assert moved, "the training thread never moved"

    def release(self) -> None:
        with self.changed:
            self.running -= 1


@pytest.fixture
def gated(monkeypatch):
    """Every torch.save of save_atomic in a thread other than the main one waits at the gate first."""
    gate = Gate()
    real_save = torch.save

    def gated_save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            gate.hold(obj["loop"]["progress"]["global_step"])
            try:
                return real_save(obj, handle, *args, **kwargs)
            finally:
                gate.release()
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", gated_save)
    return gate


def fit(folder: Path, async_save: bool, callbacks=(), epochs: int = 3) -> tuple[Trainer, Classifier, ModelCheckpoint]:
    torch.manual_seed(0)
    aggregate = Classifier()
    checkpoint = ModelCheckpoint(folder, every_n_steps=3, save_top_k=2, save_last=True, async_save=async_save)
    trainer = Trainer(callbacks=[*callbacks, checkpoint], max_epochs=epochs, enable_progress_bar=False)
    trainer.fit(aggregate, make_data())
    return trainer, aggregate, checkpoint


def files(folder: Path) -> dict[str, dict[str, Any]]:
    return {path.name: read_checkpoint(path) for path in sorted(folder.glob("*.ckpt"))}


def assert_same_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    for section in ("aggregate", "loop", "strategy", "rng"):
        _assert_equal(got[section], want[section], section)


def _assert_equal(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            _assert_equal(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_equal(a, b, f"{where}[{index}]")
    else:
        assert got == want, where


def test_async_files_hold_what_synchronous_ones_hold_at_the_same_steps(tmp_path, gated):
    _, sync_aggregate, sync_checkpoint = fit(tmp_path / "sync", async_save=False)
    _, aggregate, checkpoint = fit(tmp_path / "async", async_save=True, callbacks=[gated])

    assert len(gated.writes) == 4  # a file at steps 3, 6, 9, 12 (last.ckpt a hard link), each in the background
    want, got = files(tmp_path / "sync"), files(tmp_path / "async")
    assert list(got) == list(want) == ["epoch=2-step=12.ckpt", "epoch=2-step=9.ckpt", "last.ckpt"]
    for name in want:  # staged at the checkpoint's step, though written after the training thread moved on
        assert_same_state(got[name], want[name])
    assert [Path(p).name for p in checkpoint.best_k_models] == [Path(p).name for p in sync_checkpoint.best_k_models]
    assert Path(checkpoint.last_model_path).name == "last.ckpt"
    for a, b in zip(aggregate.parameters(), sync_aggregate.parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_write_at_a_time_and_the_fit_waits_for_the_last(tmp_path, gated, monkeypatch):
    pending_at_staging: list[bool] = []
    real_stage = Stager.stage

    def stage(stager: Stager, state: Any) -> Any:  # the buffers are reused: no write may be reading them
        pending_at_staging.append(any(not writer.done() for writer in writers))
        return real_stage(stager, state)

    writers: list[AsyncWriter] = []
    real_init = AsyncWriter.__init__

    def init(writer: AsyncWriter, *args: Any, **kwargs: Any) -> None:
        real_init(writer, *args, **kwargs)
        writers.append(writer)

    monkeypatch.setattr(Stager, "stage", stage)
    monkeypatch.setattr(AsyncWriter, "__init__", init)
    trainer, _, _ = fit(tmp_path, async_save=True, callbacks=[gated])
    assert gated.writes == [0, 0, 0, 0]  # no write started while another was running
    assert pending_at_staging == [False] * 4  # each staging waited for the previous write
    # fit returned: the last write (held until FitEnded) is complete, and last.ckpt holds the final step
    assert read_checkpoint(tmp_path / "last.ckpt")["loop"]["progress"]["global_step"] == trainer.global_step == 12
    assert not list(tmp_path.glob(".*.tmp"))


class FailingSave:
    """torch.save that raises in the background thread at its ``at``-th call (a full disk)."""

    def __init__(self, at: int) -> None:
        self.at, self.calls, self.real = at, 0, torch.save

    def __call__(self, obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            self.calls += 1
            if self.calls == self.at:
                raise OSError(28, "No space left on device")
        return self.real(obj, handle, *args, **kwargs)


def test_a_failed_background_write_fails_the_fit_naming_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io.torch, "save", FailingSave(at=2))  # the file of step 6 (last.ckpt: a link)
    recorder = Recorder()
    with pytest.raises(CheckpointError, match=r"epoch=1-step=6\.ckpt.*No space left") as caught:
        fit(tmp_path, async_save=True, callbacks=[recorder])
    assert isinstance(caught.value.__cause__, OSError)
    # raised at the next checkpoint (step 9), in the fit, which ends with the error
    assert recorder.events[-2:] == [("ExceptionRaised", "CheckpointError"), ("FitEnded", "exception")]
    assert ("BatchTrained", 2, 0, 9) in recorder.events and ("BatchTrained", 2, 1, 10) not in recorder.events
    # the previous checkpoint is complete and in charge; the failed file does not exist, no temporary is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert read_checkpoint(tmp_path / "last.ckpt")["loop"]["progress"]["global_step"] == 3


def test_the_failed_write_is_forgotten_by_the_callback(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io.torch, "save", FailingSave(at=2))
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=3, save_top_k=2, save_last=True, async_save=True)
    trainer = Trainer(callbacks=[checkpoint], max_epochs=3, enable_progress_bar=False)
    with pytest.raises(CheckpointError):
        trainer.fit(Classifier(), make_data())
    assert list(checkpoint.best_k_models) == [str(tmp_path / "epoch=0-step=3.ckpt")]
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")


def test_the_writer_raises_the_error_of_a_write_once_and_follows_futures(tmp_path):
    from concurrent.futures import Future

    writer, undone = AsyncWriter(), []
    writer.submit("a.ckpt", lambda: 1 / 0, on_error=undone.append)
    with pytest.raises(CheckpointError, match=r"'a.ckpt' failed: ZeroDivisionError") as caught:
        writer.wait()
    assert isinstance(caught.value.__cause__, ZeroDivisionError) and len(undone) == 1
    writer.wait()  # reported once
    future: Future[None] = Future()
    writer.follow("sharded-folder", future)
    assert writer.pending == "sharded-folder" and not writer.done()
    future.set_result(None)
    writer.wait()
    assert writer.pending is None


def test_the_stager_copies_reuses_its_buffers_and_keeps_ties():
    weight = torch.randn(3, 4)
    state = {"a": weight, "tied": weight, "nested": [torch.arange(5), {"n": 3, "s": "x"}], "view": weight.t()}
    stager = Stager()
    first = stager.stage(state)
    assert torch.equal(first["a"], weight) and first["a"] is not weight and first["a"].data_ptr() != weight.data_ptr()
    assert first["tied"] is first["a"] and first["nested"][1] == {"n": 3, "s": "x"}
    assert torch.equal(first["view"], weight.t()) and first["view"].is_contiguous()
    assert stager.staged_bytes == 24 * 4 + 5 * 8  # float32 x 24 (the tie copied once), int64 x 5
    pointer = first["a"].data_ptr()
    weight.add_(1)  # training moves on: the copy does not
    assert not torch.equal(first["a"], weight)
    second = stager.stage(state)
    assert second["a"].data_ptr() == pointer and torch.equal(second["a"], weight)  # the buffer is reused


def test_the_crc_switch_does_not_race_between_threads(tmp_path, monkeypatch):
    """CRCs switched off by the user; a save in thread "b" reads the setting (off), thread "a" switches it on for its
    own save, "b" saves and switches it back off, and only then does "a" start torch.save. Without the lock of
    save_atomic, "a" then writes without CRCs; with it, "b" holds the switch until its save is done, so "a" waits.

    torch >= 2.12 keeps a user's setting per thread (torch.utils config overrides are thread-local), so there the
    race cannot happen; before (torch 2.6 to 2.11, which this package supports) it is one process-wide value, which
    this test stands in for. Each pause is an event, bounded by PAUSE_S when the other thread cannot come (that is
    the lock working)."""
    PAUSE_S = 2.0
    b_reading, a_switched_on, b_switched_back = threading.Event(), threading.Event(), threading.Event()
    process_wide = {"crc": False}  # the user switched CRCs off
    real_save = torch.save
    seen: dict[str, bool] = {}

    def get() -> bool:
        value = process_wide["crc"]
        if threading.current_thread().name == "b" and not b_reading.is_set():
            b_reading.set()
            a_switched_on.wait(PAUSE_S)
        return value

    def set_(on: bool) -> None:
        process_wide["crc"] = on
        name = threading.current_thread().name
        if name == "a" and on:
            a_switched_on.set()
            b_switched_back.wait(PAUSE_S)
        if name == "b" and not on:
            b_switched_back.set()

    def save(obj: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        seen[threading.current_thread().name] = process_wide["crc"]  # what torch.save reads as it starts
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch.serialization, "get_crc32_options", get)
    monkeypatch.setattr(torch.serialization, "set_crc32_options", set_)
    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    b = threading.Thread(target=save_atomic, args=({"x": torch.arange(4)}, tmp_path / "b.pt"), name="b")
    a = threading.Thread(target=save_atomic, args=({"x": torch.arange(4)}, tmp_path / "a.pt"), name="a")
    b.start()
    assert b_reading.wait(30)
    a.start()
    for thread in (a, b):
        thread.join(30)
    assert seen == {"a": True, "b": True}  # both saves started with CRCs on
    assert process_wide["crc"] is False  # the user's setting is back
    for path in (tmp_path / "a.pt", tmp_path / "b.pt"):
        load_file(path)


def test_save_atomic_writes_crcs_when_the_user_switched_them_off(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        save_atomic({"x": torch.arange(10)}, tmp_path / "x.pt")
        assert torch.serialization.get_crc32_options() is False
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(tmp_path / "x.pt") as archive:
        assert all(info.CRC != 0 for info in archive.infolist() if info.file_size > 0)


def test_sharded_checkpoints_are_staged_and_written_in_the_background_as_synchronous_ones(tmp_path, monkeypatch):
    """FSDP (one process): each sharded folder is written by the writer thread on a process group of its own, after
    the training thread moved on, and holds what the synchronous run's folder of that name holds."""
    from tests.strategies.test_fsdp import Net, full, loaders
    from torchsystem_trainer.callbacks import checkpoint_writes
    from torchsystem_trainer.checkpoint.sharded import read_consolidated
    from torchsystem_trainer.strategies import FSDPStrategy

    def fsdp_fit(folder: Path, async_save: bool, callbacks: list[Any]) -> Net:
        torch.manual_seed(0)
        aggregate = Net()
        checkpoint = ModelCheckpoint(folder, every_n_steps=3, save_top_k=-1, save_last=True, async_save=async_save)
        trainer = Trainer(
            strategy=FSDPStrategy(devices=1),
            max_epochs=2,
            seed=7,
            callbacks=[*callbacks, checkpoint],
            enable_progress_bar=False,
        )
        trainer.fit(aggregate, loaders())
        return aggregate

    synchronous = fsdp_fit(tmp_path / "sync", False, [])
    gate, real = Gate(), checkpoint_writes.save_sharded
    groups: list[Any] = []

    def gated(state: Any, folder: Any, process_group: Any = None) -> Any:
        assert threading.current_thread() is not threading.main_thread()
        groups.append(process_group)
        gate.hold(state.plain["loop"]["progress"]["global_step"])
        try:
            return real(state, folder, process_group=process_group)
        finally:
            gate.release()

    monkeypatch.setattr(checkpoint_writes, "save_sharded", gated)
    background = fsdp_fit(tmp_path / "async", True, [gate])
    assert len(groups) == 5 and all(group is not None for group in groups)  # steps 3, 6, 9, 12, 15; not the default
    assert gate.writes == [0] * 5
    names = sorted(path.name for path in (tmp_path / "sync").iterdir())
    assert names == sorted(path.name for path in (tmp_path / "async").iterdir()) and "last.ckpt" in names
    for name in names:
        want, got = (read_consolidated(tmp_path / kind / name) for kind in ("sync", "async"))
        assert_same_state(got, want)
    assert_same_state(
        {"aggregate": full(background), "loop": {}, "strategy": {}, "rng": {}},
        {"aggregate": full(synchronous), "loop": {}, "strategy": {}, "rng": {}},
    )
