"""Crash tests of sharded checkpoints: a 2-process FSDP run (the training of ``train_script``: shuffling, dropout,
augmentation drawn from each process's generator, Adam, a per-step LR scheduler, EarlyStopping) killed with
SIGKILL after a training step, while DCP writes a checkpoint (before its metadata), and between the two renames that
replace ``last.ckpt``, then resumed each time with ``ckpt_path="last"`` on 2 processes, ends with the uninterrupted
run's weights, bit for bit: every rank restored its own generators, data position and partial results.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from tests.checkpoint import train_script
from tests.strategies import _distributed  # noqa: F401  # the fork server's preloaded modules
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torchsystem_trainer.checkpoint.sharded import read_sharded
from torchsystem_trainer.strategies import FSDPStrategy, ProcessRaisedError

pytestmark = pytest.mark.slow  # several processes per run


class KillInSave(Callback):
    """In rank 0, ``SIGKILL`` in the ``at``-th DCP metadata write (``"metadata"``: the shards are written, the
    metadata not), or in the ``at``-th rename of a new ``last.ckpt`` into place (``"swap"``: the old one is moved
    aside already); installed when the fit starts, in the process of the run."""

    def __init__(self, where: str, at: int) -> None:
        self.where, self.at = where, at

    def on_fit_started(self, event: Any) -> None:
        if not event.trainer.is_global_zero:
            return
        calls = {"n": 0}
        if self.where == "metadata":
            import torch.distributed.checkpoint as dcp

            finish = dcp.FileSystemWriter.finish

            def killing_finish(writer: Any, *args: Any, **kwargs: Any) -> Any:
                calls["n"] += 1
                if calls["n"] == self.at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return finish(writer, *args, **kwargs)

            dcp.FileSystemWriter.finish = killing_finish  # type: ignore[method-assign]
        else:
            replace = os.replace

            def killing_replace(source: Any, destination: Any) -> None:
                if Path(destination).name == "last.ckpt" and str(source).endswith(".tmp"):
                    calls["n"] += 1
                    if calls["n"] == self.at:
                        os.kill(os.getpid(), signal.SIGKILL)
                replace(source, destination)

            os.replace = killing_replace  # type: ignore[assignment]


class RankAugmented(train_script.Augmented):
    """``train_script``'s augmented samples, drawing one more number for odd indices: the processes, which read
    other indices, draw different amounts, so their generators differ and each must get its own back."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index % 2:
            torch.rand(1)
        return super().__getitem__(index)


def loaders() -> list[tuple[str, Any]]:
    (_, train), validation = train_script.loaders()
    dataset = train.dataset
    augmented = RankAugmented(dataset.inputs, dataset.targets)
    return [("train", DataLoader(augmented, batch_size=train_script.BATCH, shuffle=True)), validation]


def run(folder: Path, kill: dict[str, Any] | None = None, resume: bool = True) -> dict[str, torch.Tensor] | None:
    """One fit of ``train_script.Net`` on 2 FSDP processes; ``None`` when a process was killed."""
    callbacks: list[Any] = [EarlyStopping(monitor="validation/loss", patience=2, min_delta=10.0)]
    if kill and kill["event"] == "BatchTrained":
        callbacks.append(train_script.Kill("BatchTrained", kill["at"]))
    elif kill:
        callbacks.append(KillInSave(kill["event"], kill["at"]))
    callbacks.append(ModelCheckpoint(folder, every_n_steps=3, every_n_epochs=1, save_top_k=2, save_last=True))
    torch.manual_seed(0)
    aggregate = train_script.Net()
    trainer = Trainer(
        strategy=FSDPStrategy(devices=2, start_method="forkserver", timeout=60),
        callbacks=callbacks,
        max_epochs=5,
        seed=123,
        enable_progress_bar=False,
    )
    try:
        trainer.fit(aggregate, loaders(), ckpt_path="last" if resume else None)
    except ProcessRaisedError as error:
        assert error.exit_code == -signal.SIGKILL, error
        return None
    return {key: value.clone() for key, value in aggregate.state_dict().items()}


def newest_is_loadable(folder: Path) -> None:
    found = ModelCheckpoint(folder).checkpoint_path("last", trainer=None)
    if found is not None:
        assert read_sharded(found)["sharded"]["world_size"] == 2


def test_sigkill_after_steps_and_inside_saves_then_resume_last_on_two_processes_is_bit_identical(tmp_path):
    reference = run(tmp_path / "reference", resume=False)
    assert reference is not None
    folder = tmp_path / "checkpoints"
    kills = [
        {"event": "BatchTrained", "at": 5},  # mid-epoch: resumes after the step-3 checkpoint
        {"event": "metadata", "at": 2},  # the shards of the 2nd save of the resumed run written, not its metadata
        {"event": "swap", "at": 1},  # the old last.ckpt moved aside, the new one not yet renamed into place
        {"event": "BatchTrained", "at": 11},  # the last epoch, EarlyStopping in the middle of its patience
    ]
    for kill in kills:
        assert run(folder, kill) is None, kill
        newest_is_loadable(folder)
    assert any(p.name.endswith(".tmp") for p in folder.iterdir())  # the unfinished save, hidden and ignored
    final = run(folder)
    assert final is not None and list(final) == list(reference)
    for key, value in reference.items():
        assert torch.equal(final[key], value), f"{key} differs from the uninterrupted run"
