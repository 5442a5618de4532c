"""``SingleDeviceStrategy("cuda")`` at every mixed and true precision: where the tensors live, at what dtype the
arithmetic runs, and fp16 loss scaling (PyTorch's AMP recipe: a step whose gradients hold inf is skipped, its LR
scheduler step too, and gradients are clipped after unscaling)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu.helpers import Plain, loader
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.strategies import SingleDeviceStrategy


@pytest.mark.parametrize(
    ("precision", "outputs", "autocast"),
    [("32-true", torch.float32, False), ("bf16-mixed", torch.bfloat16, True), ("16-mixed", torch.float16, True)],
    ids=["32-true", "bf16-mixed", "16-mixed"],
)
def test_training_and_validation_run_on_the_gpu_at_the_precision(precision, outputs, autocast):
    torch.manual_seed(0)
    aggregate = Plain()
    before = aggregate.nn.weight.detach().clone()
    strategy = SingleDeviceStrategy("cuda", precision)
    trainer = Trainer(strategy=strategy, max_epochs=2, enable_progress_bar=False)
    trainer.fit(aggregate, [("train", loader()), ("validation", loader(seed=1))])
    assert strategy.root_device == torch.device("cuda", torch.cuda.current_device())
    assert aggregate.nn.weight.device.type == "cuda" and aggregate.nn.weight.dtype == torch.float32
    assert aggregate.seen == {("cuda", torch.float32, outputs, autocast)}  # training and validation alike
    assert not torch.equal(aggregate.nn.weight.detach().cpu(), before)  # it trained
    assert math.isfinite(trainer.callback_metrics["train/loss"])
    assert math.isfinite(trainer.callback_metrics["validation/loss"])
    assert (strategy.precision.scaler is not None) == (precision == "16-mixed")


def test_auto_is_the_gpu():
    assert Trainer().strategy.root_device.type == "cuda"


class Overflowing(Plain):
    """Its loss is infinite on its second batch, so that step's gradients are non-finite; a StepLR stepped after
    every optimizer step."""

    def __init__(self) -> None:
        super().__init__(lr=0.1)
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


def test_16_mixed_skips_an_inf_step_and_its_scheduler_step_and_clips_after_unscaling():
    torch.manual_seed(0)
    aggregate = Overflowing()
    weights, norms = [], []
    clip = 1e-3  # far below these gradients' norms, so every finite step is clipped to exactly this norm

    class Watch(Callback):
        def on_gradients_computed(self, event):  # after unscaling and clipping, before the step
            grads = [p.grad for p in event.aggregate.nn.parameters()]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        def on_batch_trained(self, event):
            weights.append(event.aggregate.nn.weight.detach().clone())

    strategy = SingleDeviceStrategy("cuda", "16-mixed")
    trainer = Trainer(callbacks=[Watch()], strategy=strategy, gradient_clip_val=clip, enable_progress_bar=False)
    trainer.fit(aggregate, loader())  # 4 batches
    assert torch.equal(weights[1], weights[0])  # the overflowing step was skipped
    assert not torch.equal(weights[2], weights[1]) and not torch.equal(weights[3], weights[2])
    assert strategy.precision.scaler.get_scale() == 65536.0 / 2  # lowered once, for the skipped step
    assert sum(not math.isfinite(n) for n in norms) == 1
    # clipped after unscaling: each finite step's norm is the clip value itself (clipping the scaled gradients
    # first would leave it 65536 times smaller once unscaled)
    finite = [n for n in norms if math.isfinite(n)]
    assert len(finite) == 3 and all(n == pytest.approx(clip, rel=1e-3) for n in finite)
    assert aggregate.scheduler.last_epoch == 3  # 4 batches, 1 skipped
    assert aggregate.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert trainer.global_step == 4  # the Trainer counts the batch; the scaler decided the step


def test_16_mixed_scaler_state_is_saved_and_restored():
    strategy = SingleDeviceStrategy("cuda", "16-mixed")
    Trainer(strategy=strategy, enable_progress_bar=False).fit(Overflowing(), loader())
    state = strategy.state_dict()
    other = SingleDeviceStrategy("cuda", "16-mixed")
    other.load_state_dict(state)
    assert other.precision.scaler.get_scale() == strategy.precision.scaler.get_scale() == 65536.0 / 2
