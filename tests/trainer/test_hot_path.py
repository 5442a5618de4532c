"""The hot path: bit-identical to a hand-written loop, and no host-device sync per step."""

import pytest
import torch
import torchmetrics

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer


def test_bare_trainer_is_bit_identical_to_the_raw_loop():
    data = make_data(samples=64, batch=8)
    torch.manual_seed(0)
    raw = Classifier()
    torch.manual_seed(0)
    trained = Classifier()
    for _ in range(2):
        for inputs, targets in data:
            raw.optimizer.zero_grad()
            loss = raw.criterion(raw(inputs), targets)
            loss.backward()
            raw.optimizer.step()
    Trainer(max_epochs=2, enable_progress_bar=False).fit(trained, data)
    for a, b in zip(raw.parameters(), trained.parameters()):
        assert torch.equal(a, b)


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the tensor methods that copy a value to the host (and so synchronise with a device)."""
    calls = {"n": 0}
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


class Logging(Classifier):
    """Logs two values per step (one of them also as a step value), and one per evaluation step."""

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.log("double", loss * 2, on_step=True, prog_bar=True)
        self.log("largest", outputs.max(), reduce_fx="max")
        return outputs, loss

    def evaluate(self, inputs, targets):
        outputs, loss = super().evaluate(inputs, targets)
        self.log("half", loss / 2)
        return outputs, loss


@pytest.mark.parametrize(
    ("metrics", "aggregate"),
    [(None, Classifier), ("accuracy", Classifier), (None, Logging)],
    ids=["no-metrics", "accuracy", "logging"],
)
def test_host_reads_do_not_grow_with_the_number_of_steps(host_reads, metrics, aggregate):
    def fit(batches: int) -> int:
        torch.manual_seed(0)
        metric = None if metrics is None else torchmetrics.Accuracy("multiclass", num_classes=2)
        host_reads["n"] = 0
        Trainer(metrics=metric, enable_progress_bar=False).fit(
            aggregate(), [("train", make_data(samples=4 * batches)), ("validation", make_data(samples=8))]
        )
        return host_reads["n"]

    few, many = fit(2), fit(16)
    assert few == many
    assert many <= 7  # a handful per phase (the sanity check's included), when the results are computed


def test_the_counter_sees_a_consumer_that_asks_for_the_loss(host_reads):
    from torchsystem_trainer.callbacks import Callback

    class ReadLoss(Callback):
        def on_batch_trained(self, event):
            float(event.loss)

    host_reads["n"] = 0
    Trainer(callbacks=[ReadLoss()], enable_progress_bar=False).fit(Classifier(), make_data(samples=40))
    assert host_reads["n"] >= 10
