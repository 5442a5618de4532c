"""FSDPStrategy in one process (a one-process gloo group, in the test's own process): arguments, sharding with a
policy, optimizers built before sharding, sharded checkpoints (exact resume, the folder's completeness and safety,
loading into a single device, consolidation). The multi-process claims are in test_fsdp_processes.py and
tests/checkpoint/test_crash_resume_fsdp.py."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, TensorDataset

from torchsystem_trainer import Aggregate, Compiler, Trainer
from torchsystem_trainer.callbacks import Callback, ModelCheckpoint
from torchsystem_trainer.checkpoint import CheckpointError, load_model, load_weights, read_checkpoint
from torchsystem_trainer.checkpoint.sharded import consolidate_checkpoint, read_consolidated, read_sharded
from torchsystem_trainer.registry import Registry, getname
from torchsystem_trainer.strategies import FSDPStrategy, resolve_strategy

models = Registry[nn.Module]()


@models.register
class MLP(nn.Module):
    def __init__(self, inputs: int = 4, hidden: int = 8, outputs: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Net(Aggregate):
    """An MLP, Adam and a per-step StepLR, all built before any sharding."""

    def __init__(self, network: nn.Module | None = None) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = network if network is not None else MLP()
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.nn.parameters(), lr=0.01)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=3, gamma=0.5)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


class Crash(Exception):
    pass


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_trained(self, event: Any) -> None:
        if event.step == self.step:
            raise Crash


def loaders() -> list[tuple[str, DataLoader]]:
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator)
    train = DataLoader(TensorDataset(inputs, targets), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    return [("train", train), ("validation", DataLoader(TensorDataset(inputs[:12], targets[:12]), batch_size=4))]


def fit(strategy: Any, folder: Path | None = None, crash: int | None = None, ckpt_path: Any = None, **options: Any):
    torch.manual_seed(0)
    aggregate = Net()
    callbacks: list[Any] = [] if crash is None else [CrashAt(crash)]
    if folder is not None:
        callbacks.append(ModelCheckpoint(folder, **{"every_n_steps": 3, "save_top_k": -1, "save_last": True, **options}))
    trainer = Trainer(strategy=strategy, max_epochs=2, seed=7, callbacks=callbacks, enable_progress_bar=False)
    try:
        trainer.fit(aggregate, loaders(), ckpt_path=ckpt_path)
    except Crash:
        pass
    return aggregate, trainer


def full(aggregate: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in aggregate.state_dict().items()}


def assert_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_arguments_are_checked_and_fsdp_is_a_strategy_name():
    with pytest.raises(ValueError, match=r"auto_wrap_policy='Linear' is invalid; valid: None, a set"):
        FSDPStrategy(auto_wrap_policy="Linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"reshard_after_forward=2 is invalid; valid: True, False"):
        FSDPStrategy(reshard_after_forward=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="precision='8-true' is not supported"):
        FSDPStrategy(precision="8-true")
    strategy = resolve_strategy("fsdp", "bf16-mixed")
    assert isinstance(strategy, FSDPStrategy) and strategy.precision.precision == "bf16-mixed"
    assert strategy.sharded_checkpoints and strategy.world_size == 1
    assert repr(FSDPStrategy(devices=2, accelerator="cpu")).startswith("FSDPStrategy(accelerator='cpu', devices=2")
    with pytest.raises(RuntimeError, match="the Trainer starts the processes inside fit"):
        FSDPStrategy(devices=2, accelerator="cpu").shard(MLP())


def test_the_policy_shards_bottom_up_and_the_optimizer_built_before_steps_the_shards():
    strategy = FSDPStrategy(devices=1, auto_wrap_policy={nn.Linear})
    torch.manual_seed(0)
    aggregate = Net()
    optimizer, scheduler, network = aggregate.optimizer, aggregate.scheduler, aggregate.nn
    Trainer(strategy=strategy, max_epochs=1, enable_progress_bar=False).fit(aggregate, loaders())
    assert isinstance(network, FSDPModule) and getname(network) == "MLP"  # the registry name survives
    assert [type(m).__name__ for m in network.layers if isinstance(m, FSDPModule)] == ["FSDPLinear", "FSDPLinear"]
    # the same optimizer and scheduler objects, stepping the sharded parameters themselves
    assert aggregate.optimizer is optimizer and scheduler.optimizer is optimizer
    params = optimizer.param_groups[0]["params"]
    assert all(isinstance(p, DTensor) for p in params)
    assert [id(p) for p in params] == [id(p) for p in network.parameters()]
    assert scheduler.last_epoch == 8 and optimizer.param_groups[0]["lr"] == 0.01 * 0.5**2
    # the same training as one device (one process: the shards are the whole)
    expected, _ = fit("cpu")
    sharded, _ = fit(FSDPStrategy(devices=1, auto_wrap_policy={nn.Linear}))
    got, want = full(sharded), full(expected)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=1e-7)


def test_an_optimizer_that_stepped_or_holds_other_parameters_is_refused_with_the_pipeline_order():
    data = DataLoader(TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,))), batch_size=4)
    stepped = Net()
    stepped.nn(torch.randn(2, 4)).sum().backward()
    stepped.optimizer.step()
    with pytest.raises(RuntimeError, match=r"(?s)has already stepped.*compiler.step\(strategy.shard\)"):
        Trainer(strategy=FSDPStrategy(devices=1), enable_progress_bar=False).fit(stepped, data)
    foreign = Net()
    foreign.optimizer = torch.optim.SGD(MLP().parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match=r"holds a parameter of shape \[8, 4\] that is in no module"):
        Trainer(strategy=FSDPStrategy(devices=1), enable_progress_bar=False).fit(foreign, data)
    loose = Net()
    loose.temperature = nn.Parameter(torch.ones(()))
    with pytest.raises(ValueError, match=r"its parameters \['temperature'\] belong to none of them"):
        Trainer(strategy=FSDPStrategy(devices=1), enable_progress_bar=False).fit(loose, data)


def test_shard_as_a_compiler_step_before_the_optimizer_is_built():
    strategy = FSDPStrategy(devices=1)
    compiler = Compiler[Net]()
    compiler.step(lambda: MLP())
    compiler.step(strategy.shard)
    compiler.step(Net)
    aggregate = compiler.compile()
    parameters = list(aggregate.optimizer.param_groups[0]["params"])
    assert all(isinstance(p, DTensor) for p in parameters)
    Trainer(strategy=strategy, max_epochs=1, enable_progress_bar=False).fit(aggregate, loaders())
    assert all(p is q for p, q in zip(aggregate.optimizer.param_groups[0]["params"], parameters, strict=True))
    assert aggregate.optimizer.state  # it stepped the very parameters it was built on


def test_a_sharded_checkpoint_resumes_exactly_and_loads_on_a_single_device(tmp_path):
    reference, _ = fit(FSDPStrategy(devices=1))
    folder = tmp_path / "checkpoints"
    fit(FSDPStrategy(devices=1), folder, crash=5)  # 8 steps per epoch: crashes mid-epoch, after step 3's checkpoint
    step3 = folder / "epoch=0-step=3.ckpt"
    assert sorted(p.name for p in step3.iterdir()) == [".metadata", "__0_0.distcp", "rank-0.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    plain = read_checkpoint(step3 / "rank-0.pt")  # weights_only: plain data, each shard a None and listed
    assert plain["aggregate"]["modules"]["nn.layers.0.weight"] is None
    assert ["aggregate", "optimizers", "optimizer", "state", 0, "exp_avg"] in [s[0] for s in plain["sharded"]["shards"]]

    resumed, _ = fit(FSDPStrategy(devices=1), folder, ckpt_path="last")
    assert_equal(full(resumed), full(reference))  # bit-identical
    single, _ = fit("cpu", ckpt_path=step3)  # the sharded checkpoint resumes on one device, not sharded
    for key, value in full(reference).items():
        torch.testing.assert_close(single.state_dict()[key], value, rtol=1e-6, atol=1e-7)

    # evaluation on one device from the folder; the weights in and out
    state = read_consolidated(step3)
    _, loader = loaders()[1]
    model = Net()
    results = Trainer(strategy="cpu", enable_progress_bar=False).validate(model, loader, ckpt_path=step3)
    assert_equal(model.state_dict(), state["aggregate"]["modules"])
    assert results["loss"] > 0
    bare = MLP()
    load_weights(bare, step3)
    assert_equal({f"nn.{k}": v for k, v in bare.state_dict().items()}, state["aggregate"]["modules"])
    rebuilt = load_model(step3, models)
    assert isinstance(rebuilt, MLP) and not rebuilt.training
    exported = consolidate_checkpoint(step3, tmp_path / "export.ckpt", weights_only=True)
    loaded = torch.load(exported, weights_only=True)
    assert loaded["weights_only"] and "optimizers" not in loaded["aggregate"]
    load_weights(bare, exported)
    complete = consolidate_checkpoint(step3, tmp_path / "complete.ckpt")
    assert read_checkpoint(complete)["aggregate"]["optimizers"]["optimizer"]["state"][0]["exp_avg"].shape == (8, 4)
    again, _ = fit("cpu", ckpt_path=complete)  # one file of the whole state: resumes as the folder did
    assert_equal(again.state_dict(), single.state_dict())


def test_a_folder_without_metadata_is_never_last_and_foreign_metadata_is_refused(tmp_path):
    folder = tmp_path / "checkpoints"
    fit(FSDPStrategy(devices=1), folder, crash=7)  # checkpoints at steps 3 and 6
    finder = ModelCheckpoint(folder)
    assert finder.checkpoint_path("last", None) == folder / "last.ckpt"
    (folder / "last.ckpt" / ".metadata").unlink()  # as if its save had been killed before the metadata
    (folder / "epoch=0-step=6.ckpt" / ".metadata").unlink()
    assert finder.checkpoint_path("last", None) == folder / "epoch=0-step=3.ckpt"
    with pytest.raises(CheckpointError, match="incomplete sharded checkpoint"):
        read_sharded(folder / "last.ckpt")
    # the old last moved aside, the new one not yet renamed into place: the old one is found
    for name in ("last.ckpt", "epoch=0-step=6.ckpt"):
        os.rename(folder / name, tmp_path / name)
    os.rename(folder / "epoch=0-step=3.ckpt", folder / ".last.ckpt.0123.old")
    assert finder.checkpoint_path("last", None) == folder / ".last.ckpt.0123.old"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (folder / ".last.ckpt.0123.old" / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=r"was refused: .*it would build posix.system.*Nothing in it was run"):
        read_sharded(folder / ".last.ckpt.0123.old")
    assert not (tmp_path / "pwned").exists()


def test_weights_only_checkpoints_are_one_file_and_save_checkpoint_writes_a_folder(tmp_path):
    aggregate, trainer = fit(FSDPStrategy(devices=1), tmp_path / "weights", save_weights_only=True, every_n_steps=8)
    last = tmp_path / "weights" / "last.ckpt"
    assert last.is_file() and read_checkpoint(last)["weights_only"]
    bare = MLP()
    load_weights(bare, last)
    assert_equal({f"nn.{k}": v for k, v in bare.state_dict().items()}, full(aggregate))
    saved = trainer.save_checkpoint(tmp_path / "now.ckpt", aggregate=aggregate)
    assert (saved / ".metadata").is_file()
    assert_equal(read_consolidated(saved)["aggregate"]["modules"], full(aggregate))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the one-process group of the fit is still there: no new one, no warning
        trainer.validate(aggregate, loaders()[1][1])


class Seen(Net):
    """Records the dtype of its network's output."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        outputs = super().forward(inputs)
        self.dtypes = {*getattr(self, "dtypes", set()), outputs.dtype}
        return outputs


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_computes_in_half_and_keeps_float32_shards(precision):
    torch.manual_seed(0)
    aggregate = Seen()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16-mixed on the CPU warns
        strategy = FSDPStrategy(devices=1, precision=precision)
    Trainer(strategy=strategy, max_epochs=1, gradient_clip_val=1.0, enable_progress_bar=False).fit(aggregate, loaders())
    assert aggregate.dtypes == {torch.bfloat16 if precision == "bf16-mixed" else torch.float16}
    assert all(p.dtype == torch.float32 for p in aggregate.parameters())
    assert all(torch.isfinite(value).all() for value in full(aggregate).values())


def test_last_only_is_written_by_every_process_and_no_exception_checkpoint_is(tmp_path):
    folder = tmp_path / "checkpoints"
    with pytest.warns(UserWarning, match="on_exception.ckpt' is not written: a sharded checkpoint needs every process"):
        fit(FSDPStrategy(devices=1), folder, crash=7, save_top_k=0, save_on_exception=True)
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert read_sharded(folder / "last.ckpt")["loop"]["progress"]["global_step"] == 6
