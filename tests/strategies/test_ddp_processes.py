"""DDPStrategy with 2 gloo processes on CPU: launched like torchrun (the ``run_ranks`` helper), by the Trainer
itself (``spawn``, ``forkserver``), and by ``torchrun`` in a subprocess.

The claims: the ranks end with bit-identical weights; with ``shuffle=False`` training equals one process on the
doubled batch; validation results over uneven shards equal one process's over the full set; accumulation skips
the all-reduce until the window's last batch; a rank that raises stops the run quickly, naming the rank; a DDP
checkpoint resumes on one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from tests.conftest import Classifier
from tests.strategies._distributed import run_ranks, values
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.callbacks.model_checkpoint import ModelCheckpoint
from torchsystem_trainer.strategies import DDPStrategy, ProcessRaisedError

pytestmark = pytest.mark.slow  # several processes per test

SEED = 100  # the initial weights of rank 0 (the others start elsewhere: DDP broadcasts rank 0's)
SCRIPT = Path(__file__).with_name("ddp_script.py")


def datasets() -> tuple[TensorDataset, TensorDataset]:
    """16 training samples (8 per rank) and 13 validation samples (shards of 7 and 6: uneven)."""
    generator = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(16, 4, generator=generator), torch.randint(0, 2, (16,), generator=generator))
    validation = TensorDataset(torch.randn(13, 4, generator=generator), torch.randint(0, 2, (13,), generator=generator))
    return train, validation


def metrics() -> dict[str, MulticlassAccuracy]:
    return {"accuracy": MulticlassAccuracy(num_classes=2, average="micro")}


def flat(aggregate: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in aggregate.parameters()])


def reference(epochs: int, batch_size: int = 8) -> tuple[Classifier, dict[str, float]]:
    """One process on the doubled batch, from rank 0's initial weights."""
    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = Classifier()
    trainer = Trainer(strategy="cpu", max_epochs=epochs, metrics=metrics(), enable_progress_bar=False)
    trainer.fit(aggregate, [("train", DataLoader(train, batch_size=batch_size)), ("validation", DataLoader(validation, batch_size=3))])
    return aggregate, trainer.callback_metrics


class Probe(Callback):
    """Records, in every rank, what the aggregate and the strategy look like during the fit, and exercises the
    collectives from a callback."""

    def __init__(self) -> None:
        self.records: dict[str, object] = {"phases": []}

    def on_fit_started(self, event) -> None:
        aggregate, strategy = event.aggregate, event.trainer.strategy
        optimizer_params = aggregate.optimizer.param_groups[0]["params"]
        self.records.update(
            keys=list(aggregate.state_dict()),
            names=[name for name, _ in aggregate.named_parameters()],
            same_parameters=all(p is q for p, q in zip(optimizer_params, aggregate.nn.parameters())),
            module_type=type(aggregate.nn).__name__,
            wrapped=list(strategy.ddp_modules),
            rank=strategy.global_rank,
            world_size=strategy.world_size,
            initial=flat(aggregate),
        )

    def on_phase_started(self, event) -> None:
        self.records["phases"].append((event.epoch, event.phase, event.batches))

    def on_validated(self, event) -> None:
        strategy = event.trainer.strategy
        results = torch.tensor([event.results["loss"], event.results["accuracy"]], dtype=torch.float64)
        rank = torch.tensor([float(strategy.global_rank + 1)])
        strategy.barrier("validated")
        self.records.update(
            gathered=strategy.all_gather(results),
            sum=strategy.all_reduce(rank, "sum").item(),
            mean=strategy.all_reduce(rank, "mean").item(),
            max=strategy.all_reduce(rank, "max").item(),
            broadcast=strategy.broadcast({"from": strategy.global_rank}, src=1),
            tensor_broadcast=strategy.broadcast(rank, src=1).item(),
        )


class GradientProbe(Callback):
    """After each training batch: is the strategy accumulating, and are the gradients equal across ranks?"""

    def __init__(self) -> None:
        self.records: list[tuple[int, bool, bool]] = []

    def on_batch_trained(self, event) -> None:
        strategy = event.trainer.strategy
        gathered = strategy.all_gather(event.aggregate.nn.weight.grad)
        self.records.append((event.batch, strategy.accumulating, torch.equal(gathered[0], gathered[1])))


def counting_hook(state, bucket):  # unannotated: DDP checks real annotations, and this module's are strings
    """A DDP communication hook that counts its calls, then all-reduces (averages) as DDP's default does."""
    state["calls"] += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


