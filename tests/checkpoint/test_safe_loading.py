"""Loading cannot be used to attack the user, and a failed load changes nothing: not on disk, not in the aggregate,
not in the callbacks; every error names the file."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch
from torch import nn

from tests.checkpoint import train_script
from tests.checkpoint.helpers import Snapshot, run
from tests.conftest import Recorder
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping
from torchsystem_trainer.checkpoint import (
    CheckpointError,
    checkpoint_state,
    load_file,
    read_checkpoint,
    save_atomic,
)


class Payload:
    """Pickles as a call of ``os.system``: unpickling it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder holding a valid mid-epoch checkpoint, ``good.ckpt``."""
    run(lambda: train_script.loaders(0), extra=(Snapshot(tmp_path / "good.ckpt", step=5),), max_epochs=1, metrics=False)
    return tmp_path


def _flip_a_tensor_byte(data: bytes) -> bytes:
    """Corrupt one byte of the first tensor record's data (not the zip structure, which would be caught anyway)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 16)
    header = info.header_offset
    name_length, extra_length = struct.unpack("<HH", data[header + 26 : header + 30])
    start = header + 30 + name_length + extra_length
    corrupted = bytearray(data)
    corrupted[start + 8] ^= 0xFF
    return bytes(corrupted)


def _write_bad(kind: str, folder: Path) -> tuple[Path, str]:
    """Write a bad file of ``kind`` next to ``good.ckpt``; return it and the expected message."""
    good = (folder / "good.ckpt").read_bytes()
    path = folder / f"{kind}.ckpt"
    marker = folder.parent / f"{folder.name}-pwned"
    if kind == "malicious-zip":
        torch.save({"format": "torchsystem-trainer", "version": 1, "aggregate": Payload(marker)}, path)
        return path, r"was refused.*posix\.system.*Nothing in it was run"
    if kind == "malicious-pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
        return path, "not a zip archive.*nothing in it was unpickled"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return path, "not a zip archive"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "not a zip archive"
    if kind == "corrupt":
        path.write_bytes(_flip_a_tensor_byte(good))
        return path, "truncated or corrupt: Bad CRC-32"
    if kind == "foreign":
        torch.save(nn.Linear(8, 16).state_dict(), path)
        return path, "not a torchsystem-trainer checkpoint"
    if kind == "newer-version":
        state = load_file(folder / "good.ckpt")
        state["version"] = 99
        torch.save(state, path)
        return path, "format version 99.*newer than this library's 1.*upgrade"
    if kind == "incomplete":
        state = load_file(folder / "good.ckpt")
        del state["loop"]
        torch.save(state, path)
        return path, r"incomplete checkpoint: it lacks \['loop'\]"
    raise AssertionError(kind)


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


KINDS = ["malicious-zip", "malicious-pickle", "truncated", "empty", "corrupt", "foreign", "newer-version", "incomplete"]


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_a_bad_file_is_refused_naming_it_and_nothing_changes(kind, folder):
    path, message = _write_bad(kind, folder)
    before = _listing(folder)
    torch.manual_seed(0)
    aggregate = train_script.Net()
    weights = {key: value.clone() for key, value in aggregate.state_dict().items()}
    stopping = EarlyStopping(monitor="validation/loss")
    stopping.wait_count = 1
    recorder = Recorder()
    trainer = Trainer(callbacks=[stopping, recorder], enable_progress_bar=False)
    with pytest.raises(CheckpointError, match=message) as raised:
        trainer.fit(aggregate, train_script.loaders(0), ckpt_path=path)
    assert raised.value.__cause__ is None or not isinstance(raised.value.__cause__, CheckpointError)
    assert str(path) in str(raised.value)
    assert _listing(folder) == before  # nothing written, renamed or deleted
    assert all(torch.equal(aggregate.state_dict()[key], value) for key, value in weights.items())
    assert stopping.wait_count == 1 and recorder.events == []  # no callback touched, no event fired
    assert not (folder.parent / f"{folder.name}-pwned").exists()  # the payload never ran


def test_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        Trainer(enable_progress_bar=False).fit(
            train_script.Net(), train_script.loaders(0), ckpt_path=tmp_path / "nothing.ckpt"
        )


class Wider(train_script.Net):
    def __init__(self) -> None:
        super().__init__()
        self.nn[3] = nn.Linear(16, 4)  # another number of classes
        self.head = nn.Linear(2, 2)  # a parameter the checkpoint lacks
        self.optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=5)


