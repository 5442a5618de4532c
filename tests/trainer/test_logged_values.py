"""``Aggregate.log``: values from inside fit/evaluate reduced into the phase's results, step values, prog_bar
values, name collisions, and what happens outside a Trainer."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchmetrics

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, EarlyStopping, History, ModelCheckpoint

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "verbose": False}


class Logging(Classifier):
    """Logs, per training batch, the batch's first input value in four reductions, a number, and a step value;
    per evaluation batch, twice the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[float, int]] = []  # (value, batch size) of each training batch

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        value = inputs[0, 0]
        self.seen.append((float(value), inputs.shape[0]))
        self.log("first", value)
        self.log("first_sum", value, reduce_fx="sum")
        self.log("first_max", value, reduce_fx="max", on_step=True, prog_bar=True)
        self.log("first_min", value, reduce_fx="min")
        self.log("samples", inputs.shape[0], reduce_fx="sum")  # a plain number
        self.log("step_only", loss * 10, on_step=True, on_epoch=False)
        return outputs, loss

    def evaluate(self, inputs, targets):
        outputs, loss = super().evaluate(inputs, targets)
        self.log("twice", loss * 2)
        return outputs, loss


def _fit(aggregate, callbacks=(), epochs=1, train=None, **arguments):
    trainer = Trainer(max_epochs=epochs, callbacks=list(callbacks), **{**QUIET, **arguments})
    data = train if train is not None else make_data(samples=18)  # batches of 4, 4, 4, 4, 2
    trainer.fit(aggregate, [("train", data), ("validation", make_data(samples=10, seed=1))])
    return trainer


def test_the_four_reductions_over_a_phase_with_uneven_batches():
    torch.manual_seed(0)
    aggregate = Logging()
    history = History()
    trainer = _fit(aggregate, [history])
    values = torch.tensor([value for value, _ in aggregate.seen])
    sizes = torch.tensor([float(size) for _, size in aggregate.seen])
    results = history.epochs[0]
    assert results["train/first"] == pytest.approx(float(torch.dot(values, sizes) / sizes.sum()), rel=1e-6)
    assert results["train/first_sum"] == pytest.approx(float(values.sum()), rel=1e-6)
    assert results["train/first_max"] == float(values.max())
    assert results["train/first_min"] == float(values.min())
    assert results["train/samples"] == 18.0
    assert "train/step_only" not in results  # on_epoch=False: a step value only
    # in the order first logged, after the loss; the same in callback_metrics
    assert list(results)[1:7] == [
        "train/loss", "train/first", "train/first_sum", "train/first_max", "train/first_min", "train/samples",
    ]
    assert trainer.callback_metrics == {key: value for key, value in results.items() if key != "epoch"}


def test_evaluation_values_reach_validated_and_the_stand_alone_stages():
    torch.manual_seed(0)
    aggregate = Logging()

    class Phases(Callback):
        def __init__(self):
            self.results = {}

        def on_trained(self, event):
            self.results["train"] = event.results

        def on_validated(self, event):
            self.results["validation"] = event.results

        def on_tested(self, event):
            self.results["test"] = event.results

    phases = Phases()
    trainer = _fit(aggregate, [phases])
    assert phases.results["validation"]["twice"] == pytest.approx(2 * phases.results["validation"]["loss"], rel=1e-6)
    assert "first" in phases.results["train"] and "twice" not in phases.results["train"]
    tested = trainer.test(aggregate, make_data(samples=8, seed=2))
    assert tested["twice"] == pytest.approx(2 * tested["loss"], rel=1e-6)
    assert phases.results["test"] == tested
    validated = trainer.validate(aggregate, make_data(samples=8, seed=2))
    assert validated == tested


def test_monitors_see_logged_values():
    class Rising(Classifier):
        def evaluate(self, inputs, targets):
            outputs, loss = super().evaluate(inputs, targets)
            self.log("score", torch.tensor(float(self.epoch)))  # never decreases: no improvement after epoch 0
            return outputs, loss

    torch.manual_seed(0)
    stopping = EarlyStopping(monitor="validation/score", mode="min", patience=2)
    trainer = _fit(Rising(), [stopping], epochs=10)
    assert trainer.current_epoch == 3 and stopping.best_score == 0.0


def test_model_checkpoint_monitors_a_logged_training_value(tmp_path):
    class Countdown(Classifier):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log("countdown", 10.0 - self.epoch)
            return outputs, loss

    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="train/countdown", mode="min", save_top_k=1)
    _fit(Countdown(), [checkpoint], epochs=3)
    assert checkpoint.best_model_score == 8.0
    assert "epoch=2" in checkpoint.best_model_path


