"""Weights in and out: trainer.save_checkpoint, ModelCheckpoint(save_weights_only=True), load_weights, load_model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import make_data
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import ModelCheckpoint
from torchsystem_trainer.checkpoint import (
    CheckpointError,
    UnknownModelError,
    load_model,
    load_weights,
    read_checkpoint,
)
from torchsystem_trainer.registry import Registry, gethash

models = Registry[nn.Module]()


@models.register
class Activation(nn.Module):
    def __init__(self, slope: float = 0.0) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.leaky_relu(x, self.slope)


@models.register
class MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, outputs: int, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, hidden), activation or nn.ReLU(), nn.Linear(hidden, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Classifier(Aggregate):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = network
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(network.parameters(), lr=0.01)

    @property
    def id(self) -> str:
        return gethash(self.nn)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


def build(seed: int = 0, hidden: int = 8, activation: nn.Module | None = None) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(MLP(4, hidden, 2, activation=activation))


def fit(aggregate: Classifier, epochs: int, ckpt: object = None, **arguments) -> Trainer:
    trainer = Trainer(max_epochs=epochs, enable_progress_bar=False, seed=0, **arguments)
    trainer.fit(aggregate, [("train", make_data()), ("validation", make_data(seed=1))], ckpt_path=ckpt)
    return trainer


def equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return list(first) == list(second) and all(torch.equal(first[key], second[key]) for key in first)


# -- trainer.save_checkpoint ---------------------------------------------------------------------------------


def test_save_checkpoint_writes_a_complete_checkpoint_that_resumes_exactly(tmp_path):
    reference = build()
    fit(reference, 3)
    aggregate = build()
    trainer = fit(aggregate, 2)
    path = trainer.save_checkpoint(tmp_path / "sub" / "state.ckpt")
    assert path == tmp_path / "sub" / "state.ckpt"
    assert [p.name for p in path.parent.iterdir()] == ["state.ckpt"]  # atomic: no temporary file left
    state = read_checkpoint(path)
    assert state["aggregate"]["epoch"] == 2 and state["loop"]["progress"]["global_step"] == 8
    resumed = build(seed=5)
    Trainer(max_epochs=3, enable_progress_bar=False, seed=0).fit(
        resumed, [("train", make_data()), ("validation", make_data(seed=1))], ckpt_path=path
    )
    assert equal(resumed.state_dict(), reference.state_dict())


def test_save_checkpoint_stores_the_registry_identity_of_the_network(tmp_path):
    aggregate = build(activation=Activation(0.1))
    trainer = fit(aggregate, 1)
    state = read_checkpoint(trainer.save_checkpoint(tmp_path / "a.ckpt"))
    assert state["aggregate"]["networks"] == {
        "nn": {
            "name": "MLP",
            "arguments": {"inputs": 4, "hidden": 8, "outputs": 2, "activation": {"name": "Activation", "arguments": {"slope": 0.1}}},
            "hash": gethash(aggregate.nn),
        }
    }
    assert state["aggregate"]["id"] == gethash(aggregate.nn)


def test_save_checkpoint_without_any_run_needs_the_aggregate(tmp_path):
    trainer = Trainer(enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="aggregate=None and this trainer has run no aggregate"):
        trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert not (tmp_path / "a.ckpt").exists()
    trainer.save_checkpoint(tmp_path / "a.ckpt", aggregate=build())
    assert read_checkpoint(tmp_path / "a.ckpt")["aggregate"]["epoch"] == 0


def test_a_weights_only_checkpoint_loads_but_cannot_resume(tmp_path):
    aggregate = build()
    trainer = fit(aggregate, 1)
    path = trainer.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    state = read_checkpoint(path)
    assert state["weights_only"] is True and set(state) == {
        "format", "version", "library_version", "weights_only", "aggregate", "callbacks"
    }
    assert set(state["aggregate"]) == {"modules", "epoch", "id", "networks"}
    other = build(seed=3)
    before = {key: value.clone() for key, value in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="weights-only checkpoint .* cannot resume a fit; load its weights"):
        fit(other, 2, ckpt=path)
    assert equal(other.state_dict(), before)  # nothing changed
    load_weights(other, path)
    assert equal(other.state_dict(), aggregate.state_dict())


# -- ModelCheckpoint(save_weights_only=True) -----------------------------------------------------------------


def test_model_checkpoint_save_weights_only_writes_weights_only_files(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path, monitor="validation/loss", save_last=True, save_weights_only=True)
    aggregate = build()
    trainer = fit(aggregate, 2, callbacks=[checkpoint])
    for path in (checkpoint.best_model_path, checkpoint.last_model_path):
        state = read_checkpoint(path)
        assert state["weights_only"] is True and "loop" not in state and "optimizers" not in state["aggregate"]
    assert equal(read_checkpoint(checkpoint.last_model_path)["aggregate"]["modules"], aggregate.state_dict())
    with pytest.raises(CheckpointError, match="last.ckpt' is a weights-only checkpoint"):
        fit(build(), 3, callbacks=[checkpoint], ckpt="last")
    # validate/test take a weights-only checkpoint: its weights, not its (absent) optimizer state
    fresh = build(seed=9)
    results = trainer.validate(fresh, make_data(seed=1), ckpt_path="last")
    assert equal(fresh.state_dict(), aggregate.state_dict())
    assert results == trainer.validate(aggregate, make_data(seed=1))


# -- load_weights -------------------------------------------------------------------------------------------


def test_load_weights_into_a_submodule_or_a_fresh_network(tmp_path):
    aggregate = build()
    trainer = fit(aggregate, 1)
    path = trainer.save_checkpoint(tmp_path / "a.ckpt")
    network = MLP(4, 8, 2)
    result = load_weights(network, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert equal(network.state_dict(), aggregate.nn.state_dict())
    target = build(seed=7)
    load_weights(target.nn, path)
    assert equal(target.nn.state_dict(), aggregate.nn.state_dict())


def test_load_weights_mismatch_lists_keys_and_shapes_and_changes_nothing(tmp_path):
    trainer = fit(build(), 1)
    path = trainer.save_checkpoint(tmp_path / "a.ckpt")
    wider = build(hidden=16)
    before = {key: value.clone() for key, value in wider.state_dict().items()}
    with pytest.raises(CheckpointError) as raised:
        load_weights(wider, path)
    message = str(raised.value)
    assert "does not match Classifier" in message
    assert "nn.layers.0.weight: checkpoint [8, 4] vs aggregate [16, 4]" in message
    assert equal(wider.state_dict(), before)
    extra = build()
    extra.head = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing keys: \['head.bias', 'head.weight'\]"):
        load_weights(extra, path)
    result = load_weights(extra, path, strict=False)
    assert result.missing_keys == ["head.weight", "head.bias"]


def test_load_weights_refuses_an_ambiguous_prefix(tmp_path):
    class Twins(Aggregate):
        def __init__(self) -> None:
            super().__init__()
            self.left, self.right = nn.Linear(2, 2), nn.Linear(2, 2)

    Trainer(enable_progress_bar=False).save_checkpoint(tmp_path / "t.ckpt", aggregate=Twins())
    single = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"several prefixes \['left.', 'right.'\]; pass prefix="):
        load_weights(single, tmp_path / "t.ckpt")
    load_weights(single, tmp_path / "t.ckpt", prefix="right.")


# -- load_model ---------------------------------------------------------------------------------------------


def test_load_model_rebuilds_the_registered_network_with_nested_arguments(tmp_path):
    aggregate = build(activation=Activation(0.1))
    trainer = fit(aggregate, 1)
    path = trainer.save_checkpoint(tmp_path / "a.ckpt", weights_only=True)
    network = load_model(path, models)
    assert type(network) is MLP and not network.training
    assert isinstance(network.layers[1], Activation) and network.layers[1].slope == 0.1
    assert gethash(network) == gethash(aggregate.nn)
    assert equal(network.state_dict(), aggregate.nn.state_dict())
    inputs = torch.randn(3, 4)
    aggregate.eval()
    assert torch.equal(network(inputs), aggregate(inputs))


def test_load_model_with_an_unknown_name_lists_the_registry(tmp_path):
    trainer = fit(build(), 1)
    path = trainer.save_checkpoint(tmp_path / "a.ckpt")
    other = Registry[nn.Module]()
    other.register(Activation)
    with pytest.raises(UnknownModelError, match=r"class 'MLP', which is not in the registry given; its names: \['Activation'\]"):
        load_model(path, other)


def test_load_model_without_a_registered_network_says_so(tmp_path):
    class Plain(Aggregate):
        def __init__(self) -> None:
            super().__init__()
            self.nn = nn.Linear(2, 2)

    Trainer(enable_progress_bar=False).save_checkpoint(tmp_path / "p.ckpt", aggregate=Plain())
    with pytest.raises(CheckpointError, match=r"names no registered network: register the network's class"):
        load_model(tmp_path / "p.ckpt", models)
