"""EMA: the average equals torch's AveragedModel with get_ema_multi_avg_fn, bit for bit; validation runs with it and
the trained weights come back; the fit ends with it; both sets are checkpointed and a resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tests.checkpoint import train_script
from tests.checkpoint.helpers import Snapshot, run, same_weights
from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EMA, Callback
from torchsystem_trainer.checkpoint import load_weights, read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*was in no epoch's results:UserWarning")


class Reference(Callback):
    """torch's own AveragedModel.update_parameters on a copy of the network, after every optimizer step."""

    def __init__(self, decay: float, every: int = 1) -> None:
        self.decay, self.every, self.model = decay, every, None

    def on_fit_started(self, event) -> None:
        self.model = AveragedModel(copy.deepcopy(event.aggregate.nn), multi_avg_fn=get_ema_multi_avg_fn(self.decay),
                                   use_buffers=True)

    def on_batch_trained(self, event) -> None:
        if event.trainer.global_step % self.every == 0:
            self.model.update_parameters(event.aggregate.nn)


class Probe(Callback):
    """The weights validation ran with, and the aggregate's weights at each epoch's end and after training."""

    def __init__(self) -> None:
        self.validated, self.trained, self.iterated = [], [], []

    def on_batch_validated(self, event) -> None:
        if event.batch == 0:
            self.validated.append(event.aggregate.nn.weight.clone())

    def on_trained(self, event) -> None:
        self.trained.append(event.aggregate.nn.weight.clone())

    def on_iterated(self, event) -> None:
        self.iterated.append(event.aggregate.nn.weight.clone())


def fit(*callbacks, epochs=3, **arguments):
    torch.manual_seed(0)
    aggregate = Classifier()
    trainer = Trainer(callbacks=list(callbacks), max_epochs=epochs, enable_progress_bar=False, **arguments)
    trainer.fit(aggregate, [("train", make_data()), ("validation", make_data(seed=1))])
    return aggregate, trainer


@pytest.mark.parametrize("every", [1, 3], ids=["every-step", "every-3-steps"])
def test_the_average_is_torchs_averaged_model_bit_for_bit(every):
    ema, reference = EMA(decay=0.9, every_n_steps=every), Reference(0.9, every)
    aggregate, _ = fit(ema, reference)
    assert ema.averaged.count == 12 // every and int(ema.averaged.model.n_averaged) == 12 // every
    assert torch.equal(aggregate.nn.weight, reference.model.module.weight)  # the fit ended with the average
    assert torch.equal(aggregate.nn.bias, reference.model.module.bias)
    assert torch.equal(ema.averaged_weights()["nn.weight"], reference.model.module.weight)


def test_validation_runs_with_the_average_and_the_trained_weights_come_back():
    ema, reference, probe = EMA(decay=0.9), Reference(0.9), Probe()
    fit(ema, reference, probe, epochs=2)
    assert len(probe.validated) == 2
    # at the end of epoch 0 the reference's average is what validation used
    final_average = reference.model.module.weight
    assert torch.equal(probe.validated[-1], final_average)
    assert not torch.equal(probe.validated[0], probe.trained[0])
    assert all(torch.equal(t, i) for t, i in zip(probe.trained, probe.iterated))  # swapped back before Iterated


def test_without_validate_with_ema_validation_uses_the_trained_weights():
    probe = Probe()
    fit(EMA(decay=0.9, validate_with_ema=False), probe, epochs=2)
    assert all(torch.equal(v, t) for v, t in zip(probe.validated, probe.trained))


def test_test_after_the_fit_uses_the_average_and_results_match():
    ema, reference = EMA(decay=0.9), Reference(0.9)
    aggregate, trainer = fit(ema, reference)
    results = trainer.test(aggregate, make_data(seed=1))
    network = reference.model.module
    inputs, targets = zip(*make_data(seed=1))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(network(torch.cat(inputs)), torch.cat(targets))
    assert results["loss"] == pytest.approx(float(loss), rel=1e-6)


