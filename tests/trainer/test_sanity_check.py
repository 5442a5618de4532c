"""num_sanity_val_steps: validation batches before the first training batch, seen by no validation consumer, leaving
the fit as it would be without them; skipped on a resumed fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping, History, ModelCheckpoint


class Everything(Recorder):
    """The suite's recorder, plus the sanity check's and the loop controls' events."""

    def on_sanity_check_started(self, event):
        self.events.append(("SanityCheckStarted", event.batches, event.trainer.sanity_checking))

    def on_sanity_check_ended(self, event):
        self.events.append(("SanityCheckEnded", sorted(event.results), event.trainer.sanity_checking))


class Evaluations(Classifier):
    """Records, for every evaluate call, whether the trainer said it was sanity checking."""

    def __init__(self) -> None:
        super().__init__()
        self.trainer: Trainer | None = None
        self.calls: list[bool] = []

    def evaluate(self, inputs, targets):
        assert self.trainer is not None
        self.calls.append(self.trainer.sanity_checking)
        return super().evaluate(inputs, targets)


def fit(aggregate, validation_batches=3, **arguments):
    data = make_data()
    recorder = Everything()
    trainer = Trainer(callbacks=[recorder], max_epochs=1, enable_progress_bar=False, **arguments)
    if isinstance(aggregate, Evaluations):
        aggregate.trainer = trainer
    trainer.fit(aggregate, [("train", data[:2]), ("validation", make_data(samples=4 * validation_batches))])
    return trainer, recorder


def test_two_validation_batches_run_before_the_first_training_batch_with_events_of_their_own(classifier):
    trainer, recorder = fit(classifier)
    assert recorder.events[:4] == [
        ("FitStarted",),
        ("SanityCheckStarted", 2, True),
        ("SanityCheckEnded", ["loss"], True),
        ("EpochStarted", 0),
    ]
    names = recorder.names()
    assert names.count("BatchValidated") == 3 and names.count("Validated") == 1  # the epoch's validation only
    assert names.index("PhaseStarted") > names.index("SanityCheckEnded")
    assert trainer.sanity_checking is False
    assert set(trainer.callback_metrics) == {"train/loss", "validation/loss"}


@pytest.mark.parametrize(
    ("arguments", "sanity"),
    [
        ({}, 2),
        ({"num_sanity_val_steps": 1}, 1),
        ({"num_sanity_val_steps": -1}, 3),  # the whole loader
        ({"num_sanity_val_steps": 5}, 3),  # capped by the loader
        ({"num_sanity_val_steps": -1, "limit_val_batches": 2}, 2),  # and by limit_val_batches
        ({"num_sanity_val_steps": 0}, 0),
        ({"limit_val_batches": 0}, 0),  # no validation at all
    ],
    ids=["default", "one", "all", "more-than-the-loader", "limited", "off", "no-validation"],
)
def test_evaluate_sees_sanity_checking_for_exactly_the_check_batches(arguments, sanity):
    torch.manual_seed(0)
    aggregate = Evaluations()
    _, recorder = fit(aggregate, **arguments)
    epoch_validation = 0 if arguments.get("limit_val_batches") == 0 else arguments.get("limit_val_batches", 3)
    assert aggregate.calls == [True] * sanity + [False] * epoch_validation
    assert recorder.names().count("SanityCheckStarted") == (1 if sanity else 0)


def test_no_validation_loader_or_fast_dev_run_means_no_sanity_check(classifier, data):
    recorder = Everything()
    Trainer(callbacks=[recorder], enable_progress_bar=False).fit(classifier, {"train": data})
    recorder_fast = Everything()
    Trainer(callbacks=[recorder_fast], fast_dev_run=True, enable_progress_bar=False).fit(
        classifier, [("train", data), ("validation", data)]
    )
    assert "SanityCheckStarted" not in recorder.names() + recorder_fast.names()


def test_an_error_in_evaluate_shows_before_any_training_batch(data):
    class Broken(Classifier):
        def evaluate(self, inputs, targets):
            raise RuntimeError("evaluate is broken")

    recorder = Everything()
    with pytest.raises(RuntimeError, match="evaluate is broken"):
        Trainer(callbacks=[recorder], max_epochs=5, enable_progress_bar=False).fit(
            Broken(), [("train", data), ("validation", data)]
        )
    assert recorder.names() == ["FitStarted", "SanityCheckStarted", "ExceptionRaised", "FitEnded"]


class Noisy(Classifier):
    """Dropout, so that training draws from torch's global generator."""

    def __init__(self) -> None:
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)


def shuffled_loaders(own_generator: bool):
    """A shuffled training loader (the global generator); a validation loader whose iterator draws its base seed
    from the global generator too, or one shuffled by a generator of its own."""
    inputs, targets = torch.randn(16, 4, generator=torch.Generator().manual_seed(3)), torch.arange(16) % 2
    dataset = TensorDataset(inputs, targets)
    train = DataLoader(dataset, batch_size=4, shuffle=True)
    generator = torch.Generator().manual_seed(5) if own_generator else None
    validation = DataLoader(dataset, batch_size=4, shuffle=own_generator, generator=generator)
    return [("train", train), ("validation", validation)]


