"""DDPStrategy in this process: arguments, a one-process group, routing, samplers, the launch environment and
the launcher's error handling. The 2-process runs are in test_ddp_processes.py."""

from __future__ import annotations

import pickle
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from tests.conftest import Classifier
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.callbacks.model_checkpoint import ModelCheckpoint
from torchsystem_trainer.strategies import (
    DDPStrategy,
    DistributedEvalSampler,
    ProcessEnvironment,
    ProcessRaisedError,
    resolve_strategy,
)
from torchsystem_trainer.strategies.launchers import check_main_guard, root_cause
from torchsystem_trainer.strategies.samplers import (
    distribute_loader,
    shuffle_seed_of,
    unshardable_reason,
)

# -- arguments ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"devices": 0}, ValueError, "devices=0"),
        ({"devices": "all"}, ValueError, "'auto', an int"),
        ({"devices": True}, ValueError, "devices=True"),
        ({"devices": [0, 1], "accelerator": "cpu"}, ValueError, "number of processes"),
        ({"accelerator": "tpu"}, ValueError, "auto, cpu, cuda"),
        ({"backend": "nccl", "accelerator": "cpu"}, ValueError, "needs accelerator='cuda'"),
        ({"backend": "carrier-pigeon"}, ValueError, "not available"),
        ({"timeout": 0}, ValueError, "seconds > 0"),
        ({"timeout": "1h"}, ValueError, "timedelta or seconds"),
        ({"start_method": "thread"}, ValueError, "start_method='thread'"),
        ({"device_ids": [0]}, ValueError, "device_ids are set by the strategy"),
        ({"precision": "8-true"}, ValueError, "precision='8-true'"),
    ],
    ids=["zero", "word", "bool", "cpu-list", "tpu", "nccl-cpu", "backend", "timeout", "timeout-type", "start",
         "reserved", "precision"],
)
def test_invalid_arguments_name_the_value_and_the_valid_ones(arguments, error, match):
    with pytest.raises(error, match=match):
        DDPStrategy(**arguments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_raises():
    with pytest.raises(RuntimeError, match="accelerator='cuda'"):
        DDPStrategy(accelerator="cuda")


def test_defaults_on_cpu_and_the_ddp_shorthand():
    strategy = resolve_strategy("ddp", "bf16-mixed")
    assert isinstance(strategy, DDPStrategy)
    assert (strategy.accelerator, strategy.backend, strategy.num_processes) == ("cpu", "gloo", 1)
    assert strategy.precision.precision == "bf16-mixed" and strategy.timeout == timedelta(minutes=30)
    two = DDPStrategy(devices=2, timeout=5)
    assert (two.world_size, two.global_rank, two.local_rank, two.root_device) == (2, 0, 0, torch.device("cpu"))
    assert two.timeout == timedelta(seconds=5) and "devices=2" in repr(two)


def test_collectives_outside_a_run():
    one, two = DDPStrategy(), DDPStrategy(devices=2)
    tensor = torch.arange(3.0)
    assert torch.equal(one.all_reduce(tensor, "mean"), tensor) and one.all_gather(tensor).shape == (1, 3)
    assert one.broadcast({"a": 1}) == {"a": 1}
    one.barrier()
    with pytest.raises(RuntimeError, match="no process group"):
        two.all_reduce(tensor)
    with pytest.raises(ValueError, match="op='prod'"):
        one.all_reduce(tensor, "prod")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="op='mean'"):
        one.all_reduce(torch.arange(3), "mean")


def test_setup_outside_a_run_says_where_it_runs():
    with pytest.raises(RuntimeError, match="run under torchrun, or let Trainer.fit start the processes"):
        DDPStrategy().setup(Classifier())


# -- one process: a real group and DDP, in this process ----------------------------------------------------


class Inspect(Callback):
    """What the aggregate looks like to user code and checkpoints during the fit."""

    def on_fit_started(self, event) -> None:
        aggregate, strategy = event.aggregate, event.trainer.strategy
        self.keys = list(aggregate.state_dict())
        self.names = [name for name, _ in aggregate.named_parameters()]
        self.same = [id(p) for p in aggregate.optimizer.param_groups[0]["params"]] == [id(p) for p in aggregate.nn.parameters()]
        self.module = aggregate.nn
        self.routed = "forward" in aggregate.nn.__dict__
        self.ddp = strategy.ddp_modules
        self.group = dist.is_initialized()
        strategy.setup(aggregate)  # idempotent: nothing is wrapped twice
        self.routes_after_second_setup = len(strategy.ddp_modules)


