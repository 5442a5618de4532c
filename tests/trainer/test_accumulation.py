"""Gradient accumulation and clipping, through the optimizer the strategy binds."""

import pytest
import torch
from torch import nn

from tests.conftest import Classifier, Recorder
from torchsystem_trainer import Aggregate, Trainer
from torchsystem_trainer.callbacks import Callback


class Regressor(Aggregate):
    def __init__(self, seed_style: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nn = nn.Linear(3, 1)
        self.criterion = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)
        self.seed_style = seed_style

    def forward(self, inputs):
        return self.nn(inputs)

    def fit(self, inputs, targets):
        if not self.seed_style:
            return super().fit(inputs, targets)
        self.optimizer.zero_grad()
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return outputs, loss


def regression_data(samples: int = 32):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(samples, 3, generator=generator), torch.randn(samples, 1, generator=generator)


@pytest.mark.parametrize("seed_style", [True, False], ids=["seed-style-fit", "default-fit"])
def test_four_batches_of_eight_accumulated_match_one_batch_of_32(seed_style):
    inputs, targets = regression_data()
    accumulated, reference = Regressor(seed_style), Regressor(seed_style)
    loader = [(inputs[i : i + 8], targets[i : i + 8]) for i in range(0, 32, 8)]
    trainer = Trainer(accumulate_grad_batches=4, enable_progress_bar=False)
    trainer.fit(accumulated, loader)
    Trainer(enable_progress_bar=False).fit(reference, [(inputs, targets)])
    assert trainer.global_step == 1 and trainer.progress.step == 4
    for a, b in zip(accumulated.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_optimizer_steps_and_gradient_events_happen_at_window_ends_and_at_the_epoch_end():
    recorder = Recorder()
    inputs, targets = regression_data(24)
    loader = [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 24, 4)]  # 6 batches
    trainer = Trainer(callbacks=[recorder], accumulate_grad_batches=4, max_epochs=2, enable_progress_bar=False)
    trainer.fit(Regressor(True), loader)
    steps = [e[2] for e in recorder.events if e[0] == "GradientsComputed"]
    assert steps == [4, 6, 10, 12]  # the last, incomplete window of each epoch steps too
    assert trainer.global_step == 4


def test_an_unsized_loader_flushes_its_last_incomplete_window():
    inputs, targets = regression_data(24)

    class Stream:
        def __iter__(self):
            return ((inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 24, 4))

    counted = []

    class Count(Callback):
        def on_gradients_computed(self, event):
            counted.append(event.step)

    trainer = Trainer(callbacks=[Count()], accumulate_grad_batches=4, enable_progress_bar=False)
    aggregate = Regressor(True)
    trainer.fit(aggregate, Stream())
    assert trainer.global_step == 2 and len(counted) == 2


def test_a_per_batch_scheduler_steps_only_with_the_optimizer():
    class Scheduled(Regressor):
        def __init__(self):
            super().__init__(True)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

        def fit(self, inputs, targets):
            result = super().fit(inputs, targets)
            self.scheduler.step()
            return result

    inputs, targets = regression_data()
    aggregate = Scheduled()
    Trainer(accumulate_grad_batches=2, enable_progress_bar=False).fit(
        aggregate, [(inputs[i : i + 4], targets[i : i + 4]) for i in range(0, 32, 4)]
    )
    assert aggregate.scheduler.last_epoch == 4  # 8 batches, 4 optimizer steps
    assert "step" not in aggregate.scheduler.state_dict()  # the binding never leaks into saved state


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradients_computed_sees_unclipped_gradients_and_the_step_uses_clipped_ones(algorithm):
    """As Lightning's on_before_optimizer_step: a callback sees the gradients before clipping (to log the pre-clip
    norm), and the optimizer steps with the clipped ones."""
    torch.manual_seed(0)
    aggregate, reference = Classifier(), Classifier()
    reference.load_state_dict(aggregate.state_dict())
    generator = torch.Generator().manual_seed(3)
    batch = (10 * torch.randn(4, 4, generator=generator), torch.tensor([0, 1, 1, 0]))
    seen = []

    class Watch(Callback):
        def on_gradients_computed(self, event):
            grads = [p.grad.clone() for p in event.aggregate.parameters()]
            seen.append(grads)

    Trainer(callbacks=[Watch()], gradient_clip_val=0.01, gradient_clip_algorithm=algorithm,
            enable_progress_bar=False).fit(aggregate, [batch])

    reference.optimizer.zero_grad()
    reference.loss(reference(batch[0]), batch[1]).backward()
    parameters = list(reference.parameters())
    for a, b in zip(seen[0], (p.grad for p in parameters)):
        assert torch.equal(a, b)  # unclipped
    if algorithm == "norm":
        assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in seen[0]])) > 1.0
        torch.nn.utils.clip_grad_norm_(parameters, 0.01)
    else:
        assert max(g.abs().max() for g in seen[0]) > 1.0
        torch.nn.utils.clip_grad_value_(parameters, 0.01)
    reference.optimizer.step()
    for a, b in zip(aggregate.parameters(), reference.parameters()):
        assert torch.equal(a, b)  # stepped with the clipped gradients
