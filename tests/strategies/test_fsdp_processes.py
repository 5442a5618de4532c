"""FSDPStrategy with 2 and 3 gloo processes on CPU, launched by the Trainer (``forkserver``) and by ``torchrun``.

The claims: the sharded training equals one process on the concatenated batch (rtol 1e-5), with gradient
accumulation and clipping by norm over sharded gradients, nested sharding units, and evaluation over uneven shards;
a sharded checkpoint of 2 processes reloads exactly (model and optimizer) on 3, and the fit continues there;
the caller of a Trainer-launched fit gets the full trained state back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from tests.strategies import _distributed  # noqa: F401  # the fork server's preloaded modules
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint.sharded import read_consolidated
from torchsystem_trainer.strategies import FSDPStrategy

pytestmark = pytest.mark.slow  # several processes per test

SEED = 3
SCRIPT = Path(__file__).with_name("fsdp_script.py")


class Wide(Aggregate):
    """Linear(4, 16)-ReLU-Linear(16, 2), AdamW built in ``__init__`` (before any sharding), the default ``fit``."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.AdamW(self.nn.parameters(), lr=0.05)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


class Momentum(Wide):
    """The same network with SGD and momentum, whose step is not invariant to the gradients' scale (AdamW nearly
    is), so that a wrong clipping factor would show."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.2, momentum=0.9)


def datasets(train: int = 24) -> tuple[TensorDataset, TensorDataset]:
    """``train`` training samples; 13 validation samples (uneven shards on 2 and 3 processes)."""
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(train, 4, generator=generator), torch.randint(0, 2, (train,), generator=generator)
    validation = TensorDataset(torch.randn(13, 4, generator=generator), torch.randint(0, 2, (13,), generator=generator))
    return TensorDataset(inputs, targets), validation


def metrics() -> dict[str, MulticlassAccuracy]:
    return {"accuracy": MulticlassAccuracy(num_classes=2, average="micro")}


def flat_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.reshape(-1).float() for value in state.values()])


def fit(
    strategy: Any, batch_size: int, epochs: int = 2, kind: type[Wide] = Wide, **options: Any
) -> tuple[Wide, Trainer]:
    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = kind()
    trainer = Trainer(strategy=strategy, max_epochs=epochs, metrics=metrics(), enable_progress_bar=False, **options)
    loaders = [("train", DataLoader(train, batch_size=batch_size)), ("validation", DataLoader(validation, batch_size=3))]
    trainer.fit(aggregate, loaders)
    return aggregate, trainer


def assert_same_training(got: tuple[Wide, Trainer], want: tuple[Wide, Trainer]) -> None:
    torch.testing.assert_close(flat_state(got[0].state_dict()), flat_state(want[0].state_dict()), rtol=1e-5, atol=1e-6)
    state, expected = got[0].optimizer.state_dict()["state"], want[0].optimizer.state_dict()["state"]
    assert state.keys() == expected.keys()
    for index, entry in expected.items():
        for key, value in entry.items():
            torch.testing.assert_close(state[index][key], value, rtol=1e-5, atol=1e-7)
    assert got[1].callback_metrics.keys() == want[1].callback_metrics.keys()
    for key, value in want[1].callback_metrics.items():
        torch.testing.assert_close(got[1].callback_metrics[key], value, rtol=1e-5, atol=0)


CLIPPED = {"accumulate_grad_batches": 2, "gradient_clip_val": 0.05}
CASES = {
    "2-processes-accumulate-clip": (2, Momentum, CLIPPED, None),
    "3-processes-nested-units": (3, Wide, {}, {nn.Linear}),
}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_sharded_training_equals_one_process_on_the_concatenated_batch(name):
    """Per-process batch 2 on N processes against one process with batch 2 N: the same samples per step (a
    DistributedSampler without shuffling gives the N shards of each contiguous block), so the same mean gradient;
    clipping by norm uses the global norm of the sharded gradients (0.05 clips every step here)."""
    world_size, kind, options, policy = CASES[name]
    strategy = FSDPStrategy(devices=world_size, auto_wrap_policy=policy, start_method="forkserver", timeout=60)
    sharded = fit(strategy, batch_size=2, kind=kind, **options)
    expected = fit("cpu", batch_size=2 * world_size, kind=kind, **options)
    assert_same_training(sharded, expected)  # the caller's aggregate holds rank 0's gathered state
    assert sharded[1].progress.global_step == expected[1].progress.global_step
    if options:  # the clipping changed the result: the test would see a wrong norm
        unclipped = fit("cpu", batch_size=2 * world_size, kind=kind, accumulate_grad_batches=2)
        assert not torch.allclose(flat_state(unclipped[0].state_dict()), flat_state(expected[0].state_dict()))


class Reloaded(Callback):
    """At ``FitStarted`` (the checkpoint restored), whether the whole gathered state equals the consolidated
    checkpoint's, model and optimizer, exactly; handed back to the caller in its state."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.equal: dict[str, bool] = {}

    def on_fit_started(self, event: Any) -> None:
        state = event.trainer.strategy.aggregate_state(event.aggregate)  # every process: a collective
        if not event.trainer.is_global_zero:
            return
        saved = read_consolidated(self.folder)["aggregate"]
        self.equal["world_size"] = event.trainer.world_size
        self.equal["modules"] = all(torch.equal(state["modules"][k], v) for k, v in saved["modules"].items())
        got, want = state["optimizers"]["optimizer"], saved["optimizers"]["optimizer"]
        self.equal["optimizer"] = got["param_groups"] == want["param_groups"] and all(
            torch.equal(got["state"][i][key], value) for i, entry in want["state"].items() for key, value in entry.items()
        )

    def state_dict(self) -> dict[str, Any]:
        return {"equal": self.equal}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.equal = state["equal"]


