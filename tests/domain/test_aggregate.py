import pytest
import torch
from torch import nn

from torchsystem_trainer.domain import Aggregate


class Classifier(Aggregate):
    """Written exactly as the seed writes it."""

    def __init__(self, nn_: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        super().__init__()
        self.epoch = 0
        self.nn = nn_
        self.criterion = criterion
        self.optimizer = optimizer
        self.calls: list[str] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)

    def onepoch(self) -> None:
        self.calls.append(f"epoch={self.epoch}")
        self.events.commit()

    def onphase(self) -> None:
        self.calls.append(f"phase={self.phase}")


def make() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    return Classifier(net, nn.CrossEntropyLoss(), torch.optim.SGD(net.parameters(), lr=0.1))


def test_identity_initializes_once():
    aggregate = make()
    assert not aggregate.is_initialized()
    with pytest.raises(ValueError, match="not initialized"):
        _ = aggregate.id
    aggregate.initialize("abc")
    assert aggregate.is_initialized() and aggregate.id == "abc"
    with pytest.raises(ValueError, match="already initialized"):
        aggregate.initialize("def")


def test_id_may_be_overridden_as_a_property():
    class Named(Aggregate):
        @property
        def id(self) -> str:
            return "fixed"

    assert Named().id == "fixed"


def test_phase_switches_every_submodule_and_calls_onphase():
    aggregate = make()
    aggregate.phase = "evaluation"
    assert aggregate.phase == "evaluation"
    assert not any(module.training for module in aggregate.modules())
    aggregate.phase = "train"
    assert all(module.training for module in aggregate.modules())
    assert aggregate.calls == ["phase=evaluation", "phase=train"]


def test_epoch_assignment_after_the_first_calls_onepoch():
    aggregate = make()
    assert aggregate.calls == []  # the constructor's first assignment does not fire the hook
    aggregate.epoch = 1
    aggregate.epoch += 1
    assert aggregate.calls == ["epoch=1", "epoch=2"]


def test_stop_iteration_enqueued_is_raised_at_onepoch_as_in_the_seed():
    aggregate = make()
    aggregate.events.enqueue(StopIteration)
    with pytest.raises(StopIteration):
        aggregate.epoch = 1
    assert aggregate.epoch == 1


def test_default_fit_matches_a_hand_written_step():
    inputs, targets = torch.randn(8, 4), torch.randint(0, 2, (8,))
    aggregate, reference = make(), make()

    class Plain(Aggregate):
        def __init__(self, net, optimizer):
            super().__init__()
            self.net, self.optimizer, self.criterion = net, optimizer, nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

    plain = Plain(aggregate.nn, aggregate.optimizer)
    torch.manual_seed(1)  # same dropout mask for both
    outputs, loss = plain.fit(inputs, targets)

    reference.optimizer.zero_grad()
    torch.manual_seed(1)
    expected_outputs = reference(inputs)
    expected_loss = reference.criterion(expected_outputs, targets)
    expected_loss.backward()
    reference.optimizer.step()

    assert torch.equal(outputs, expected_outputs) and torch.equal(loss, expected_loss)
    for a, b in zip(plain.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_backward_goes_through_the_bound_function():
    aggregate = make()
    seen = []
    aggregate.bind_backward(lambda loss: seen.append(float(loss.detach())) or (2 * loss).backward())
    loss = aggregate.nn[0].weight.sum()
    aggregate.backward(loss)
    assert seen == [pytest.approx(float(loss.detach()))]
    assert torch.equal(aggregate.nn[0].weight.grad, torch.full_like(aggregate.nn[0].weight, 2.0))
    aggregate.bind_backward(None)


def test_default_fit_without_optimizer_or_criterion_names_what_is_missing():
    class Bare(Aggregate):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match=r"Bare\.fit.*self\.optimizer"):
        Bare().fit(torch.zeros(1), torch.zeros(1))
    with pytest.raises(NotImplementedError, match=r"Bare\.loss.*criterion"):
        Bare().evaluate(torch.zeros(1), torch.zeros(1))