@pytest.mark.parametrize("own_generator", [False, True], ids=["global-generator", "own-generator"])
@pytest.mark.parametrize("steps", [0, 2, -1], ids=["off", "two", "all"])
def test_the_fit_trains_bit_identically_with_and_without_the_check(steps, own_generator):
    def train(sanity: int) -> tuple[dict[str, torch.Tensor], list[dict[str, float]], list[torch.Tensor]]:
        torch.manual_seed(0)
        aggregate = Noisy()
        loaders = shuffled_loaders(own_generator)
        history = History()
        trainer = Trainer(
            callbacks=[history], max_epochs=2, seed=7, num_sanity_val_steps=sanity, enable_progress_bar=False
        )
        trainer.fit(aggregate, loaders)
        generator = loaders[1][1].generator
        return aggregate.state_dict(), history.epochs, [] if generator is None else [generator.get_state()]

    weights, history, generator = train(steps)
    reference_weights, reference_history, reference_generator = train(0)
    assert all(torch.equal(weights[key], reference_weights[key]) for key in reference_weights)
    assert history == reference_history  # the validation order too
    assert all(torch.equal(a, b) for a, b in zip(generator, reference_generator, strict=True))


def test_no_monitor_logger_or_history_sees_the_check(classifier, data, tmp_path):
    class NoValidation(Callback):
        def on_phase_started(self, event):
            assert event.phase == "train", "a validation phase during the sanity check"

        def on_validated(self, event):
            raise AssertionError("a validation event during the sanity check")

    history, recorder = History(), Everything()
    checkpoint = ModelCheckpoint(tmp_path, monitor="validation/loss", save_top_k=-1)
    stopping = EarlyStopping(monitor="validation/loss", patience=0)
    trainer = Trainer(  # the epoch does not validate (every 2nd epoch): only the sanity check touches the loader
        callbacks=[recorder, history, stopping, checkpoint, NoValidation()], max_epochs=1, check_val_every_n_epoch=2,
        enable_progress_bar=False,
    )
    with pytest.warns(UserWarning, match="was in no epoch's results"):
        trainer.fit(classifier, [("train", data), ("validation", data)])
    assert "SanityCheckEnded" in recorder.names()
    assert stopping.best_score == float("inf") and checkpoint.best_k_models == {}
    assert history.epochs == [{"epoch": 0, "train/loss": trainer.callback_metrics["train/loss"]}]
    assert set(trainer.callback_metrics) == {"train/loss"}


def test_a_resumed_fit_skips_the_check(classifier, data, tmp_path):
    loaders = [("train", data), ("validation", data)]
    Trainer(callbacks=[ModelCheckpoint(tmp_path)], max_epochs=1, enable_progress_bar=False).fit(classifier, loaders)
    resumed = Everything()
    Trainer(callbacks=[resumed, ModelCheckpoint(tmp_path)], max_epochs=2, enable_progress_bar=False).fit(
        classifier, loaders, ckpt_path="last"
    )
    assert "SanityCheckStarted" not in resumed.names()
    fresh = Everything()  # "last" with no checkpoint yet starts from scratch: a fresh fit, checked
    Trainer(callbacks=[fresh, ModelCheckpoint(tmp_path / "none")], max_epochs=1, enable_progress_bar=False).fit(
        Classifier(), loaders, ckpt_path="last"
    )
    assert "SanityCheckStarted" in fresh.names()


@pytest.mark.parametrize("value", [-2, 1.5, True, "2"], ids=["minus-two", "float", "bool", "str"])
def test_an_invalid_num_sanity_val_steps_is_refused_naming_it(value):
    with pytest.raises(ValueError, match=rf"num_sanity_val_steps={value!r} is invalid; valid: an int >= 0"):
        Trainer(num_sanity_val_steps=value)


def test_a_buffer_a_module_creates_at_its_first_forward_is_still_usable_by_training(data):
    class LazyScale(Classifier):
        """Creates its output scale at the first forward (as a rotary-embedding or mask cache does)."""

        def __init__(self) -> None:
            super().__init__()
            self.scale: torch.Tensor | None = None

        def forward(self, inputs):
            if self.scale is None:
                self.scale = torch.ones(2)
            return self.nn(inputs) * self.scale  # saved for the backward: must not be an inference tensor

    aggregate = LazyScale()
    Trainer(max_epochs=1, enable_progress_bar=False).fit(aggregate, [("train", data), ("validation", data)])
    assert aggregate.epoch == 1 and not aggregate.scale.is_inference()


def test_a_bad_log_call_in_the_check_names_the_validation_phase(data):
    # the check runs the validation phase's evaluate: its errors name that phase, not the loop's slot for the check
    class LogsLoss(Classifier):
        def evaluate(self, inputs, targets):
            predictions, loss = super().evaluate(inputs, targets)
            self.log("loss", loss)
            return predictions, loss

    trainer = Trainer(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"'loss' is the Trainer's own loss in the 'validation' phase .*'validation/loss'"):
        trainer.fit(LogsLoss(), [("train", data), ("validation", data)])
