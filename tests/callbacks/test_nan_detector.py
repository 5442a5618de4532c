"""NaNDetector: the error it raises, and how the fit ends because of it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks.nan_detector import NaNDetector, NonFiniteError


class Sequential(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(4, 2))
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)


def poisoned(batch: int = 2):
    """16 samples in 4 batches; the inputs of ``batch`` (0-based) hold a NaN, so its loss is NaN (step 3)."""
    data = make_data()
    inputs, targets = data[batch]
    inputs = inputs.clone()
    inputs[0, 0] = float("nan")
    data[batch] = (inputs, targets)
    return data


def fit(detector: NaNDetector) -> tuple[Recorder, pytest.ExceptionInfo[NonFiniteError]]:
    torch.manual_seed(0)
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder, detector], max_epochs=2, enable_progress_bar=False)
    with pytest.raises(NonFiniteError) as caught:
        trainer.fit(Sequential(), poisoned())
    return recorder, caught


def before_step_3() -> list[tuple]:
    events: list[tuple] = [("FitStarted",), ("EpochStarted", 0), ("PhaseStarted", 0, "train")]
    for step in (1, 2):
        events += [("GradientsComputed", 0, step), ("BatchTrained", 0, step - 1, step)]
    return events


def test_a_nan_loss_ends_the_fit_with_an_error_naming_the_step():
    recorder, caught = fit(NaNDetector())
    assert str(caught.value) == "step 3: loss is non-finite (nan)"
    assert isinstance(caught.value, FloatingPointError)
    assert recorder.events == before_step_3() + [
        ("GradientsComputed", 0, 3),
        ("BatchTrained", 0, 2, 3),
        ("ExceptionRaised", "NonFiniteError"),
        ("FitEnded", "exception"),
    ]


def test_a_nan_gradient_is_caught_before_the_optimizer_step():
    recorder, caught = fit(NaNDetector(check_loss=False, check_gradients=True))
    assert str(caught.value) == "step 3: gradient of 'nn.0.weight' is non-finite (nan)"
    assert recorder.events == before_step_3() + [
        ("GradientsComputed", 0, 3),
        ("ExceptionRaised", "NonFiniteError"),
        ("FitEnded", "exception"),
    ]


def test_a_nan_parameter_is_caught_after_the_step():
    _, caught = fit(NaNDetector(check_loss=False, check_parameters=True))
    assert str(caught.value) == "step 3: parameter 'nn.0.weight' is non-finite (nan)"


def test_a_finite_fit_completes_with_every_check():
    recorder = Recorder()
    detector = NaNDetector(check_gradients=True, check_parameters=True)
    Trainer(callbacks=[detector, recorder], max_epochs=2, enable_progress_bar=False).fit(Sequential(), make_data())
    assert recorder.events[-1] == ("FitEnded", "completed")


@pytest.mark.parametrize("value, kind", [(float("inf"), "inf"), (float("-inf"), "-inf")], ids=["inf", "-inf"])
def test_the_message_names_the_kind_of_value(value, kind):
    detector = NaNDetector(check_parameters=True)
    aggregate = Sequential()
    with pytest.raises(NonFiniteError, match=rf"^step 7: loss is non-finite \({kind}\)$"):
        detector.on_batch_trained(SimpleNamespace(step=7, loss=torch.tensor(value), aggregate=aggregate))
    with torch.no_grad():
        aggregate.nn[0].bias[1] = value
    with pytest.raises(NonFiniteError, match=rf"^step 8: parameter 'nn.0.bias' is non-finite \({kind}\)$"):
        detector.on_batch_trained(SimpleNamespace(step=8, loss=torch.tensor(1.0), aggregate=aggregate))


def test_a_gradient_of_an_unnamed_parameter_is_named_by_its_position():
    detector = NaNDetector(check_gradients=True)
    weight, bias = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    weight.grad, bias.grad = torch.zeros(2), torch.tensor([0.0, float("nan")])
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias]}], lr=0.1)
    with pytest.raises(NonFiniteError, match=r"^step 2: gradient of 'param_groups\[1\]\[0\]' is non-finite \(nan\)$"):
        detector.on_gradients_computed(SimpleNamespace(step=2, optimizer=optimizer))


def test_only_the_enabled_checks_are_subscribed():
    assert set(NaNDetector().subscriptions()) == {"FitStarted", "BatchTrained"}
    assert set(NaNDetector(check_loss=False, check_gradients=True).subscriptions()) == {
        "FitStarted",
        "GradientsComputed",
    }


def test_checking_nothing_is_an_error():
    with pytest.raises(ValueError, match="all False; enable at least one"):
        NaNDetector(check_loss=False)
