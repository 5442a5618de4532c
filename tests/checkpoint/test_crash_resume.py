"""Crash tests: a training process killed with SIGKILL (at chosen steps, inside checkpoint writes, inside background
checkpoint writes, at points drawn from seeded generators, several times in one run) and resumed each time with
``ckpt_path="last"`` ends with the uninterrupted run's weights, bit for bit; SIGTERM from outside stops it cleanly with
a checkpoint; Slurm's SIGUSR1 stops it with a checkpoint, then requeues the job, which resumes exactly.

The runs are processes forked from a forkserver that has imported the training script (a fresh interpreter spends
seconds importing torch); the SIGTERM test runs the script with ``sys.executable``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.callbacks.test_slurm_requeue import fake_scontrol
from tests.checkpoint import train_script
from torchsystem_trainer.callbacks import ModelCheckpoint
from torchsystem_trainer.checkpoint import load_file, read_checkpoint

pytestmark = pytest.mark.slow  # several processes per test

SCRIPT = Path(train_script.__file__)
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def forkserver() -> Any:
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo: imported lazily by the first optimizer built, 2 s of each run otherwise
    context.set_forkserver_preload(["tests.checkpoint.train_script", "torch._dynamo"])
    return context


def launch(context: Any, config: dict[str, Any]) -> int | None:
    """Run ``train_script.main(config)`` in a forked process (it kills itself where ``config["kill"]`` says)."""
    process = context.Process(target=train_script.main, args=(config,))
    process.start()
    process.join(120)
    assert process.exitcode is not None, "the training process hung"
    return process.exitcode


def weights(path: Path) -> dict[str, torch.Tensor]:
    result = load_file(path)
    assert result["reason"] == "done"
    return result["weights"]  # type: ignore[no-any-return]


def assert_bit_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key} differs from the uninterrupted run"


def newest_is_loadable(folder: Path) -> None:
    """What ``ckpt_path="last"`` would resume from is a complete checkpoint (or there is none yet)."""
    found = ModelCheckpoint(folder).checkpoint_path("last", trainer=None)
    if found is not None:
        read_checkpoint(found)


@pytest.fixture(scope="module")
def reference(forkserver: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The uninterrupted run's final weights, per configuration (computed once)."""
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(name: str, **config: Any) -> dict[str, torch.Tensor]:
        if name not in cache:
            folder = tmp_path_factory.mktemp(f"reference-{name}")
            out = folder / "out.pt"
            run = {**config, "dirpath": str(folder / "checkpoints"), "out": str(out), "resume": False}
            assert launch(forkserver, run) == 0
            cache[name] = weights(out)
        return cache[name]

    return get


CHOSEN = {
    "workers0-augmented": (
        {"workers": 0, "augment": True},
        [
            {"event": "BatchTrained", "at": 1},  # the first step: no checkpoint yet, starts again from scratch
            {"event": "BatchTrained", "at": 5},  # mid-epoch: resumes after step 3 (every_n_steps=3)
            {"event": "torn", "at": 3},  # half-written temporary file: the previous checkpoint stays the newest
            {"event": "EpochStarted", "at": 1},  # exactly at an epoch's end, after its checkpoint
            {"event": "BatchTrained", "at": 14},  # mid-epoch, EarlyStopping in the middle of its patience
            {"event": "replace", "at": 2},  # complete temporary file not yet renamed
            {"event": "BatchTrained", "at": 24},  # the very last step, before its checkpoint
            {"event": "FitEnded"},  # after the last checkpoint: the resumed fit ends at once
        ],
    ),
    "workers2": (
        {"workers": 2, "augment": False},
        [
            {"event": "BatchTrained", "at": 11},
            {"event": "EpochStarted", "at": 2},
            {"event": "BatchTrained", "at": 24},
        ],
    ),
}