class Scaled(Classifier):
    """A classifier with a parameter of its own (outside every child module), which DDP does not see."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs) * self.scale


class RankBatches:
    """Three batches that differ by rank, with no length: a loader the user sharded, ending inside a window."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.rank)
        for _ in range(3):
            yield torch.randn(4, 4, generator=generator), torch.randint(0, 2, (4,), generator=generator)


def _fits(rank: int, folder: str) -> dict[str, object]:
    """Three fits in one process, as a torchrun worker: the first joins the group, the others reuse it."""
    train, validation = datasets()
    torch.manual_seed(SEED + rank)  # every rank starts from other weights
    aggregate = Classifier()
    probe, checkpoint = Probe(), ModelCheckpoint(dirpath=folder, save_last=True)
    trainer = Trainer(
        strategy=DDPStrategy(timeout=30),
        callbacks=[probe, checkpoint],
        max_epochs=2,
        metrics=metrics(),
        enable_progress_bar=False,
    )
    trainer.fit(aggregate, [("train", DataLoader(train, batch_size=4)), ("validation", DataLoader(validation, batch_size=3))])
    aggregate.nn(torch.randn(2, 4)).sum().backward()  # after the fit: no DDP hook left, no collective
    out: dict[str, object] = {
        "weights": flat(aggregate),
        "metrics": trainer.callback_metrics,
        "probe": probe.records,
        "last": checkpoint.last_model_path,
        "unrouted": "forward" not in aggregate.nn.__dict__,
        "group_after": dist.is_initialized(),
    }

    torch.manual_seed(SEED)
    accumulated, calls, gradients = Classifier(), {"calls": 0}, GradientProbe()
    strategy = DDPStrategy(ddp_comm_hook=counting_hook, ddp_comm_state=calls)
    Trainer(strategy=strategy, accumulate_grad_batches=2, callbacks=[gradients], enable_progress_bar=False).fit(
        accumulated, DataLoader(train, batch_size=2)
    )
    out.update(accumulated=flat(accumulated), hook_calls=calls["calls"], gradients=gradients.records)

    torch.manual_seed(SEED)
    scaled = Scaled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(strategy=DDPStrategy(), accumulate_grad_batches=2, enable_progress_bar=False).fit(scaled, RankBatches(rank))
    out.update(scaled=flat(scaled), warnings=[str(w.message) for w in caught if "not sharded" in str(w.message)])
    return out


def test_ranks_agree_match_one_process_and_skip_sync_while_accumulating(tmp_path):
    rank0, rank1 = values(run_ranks(_fits, str(tmp_path)))

    # DDP broadcast rank 0's initial weights, and both ranks end bit-identical
    assert torch.equal(rank0["probe"]["initial"], rank1["probe"]["initial"])
    assert torch.equal(rank0["weights"], rank1["weights"])
    # ... equal to one process on the doubled batch, with the same validation results over the full set
    expected, expected_metrics = reference(epochs=2)
    torch.testing.assert_close(rank0["weights"], flat(expected), rtol=1e-6, atol=1e-7)
    assert rank0["metrics"] == rank1["metrics"]
    assert rank0["metrics"]["validation/accuracy"] == expected_metrics["validation/accuracy"]
    torch.testing.assert_close(
        rank0["metrics"]["validation/loss"], expected_metrics["validation/loss"], rtol=1e-6, atol=0
    )
    # the shards: 8 training samples each in 2 batches; 7 and 6 validation samples in 3 and 2 batches, no padding
    assert rank0["probe"]["phases"][:2] == [(0, "train", 2), (0, "validation", 3)]
    assert rank1["probe"]["phases"][:2] == [(0, "train", 2), (0, "validation", 2)]
    # the aggregate is unchanged for user code and checkpoints; it gets its own forward back after the fit
    for rank in (rank0, rank1):
        assert rank["probe"]["keys"] == ["nn.weight", "nn.bias"] == rank["probe"]["names"]
        assert rank["probe"]["same_parameters"] and rank["probe"]["module_type"] == "Linear"
        assert rank["probe"]["wrapped"] == ["nn"] and rank["probe"]["world_size"] == 2
        assert rank["unrouted"] and rank["group_after"]  # under torchrun the group outlives the fit
    # collectives from a callback
    gathered = rank0["probe"]["gathered"]
    assert torch.equal(gathered[0], gathered[1])
    assert (rank0["probe"]["sum"], rank0["probe"]["mean"], rank0["probe"]["max"]) == (3.0, 1.5, 2.0)
    assert rank0["probe"]["broadcast"] == rank1["probe"]["broadcast"] == {"from": 1}
    assert rank0["probe"]["tensor_broadcast"] == 2.0
    # rank 0 alone wrote the checkpoint
    assert rank0["last"] is not None and Path(rank0["last"]).is_file() and rank1["last"] is None

    # accumulation: one all-reduce per window (2 windows of 2 batches), not per batch; before the window's last
    # batch the ranks hold different gradients, after it the same; the result is one process on batch 8
    assert rank0["hook_calls"] == rank1["hook_calls"] == 2
    assert rank0["gradients"] == [(0, True, False), (1, False, True), (2, True, False), (3, False, True)]
    one_epoch, _ = reference(epochs=1)
    torch.testing.assert_close(rank0["accumulated"], flat(one_epoch), rtol=1e-6, atol=1e-7)
    assert torch.equal(rank0["accumulated"], rank1["accumulated"])

    # a loader that ends inside a window, and a parameter outside every module: still averaged
    assert torch.equal(rank0["scaled"], rank1["scaled"])
    assert len(rank0["warnings"]) == 1 and rank1["warnings"] == []


