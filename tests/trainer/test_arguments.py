"""Bad input gets a clear error naming the argument, its value and what is valid; nothing starts."""

import pytest
import torch

from tests.conftest import Classifier, Recorder
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback, CallbackHookError
from torchsystem_trainer.services import Consumer
from torchsystem_trainer.trainer import BatchError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": -2}, r"max_epochs=-2 is invalid; valid: None, -1 \(no epoch limit\) or an int >= 0"),
        ({"max_steps": -5}, r"max_steps=-5"),
        ({"max_steps": 2.5}, r"max_steps=2.5"),
        ({"max_time": 0}, r"max_time=0 is invalid"),
        ({"max_time": "1 hour"}, r"max_time='1 hour'.*DD:HH:MM:SS"),
        ({"accumulate_grad_batches": 0}, r"accumulate_grad_batches=0 is invalid; valid: an int >= 1"),
        ({"gradient_clip_val": -1.0}, r"gradient_clip_val=-1.0"),
        ({"gradient_clip_algorithm": "l2"}, r"gradient_clip_algorithm='l2' is invalid; valid: 'norm', 'value'"),
        ({"check_val_every_n_epoch": 0}, r"check_val_every_n_epoch=0"),
        ({"limit_train_batches": 1.5}, r"limit_train_batches=1.5 is invalid"),
        ({"limit_val_batches": -1}, r"limit_val_batches=-1"),
        ({"fast_dev_run": -2}, r"fast_dev_run=-2"),
        ({"strategy": "tpu"}, r"strategy='tpu' is not a strategy; valid: .*auto, cpu, cuda, mps, ddp"),
        ({"precision": "8-true"}, r"precision='8-true' is not supported; valid values: 32-true, 64-true, bf16-mixed, 16-mixed"),
        ({"metrics": "accuracy"}, r"metrics is a str"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_invalid_arguments_raise_at_construction(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Trainer(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_where_there_is_none_names_it():
    with pytest.raises(RuntimeError, match=r"device='cuda' asks for CUDA, but torch.cuda.is_available\(\) is False"):
        Trainer(strategy="cuda")


def test_max_time_forms():
    assert Trainer(max_time="00:01:00:05").max_time == 3605.0
    assert Trainer(max_time=12).max_time == 12.0


def test_a_hook_that_matches_no_event_fails_at_construction_naming_the_closest():
    class Typo(Callback):
        def on_batch_train(self, event):
            pass

    with pytest.raises(CallbackHookError, match=r"Typo.on_batch_train looks like a hook .* did you mean 'on_batch_trained'"):
        Trainer(callbacks=[Recorder(), Typo()])


def test_a_hook_with_the_wrong_arity_fails_at_construction():
    class Arity(Callback):
        def on_trained(self, trainer, event):
            pass

    with pytest.raises(CallbackHookError, match=r"Arity.on_trained must take exactly one argument, the Trained event"):
        Trainer(callbacks=[Arity()])


def test_a_callback_that_is_not_a_consumer_is_refused():
    with pytest.raises(TypeError, match=r"callbacks\[1\] is a object"):
        Trainer(callbacks=[Recorder(), object()])


@pytest.mark.parametrize(
    ("loaders", "error", "message"),
    [
        ([("validation", [])], ValueError, r"Trainer.fit: loaders has no 'train' loader"),
        ([("train", []), ("testing", [])], ValueError, r"phase 'testing' is not one this method runs; valid phases: train, validation"),
        ({"train": 3}, TypeError, r"the 'train' loader is a int, not an iterable of batches"),
        ([("train", []), ("train", [])], ValueError, r"phase 'train' is given twice"),
    ],
    ids=["no-train", "unknown-phase", "not-iterable", "repeated"],
)
def test_bad_loaders(classifier, loaders, error, message):
    recorder = Recorder()
    with pytest.raises(error, match=message):
        Trainer(callbacks=[recorder]).fit(classifier, loaders)
    assert recorder.events == []  # nothing started


def test_a_batch_of_the_wrong_type(classifier):
    with pytest.raises(BatchError, match=r"a batch must be a tuple or list .* got a Tensor"):
        Trainer(enable_progress_bar=False).fit(classifier, [torch.zeros(4, 4)])


def test_a_fit_that_returns_the_wrong_thing_names_the_method():
    class Wrong(Classifier):
        def fit(self, inputs, targets):
            return super().fit(inputs, targets)[1]

    class NotATensor(Classifier):
        def evaluate(self, inputs, targets):
            return inputs, 0.5

    data = [(torch.randn(4, 4), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(BatchError, match=r"Wrong.fit must return \(predictions, loss\); it returned a Tensor"):
        Trainer(enable_progress_bar=False).fit(Wrong(), data)
    with pytest.raises(BatchError, match=r"NotATensor.evaluate must return .* loss is a float"):
        Trainer(enable_progress_bar=False).validate(NotATensor(), data)


def test_an_aggregate_without_fit():
    with pytest.raises(TypeError, match=r"Trainer.fit: the aggregate is a str"):
        Trainer().fit("model", [])
    with pytest.raises(TypeError, match=r"Trainer.fit: Linear has no fit\(\) method"):
        Trainer().fit(torch.nn.Linear(2, 2), [])


def test_metrics_need_targets():
    import torchmetrics

    class Unsupervised(Classifier):
        def evaluate(self, inputs):
            outputs = self(inputs)
            return outputs, outputs.pow(2).mean()

    trainer = Trainer(metrics=torchmetrics.MeanMetric(), enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"metrics need targets"):
        trainer.validate(Unsupervised(), [(torch.randn(4, 4),)])


def test_seed_style_consumers_are_callbacks(classifier, data):
    """A Consumer with function handlers and Depends, as the seed writes its tensorboard consumer."""
    from torchsystem_trainer import Depends
    from torchsystem_trainer.events import Trained, Validated

    consumer = Consumer()
    written = []

    def writer():
        raise NotImplementedError("overridden in the application layer")

    @consumer.handler
    def deliver_metrics(event: Trained | Validated, sink=Depends(writer)):
        for metric in event.metrics:
            sink.append((f"{metric.name}/{event.model.phase}", metric.value, event.model.epoch))

    consumer.dependency_overrides[writer] = lambda: written
    Trainer(callbacks=[consumer], max_epochs=2, enable_progress_bar=False).fit(
        classifier, [("train", data), ("validation", data)]
    )
    assert [(name, epoch) for name, _, epoch in written] == [
        ("loss/train", 0), ("loss/evaluation", 0), ("loss/train", 1), ("loss/evaluation", 1)
    ]