LOOP_CONTROLS_KILLS = [
    {"event": "Validating", "at": 3},  # in the first mid-epoch validation, after step 3's checkpoint: runs it again
    {"event": "BatchTrained", "at": 5},  # between two mid-epoch validations (resumes after the one of step 3)
    {"event": "Validating", "at": 6},  # in the second one, after step 6's checkpoint
    {"event": "BatchTrained", "at": 14},  # epoch 1, between its validations (steps 11 and 14) before 14's
    {"event": "EpochStarted", "at": 3},  # EarlyStopping asked to stop in epoch 1, deferred by min_epochs=4
    {"event": "FitEnded"},
]
LOOP_CONTROLS = {"workers0-augmented-loop-controls": ({"workers": 0, "augment": True, "loop_controls": True},
                                                      LOOP_CONTROLS_KILLS)}

AVERAGING_KILLS = [
    {"event": "BatchTrained", "at": 5},  # epoch 0, resumes after step 3: no average yet, the best not yet known
    {"event": "BatchTrained", "at": 14},  # mid SWA epoch 1 (resumes after step 12), an EMA of 12 steps
    {"event": "EpochStarted", "at": 2},  # right after epoch 1's checkpoint
    {"event": "FitEnded"},  # after the last checkpoint, before the fit took the average (or the best weights)
]
AVERAGING = {
    "ema": ({"workers": 0, "augment": True, "ema": True}, AVERAGING_KILLS),
    "swa": ({"workers": 0, "augment": True, "swa": True}, AVERAGING_KILLS),
    "restore-best": ({"workers": 0, "augment": True, "restore_best": True}, AVERAGING_KILLS),
}


@pytest.mark.parametrize("name", list(CHOSEN), ids=list(CHOSEN))
def test_sigkill_at_chosen_points_then_resume_last_is_bit_identical(name, forkserver, reference, tmp_path):
    config, kills = CHOSEN[name]
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    base = {**config, "dirpath": str(folder), "out": str(out)}
    for kill in kills:
        assert launch(forkserver, {**base, "kill": kill}) == KILLED, kill
        newest_is_loadable(folder)
        assert not out.exists()
    assert launch(forkserver, base) == 0
    assert_bit_identical(weights(out), reference(name, **config))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(AVERAGING), ids=list(AVERAGING))
def test_sigkill_with_ema_swa_or_best_weights_then_resume_last_is_bit_identical(name, forkserver, reference, tmp_path):
    config, kills = AVERAGING[name]
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    base = {**config, "dirpath": str(folder), "out": str(out)}
    for kill in kills:
        assert launch(forkserver, {**base, "kill": kill}) == KILLED, kill
        newest_is_loadable(folder)
    assert launch(forkserver, base) == 0
    final = weights(out)
    assert_bit_identical(final, reference(name, **config))
    plain = reference("workers0-augmented", workers=0, augment=True)
    assert any(not torch.equal(final[key], plain[key]) for key in plain), "the feature changed nothing"


@pytest.mark.parametrize("seed", [5, 17, 2024], ids=lambda seed: f"seed{seed}")
def test_sigkill_at_random_points_then_resume_last_is_bit_identical(seed, forkserver, reference, tmp_path):
    """Three kills per run at points drawn from a seeded generator: after a training step, or inside the n-th
    checkpoint write of the process (half a file written, or a complete temporary file not yet renamed)."""
    chooser = random.Random(seed)
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    base = {"workers": 0, "augment": True, "dirpath": str(folder), "out": str(out)}
    steps = iter(sorted(chooser.sample(range(1, 25), 3)))
    kills = 0
    for _ in range(3):
        event = chooser.choice(["BatchTrained", "torn", "replace"])
        kill = {"event": event, "at": next(steps) if event == "BatchTrained" else chooser.randint(1, 3)}
        code = launch(forkserver, {**base, "kill": kill})
        if code == 0:  # the resumed run ended before that point: nothing left to interrupt
            break
        assert code == KILLED, kill
        kills += 1
        newest_is_loadable(folder)
    if not out.exists():
        assert launch(forkserver, base) == 0
    assert_bit_identical(weights(out), reference("workers0-augmented", workers=0, augment=True))
    assert kills >= 1  # a fresh run reaches every drawn point, so the first kill always lands