def test_a_checkpoint_of_two_processes_reloads_exactly_on_three_and_on_one_and_the_fit_goes_on(tmp_path):
    train, validation = datasets()
    loaders = [("train", DataLoader(train, batch_size=2, shuffle=True)), ("validation", DataLoader(validation, batch_size=3))]
    torch.manual_seed(SEED)
    checkpoint = ModelCheckpoint(tmp_path, every_n_steps=4, save_top_k=-1)
    trainer = Trainer(
        strategy=FSDPStrategy(devices=2, start_method="forkserver", timeout=60),
        max_epochs=1,
        seed=5,
        callbacks=[checkpoint],
        enable_progress_bar=False,
    )
    trainer.fit(Wide(), loaders)
    folder = tmp_path / "epoch=0-step=4.ckpt"  # mid-epoch: 6 steps per epoch on 2 processes
    assert (folder / ".metadata").is_file() and sorted(p.name for p in folder.glob("rank-*.pt")) == [
        "rank-0.pt",
        "rank-1.pt",
    ]

    probe = Reloaded(str(folder))
    resumed = Trainer(
        strategy=FSDPStrategy(devices=3, start_method="forkserver", timeout=60),
        max_epochs=2,
        seed=5,
        callbacks=[probe],
        enable_progress_bar=False,
    )
    aggregate = Wide()
    resumed.fit(aggregate, loaders, ckpt_path=folder)
    assert probe.equal == {"world_size": 3, "modules": True, "optimizer": True}
    # the unfinished epoch went on after the 16 samples the 2 processes had consumed (4 batches of 2 each: 2 on
    # each of 3 processes, 2 remain), then a whole epoch of 4 steps on 3 processes
    assert aggregate.epoch == 2 and resumed.progress.global_step == 4 + 2 + 4
    assert all(torch.isfinite(p).all() for p in aggregate.parameters())

    # on one process (here, in this one): the same exact reload, and the warning that the data order changed
    probe = Reloaded(str(folder))
    one = Trainer(strategy=FSDPStrategy(devices=1), max_epochs=1, callbacks=[probe], enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"written by a run of 2 process\(es\) and this one has 1.*continues after 8"):
        one.fit(Wide(), loaders, ckpt_path=folder)
    assert probe.equal == {"world_size": 1, "modules": True, "optimizer": True}
    assert one.progress.global_step == 4 + 4  # 8 of its 12 batches of 2 consumed, 4 remain


def test_torchrun_trains_the_same_script_and_saves_a_sharded_checkpoint(tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    done = subprocess.run([*command, str(tmp_path)], env=environment, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1))
    assert (rank0["world_size"], rank0["rank"], rank1["rank"]) == (2, 0, 1)
    assert rank0["sharded"] and rank1["sharded"]  # each process holds DTensor shards after the fit
    expected = fit("cpu", batch_size=4)
    torch.testing.assert_close(torch.tensor(rank0["weights"]), flat_state(expected[0].state_dict()), rtol=1e-5, atol=1e-6)
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["validate"] == rank1["validate"]  # validate after the fit, on the sharded aggregate
    torch.testing.assert_close(rank0["validate"]["loss"], expected[1].callback_metrics["validation/loss"], rtol=1e-5, atol=0)
    saved = read_consolidated(tmp_path / "saved.ckpt")  # Trainer.save_checkpoint: every process its shard
    torch.testing.assert_close(flat_state(saved["aggregate"]["modules"]), torch.tensor(rank0["weights"]), rtol=0, atol=0)
