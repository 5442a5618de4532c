"""validate/test(ckpt_path=...) evaluate a checkpoint's weights, as Lightning's do."""

import pytest
import torch

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ModelCheckpoint


def test_test_with_best_loads_the_best_checkpoint_first(tmp_path):
    data = make_data()
    checkpoint = ModelCheckpoint(monitor="validation/loss", save_top_k=1)
    trainer = Trainer(callbacks=[checkpoint], max_epochs=3, default_root_dir=tmp_path, enable_progress_bar=False)
    torch.manual_seed(0)
    trainer.fit(Classifier(), [("train", data), ("validation", data)])
    saved = torch.load(checkpoint.best_model_path, weights_only=True)["aggregate"]["modules"]

    torch.manual_seed(1)
    fresh = Classifier()
    results = trainer.test(fresh, data, ckpt_path="best")
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in saved.items())
    assert results == trainer.test(fresh, data)


def test_validate_with_last_and_no_checkpoint_says_so(tmp_path):
    trainer = Trainer(callbacks=[ModelCheckpoint()], default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"Trainer.validate: ckpt_path='last', but there is no checkpoint yet"):
        trainer.validate(Classifier(), make_data(), ckpt_path="last")
