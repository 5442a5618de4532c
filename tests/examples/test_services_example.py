"""The services example (``python -m examples.services``): the seed's system without the Trainer runs on digits,
early-stops through a Subscriber's StopIteration committed as a domain event, and logs to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from examples.mnist.classifier import Classifier, build_parts
from examples.services import earlystopping, training
from examples.services.app import main
from examples.services.metrics import Metric, Metrics


@pytest.fixture(autouse=True)
def _one_thread():
    """Train on one intra-op thread, then restore torch's setting. These networks are too small to gain from
    threads, and on a shared 2-core machine OpenMP threads that wait for each other made the MNIST run 15x
    slower (115 s against 7 s at a load average of 7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def test_services_example_early_stops_and_logs(tmp_path: Path, capsys) -> None:
    result = main(["--runs-dir", str(tmp_path)])

    assert result.stopped_early
    assert 1 <= result.epochs < 100
    assert result.test["accuracy"] >= 0.95
    assert result.log_dir == tmp_path / "services" / "version_0"
    accumulator = EventAccumulator(str(result.log_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert any(tag.endswith("/accuracy/train") for tag in tags)
    assert any(tag.endswith("/loss/evaluation") for tag in tags)
    out = capsys.readouterr().out
    assert "epoch 0 train: loss=" in out and "epoch 0 validation: loss=" in out
    assert f"stopped by early stopping after {result.epochs} epoch(s)" in out


def _classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(*build_parts(4, hidden_size=8))


def test_high_accuracy_enqueues_one_stop_iteration_raised_at_the_epoch_end() -> None:
    classifier = _classifier()
    event = training.Validated(classifier, [], [Metric("loss", 0.0001), Metric("accuracy", 1.0)])
    earlystopping.consumer.consume(event)
    assert list(classifier.events.queue) == [StopIteration]  # both rules fired; one stop is queued
    with pytest.raises(StopIteration):
        classifier.epoch += 1


def test_ordinary_metrics_do_not_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    classifier = _classifier()
    earlystopping.consumer.consume(training.Trained(classifier, [], [Metric("loss", 0.5), Metric("accuracy", 0.9)]))
    assert len(classifier.events) == 0
    monkeypatch.setitem(earlystopping.subscriber.dependency_overrides, earlystopping.target_accuracy, lambda: 0.8)
    earlystopping.consumer.consume(training.Trained(classifier, [], [Metric("accuracy", 0.9)]))
    assert list(classifier.events.queue) == [StopIteration]


def test_training_service_needs_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(training.service.dependency_overrides, training.device, raising=False)
    batches = [(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(NotImplementedError, match="dependency 'device' of handler 'train'"):
        training.service.handle("train", _classifier(), batches, Metrics())


def test_metrics_weight_the_loss_by_samples_and_reset_after_compute() -> None:
    metrics = Metrics()
    metrics.update(1, torch.tensor(1.0), torch.tensor([1, 1]), torch.tensor([1, 0]))
    metrics.update(2, torch.tensor(4.0), torch.tensor([2]), torch.tensor([2]))
    loss, accuracy = metrics.compute()
    assert (loss.name, accuracy.name) == ("loss", "accuracy")
    assert loss.value == pytest.approx(2.0) and accuracy.value == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no batch was recorded"):
        metrics.compute()
