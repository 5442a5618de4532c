import concurrent.futures
import copy
import io
import multiprocessing
import pickle

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


# -- identity survives every copy (issue 11 item 6) ----------------------------------------------------------


def _deepcopy(aggregate):
    return copy.deepcopy(aggregate)


def _pickle(aggregate):
    return pickle.loads(pickle.dumps(aggregate))


def _torch_save(aggregate):
    buffer = io.BytesIO()
    torch.save(aggregate, buffer)  # the whole module, not its state_dict
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _identity_in_child(payload: bytes) -> tuple[bool, object]:
    aggregate = pickle.loads(payload)
    return aggregate.is_initialized(), (aggregate.id if aggregate.is_initialized() else None)


COPIES = [_deepcopy, _pickle, _torch_save]


@pytest.mark.parametrize("copier", COPIES, ids=["deepcopy", "pickle", "torch.save"])
def test_an_uninitialized_aggregate_stays_uninitialized_through_a_copy(copier):
    copied = copier(make())
    assert not copied.is_initialized()
    with pytest.raises(ValueError, match="not initialized"):
        _ = copied.id
    copied.initialize("abc")  # and it can still be given its identity, once
    assert copied.id == "abc"


@pytest.mark.parametrize("copier", COPIES, ids=["deepcopy", "pickle", "torch.save"])
def test_an_initialized_aggregate_keeps_its_id_through_a_copy(copier):
    aggregate = make()
    aggregate.initialize(("run", 7))
    copied = copier(aggregate)
    assert copied.is_initialized() and copied.id == ("run", 7)
    with pytest.raises(ValueError, match="already initialized"):
        copied.initialize("other")


def test_identity_survives_a_spawned_process():
    initialized = make()
    initialized.initialize("abc")
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        fresh = pool.submit(_identity_in_child, pickle.dumps(make())).result(timeout=120)
        given = pool.submit(_identity_in_child, pickle.dumps(initialized)).result(timeout=120)
    assert fresh == (False, None)
    assert given == (True, "abc")


def test_none_is_not_an_identity():
    aggregate = make()
    with pytest.raises(ValueError, match="id=None"):
        aggregate.initialize(None)
    assert not aggregate.is_initialized()


# -- the default learner step yields to submodules of the same name (item 7) ---------------------------------


class Regressor(Aggregate):
    """Written as torchsystem 1.4.9 allows: the criterion is a submodule named ``loss``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nn = nn.Linear(4, 2)
        self.loss = nn.MSELoss()
        self.optimizer = torch.optim.SGD(self.nn.parameters(), lr=0.1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.nn(inputs)


def test_a_criterion_assigned_as_self_loss_is_what_self_loss_is():
    regressor = Regressor()
    assert isinstance(regressor.loss, nn.MSELoss)
    assert "loss" in dict(regressor.named_children())  # still a registered submodule
    inputs, targets = torch.randn(16, 4), torch.randn(16, 2)
    expected = nn.functional.mse_loss(regressor(inputs), targets)
    assert torch.equal(regressor.loss(regressor(inputs), targets), expected)
    outputs, loss = regressor.fit(inputs, targets)  # the default step uses it
    assert torch.equal(loss, expected)
    _, evaluated = regressor.evaluate(inputs, targets)
    assert torch.equal(evaluated, nn.functional.mse_loss(regressor(inputs), targets))


def test_submodules_named_fit_and_evaluate_are_what_the_attributes_return():
    class Holder(Aggregate):
        def __init__(self) -> None:
            super().__init__()
            self.fit = nn.Linear(4, 2)
            self.evaluate = nn.Identity()

    holder = Holder()
    assert isinstance(holder.fit, nn.Linear) and isinstance(holder.evaluate, nn.Identity)
    assert [name for name, _ in holder.named_children()] == ["fit", "evaluate"]
    copied = copy.deepcopy(holder)
    assert copied.fit is copied._modules["fit"] and copied.fit is not holder.fit
    holder.fit = nn.Linear(4, 3)  # replaced: the new one
    assert holder.fit.out_features == 3 and holder.fit is holder._modules["fit"]
    holder.fit = None  # as torch allows for a registered child
    assert holder.fit is None
    del holder.fit
    assert holder.fit.__func__ is Aggregate.fit  # the default step again
    with pytest.raises(KeyError, match="'fit' already exists"):  # torch's check for names the class defines
        holder.add_module("fit", nn.Identity())


def test_a_subclass_method_still_wins_over_a_submodule_of_its_name_as_upstream():
    class Own(Aggregate):
        def __init__(self) -> None:
            super().__init__()
            self.loss = nn.MSELoss()

        def loss(self, outputs, targets):  # type: ignore[override]
            return "own"

    own = Own()
    assert own.loss(None, None) == "own"
    assert isinstance(own._modules["loss"], nn.MSELoss)


def test_a_module_named_bind_backward_is_refused():
    aggregate = make()
    with pytest.raises(TypeError, match="bind_backward is the method a training strategy calls"):
        aggregate.bind_backward = nn.Identity()


# -- onepoch fires whenever epoch existed before, as upstream's hasattr test (item 8) ------------------------


class Counting(Aggregate):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def onepoch(self) -> None:
        self.seen.append(int(self.epoch))


def test_onepoch_fires_for_an_epoch_first_set_as_a_class_attribute():
    class WithClassEpoch(Counting):
        epoch = 0

    aggregate = WithClassEpoch()
    aggregate.epoch = 1
    aggregate.epoch += 1
    assert aggregate.seen == [1, 2]


def test_onepoch_fires_for_an_epoch_buffer_and_a_number_keeps_it_a_buffer():
    aggregate = Counting()
    aggregate.register_buffer("epoch", torch.zeros((), dtype=torch.int64))
    aggregate.epoch = aggregate.epoch + 1  # a tensor
    aggregate.epoch = int(aggregate.epoch) + 1  # a number, as the Trainer writes it
    assert aggregate.seen == [1, 2]
    assert isinstance(aggregate.epoch, torch.Tensor) and aggregate.epoch.dtype == torch.int64
    assert torch.equal(aggregate.state_dict()["epoch"], torch.tensor(2))
    assert "epoch" not in aggregate.__dict__


def test_an_aggregate_without_epoch_gets_one_without_onepoch_then_onepoch_fires():
    aggregate = Counting()
    assert not hasattr(aggregate, "epoch")
    aggregate.epoch = 0  # the first value: nothing to announce
    aggregate.epoch = 1
    assert aggregate.seen == [1]


def test_phase_calls_the_subclass_train_and_eval_as_upstream():
    calls = []

    class Tracked(Aggregate):
        def eval(self):  # type: ignore[override]
            calls.append("eval")
            return super().eval()

        def train(self, mode: bool = True):  # type: ignore[override]
            calls.append(f"train({mode})")
            return super().train(mode)

    tracked = Tracked()
    tracked.phase = "evaluation"
    tracked.phase = "train"
    assert calls == ["eval", "train(False)", "train(True)"]


def test_an_aggregate_is_an_abc_as_upstream():
    from abc import abstractmethod

    class Abstract(Aggregate):
        @abstractmethod
        def forward(self, inputs): ...

    with pytest.raises(TypeError, match="abstract"):
        Abstract()