def test_sigterm_from_outside_stops_cleanly_and_resumes_exactly(forkserver, reference, tmp_path):
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    config = {"workers": 0, "augment": True, "slow": 0.01, "report": True, "dirpath": str(folder), "out": str(out)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), json.dumps(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    # wait for the run to be well inside the fit (the script reports each training step), then signal it
    for line in process.stdout:
        if line.strip() == "step 3":
            break
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors
    stopped = load_file(out)
    assert stopped["interrupted"] and stopped["reason"] == "interrupted"
    last = read_checkpoint(folder / "last.ckpt")
    assert last["loop"]["progress"]["global_step"] == stopped["global_step"]
    out.unlink()
    assert launch(forkserver, config) == 0
    assert_bit_identical(weights(out), reference("workers0-augmented", workers=0, augment=True))


def test_sigkill_during_background_writes_leaves_the_previous_checkpoint_and_resumes_exactly(
    forkserver, reference, tmp_path
):
    """ModelCheckpoint(async_save=True): kills in the writing thread (half a file, a complete file not yet renamed)
    and in the training thread while a write may be in flight; the resumed runs end as the synchronous one."""
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    base = {"workers": 0, "augment": True, "async": True, "dirpath": str(folder), "out": str(out)}
    kills = [  # (kill, the step of the newest complete checkpoint after it)
        ({"event": "torn", "at": 2}, 3),  # the 2nd background write (step 6's file) half written: step 3 stays
        ({"event": "replace", "at": 3}, 6),  # resumed at 3: step 6's file and last.ckpt, then step 8's not renamed
        ({"event": "BatchTrained", "at": 13}, None),  # right after step 12's checkpoint went to the writer
    ]
    for kill, newest in kills:
        assert launch(forkserver, {**base, "kill": kill}) == KILLED, kill
        newest_is_loadable(folder)
        found = ModelCheckpoint(folder).checkpoint_path("last", trainer=None)
        assert found is not None
        if newest is not None:
            assert read_checkpoint(found)["loop"]["progress"]["global_step"] == newest, kill
    assert launch(forkserver, base) == 0
    assert_bit_identical(weights(out), reference("workers0-augmented", workers=0, augment=True))


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="this platform has no SIGUSR1")
def test_slurm_sigusr1_checkpoints_requeues_and_the_requeued_job_resumes_exactly(forkserver, reference, tmp_path):
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    config = {"workers": 0, "augment": True, "slow": 0.01, "report": True, "slurm": True, "dirpath": str(folder),
              "out": str(out)}
    environment, record = fake_scontrol(tmp_path, folder / "last.ckpt", job="31337")
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **environment},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    for line in process.stdout:  # Slurm's warning comes while the fit runs
        if line.strip() == "step 3":
            break
    process.send_signal(signal.SIGUSR1)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 0, errors
    stopped = load_file(out)
    assert stopped["interrupted"] and stopped["reason"] == "interrupted"
    assert record.read_text().split() == ["requeue", "31337"]
    # scontrol ran once last.ckpt held the step the fit stopped at
    copy = read_checkpoint(Path(f"{record}.last.ckpt"))
    assert copy["loop"]["progress"]["global_step"] == stopped["global_step"]
    # the requeued job runs the same script: it resumes from last.ckpt, as if never stopped
    out.unlink()
    assert launch(forkserver, {**config, "slow": 0, "report": False}) == 0
    assert_bit_identical(weights(out), reference("workers0-augmented", workers=0, augment=True))
@pytest.mark.parametrize("name", list(LOOP_CONTROLS), ids=list(LOOP_CONTROLS))
def test_sigkill_between_mid_epoch_validations_with_a_trainer_stepped_scheduler_resumes_bit_identically(
    name, forkserver, reference, tmp_path
):
    config, kills = LOOP_CONTROLS[name]
    folder, out = tmp_path / "checkpoints", tmp_path / "out.pt"
    base = {**config, "dirpath": str(folder), "out": str(out)}
    for kill in kills:
        assert launch(forkserver, {**base, "kill": kill}) == KILLED, kill
        newest_is_loadable(folder)
    assert launch(forkserver, base) == 0
    final = load_file(out)
    assert final["epoch"] == 4  # EarlyStopping stopped it as soon as min_epochs allowed
    assert_bit_identical(weights(out), reference(name, **config))
    plain = reference("workers0-augmented", workers=0, augment=True)
    assert any(not torch.equal(final["weights"][key], plain[key]) for key in plain), "the controls changed nothing"