class Failing(Classifier):
    """Raises in rank 1 at its second batch."""

    def fit(self, inputs, targets):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches == 2 and int(os.environ.get("RANK", "0")) == 1:
            raise ValueError("a bad batch on purpose")
        return super().fit(inputs, targets)


def _fail_in_rank_one(rank: int) -> dict[str, object]:
    train, _ = datasets()
    torch.manual_seed(SEED)
    try:
        Trainer(strategy=DDPStrategy(timeout=10), enable_progress_bar=False).fit(Failing(), DataLoader(train, batch_size=2))
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error), "group_alive": dist.is_initialized()}
    return {"error": None}


def test_a_rank_that_raises_stops_its_peer_without_a_launcher_watching():
    """Under a launcher that does not stop the others (this helper waits for every process), the peer blocked in
    the gradient all-reduce fails within the timeout (10 s) instead of hanging; both destroy their group."""
    rank0, rank1 = values(run_ranks(_fail_in_rank_one, timeout_s=30))
    assert rank1["error"] == "ValueError" and "on purpose" in rank1["message"]
    assert rank0["error"] is not None
    assert not rank0["group_alive"] and not rank1["group_alive"]


class WeightsAgree(Callback):
    """At the end of the fit, whether every rank holds the same weights; kept in its state, which the launcher
    copies back to the caller from rank 0."""

    def __init__(self) -> None:
        self.identical: bool | None = None

    def on_fit_ended(self, event) -> None:
        gathered = event.trainer.strategy.all_gather(flat(event.aggregate))
        self.identical = all(torch.equal(gathered[0], row) for row in gathered)

    def state_dict(self) -> dict[str, object]:
        return {"identical": self.identical}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.identical = state["identical"]


def test_trainer_launches_with_spawn_and_the_caller_gets_the_result_and_resumes_on_one_process(tmp_path):
    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = Classifier()
    agree, checkpoint = WeightsAgree(), ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = Trainer(
        strategy=DDPStrategy(devices=2, accelerator="cpu"),  # start_method="spawn", the default
        callbacks=[agree, checkpoint],
        max_epochs=2,
        metrics=metrics(),
        enable_progress_bar=False,
    )
    trainer.fit(aggregate, [("train", DataLoader(train, batch_size=4)), ("validation", DataLoader(validation, batch_size=3))])

    expected, expected_metrics = reference(epochs=2)
    torch.testing.assert_close(flat(aggregate), flat(expected), rtol=1e-6, atol=1e-7)  # rank 0's state came back
    assert agree.identical is True
    assert trainer.progress.global_step == 4 and aggregate.epoch == 2
    assert trainer.callback_metrics.keys() == expected_metrics.keys()
    for key, value in expected_metrics.items():
        torch.testing.assert_close(trainer.callback_metrics[key], value, rtol=1e-6, atol=0)
    assert checkpoint.last_model_path is not None and Path(checkpoint.last_model_path).is_file()

    # the DDP run's checkpoint resumes on one process, on the doubled batch, as if it had run there
    torch.manual_seed(SEED + 7)
    resumed = Classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the number of processes changed: the resume warns about the data order
        Trainer(strategy="cpu", max_epochs=3, enable_progress_bar=False).fit(
            resumed, DataLoader(train, batch_size=8), ckpt_path=checkpoint.last_model_path
        )
    three_epochs, _ = reference(epochs=3)
    torch.testing.assert_close(flat(resumed), flat(three_epochs), rtol=1e-6, atol=1e-7)


