"""What a new user meets in the first hour: targets for metrics, and clear errors for the common slips.

Each test here failed on the code before it (issue "Trust", items 2 and 12 to 16).
"""

import warnings

import pytest
import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EarlyStopping
from torchsystem_trainer.strategies import SingleDeviceStrategy
from torchsystem_trainer.trainer import BatchError


class Targets(torchmetrics.Metric):
    """Records every targets tensor it is updated with."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("seen", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.seen.append(targets)

    def compute(self) -> torch.Tensor:
        return torch.tensor(float(len(self.seen)))


class Weighted(Classifier):
    """Batches of (inputs, targets, sample weights)."""

    def fit(self, inputs, targets, weights):
        return super().fit(inputs, targets)

    def evaluate(self, inputs, targets, weights):
        return super().evaluate(inputs, targets)


def test_targets_are_the_second_element_never_the_sample_weights():
    data = [(x, y, torch.full((len(y),), 0.5)) for x, y in make_data()]
    seen = []

    class Spy(Targets):
        def update(self, predictions, targets):
            seen.append(targets)

    Trainer(metrics=Spy(), enable_progress_bar=False).validate(Weighted(), data)
    assert len(seen) == len(data)
    assert all(torch.equal(got, y) for got, (_, y, _) in zip(seen, data))


class DictBatches(Classifier):
    def fit(self, inputs, labels, mask):
        return super().fit(inputs, labels)

    def evaluate(self, inputs, labels, mask):
        return super().evaluate(inputs, labels)


def test_a_dict_batch_gives_its_documented_key_as_targets():
    data = [{"inputs": x, "labels": y, "mask": torch.ones(len(y))} for x, y in make_data()]
    seen = []

    class Spy(Targets):
        def update(self, predictions, targets):
            seen.append(targets)

    Trainer(metrics=Spy(), enable_progress_bar=False).validate(DictBatches(), data)
    assert all(torch.equal(got, batch["labels"]) for got, batch in zip(seen, data))


def test_an_aggregate_may_say_which_part_of_a_batch_holds_the_targets():
    class Custom(Classifier):
        def fit(self, pixels, klass):
            return super().fit(pixels, klass)

        def evaluate(self, pixels, klass):
            return super().evaluate(pixels, klass)

        def targets(self, batch):
            return batch["klass"]

    data = [{"pixels": x, "klass": y} for x, y in make_data()]
    seen = []

    class Spy(Targets):
        def update(self, predictions, targets):
            seen.append(targets)

    Trainer(metrics=Spy(), enable_progress_bar=False).validate(Custom(), data)
    assert len(seen) == len(data)
    assert all(torch.equal(got, batch["klass"]) for got, batch in zip(seen, data))


def test_metrics_without_targets_show_the_batch_structure():
    class NoTargets(Classifier):
        def evaluate(self, inputs):
            outputs = self(inputs)
            return outputs, outputs.pow(2).mean()

    with pytest.raises(ValueError, match=r"'validation' batch tuple\(Tensor\[4, 4\] float32\) has none: targets are"):
        Trainer(metrics=torchmetrics.MeanMetric(), enable_progress_bar=False).validate(
            NoTargets(), [(torch.randn(4, 4),)]
        )


@pytest.mark.parametrize(
    ("keyword", "hint"),
    [
        ("accelerator", r"strategy='cpu', 'cuda' or 'mps'"),
        ("devices", r"DDPStrategy\(devices=...\)"),
        ("num_nodes", r"torchrun --nnodes"),
        ("logger", r"callbacks=\[TensorBoardLogger"),
        ("enable_checkpointing", r"ModelCheckpoint"),
    ],
)
def test_lightning_keywords_name_our_equivalent(keyword, hint):
    with pytest.raises(TypeError, match=rf"got {keyword}=.*a Lightning Trainer argument .*; here: .*{hint}"):
        Trainer(**{keyword: 1})


def test_an_unknown_keyword_suggests_the_closest_argument():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'max_epoch'; did you mean 'max_epochs'\?"):
        Trainer(max_epoch=2)


def test_callbacks_none_means_no_callbacks():
    quiet = {"enable_progress_bar": False, "enable_model_summary": False, "verbose": False}
    assert Trainer(callbacks=None, **quiet).callbacks == []  # the defaults (bar, summary, console lines) turned off


def test_a_callback_class_instead_of_an_instance_is_refused():
    with pytest.raises(TypeError, match=r"callbacks\[0\] is the class EarlyStopping, not an instance: write "
                       r"EarlyStopping\(...\)"):
        Trainer(callbacks=[EarlyStopping])


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize("container", [tuple, list], ids=["tuple", "list"])
def test_unnamed_loaders_name_the_argument_and_the_accepted_forms(container):
    loaders = container([_loader(), _loader()])
    with pytest.raises(TypeError, match=r"Trainer.fit: loaders is a \w+ of 2 DataLoaders.*\[\('train', loader\), "
                       r"\('validation', loader\)\], \{'train': loader, 'validation': loader\}, or one loader"):
        Trainer(enable_progress_bar=False).fit(Classifier(), loaders)


def test_pairs_mixed_with_a_bare_loader_are_refused():
    with pytest.raises(TypeError, match=r"loaders is a list of phase pairs mixed with other items"):
        Trainer(enable_progress_bar=False).fit(Classifier(), [("train", _loader()), _loader()])


def test_a_dict_batch_that_does_not_fit_names_the_keys_and_the_signature():
    data = [{"x": x, "y": y} for x, y in make_data()]
    with pytest.raises(BatchError, match=r"Classifier.fit\(inputs, targets\) cannot "
                       r"take a dict batch with keys \['x', 'y'\]"):
        Trainer(enable_progress_bar=False).fit(Classifier(), data)


def test_a_tuple_batch_of_the_wrong_length_names_its_elements():
    data = [(x, y, y) for x, y in make_data()]
    with pytest.raises(BatchError, match=r"cannot take a tuple batch of 3 elements \(tuple\(Tensor\[4, 4\] float32, "
                       r"Tensor\[4\] int64, Tensor\[4\] int64\)\)"):
        Trainer(enable_progress_bar=False).fit(Classifier(), data)


def test_a_type_error_inside_the_step_is_not_blamed_on_the_batch():
    class Broken(Classifier):
        def fit(self, inputs, targets):
            raise TypeError("a bug in the user's step")

    with pytest.raises(TypeError, match=r"^a bug in the user's step$"):
        Trainer(enable_progress_bar=False).fit(Broken(), make_data())


def test_a_plain_module_is_told_what_is_expected():
    with pytest.raises(TypeError, match=r"Linear has no fit\(\) method; expected an Aggregate .* or any "
                       r"torch.nn.Module with fit\(...\) and evaluate\(...\) methods returning \(predictions, loss\)"):
        Trainer().fit(torch.nn.Linear(2, 2), make_data())


def test_fp16_on_the_cpu_suggests_bf16():
    with pytest.warns(UserWarning, match=r"precision='bf16-mixed' is the CPU's mixed precision"):
        SingleDeviceStrategy("cpu", precision="16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SingleDeviceStrategy("cpu", precision="bf16-mixed")