def test_one_process_fit_equals_single_device_and_leaves_the_aggregate_unchanged(classifier, data):
    reference = Classifier()
    reference.load_state_dict(classifier.state_dict())
    inspect = Inspect()
    keys, module = list(classifier.state_dict()), classifier.nn
    Trainer(strategy="ddp", max_epochs=2, callbacks=[inspect], enable_progress_bar=False).fit(classifier, data)
    Trainer(strategy="cpu", max_epochs=2, enable_progress_bar=False).fit(reference, data)

    assert inspect.group and not dist.is_initialized()  # a one-process group, destroyed at the end
    assert inspect.keys == keys == inspect.names and inspect.same and inspect.module is module
    assert inspect.routed and list(inspect.ddp) == ["nn"] and inspect.routes_after_second_setup == 1
    assert "forward" not in classifier.nn.__dict__  # teardown gave the module its forward back
    for mine, theirs in zip(classifier.parameters(), reference.parameters()):
        assert torch.equal(mine, theirs)


def test_checkpoints_cross_between_one_process_and_ddp(tmp_path, classifier, data):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    Trainer(strategy="cpu", max_epochs=1, callbacks=[checkpoint], enable_progress_bar=False).fit(classifier, data)
    resumed = Classifier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(strategy=DDPStrategy(), max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ddp", save_last=True)],
                enable_progress_bar=False).fit(resumed, data, ckpt_path=checkpoint.last_model_path)
    saved = torch.load(tmp_path / "ddp" / "last.ckpt", weights_only=True)
    assert list(saved["aggregate"]["modules"]) == ["nn.weight", "nn.bias"]


class Tracked(Callback):
    def on_batch_trained(self, event) -> None:
        strategy = event.trainer.strategy
        self.syncs = getattr(self, "syncs", []) + [strategy.ddp_modules["nn"].require_backward_grad_sync]

    def on_fit_started(self, event) -> None:
        ddp = event.trainer.strategy.ddp_modules["nn"]
        original = ddp.no_sync
        self.entered: list[bool] = []

        def no_sync():
            self.entered.append(True)
            return original()

        ddp.no_sync = no_sync


def test_accumulation_enters_no_sync_except_on_the_window_boundary(classifier, data):
    tracked = Tracked()
    Trainer(strategy=DDPStrategy(), accumulate_grad_batches=2, callbacks=[tracked], enable_progress_bar=False).fit(
        classifier, data
    )
    assert len(tracked.entered) == 2  # batches 0 and 2 of 4: the window's first batch only
    assert tracked.syncs == [True] * 4  # no_sync restores the flag once the batch is done


class Bypass(Classifier):
    """Calls a submodule of the trainable child directly: DDP never sees the call."""

    def __init__(self) -> None:
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(4, 2))  # type: ignore[assignment]
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)

    def forward(self, inputs):
        return self.nn[0](inputs)


def test_a_bypassed_module_is_an_error_at_the_first_step(data):
    with pytest.raises(RuntimeError, match=r"aggregate\.nn itself was never called"):
        Trainer(strategy=DDPStrategy(), enable_progress_bar=False).fit(Bypass(), data)