def test_both_weight_sets_are_checkpointed_and_loadable(tmp_path):
    ema, probe = EMA(decay=0.9), Probe()
    path = tmp_path / "mid.ckpt"
    fit(ema, probe, Snapshot(path, epoch=1, crash=None))
    state = read_checkpoint(path)
    saved = state["callbacks"]["EMA"]
    assert torch.equal(state["aggregate"]["modules"]["nn.weight"], probe.iterated[1])  # trained weights
    assert saved["n_averaged"] == 8 and saved["last_update_step"] == 8 and saved["trained_weights"] is None
    torch.manual_seed(3)
    other = Classifier()
    load_weights(other, path, averaged=True)
    assert torch.equal(other.nn.weight, saved["averaged_weights"]["nn.weight"])
    assert not torch.equal(other.nn.weight, probe.iterated[1])


def _loaders():
    return train_script.loaders(workers=0, augment=True)


@pytest.mark.parametrize(("step", "epoch"), [(5, None), (None, 1)], ids=["mid-epoch", "epoch-end"])
def test_a_resumed_fit_ends_bit_identical(tmp_path, step, epoch):
    path = tmp_path / "state.ckpt"
    reference, _, _ = run(_loaders, extra=(EMA(decay=0.8),), max_epochs=3, early_stopping=False)
    run(_loaders, extra=(EMA(decay=0.8), Snapshot(path, step=step, epoch=epoch)), max_epochs=3, early_stopping=False)
    resumed, _, _ = run(_loaders, extra=(EMA(decay=0.8),), ckpt_path=path, max_epochs=3, early_stopping=False)
    assert same_weights(resumed, reference)


def test_a_checkpoint_written_after_the_fit_resumes_from_the_trained_weights(tmp_path):
    reference, _, _ = run(_loaders, extra=(EMA(decay=0.8),), max_epochs=3, early_stopping=False)
    aggregate, trainer, _ = run(_loaders, extra=(EMA(decay=0.8),), max_epochs=2, early_stopping=False)
    path = trainer.save_checkpoint(tmp_path / "after.ckpt")
    state = read_checkpoint(path)
    assert state["callbacks"]["EMA"]["trained_weights"] is not None
    assert torch.equal(state["aggregate"]["modules"]["nn.0.weight"], state["callbacks"]["EMA"]["averaged_weights"]["nn.0.weight"])
    resumed, _, _ = run(_loaders, extra=(EMA(decay=0.8),), ckpt_path=path, max_epochs=3, early_stopping=False)
    assert same_weights(resumed, reference)


def test_a_checkpoint_of_another_decay_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"decay=0.5, this EMA has 0.9"):
        EMA(decay=0.9).load_state_dict(EMA(decay=0.5).state_dict())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"decay": 1.5}, r"decay=1.5 is invalid"), ({"every_n_steps": 0}, r"every_n_steps=0 is invalid")],
    ids=["decay", "every_n_steps"],
)
def test_arguments_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        EMA(**arguments)


def test_a_stand_alone_validate_runs_with_the_aggregates_weights(tmp_path):
    # validation with the average is the fit's: after a fit, validate() evaluates the weights the aggregate holds
    # (those of ckpt_path when given), as test() does; it never swaps in the average of the fit that ended
    aggregate, trainer = fit(EMA(decay=0.5), epochs=2)
    path = trainer.save_checkpoint(tmp_path / "final.ckpt")
    with torch.no_grad():
        aggregate.nn.weight[0].add_(1.0)  # the aggregate's weights now differ from the fit's average
    data = make_data(seed=1)
    assert trainer.validate(aggregate, data) == trainer.test(aggregate, data)
    assert trainer.validate(aggregate, data, ckpt_path=path) == trainer.test(aggregate, data, ckpt_path=path)