def test_step_values_hold_the_latest_batch_only_and_stay_tensors():
    class Steps(Classifier):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            if self.step % 2 == 0:  # every other batch
                self.log("even", torch.tensor(float(self.step)), on_step=True)
            self.step += 1
            return outputs, loss

    class Read(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_trained(self, event):
            self.seen.append(event.trainer.loop.step_values("train"))

    aggregate, read = Steps(), Read()
    aggregate.step = 0
    _fit(aggregate, [read], train=make_data(samples=16))
    assert [list(values) for values in read.seen] == [["train/even_step"], [], ["train/even_step"], []]
    assert all(isinstance(value, torch.Tensor) for values in read.seen for value in values.values())
    assert [float(values["train/even_step"]) for values in read.seen if values] == [0.0, 2.0]


def test_prog_bar_values_reach_the_progress_bar():
    from torchsystem_trainer.callbacks.progress_base import ProgressBarBase

    class Bar(ProgressBarBase):
        def __init__(self):
            super().__init__(refresh_rate=1, mininterval=0)
            self.drawn = []

        def open_bar(self, title, total):
            pass

        def draw(self, count, values):
            self.drawn.append(values)

        def close_bar(self, count, results):
            pass

    torch.manual_seed(0)
    aggregate, bar = Logging(), Bar()
    _fit(aggregate, [bar], enable_progress_bar=None)
    first = bar.drawn[0]
    assert set(first) == {"loss", "first_max"}
    assert first["first_max"] == aggregate.seen[0][0]
    assert all(type(value) is float for drawing in bar.drawn for value in drawing.values())


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("loss", "the Trainer's own loss"),
        ("loss_step", "the Trainer's own loss"),
        ("accuracy", "a configured metric"),
    ],
    ids=["loss", "loss-step", "metric"],
)
def test_a_name_the_results_already_have_is_refused(name, match):
    class Clash(Classifier):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log(name, loss)
            return outputs, loss

    metric = torchmetrics.Accuracy("multiclass", num_classes=2)
    with pytest.raises(ValueError, match=match):
        _fit(Clash(), metrics={"accuracy": metric})


def test_other_options_for_a_name_and_step_key_clashes_are_refused():
    class Changing(Classifier):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log("x", loss, reduce_fx="max" if self.calls else "mean")
            self.calls += 1
            return outputs, loss

    changing = Changing()
    changing.calls = 0
    with pytest.raises(ValueError, match=r"Aggregate.log\('x'\) was called in the 'train' phase with .*'mean'.*'max'"):
        _fit(changing)

    class StepClash(Classifier):
        def fit(self, inputs, targets):
            outputs, loss = super().fit(inputs, targets)
            self.log("x", loss, on_step=True)
            self.log("x_step", loss)
            return outputs, loss

    with pytest.raises(ValueError, match="one is the other's step value"):
        _fit(StepClash())


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"name": 3, "value": 1.0}, TypeError, r"Classifier.log: name=3 is a int; valid: a non-empty str"),
        ({"name": "", "value": 1.0}, ValueError, "name='' is invalid"),
        ({"name": "x", "value": 1.0, "reduce_fx": "median"}, ValueError, r"reduce_fx='median' is invalid; valid: 'mean', 'sum', 'max', 'min'"),
        ({"name": "x", "value": 1.0, "on_step": False, "on_epoch": False}, ValueError, "log nothing"),
        ({"name": "x", "value": 1.0, "prog_bar": "yes"}, TypeError, "prog_bar='yes' is invalid"),
        ({"name": "x", "value": torch.ones(2)}, ValueError, r"tensor of shape \[2\]; valid: one element"),
        ({"name": "x", "value": "1.0"}, TypeError, "value is a str; valid: a tensor of one element or a number"),
        ({"name": "x", "value": [1.0]}, TypeError, "value is a list"),
    ],
    ids=["name-type", "empty-name", "reduce-fx", "nowhere", "flag-type", "two-elements", "string", "list"],
)
def test_bad_calls_name_the_argument_and_what_is_valid(arguments, error, match):
    with pytest.raises(error, match=match):
        Classifier().log(**arguments)


def test_a_metric_object_points_to_the_trainers_metrics():
    with pytest.raises(TypeError, match=r"belongs in Trainer\(metrics=...\)"):
        Classifier().log("accuracy", torchmetrics.Accuracy("multiclass", num_classes=2))


