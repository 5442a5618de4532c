"""SLURMRequeue: Slurm's warning signal stops the fit at a step boundary, ModelCheckpoint writes last.ckpt, and only
then global rank 0 runs ``scontrol requeue <job>`` (a fake ``scontrol`` on PATH records its arguments and a copy of
last.ckpt as it was when called). The signal is sent by the process to itself, as from outside, at a chosen step."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint, SLURMRequeue
from torchsystem_trainer.callbacks.slurm_requeue import slurm_job_id
from torchsystem_trainer.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="this platform has no SIGUSR1")

FAKE_SCONTROL = """#!/bin/sh
printf '%s\\n' "$@" > "$SCONTROL_RECORD"
if [ -f "$SCONTROL_LAST" ]; then cp "$SCONTROL_LAST" "$SCONTROL_RECORD.last.ckpt"; fi
exit "${SCONTROL_EXIT:-0}"
"""


class SignalAt(Callback):
    def __init__(self, number: int, step: int) -> None:
        self.number, self.step = number, step

    def on_batch_trained(self, event) -> None:
        if event.step == self.step:
            os.kill(os.getpid(), self.number)


def fake_scontrol(folder: Path, last: Path, job: str = "4242") -> tuple[dict[str, str], Path]:
    """A fake ``scontrol`` in ``folder/bin``: the environment that puts it first on PATH (in a Slurm job ``job``),
    and the file it records its arguments in (and ``<file>.last.ckpt``, a copy of ``last`` as it was then)."""
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    fake = folder / "bin" / "scontrol"
    fake.write_text(FAKE_SCONTROL)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    record = folder / "scontrol.txt"
    environment = {
        "PATH": f"{folder / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_RECORD": str(record),
        "SCONTROL_LAST": str(last),
        "SLURM_JOB_ID": job,
    }
    return environment, record


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A fake ``scontrol`` first on PATH; returns the file it records its arguments in."""
    environment, record = fake_scontrol(tmp_path, tmp_path / "checkpoints" / "last.ckpt")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    return record


def fit(tmp_path: Path, number: int, step: int, **requeue_args) -> tuple[Trainer, SLURMRequeue]:
    requeue = SLURMRequeue(**requeue_args)
    checkpoint = ModelCheckpoint(tmp_path / "checkpoints")  # every epoch; no save_last: the signal writes last.ckpt
    trainer = Trainer(callbacks=[requeue, checkpoint, SignalAt(number, step)], max_epochs=3, enable_progress_bar=False)
    trainer.fit(Classifier(), make_data())
    return trainer, requeue


def test_the_signal_stops_the_fit_then_the_job_is_requeued_after_last_ckpt_is_written(tmp_path, scontrol):
    before = signal.getsignal(signal.SIGUSR1)
    trainer, requeue = fit(tmp_path, signal.SIGUSR1, step=6)
    assert trainer.interrupted and trainer.received_signal == signal.SIGUSR1 and trainer.global_step == 6
    assert requeue.requeued == "4242"
    assert scontrol.read_text().split() == ["requeue", "4242"]
    # when scontrol ran, last.ckpt was complete and held the step the fit stopped at
    copy = Path(f"{scontrol}.last.ckpt")
    assert read_checkpoint(copy)["loop"]["progress"]["global_step"] == 6
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is the fit's only
    order = [type(c).__name__ for c in trainer.callbacks]
    assert order.index("ModelCheckpoint") < order.index("SLURMRequeue")  # given first, it runs after the checkpoint


def test_another_signal_or_requeue_off_requeues_nothing(tmp_path, scontrol):
    trainer, requeue = fit(tmp_path / "term", signal.SIGTERM, step=3)
    assert trainer.interrupted and requeue.requeued is None and not scontrol.exists()
    trainer, requeue = fit(tmp_path / "off", signal.SIGUSR1, step=3, requeue=False)
    assert trainer.interrupted and requeue.requeued is None and not scontrol.exists()
    assert (tmp_path / "off" / "checkpoints" / "last.ckpt").is_file()


def test_a_failed_requeue_or_no_slurm_job_is_a_warning(tmp_path, scontrol, monkeypatch):
    monkeypatch.setenv("SCONTROL_EXIT", "1")
    with pytest.warns(UserWarning, match=r"'scontrol requeue 4242' exited with 1"):
        _, requeue = fit(tmp_path / "failed", signal.SIGUSR1, step=3)
    assert requeue.requeued is None
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.warns(UserWarning, match="not a Slurm job"):
        _, requeue = fit(tmp_path / "outside", signal.SIGUSR1, step=3)
    assert requeue.requeued is None


def test_the_job_id_of_an_array_task_and_the_checks():
    assert slurm_job_id({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"}) == "5_2"
    assert slurm_job_id({"SLURM_JOB_ID": "7"}) == "7"
    assert slurm_job_id({}) is None
    with pytest.raises(ValueError, match="requeue_signal=-3"):
        SLURMRequeue(requeue_signal=-3)