def test_an_aggregate_that_does_not_match_lists_keys_and_shapes_and_is_unchanged(folder):
    aggregate = Wider()
    weights = {key: value.clone() for key, value in aggregate.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        Trainer(enable_progress_bar=False).fit(aggregate, train_script.loaders(0), ckpt_path=folder / "good.ckpt")
    message = str(raised.value)
    assert "good.ckpt" in message and "does not match Wider" in message
    assert "missing keys: ['head.bias', 'head.weight']" in message
    assert "nn.3.weight: checkpoint [3, 16] vs aggregate [4, 16]" in message
    assert "parameters per optimizer group differ" in message
    assert all(torch.equal(aggregate.state_dict()[key], value) for key, value in weights.items())


def test_a_checkpoint_of_a_bigger_model_lists_unexpected_keys(folder):
    class Smaller(train_script.Net):
        def __init__(self) -> None:
            super().__init__()
            self.nn = nn.Sequential(nn.Linear(8, 16))
            self.optimizer = torch.optim.Adam(self.nn.parameters())
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=5)

    with pytest.raises(CheckpointError, match=r"unexpected keys: \['nn.3.bias', 'nn.3.weight'\]"):
        Trainer(enable_progress_bar=False).fit(Smaller(), train_script.loaders(0), ckpt_path=folder / "good.ckpt")


def test_another_aggregate_identity_warns_naming_both(folder):
    state = load_file(folder / "good.ckpt")
    state["aggregate"]["id"] = "a1b2c3"
    save_atomic(state, folder / "other.ckpt")
    aggregate = train_script.Net()
    aggregate.initialize("d4e5f6")
    with pytest.warns(UserWarning, match=r"other.ckpt.*'a1b2c3'.*into aggregate 'd4e5f6'"):
        trainer = Trainer(enable_progress_bar=False, max_epochs=1)
        trainer.fit(aggregate, train_script.loaders(0), ckpt_path=folder / "other.ckpt")


class Fragile(Callback):
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise KeyError("expected another layout")


def test_a_callback_that_cannot_load_its_state_leaves_everything_as_it_was(folder):
    state = load_file(folder / "good.ckpt")
    state["callbacks"]["Fragile"] = {"value": 3}
    save_atomic(state, folder / "fragile.ckpt")
    stopping = EarlyStopping(monitor="validation/loss")
    aggregate = train_script.Net()
    weights = {key: value.clone() for key, value in aggregate.state_dict().items()}
    trainer = Trainer(callbacks=[stopping, Fragile()], enable_progress_bar=False)
    with pytest.raises(CheckpointError, match=r"fragile.ckpt.*callback Fragile cannot be restored"):
        trainer.fit(aggregate, train_script.loaders(0), ckpt_path=folder / "fragile.ckpt")
    assert stopping.state_dict()["wait_count"] == 0 and stopping.best_score == float("inf")
    assert all(torch.equal(aggregate.state_dict()[key], value) for key, value in weights.items())


class Holder(Callback):
    def __init__(self, value: Any) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"inner": [1, {"x": self.value}]}


@pytest.mark.parametrize(
    "value, named",
    [
        (numpy.float64(0.5), "numpy.float64"),
        (object(), "builtins.object"),
        (nn.Linear(1, 1), "Linear"),
        (collections.defaultdict(int), "defaultdict"),
    ],
    ids=["numpy-scalar", "object", "module", "defaultdict"],
)
def test_a_state_weights_only_loading_would_refuse_is_never_written(value, named, tmp_path):
    trainer = Trainer(callbacks=[Holder(value)], enable_progress_bar=False)
    where = r"checkpoint\['callbacks'\]\['Holder'\]\['inner'\]\[1\]\['x'\]"
    with pytest.raises(TypeError, match=rf"{where} is a .*{named}"):
        checkpoint_state(trainer, train_script.Net())


def test_a_checkpoint_holds_only_plain_data_and_loads_with_weights_only(folder):
    state = torch.load(folder / "good.ckpt", weights_only=True)  # plain torch, no library code
    assert state["format"] == "torchsystem-trainer" and state["version"] == 1
    assert set(state) == {"format", "version", "library_version", "aggregate", "loop", "callbacks", "strategy", "rng"}
    assert set(state["aggregate"]) == {"modules", "optimizers", "schedulers", "epoch", "id", "networks"}
    assert state["aggregate"]["networks"] == {}  # train_script.Net builds an unregistered nn.Sequential
    assert set(state["aggregate"]["optimizers"]) == {"optimizer"}
    assert set(state["aggregate"]["schedulers"]) == {"scheduler"}
    loop = state["loop"]
    assert loop["progress"] == {"epoch": 0, "batch": 5, "step": 5, "global_step": 5}
    assert loop["world_size"] == 1 and loop["should_stop"] is False
    assert set(loop["train"]["epoch_start"]["rng"]) >= {"python", "torch", "cuda", "numpy"}
    assert loop["train_results"]["losses"].shape == (5,) and loop["train_results"]["count"] == 40
    assert set(loop["generators"]) == {"validation"}
    assert set(state["rng"]) >= {"python", "torch", "cuda", "numpy"}
    assert "EarlyStopping" in state["callbacks"]


def test_read_checkpoint_changes_nothing_on_disk(folder):
    before = _listing(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_checkpoint(folder / "good.ckpt")
    assert _listing(folder) == before