def test_outside_a_trainer_the_latest_values_are_kept_for_a_consumer():
    aggregate = Logging()
    inputs, targets = make_data()[0]
    aggregate.fit(inputs, targets)  # as the seed's services call it
    assert set(aggregate.logged) == {"first", "first_sum", "first_max", "first_min", "samples", "step_only"}
    assert aggregate.logged["samples"] == 4.0
    assert not aggregate.logged["step_only"].requires_grad  # detached: no graph kept alive
    aggregate.fit(*make_data()[1])
    assert float(aggregate.logged["first"]) == aggregate.seen[1][0]  # the latest


def test_the_sink_is_unbound_after_a_fit_and_after_one_that_raised():
    torch.manual_seed(0)
    aggregate = Logging()
    _fit(aggregate)
    assert aggregate.__dict__["_log_sink"] is None

    class Boom(Callback):
        def on_batch_trained(self, event):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _fit(aggregate, [Boom()], epochs=2)
    assert aggregate.__dict__["_log_sink"] is None
    aggregate.fit(*make_data()[0])  # logs into aggregate.logged only, no stale phase


def test_predict_keeps_logged_values_on_the_aggregate_only():
    class Predicting(Classifier):
        def predict(self, batch):
            outputs = self(batch[0])
            self.log("mean_output", outputs.mean())
            return outputs

    aggregate = Predicting()
    Trainer(**QUIET).predict(aggregate, make_data(samples=8))
    assert "mean_output" in aggregate.logged


def test_a_copy_or_pickle_of_the_aggregate_drops_the_sink():
    copies = []

    class Copy(Callback):
        def on_batch_trained(self, event):
            if not copies:
                copies.append(copy.deepcopy(event.aggregate))
                copies.append(pickle.loads(pickle.dumps(event.aggregate)))

    _fit(Logging(), [Copy()])
    assert all(item.__dict__["_log_sink"] is None for item in copies)


def test_a_phase_whose_aggregate_never_logs_keeps_the_plain_update():
    seen = {}

    class Look(Callback):
        def on_trained(self, event):
            seen["logging"] = "update" in event.trainer.loop.results("train").__dict__

    _fit(Classifier(), [Look()])
    assert seen == {"logging": False}
    _fit(Logging(), [Look()])
    assert seen == {"logging": True}


def test_logged_values_resume_exactly_mid_epoch(tmp_path):
    from tests.checkpoint.helpers import Snapshot

    class Record(Callback):
        def __init__(self):
            self.epochs = []

        def on_iterated(self, event):
            self.epochs.append(dict(event.results))

    def run(extra=(), ckpt_path=None):
        torch.manual_seed(0)
        aggregate, record = Logging(), Record()
        trainer = Trainer(max_epochs=2, callbacks=[record, *extra], seed=3, **QUIET)
        try:
            trainer.fit(aggregate, [("train", make_data(samples=18)), ("validation", make_data(samples=10, seed=1))],
                        ckpt_path=ckpt_path)
        except RuntimeError:
            pass
        return aggregate, record

    _, expected = run()
    path = tmp_path / "mid.ckpt"

    class Crash(Callback):
        def on_batch_trained(self, event):
            if event.step == 8:
                raise RuntimeError("crash")

    run(extra=(Snapshot(path, step=7, crash=None), Crash()))  # epoch 1 after 2 of its 5 batches
    _, resumed = run(ckpt_path=path)
    assert resumed.epochs == expected.epochs[1:]  # bit-identical, logged reductions included
    assert "train/first" in resumed.epochs[0]


def test_a_validation_inside_the_training_phase_leaves_its_logged_values_whole():
    class Validations(Callback):
        def __init__(self):
            self.results = []

        def on_validated(self, event):
            self.results.append(event.results)

    torch.manual_seed(0)
    aggregate, history, validations = Logging(), History(), Validations()
    _fit(aggregate, [history, validations], val_check_interval=2, num_sanity_val_steps=0)  # after batches 2 and 4
    values = torch.tensor([value for value, _ in aggregate.seen])
    assert history.epochs[0]["train/first_sum"] == pytest.approx(float(values.sum()), rel=1e-6)
    assert history.epochs[0]["train/samples"] == 18.0
    assert len(validations.results) == 2
    for results in validations.results:
        assert results["twice"] == pytest.approx(2 * results["loss"], rel=1e-6)
