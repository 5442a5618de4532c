"""Every precision on CPU, through the Trainer."""

import math

import pytest
import torch
from torch import nn

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.strategies import SingleDeviceStrategy

# fp16 runs on the CPU here on purpose (its scaler logic is device-independent); the suggestion to use bf16 is tested
# in tests/trainer/test_first_hour.py
pytestmark = pytest.mark.filterwarnings("ignore:precision='16-mixed' on the CPU:UserWarning")


class Plain(Aggregate):
    """Uses the default Aggregate.fit, which backpropagates through self.backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nn = nn.Linear(4, 2)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)
        self.seen: list[tuple] = []

    def forward(self, inputs):
        outputs = self.nn(inputs)
        self.seen.append((inputs.dtype, outputs.dtype, torch.is_autocast_enabled("cpu")))
        return outputs


@pytest.mark.parametrize(
    ("precision", "parameters", "inputs", "outputs", "autocast"),
    [
        ("32-true", torch.float32, torch.float32, torch.float32, False),
        ("64-true", torch.float64, torch.float64, torch.float64, False),
        ("bf16-mixed", torch.float32, torch.float32, torch.bfloat16, True),
        ("16-mixed", torch.float32, torch.float32, torch.float16, True),
    ],
    ids=["32-true", "64-true", "bf16-mixed", "16-mixed"],
)
def test_precision_sets_dtypes_and_autocast(precision, parameters, inputs, outputs, autocast):
    aggregate = Plain()
    before = aggregate.nn.weight.detach().clone()
    Trainer(strategy=SingleDeviceStrategy("cpu", precision), enable_progress_bar=False).fit(aggregate, make_data())
    assert aggregate.nn.weight.dtype == parameters
    assert set(aggregate.seen) == {(inputs, outputs, autocast)}
    assert not torch.equal(aggregate.nn.weight.detach().to(before.dtype), before)  # it trained


def test_trainer_precision_shorthand():
    assert Trainer(strategy="cpu", precision="bf16-mixed").strategy.precision.precision == "bf16-mixed"
    with pytest.raises(ValueError, match="pass the precision to the strategy"):
        Trainer(strategy=SingleDeviceStrategy("cpu"), precision="bf16-mixed")


def test_seed_style_aggregates_train_unchanged_where_no_loss_scaling_is_needed():
    for precision in ("32-true", "64-true", "bf16-mixed"):
        torch.manual_seed(0)
        aggregate = Classifier()
        Trainer(strategy=SingleDeviceStrategy("cpu", precision), enable_progress_bar=False).fit(aggregate, make_data())
        assert aggregate.epoch == 1


def test_16_mixed_refuses_an_unscaled_backward_with_a_clear_error():
    with pytest.raises(RuntimeError, match=r"precision='16-mixed' scales the loss: call self.backward\(loss\)"):
        Trainer(strategy=SingleDeviceStrategy("cpu", "16-mixed"), enable_progress_bar=False).fit(Classifier(), make_data())


class Overflowing(Plain):
    """Its loss is infinite on batch 1 of epoch 0, so that step's gradients are non-finite."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.calls = 0

    def fit(self, inputs, targets):
        self.optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        if self.calls == 1:
            loss = loss * math.inf
        self.calls += 1
        self.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        return outputs, loss


def test_16_mixed_unscales_before_clipping_skips_non_finite_steps_and_their_scheduler_step():
    aggregate = Overflowing()
    weights, norms, stepped = [], [], []

    def norm(module):
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()

    class Watch(Callback):
        def on_gradients_computed(self, event):  # unscaled, not yet clipped (Lightning's on_before_optimizer_step)
            norms.append(norm(event.aggregate.nn))

        def on_batch_trained(self, event):  # the gradients the step used
            weights.append(event.aggregate.nn.weight.detach().clone())
            stepped.append(norm(event.aggregate.nn))

    strategy = SingleDeviceStrategy("cpu", "16-mixed")
    Trainer(callbacks=[Watch()], strategy=strategy, gradient_clip_val=0.5, enable_progress_bar=False).fit(
        aggregate, make_data()
    )
    assert torch.equal(weights[1], weights[0])  # the overflowing step was skipped
    assert not torch.equal(weights[2], weights[1])
    assert strategy.precision.scaler.get_scale() == 65536.0 / 2  # lowered once, for the skipped step
    finite = [n for n in norms if math.isfinite(n)]
    assert len(finite) == 3 and all(n < 100 for n in finite) and max(finite) > 0.5  # unscaled, unclipped
    assert all(n <= 0.5 + 1e-4 for i, n in enumerate(stepped) if i != 1)  # clipped after unscaling
    assert aggregate.scheduler.last_epoch == 3  # 4 batches, 1 skipped
    assert aggregate.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_64_true_casts_floating_inputs_only():
    seen = []

    class Mixed(Plain):
        def fit(self, inputs, targets):
            seen.append((inputs.dtype, targets.dtype))
            return super().fit(inputs, targets)

    Trainer(strategy=SingleDeviceStrategy("cpu", "64-true"), enable_progress_bar=False).fit(Mixed(), make_data()[:1])
    assert seen == [(torch.float64, torch.int64)]


class TwoOptimizers(Plain):
    """One backward, two optimizers stepping after it (each owning part of the network)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.optim.SGD([self.nn.weight], lr=0.1)
        self.second = torch.optim.SGD([self.nn.bias], lr=0.1)
        del self.optimizer

    def fit(self, inputs, targets):
        self.first.zero_grad()
        self.second.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.backward(loss)
        self.first.step()
        self.second.step()
        return outputs, loss


def test_16_mixed_steps_several_optimizers_after_one_backward():
    aggregate = TwoOptimizers()
    weight, bias = aggregate.nn.weight.detach().clone(), aggregate.nn.bias.detach().clone()
    Trainer(strategy=SingleDeviceStrategy("cpu", "16-mixed"), enable_progress_bar=False).fit(aggregate, make_data())
    assert not torch.equal(aggregate.nn.weight, weight) and not torch.equal(aggregate.nn.bias, bias)
