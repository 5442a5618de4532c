"""StochasticWeightAveraging: torch's AveragedModel/SWALR/update_bn, bit for bit; Lightning's swa_epoch_start; the
final weights are the average; a resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from tests.checkpoint import train_script
from tests.checkpoint.helpers import Snapshot, run, same_weights
from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, StochasticWeightAveraging
from torchsystem_trainer.checkpoint import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*was in no epoch's results:UserWarning")


class Record(Callback):
    """The learning rate each epoch trained with, and torch's own AveragedModel over the epochs given."""

    def __init__(self, epochs: list[int]) -> None:
        self.epochs, self.rates, self.reference = epochs, [], None

    def on_fit_started(self, event) -> None:
        self.reference = AveragedModel(copy.deepcopy(event.aggregate.nn))

    def on_phase_started(self, event) -> None:
        if event.phase == "train":
            self.rates.append(event.aggregate.optimizer.param_groups[0]["lr"])

    def on_trained(self, event) -> None:
        if event.epoch in self.epochs:
            self.reference.update_parameters(event.aggregate.nn)


class BatchNormed(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)


def fit(swa, *callbacks, epochs=4, aggregate=None):
    torch.manual_seed(0)
    aggregate = aggregate or Classifier()
    trainer = Trainer(callbacks=[swa, *callbacks], max_epochs=epochs, enable_progress_bar=False)
    trainer.fit(aggregate, [("train", make_data()), ("validation", make_data(seed=1))])
    return aggregate, trainer


@pytest.mark.parametrize(("start", "averaged"), [(3, [2, 3]), (0.5, [1, 2, 3]), (1, [0, 1, 2, 3])],
                         ids=["int-3", "float-0.5", "int-1"])
def test_the_final_weights_are_torchs_average_of_the_swa_epochs(start, averaged):
    swa, record = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=start, annealing_epochs=2), Record(averaged)
    aggregate, _ = fit(swa, record)
    assert swa.swa_start == averaged[0] and swa.averaged.count == len(averaged)
    assert torch.equal(aggregate.nn.weight, record.reference.module.weight)
    assert torch.equal(aggregate.nn.bias, record.reference.module.bias)


def test_the_learning_rate_follows_swalr_from_the_first_swa_epoch():
    swa, record = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2, annealing_epochs=2), Record([])
    fit(swa, record, epochs=5)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = SWALR(optimizer, swa_lr=0.05, anneal_epochs=2)
    expected = [0.1, optimizer.param_groups[0]["lr"]]  # epoch 0 as given; epoch 1 starts SWALR (no change yet)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert record.rates == expected and expected[-1] == 0.05


def test_batch_norm_statistics_are_recomputed_for_the_average():
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)
    torch.manual_seed(0)
    aggregate, _ = fit(swa, aggregate=BatchNormed())
    expected = copy.deepcopy(aggregate)
    with torch.no_grad():
        update_bn((inputs for inputs, _ in make_data()), expected)  # from the averaged weights, over the loader
    norm, wanted = aggregate.nn[1], expected.nn[1]
    assert torch.equal(norm.running_mean, wanted.running_mean) and torch.equal(norm.running_var, wanted.running_var)
    assert norm.momentum == 0.1 and aggregate.training is False  # validation's phase, as the fit left it


def test_a_fraction_needs_max_epochs_and_one_optimizer_is_required():
    with pytest.raises(ValueError, match=r"fraction of max_epochs, but the Trainer has max_epochs=None"):
        Trainer(callbacks=[StochasticWeightAveraging(0.05)], max_steps=3, enable_progress_bar=False).fit(
            Classifier(), make_data()
        )

    class Two(Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.other = torch.optim.SGD(self.nn.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=r"exactly one optimizer; Two has 2"):
        Trainer(callbacks=[StochasticWeightAveraging(0.05)], max_epochs=2, enable_progress_bar=False).fit(Two(), make_data())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"swa_lrs": 0.0}, r"swa_lrs=0.0 is invalid"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 0}, r"swa_epoch_start=0 is invalid"),
        ({"swa_lrs": 0.1, "swa_epoch_start": 1.5}, r"swa_epoch_start=1.5 is invalid"),
        ({"swa_lrs": 0.1, "annealing_strategy": "exp"}, r"annealing_strategy='exp' is invalid"),
    ],
    ids=["lr", "start-0", "start-fraction", "strategy"],
)
def test_arguments_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        StochasticWeightAveraging(**arguments)


def _loaders():
    return train_script.loaders(workers=0, augment=True)


def _swa():
    return StochasticWeightAveraging(swa_lrs=0.002, swa_epoch_start=2, annealing_epochs=2)


@pytest.mark.filterwarnings("ignore:StochasticWeightAveraging. Net holds its own scheduler")
@pytest.mark.parametrize(("step", "epoch"), [(13, None), (None, 0), (None, 2)], ids=["mid-swa-epoch", "before-swa", "after-two-swa-epochs"])
def test_a_resumed_fit_ends_bit_identical(tmp_path, step, epoch):
    path = tmp_path / "state.ckpt"
    reference, _, _ = run(_loaders, extra=(_swa(),), max_epochs=4, early_stopping=False)
    run(_loaders, extra=(_swa(), Snapshot(path, step=step, epoch=epoch)), max_epochs=4, early_stopping=False)
    saved = read_checkpoint(path)["callbacks"]["StochasticWeightAveraging"]
    assert (saved["scheduler"] is None) == (epoch == 0)  # swa_epoch_start=2: the 0-based epoch 1 is the first
    resumed, _, _ = run(_loaders, extra=(_swa(),), ckpt_path=path, max_epochs=4, early_stopping=False)
    assert same_weights(resumed, reference)
