"""The parts: atomic writes, CRC checks, random states, a phase's results, and skipping index batches."""

from __future__ import annotations

import random

import numpy
import pytest
import torch
import torchmetrics
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from torchsystem_trainer.checkpoint import (
    CheckpointError,
    load_file,
    load_rng_state,
    rng_state,
    save_atomic,
    verify_archive,
)
from torchsystem_trainer.checkpoint.resume import SkipFirst, TrainPosition, open_skipping
from torchsystem_trainer.checkpoint.rng import generator_states, generators_of, load_generator_states
from torchsystem_trainer.trainer.results import PhaseResults, build_metrics


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_atomic({"value": torch.ones(3)}, tmp_path / "state.ckpt")
    before = path.read_bytes()

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"value": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]


def test_files_are_written_with_crcs_even_when_torch_is_told_not_to(tmp_path):
    torch.serialization.set_crc32_options(False)
    try:
        path = save_atomic({"value": torch.arange(100.0)}, tmp_path / "state.ckpt")
    finally:
        torch.serialization.set_crc32_options(True)
    data = bytearray(path.read_bytes())
    index = data.find(torch.arange(100.0).numpy().tobytes()[40:48])
    data[index] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad.ckpt.*Bad CRC-32"):
        verify_archive(tmp_path / "bad.ckpt")
    assert torch.equal(load_file(path)["value"], torch.arange(100.0))


def _draws() -> tuple:
    return random.random(), float(numpy.random.rand()), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_random_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    numpy.random.seed(3)
    random.gauss(0, 1), numpy.random.randn()  # cached Gaussians are part of the state
    save_atomic(rng_state(), tmp_path / "rng.ckpt")
    expected = _draws()
    torch.manual_seed(9)
    random.seed(9)
    numpy.random.seed(9)
    load_rng_state(load_file(tmp_path / "rng.ckpt"))
    assert _draws() == expected


def test_python_random_state_is_one_tensor_and_the_older_list_form_still_loads():
    random.seed(4)
    state = rng_state()
    version, words, gauss = state["python"]
    assert words.dtype == torch.int64 and words.shape == (625,)
    expected = random.random()
    random.seed(9)
    state["python"] = [version, words.tolist(), gauss]  # how checkpoints before this form held it
    load_rng_state(state)
    assert random.random() == expected


def test_loader_generators_are_found_once_each_and_restored():
    dataset = TensorDataset(torch.arange(10.0))
    shared = torch.Generator().manual_seed(1)
    loader = DataLoader(dataset, batch_size=2, shuffle=True, generator=shared)
    assert generators_of(loader) == [shared]  # the loader's and its RandomSampler's are the same object
    states = generator_states(loader)
    first = [batch[0].tolist() for batch in loader]
    load_generator_states(loader, states, "the loader")
    assert [batch[0].tolist() for batch in loader] == first
    with pytest.warns(UserWarning, match="holds 1 torch.Generator.*saved 2"):
        load_generator_states(loader, states * 2, "the 'train' loader")


def _metrics():
    return build_metrics(
        {
            "accuracy": torchmetrics.Accuracy("multiclass", num_classes=3),
            "f1": torchmetrics.F1Score("multiclass", num_classes=3, average="macro"),
            "precision": torchmetrics.Precision("multiclass", num_classes=3, average="macro"),  # shares f1's state
            "auroc": torchmetrics.AUROC("multiclass", num_classes=3),  # a list ("cat") state
        }
    )


def test_phase_results_continue_bit_identically_from_their_state(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.rand((), generator=generator), torch.randn(8, 3, generator=generator).softmax(-1),
         torch.randint(0, 3, (8,), generator=generator))
        for _ in range(12)
    ]
    whole = PhaseResults(_metrics())
    for loss, predictions, targets in batches:
        whole.update(loss, 8, predictions, targets)
    first = PhaseResults(_metrics())
    for loss, predictions, targets in batches[:5]:
        first.update(loss, 8, predictions, targets)
    before = (list(first.losses), first.total)
    save_atomic(first.state_dict(), tmp_path / "results.ckpt")
    assert (first.losses, first.total) == before  # reading the state folds nothing
    second = PhaseResults(_metrics())
    second.load_state_dict(load_file(tmp_path / "results.ckpt"))
    for loss, predictions, targets in batches[5:]:
        second.update(loss, 8, predictions, targets)
    assert second.compute() == whole.compute()  # exact, not close


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # the metrics start empty, as asked
def test_phase_results_refuse_other_metrics_unless_told_otherwise():
    saved = PhaseResults(_metrics())
    saved.update(torch.tensor(0.5), 2, torch.tensor([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]]), torch.tensor([2, 0]))
    other = PhaseResults(build_metrics(torchmetrics.Accuracy("multiclass", num_classes=3)))
    with pytest.raises(ValueError, match="'f1' is not configured"):
        other.load_state_dict(saved.state_dict())
    assert other.count == 0
    other.load_state_dict(saved.state_dict(), strict=False)
    assert other.count == 2 and other.compute()["loss"] == 0.5


def test_skip_first_drops_items_lazily_and_once():
    calls = []
    sampler = SkipFirst(BatchSampler(SequentialSampler(range(10)), 3, False), 2, lambda: calls.append("skipped"))
    iterator = iter(sampler)
    assert calls == []  # nothing drawn before the first item is asked for
    assert list(iterator) == [[6, 7, 8], [9]] and calls == ["skipped"]
    assert list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] and calls == ["skipped"]


def test_open_skipping_puts_the_loaders_own_sampler_back():
    loader = DataLoader(TensorDataset(torch.arange(10.0)), batch_size=3)
    batch_sampler = loader.batch_sampler
    moments = []
    iterator = open_skipping(loader, 2, lambda: moments.append(True))
    assert loader.batch_sampler is batch_sampler
    assert [batch[0].tolist() for batch in iterator] == [[6.0, 7.0, 8.0], [9.0]] and moments == [True]


def test_train_position_records_the_epoch_start_before_the_iterator_draws():
    loader = DataLoader(TensorDataset(torch.arange(16.0)), batch_size=4, shuffle=True)
    torch.manual_seed(5)
    position = TrainPosition()
    expected = torch.get_rng_state()
    order = [batch[0].tolist() for batch in position.open(loader, 0)]
    assert position.epoch_start is not None and torch.equal(position.epoch_start.rng["torch"], expected)
    state = position.state_dict(loader, 2)
    moment = rng_state()
    resumed = TrainPosition()
    resumed.load_state_dict(state, moment, 2)
    torch.manual_seed(99)
    assert [batch[0].tolist() for batch in resumed.open(loader, 2)] == order[2:]
    assert torch.equal(torch.get_rng_state(), moment["torch"])  # at the checkpoint's moment after the skip
