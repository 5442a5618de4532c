"""Exact resumption in one process: a fit resumed from a checkpoint written mid-epoch or at an epoch's end ends
with the uninterrupted run's weights and results, bit for bit, without replaying a batch."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, TensorDataset

from tests.checkpoint import train_script
from tests.checkpoint.helpers import Snapshot, run, same_weights
from torchsystem_trainer.callbacks import ModelCheckpoint
from torchsystem_trainer.checkpoint import load_file, save_atomic

# A resumed fit that has nothing left to do checks no monitored value; EarlyStopping and ModelCheckpoint warn then.
pytestmark = pytest.mark.filterwarnings("ignore:.*was in no epoch's results:UserWarning")


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(64, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator)


def _validation() -> DataLoader:
    inputs, targets = _data()
    return DataLoader(TensorDataset(inputs[:16], targets[:16]), batch_size=8)


def _with_train(train: object) -> list[tuple[str, object]]:
    return [("train", train), ("validation", _validation())]


def seeded_generator():
    inputs, targets = _data()
    generator = torch.Generator().manual_seed(5)
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=8, shuffle=True, generator=generator)
    return _with_train(loader)


def replacement_sampler():
    dataset = TensorDataset(*_data())
    return _with_train(DataLoader(dataset, batch_size=8, sampler=RandomSampler(dataset, replacement=True)))


class Batches(torch.utils.data.Dataset):
    """Each item is a whole batch (for ``batch_size=None``)."""

    def __init__(self) -> None:
        inputs, targets = _data()
        self.items = [(inputs[i : i + 8], targets[i : i + 8]) for i in range(0, 64, 8)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def no_automatic_batching():
    return _with_train(DataLoader(Batches(), batch_size=None, shuffle=True))


def plain_list():
    return _with_train(list(Batches().items))


LOADERS = {
    "shuffle-dropout-augmentation-workers0": lambda: train_script.loaders(0, augment=True),
    "workers2": lambda: train_script.loaders(2, augment=False),
    "persistent-workers2": lambda: train_script.loaders(2, augment=False, persistent=True),
    "seeded-generator": seeded_generator,
    "replacement-sampler": replacement_sampler,
    "batch-size-none": no_automatic_batching,
    "list": plain_list,
}


@pytest.mark.parametrize("name", list(LOADERS), ids=list(LOADERS))
def test_mid_epoch_resume_is_bit_identical_and_replays_nothing(name, tmp_path):
    loaders = LOADERS[name]
    reference, _, expected = run(loaders)
    path = tmp_path / "mid.ckpt"
    _, _, before = run(loaders, extra=(Snapshot(path, step=11),))  # epoch 1, after its batch 2; then a crash
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a map-style DataLoader or a list resumes without any warning
        resumed, trainer, after = run(loaders, ckpt_path=path)
    assert same_weights(resumed, reference)
    assert before.batches[:11] + after.batches == expected.batches  # no batch trained twice, none missing
    assert after.batches[0] == (1, 3, 12)
    assert before.epochs[:1] + after.epochs == expected.epochs  # results (loss, accuracy) bit-identical
    assert trainer.progress.state_dict() == {"epoch": 3, "batch": 0, "step": 24, "global_step": 24}


@pytest.mark.parametrize("epoch", [0, 1], ids=["after-epoch-0", "after-epoch-1"])
def test_epoch_boundary_resume_is_bit_identical(epoch, tmp_path):
    loaders = LOADERS["seeded-generator"]
    reference, _, expected = run(loaders)
    path = tmp_path / "end.ckpt"
    run(loaders, extra=(Snapshot(path, epoch=epoch),))
    resumed, _, after = run(loaders, ckpt_path=path)
    assert same_weights(resumed, reference)
    assert after.batches == expected.batches[8 * (epoch + 1) :]


def test_mid_epoch_resume_with_gradient_accumulation(tmp_path):
    loaders = LOADERS["shuffle-dropout-augmentation-workers0"]
    reference, _, expected = run(loaders, accumulate_grad_batches=2)
    path = tmp_path / "mid.ckpt"
    run(loaders, extra=(Snapshot(path, step=6),), accumulate_grad_batches=2)  # at an accumulation window's end
    resumed, trainer, after = run(loaders, ckpt_path=path, accumulate_grad_batches=2)
    assert same_weights(resumed, reference)
    assert expected.batches[6:] == after.batches
    assert trainer.global_step == 12


class Stream(IterableDataset):
    def __iter__(self):
        inputs, targets = _data()
        for start in range(0, 64, 8):
            yield inputs[start : start + 8], targets[start : start + 8]


def test_an_iterable_dataset_is_fast_forwarded_with_a_warning(tmp_path):
    def loaders():
        return _with_train(DataLoader(Stream(), batch_size=None))

    reference, _, expected = run(loaders)
    path = tmp_path / "mid.ckpt"
    run(loaders, extra=(Snapshot(path, step=11),))
    with pytest.warns(UserWarning, match=r"IterableDataset.*first 3 batches are read and dropped"):
        resumed, _, after = run(loaders, ckpt_path=path)
    assert same_weights(resumed, reference)  # exact here, because this stream is deterministic
    assert after.batches == expected.batches[11:]


def test_resuming_the_final_checkpoint_of_an_early_stopped_run_trains_nothing(tmp_path):
    loaders = LOADERS["seeded-generator"]
    checkpoint = ModelCheckpoint(tmp_path, save_last=True)
    reference, trainer, _ = run(loaders, extra=(checkpoint,), max_epochs=6)
    assert trainer.current_epoch == 3 and trainer.should_stop  # EarlyStopping ended it after 3 of 6 epochs
    again_checkpoint = ModelCheckpoint(tmp_path, save_last=True)
    resumed, again, after = run(loaders, extra=(again_checkpoint,), ckpt_path="last", max_epochs=6)
    assert after.batches == [] and again.current_epoch == 3
    assert same_weights(resumed, reference)


def test_resuming_at_max_steps_trains_nothing(tmp_path):
    loaders = LOADERS["seeded-generator"]
    path = tmp_path / "end.ckpt"
    reference, _, _ = run(loaders, extra=(Snapshot(path, epoch=1, crash=None),), max_steps=12, early_stopping=False)
    resumed, trainer, after = run(loaders, ckpt_path=path, max_steps=12, early_stopping=False)
    assert after.batches == [] and trainer.global_step == 12
    assert same_weights(resumed, reference)


def test_ckpt_path_best_resumes_from_the_best_file(tmp_path):
    loaders = LOADERS["seeded-generator"]
    checkpoint = ModelCheckpoint(tmp_path, monitor="validation/loss", save_top_k=1)
    run(loaders, extra=(checkpoint,), early_stopping=False)
    best = load_file(checkpoint.best_model_path)
    epoch = best["loop"]["progress"]["epoch"]
    resumed, _, after = run(loaders, extra=(checkpoint,), ckpt_path="best", early_stopping=False, max_epochs=epoch)
    assert after.batches == []
    for key, value in best["aggregate"]["modules"].items():
        assert torch.equal(resumed.state_dict()[key], value)


def test_another_number_of_processes_warns_that_the_data_order_changes(tmp_path):
    loaders = LOADERS["seeded-generator"]
    path = tmp_path / "mid.ckpt"
    run(loaders, extra=(Snapshot(path, step=3),))
    state = load_file(path)
    state["loop"]["world_size"] = 2  # as written by rank 0 of a two-process run, after 3 batches per process
    save_atomic(state, path)
    with pytest.warns(UserWarning, match=r"2 process\(es\) and this one has 1.*data order.*after 6 batches"):
        _, trainer, after = run(loaders, ckpt_path=path, max_epochs=1)
    assert after.batches[0] == (0, 6, 4)
    assert trainer.progress.batch == 0 and trainer.current_epoch == 1


class Counting(torch.utils.data.Dataset):
    """Counts the samples read."""

    def __init__(self) -> None:
        self.inputs, self.targets = _data()
        self.reads = 0

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        self.reads += 1
        return self.inputs[index], self.targets[index]


def test_consumed_batches_are_not_loaded_again(tmp_path):
    datasets: list[Counting] = []

    def loaders():
        datasets.append(Counting())
        return _with_train(DataLoader(datasets[-1], batch_size=8, shuffle=True))

    path = tmp_path / "mid.ckpt"
    run(loaders, extra=(Snapshot(path, step=11),), max_epochs=2)
    run(loaders, ckpt_path=path, max_epochs=2)
    assert datasets[-1].reads == (8 - 3) * 8  # epoch 1 after its 3 trained batches: 5 batches of 8


def test_changed_metrics_warn_and_the_loss_is_still_restored(tmp_path):
    loaders = LOADERS["seeded-generator"]
    _, _, expected = run(loaders)
    path = tmp_path / "mid.ckpt"
    run(loaders, extra=(Snapshot(path, step=11),))
    with pytest.warns(UserWarning, match="metrics of its unfinished epoch cover only the batches after the resume"):
        _, _, after = run(loaders, ckpt_path=path, metrics=False)
    assert after.epochs[0]["train/loss"] == expected.epochs[1]["train/loss"]
