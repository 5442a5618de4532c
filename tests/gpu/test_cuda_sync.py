"""The hot path on a GPU: no host-device synchronisation per batch, checked by CUDA itself.

Every batch of these fits is trained under ``torch.cuda.set_sync_debug_mode("error")`` (see ``SyncChecked``): from
the moment the Trainer receives a batch until it asks for the next one (moving it, the aggregate's step, the loss
and the metric recorded on the device, the batch event and its handlers), any ``.item()``, ``float(tensor)``,
blocking copy or ``torch.tensor(..., device="cuda")`` raises. What runs once per phase is not checked: creating the
phase's metrics on the device, computing its results (the one read of the losses and the metric), and the epoch's
callbacks (``EarlyStopping``'s comparison, ``ModelCheckpoint``'s file).

Known synchronisations outside the Trainer, which these fits avoid on purpose:

* torchmetrics' argument validation (``validate_args=True``, the default) inspects the targets' values on the host
  every update (``torch.unique``); the metric here has ``validate_args=False``.
* ``TensorBoardLogger`` reads the loss every ``log_every_n_steps`` steps (default 50, more than these fits have):
  a consumer asking for a value, as documented; the control test below shows the check catching it.
* ``precision="16-mixed"``: ``torch.amp.GradScaler.step`` reads whether the gradients hold inf, once per step
  (PyTorch's recipe); not tested here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from tests.conftest import Classifier
from tests.gpu.helpers import Plain, SyncChecked, loader
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import EarlyStopping, ModelCheckpoint, TensorBoardLogger
from torchsystem_trainer.strategies import SingleDeviceStrategy

EPOCHS = 3


class Scheduled(Plain):
    """The default learner step, SGD with momentum, and a StepLR stepped after every batch."""

    def __init__(self) -> None:
        super().__init__(lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=4, gamma=0.9)

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


def _strategy(precision: str) -> SingleDeviceStrategy:
    torch.cuda.is_bf16_supported()  # before a GPU older than Ampere probes bf16 with a tensor (once, cached)
    return SingleDeviceStrategy("cuda", precision)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_bare_fit_of_a_seed_style_aggregate_makes_no_sync_per_batch(precision):
    torch.manual_seed(0)
    aggregate = Classifier()  # its fit calls zero_grad, backward and step itself
    train = SyncChecked(loader(samples=32))
    trainer = Trainer(strategy=_strategy(precision), max_epochs=EPOCHS, enable_progress_bar=False)
    trainer.fit(aggregate, train)
    assert train.batches == EPOCHS * 8 and trainer.global_step == EPOCHS * 8
    assert math.isfinite(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_fit_with_the_standard_set_makes_no_sync_per_batch(precision, tmp_path):
    torch.manual_seed(0)
    aggregate = Scheduled()
    train, validation = SyncChecked(loader(samples=32)), SyncChecked(loader(samples=16, seed=1))
    trainer = Trainer(
        callbacks=[
            EarlyStopping(monitor="validation/loss", patience=EPOCHS + 1),
            ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1),
            TensorBoardLogger(save_dir=tmp_path / "tensorboard"),  # log_every_n_steps=50 > the 24 steps here
        ],
        metrics={"accuracy": MulticlassAccuracy(num_classes=2, average="micro", validate_args=False)},
        strategy=_strategy(precision),
        max_epochs=EPOCHS,
        gradient_clip_val=1.0,  # the strategy's full optimizer step: clipping and accumulation
        accumulate_grad_batches=2,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(aggregate, [("train", train), ("validation", validation)])
    assert train.batches == EPOCHS * 8 and validation.batches == EPOCHS * 4
    assert trainer.global_step == EPOCHS * 4 and aggregate.epoch == EPOCHS
    assert set(trainer.callback_metrics) == {"train/loss", "train/accuracy", "validation/loss", "validation/accuracy"}
    assert len(list((tmp_path / "checkpoints").glob("*.ckpt"))) == EPOCHS
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_validate_test_and_predict_make_no_sync_per_batch():
    torch.manual_seed(0)
    aggregate = Plain()
    trainer = Trainer(
        strategy=_strategy("bf16-mixed"),
        metrics=MulticlassAccuracy(num_classes=2, average="micro", validate_args=False),
        enable_progress_bar=False,
    )
    batches = SyncChecked(loader(samples=16))
    assert set(trainer.validate(aggregate, batches)) == {"loss", "MulticlassAccuracy"}
    assert set(trainer.test(aggregate, batches)) == {"loss", "MulticlassAccuracy"}
    predictions = trainer.predict(aggregate, batches)
    assert batches.batches == 3 * 4 and [p.device.type for p in predictions] == ["cuda"] * 4


def test_a_phase_longer_than_the_loss_folding_makes_no_sync():
    # the phase's batch losses are folded into one sum on the device every 1024 batches: that fold copies the batch
    # sizes to the GPU, which must not block the host
    torch.manual_seed(0)
    train = SyncChecked(loader(samples=4 * 1100))
    trainer = Trainer(strategy=_strategy("32-true"), enable_progress_bar=False)
    trainer.fit(Plain(), train)
    assert train.batches == 1100 and math.isfinite(trainer.callback_metrics["train/loss"])


def test_the_check_catches_a_consumer_that_reads_the_loss(tmp_path):
    # the control: a TensorBoardLogger told to write the loss every 2 steps reads it on the host at step 2
    train = SyncChecked(loader(samples=32))
    trainer = Trainer(
        callbacks=[TensorBoardLogger(save_dir=tmp_path, log_every_n_steps=2)],
        strategy=_strategy("32-true"),
        enable_progress_bar=False,
    )
    try:
        with pytest.raises(RuntimeError, match="synchronizing CUDA operation"):
            trainer.fit(Plain(), train)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert train.batches == 2


class Logging(Plain):
    """Logs two device tensors (one with step values, shown on the bar) and a Python number (reduced on the host)
    per training step, and a device tensor per evaluation step."""

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.log("double", loss * 2, on_step=True, prog_bar=True)
        self.log("largest", outputs.detach().max(), reduce_fx="max")
        self.log("samples", inputs.shape[0], reduce_fx="sum")
        return outputs, loss

    def evaluate(self, inputs, targets):
        outputs, loss = super().evaluate(inputs, targets)
        self.log("half", loss / 2)
        return outputs, loss


def test_logging_from_the_aggregate_makes_no_sync_per_batch():
    # 1100 batches: the logged values are folded on the device every 1024, as the losses are
    torch.manual_seed(0)
    train, validation = SyncChecked(loader(samples=4 * 1100)), SyncChecked(loader(samples=16, seed=1))
    trainer = Trainer(strategy=_strategy("32-true"), enable_progress_bar=False)
    trainer.fit(Logging(), [("train", train), ("validation", validation)])
    results = trainer.callback_metrics
    assert train.batches == 1100 and results["train/samples"] == 4 * 1100
    assert results["train/double"] == pytest.approx(2 * results["train/loss"], rel=1e-5)
    assert results["validation/half"] == pytest.approx(results["validation/loss"] / 2, rel=1e-5)