def test_trainer_launch_surfaces_the_failing_rank_and_validates_on_shards():
    train, validation = datasets()
    strategy = DDPStrategy(devices=2, accelerator="cpu", start_method="forkserver", timeout=30)
    torch.manual_seed(SEED)
    failing = Failing()
    before = flat(failing)
    # the strategy's timeout (30 s) bounds how long the healthy rank could wait; the launcher stops it at once
    with pytest.raises(ValueError, match="on purpose") as caught:
        Trainer(strategy=strategy, enable_progress_bar=False).fit(failing, DataLoader(train, batch_size=2))
    assert isinstance(caught.value.__cause__, ProcessRaisedError) and caught.value.__cause__.rank == 1
    assert "rank 1 of 2" in caught.value.__notes__[0]
    assert "a bad batch on purpose" in caught.value.__cause__.child_traceback
    assert torch.equal(flat(failing), before)  # the caller's aggregate is untouched

    # Trainer.validate through the launcher: uneven shards, the results of one process over the full set
    expected, _ = reference(epochs=1)
    one = Trainer(strategy="cpu", metrics=metrics(), enable_progress_bar=False)
    single = one.validate(expected, DataLoader(validation, batch_size=3))
    results = Trainer(strategy=strategy, metrics=metrics(), enable_progress_bar=False).validate(
        expected, DataLoader(validation, batch_size=3)
    )
    assert results["accuracy"] == single["accuracy"]
    torch.testing.assert_close(results["loss"], single["loss"], rtol=1e-6, atol=0)


def _torchrun(out: Path, *arguments: str) -> list[dict[str, object]]:
    environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT)]
    done = subprocess.run(
        [*command, str(out), *arguments], env=environment, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def test_torchrun_launches_the_same_script_on_two_processes(tmp_path):
    rank0, rank1 = _torchrun(tmp_path)
    assert rank0["weights"] == rank1["weights"]  # bit-identical (floats written exactly by json)
    assert (rank0["world_size"], rank1["world_size"], rank0["rank"], rank1["rank"]) == (2, 2, 0, 1)
    expected, expected_metrics = reference(epochs=2)
    torch.testing.assert_close(torch.tensor(rank0["weights"]), flat(expected), rtol=1e-6, atol=1e-7)
    assert rank0["metrics"] == rank1["metrics"]
    torch.testing.assert_close(rank0["metrics"]["validation/loss"], expected_metrics["validation/loss"], rtol=1e-6, atol=0)
    assert rank0["validate"] == rank1["validate"]
    assert rank0["validate"]["accuracy"] == expected_metrics["validation/accuracy"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs 2 CUDA devices")
def test_torchrun_nccl_bf16_mixed_on_two_gpus(tmp_path):
    rank0, rank1 = _torchrun(tmp_path, "cuda", "bf16-mixed")
    assert rank0["weights"] == rank1["weights"]
    assert rank0["metrics"] == rank1["metrics"]


class StartWeights(Callback):
    """The weights the aggregate holds when each fit starts (rank 0's come back to the caller)."""

    def __init__(self) -> None:
        self.start: torch.Tensor | None = None

    def on_fit_started(self, event) -> None:
        self.start = flat(event.aggregate).clone()

    def state_dict(self) -> dict[str, object]:
        return {"start": self.start}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.start = state["start"]


def test_a_second_launched_fit_starts_afresh_as_one_process_does(tmp_path):
    # the callbacks' states brought back from the processes are the first fit's outcome, not a checkpoint to resume:
    # a second fit (no ckpt_path) starts a new History and a new average from the aggregate's weights, as it does in
    # one process (it did continue the History and put EMA's trained weights back into the aggregate)
    from torchsystem_trainer.callbacks import EMA, History

    train, validation = datasets()
    torch.manual_seed(SEED)
    aggregate = Classifier()
    history, start = History(), StartWeights()
    trainer = Trainer(
        strategy=DDPStrategy(devices=2, accelerator="cpu", start_method="forkserver", timeout=30),
        callbacks=[EMA(decay=0.5), history, start],
        max_epochs=2,
        enable_progress_bar=False,
        verbose=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loaders = [("train", DataLoader(train, batch_size=4)), ("validation", DataLoader(validation, batch_size=3))]
    trainer.fit(aggregate, loaders)
    assert [record["epoch"] for record in history.epochs] == [0, 1]
    after_first = flat(aggregate).clone()  # rank 0's final weights: the average
    trainer.max_epochs = 4
    trainer.fit(aggregate, loaders)
    assert [record["epoch"] for record in history.epochs] == [2, 3]
    assert torch.equal(start.start, after_first)
