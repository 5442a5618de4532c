"""The exact event sequence of fit, validate, test and predict."""

import warnings

import torch

from tests.conftest import Classifier, Recorder, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback


def test_fit_emits_the_documented_sequence(classifier, data):
    recorder = Recorder()
    Trainer(callbacks=[recorder], max_epochs=2, enable_progress_bar=False).fit(
        classifier, [("train", data[:2]), ("validation", data[2:3])]
    )
    expected = [("FitStarted",)]
    step = 0
    for epoch in range(2):
        expected += [("EpochStarted", epoch), ("PhaseStarted", epoch, "train")]
        for batch in range(2):
            step += 1
            expected += [("GradientsComputed", epoch, step), ("BatchTrained", epoch, batch, step)]
        expected += [("Trained", epoch), ("PhaseStarted", epoch, "validation")]
        expected += [("BatchValidated", epoch, 0, step), ("Validated", epoch), ("Iterated", epoch)]
    expected += [("FitEnded", "completed")]
    assert recorder.events == expected


def test_no_limit_means_one_epoch_and_validation_every_n_epochs(classifier, data):
    recorder = Recorder()
    Trainer(callbacks=[recorder], enable_progress_bar=False).fit(classifier, {"train": data})
    assert recorder.names().count("EpochStarted") == 1

    recorder = Recorder()
    Trainer(callbacks=[recorder], max_epochs=4, check_val_every_n_epoch=2, enable_progress_bar=False).fit(
        classifier, [("train", data), ("validation", data)]
    )
    assert [e[1] for e in recorder.events if e[0] == "Validated"] == [1, 3]


def test_callbacks_run_in_list_order(classifier, data):
    order: list[str] = []

    class First(Recorder):
        def on_trained(self, event):
            order.append("first")

    class Second(Recorder):
        def on_trained(self, event):
            order.append("second")

    Trainer(callbacks=[Second(), First()], max_epochs=1, enable_progress_bar=False).fit(classifier, data)
    assert order == ["second", "first"]


def test_aggregate_epoch_advances_once_per_epoch_and_fires_onepoch(data):
    seen = []

    class Counting(Classifier):
        def onepoch(self):
            seen.append(self.epoch)

    Trainer(max_epochs=3, enable_progress_bar=False).fit(Counting(), data)
    assert seen == [1, 2, 3]


def test_phases_switch_train_and_evaluation_mode(data):
    modes = []

    class Watching(Classifier):
        def fit(self, inputs, targets):
            modes.append(("fit", self.phase, torch.is_inference_mode_enabled()))
            return super().fit(inputs, targets)

        def evaluate(self, inputs, targets):
            modes.append(("evaluate", self.phase, torch.is_inference_mode_enabled()))
            return super().evaluate(inputs, targets)

    Trainer(max_epochs=1, enable_progress_bar=False).fit(Watching(), [("train", data[:1]), ("validation", data[:1])])
    # the sanity check first, under no_grad (the process's first forward), then training, then the validation
    assert modes == [("evaluate", "evaluation", False), ("fit", "train", False), ("evaluate", "evaluation", True)]


def test_validate_test_and_predict(classifier, data):
    recorder = Recorder()
    trainer = Trainer(callbacks=[recorder], enable_progress_bar=False)
    results = trainer.validate(classifier, data)
    assert set(results) == {"loss"}
    assert trainer.test(classifier, [("test", data)]) == results
    predictions = trainer.predict(classifier, [inputs for inputs, _ in data])
    assert len(predictions) == len(data) and predictions[0].shape == (4, 2)
    with torch.no_grad():  # batch by batch: a matmul over all rows at once may round differently on some CPUs
        assert all(torch.equal(p, classifier(x)) for p, (x, _) in zip(predictions, data))
    assert recorder.names() == (
        ["PhaseStarted"] + ["BatchValidated"] * 4 + ["Validated"]
        + ["PhaseStarted"] + ["BatchTested"] * 4 + ["Tested"]
        + ["PhaseStarted"] + ["BatchPredicted"] * 4 + ["Predicted"]
    )


def test_loss_is_the_sample_weighted_mean_over_uneven_batches():
    torch.manual_seed(0)
    classifier = Classifier()
    data = make_data(samples=10, batch=4)  # batches of 4, 4, 2
    results = Trainer(enable_progress_bar=False).validate(classifier, data)
    with torch.no_grad():
        inputs = torch.cat([x for x, _ in data])
        targets = torch.cat([y for _, y in data])
        expected = torch.nn.functional.cross_entropy(classifier(inputs), targets).item()
    assert abs(results["loss"] - expected) < 1e-6


def test_batches_as_dicts_and_longer_tuples(data):
    seen = []

    class Flexible(Classifier):
        def fit(self, inputs, targets, weights=None):
            seen.append(weights is not None)
            return super().fit(inputs, targets)

    trainer = Trainer(enable_progress_bar=False)
    trainer.fit(Flexible(), [(x, y, torch.ones(len(y))) for x, y in data[:1]])
    trainer.fit(Flexible(), [{"inputs": x, "targets": y} for x, y in data[:1]])
    assert seen == [True, False]


def test_batch_trained_carries_the_loss_value_without_its_graph(data):
    losses, values = [], []

    class Returning(Classifier):
        def fit(self, inputs, targets):
            predictions, loss = super().fit(inputs, targets)
            losses.append(loss)
            return predictions, loss

    class ReadLoss(Callback):
        def on_batch_trained(self, event):
            values.append((event.loss.requires_grad, event.loss.grad_fn, float(event.loss)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor that requires grad is read as a number
        Trainer(callbacks=[ReadLoss()], enable_progress_bar=False).fit(Returning(), data)
    assert len(values) == len(data)
    assert [(False, None, loss.item()) for loss in losses] == values