class Tied(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.head.weight = self.nn.weight


def test_a_parameter_shared_by_two_children_is_refused(data):
    with pytest.raises(ValueError, match="share a parameter"):
        Trainer(strategy=DDPStrategy(), enable_progress_bar=False).fit(Tied(), data)


class Containers(Classifier):
    """Trainable modules inside a ModuleDict, and a parameter of the aggregate itself."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 2), "frozen": nn.Linear(2, 2).requires_grad_(False)})
        self.temperature = nn.Parameter(torch.ones(()))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=0.1)

    def forward(self, inputs):
        return self.heads["a"](self.nn(inputs)) / self.temperature


class Routes(Callback):
    def on_fit_started(self, event) -> None:
        self.names = list(event.trainer.strategy.ddp_modules)
        self.loose = [p is event.aggregate.temperature for p in event.trainer.strategy._loose]


def test_containers_are_looked_into_and_loose_parameters_found(data):
    routes = Routes()
    Trainer(strategy=DDPStrategy(), callbacks=[routes], enable_progress_bar=False).fit(Containers(), data)
    assert routes.names == ["nn", "heads.a"] and routes.loose == [True]


# -- samplers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "replicas"), [(13, 2), (13, 3), (4, 4), (1, 2)], ids=["13/2", "13/3", "4/4", "1/2"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_eval_shards_partition_the_dataset_without_padding(size, replicas, shuffle):
    shards = [list(DistributedEvalSampler(range(size), replicas, rank, shuffle=shuffle, seed=3)) for rank in range(replicas)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))
    assert [len(shard) for shard in shards] == [len(DistributedEvalSampler(range(size), replicas, r)) for r in range(replicas)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_distributed_loaders_keep_the_users_arguments():
    dataset = TensorDataset(torch.arange(10.0), torch.arange(10))
    collate = torch.utils.data.default_collate
    shuffled = DataLoader(dataset, batch_size=3, shuffle=True, drop_last=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(7))
    train = distribute_loader(shuffled, train=True, num_replicas=2, rank=1, seed=shuffle_seed_of(shuffled))
    assert isinstance(train.sampler, DistributedSampler)
    assert (train.sampler.shuffle, train.sampler.drop_last, train.sampler.seed, train.sampler.rank) == (True, True, 7, 1)
    assert (train.batch_size, train.drop_last, train.collate_fn) == (3, True, collate)
    ordered = DataLoader(dataset, batch_size=4)
    evaluation = distribute_loader(ordered, train=False, num_replicas=2, rank=0, seed=0)
    assert isinstance(evaluation.sampler, DistributedEvalSampler) and not evaluation.sampler.shuffle
    assert [batch[1].tolist() for batch in evaluation] == [[0, 2, 4, 6], [8]]
    assert shuffle_seed_of(ordered) is None


class Subclass(DataLoader):
    def __init__(self, dataset, extra):
        super().__init__(dataset)


def test_what_cannot_be_sharded_says_why():
    dataset = TensorDataset(torch.arange(4.0))
    assert unshardable_reason(DataLoader(dataset)) is None
    assert unshardable_reason(DataLoader(dataset, sampler=DistributedSampler(dataset, 2, 0))) == ""
    assert "not a torch DataLoader" in unshardable_reason([1, 2])
    assert "custom sampler" in unshardable_reason(DataLoader(dataset, sampler=[0, 1]))
    assert "replacement" in unshardable_reason(DataLoader(dataset, sampler=RandomSampler(dataset, replacement=True)))
    with pytest.raises(TypeError, match="give it sampler=torch.utils.data.DistributedSampler"):
        distribute_loader(Subclass(dataset, 1), train=True, num_replicas=2, rank=0, seed=0)
    assert isinstance(DataLoader(dataset).sampler, SequentialSampler)


# -- launch environment and the launcher's errors ----------------------------------------------------------


def test_the_launch_environment_is_read_with_single_node_defaults():
    assert ProcessEnvironment.from_environ({}) is None
    base = {"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    environment = ProcessEnvironment.from_environ(base)
    assert (environment.local_rank, environment.local_world_size, environment.node_rank) == (3, 4, 0)
    two_nodes = ProcessEnvironment.from_environ({**base, "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1"})
    assert (two_nodes.global_rank, two_nodes.local_rank, two_nodes.node_rank) == (3, 1, 1)
    with pytest.raises(ValueError, match="but not MASTER_ADDR, MASTER_PORT"):
        ProcessEnvironment.from_environ({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="valid ranks"):
        ProcessEnvironment.from_environ({**base, "RANK": "4"})
    with pytest.raises(ValueError, match="not an integer"):
        ProcessEnvironment.from_environ({**base, "MASTER_PORT": "x"})


def test_torchrun_environment_must_match_explicit_devices(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="LOCAL_WORLD_SIZE"):
        DDPStrategy(devices=2).launch(lambda: None)
    assert DDPStrategy().world_size == 3


def test_the_root_cause_is_the_earliest_error_and_errors_pickle():
    records = [{"rank": 0, "time": 5.0}, {"rank": 1, "time": 4.0}, {"rank": 2, "time": 4.0}]
    assert root_cause(records)["rank"] == 1 and root_cause([]) is None
    error = pickle.loads(pickle.dumps(ProcessRaisedError("boom", 1, 2, exit_code=-9, child_traceback="tb")))
    assert (str(error), error.rank, error.world_size, error.exit_code, error.child_traceback) == ("boom", 1, 2, -9, "tb")


def test_launching_from_a_child_importing_main_is_refused(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match='if __name__ == "__main__"'):
        check_main_guard()


def test_spawn_refuses_what_cannot_be_pickled():
    samples = [(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long))]
    trainer = Trainer(strategy=DDPStrategy(devices=2), enable_progress_bar=False)
    with pytest.raises(TypeError, match="pickling failed"):  # before any process starts
        trainer.fit(Classifier(), DataLoader(samples, collate_fn=lambda batch: batch[0]))
