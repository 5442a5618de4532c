"""ModelSummary: the table printed at a fit's start, and the Trainer's enable_model_summary."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import ModelSummary
from torchsystem_trainer.callbacks.model_summary import human_count, summarize


class Tower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 16)  # 16000
        self.out = nn.Linear(16, 1000, bias=False)
        self.out.weight = self.embed.weight  # tied: counted once
        self.norm = nn.LayerNorm(16)  # 32, frozen below
        for parameter in self.norm.parameters():
            parameter.requires_grad_(False)


class Model(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.tower = Tower()
        self.half = nn.Linear(10, 10).to(torch.float16)  # 110 parameters of 2 bytes


def test_the_table():
    model = Model()
    model.initialize("abc123")
    assert summarize(model) == "\n".join(
        [
            "Model (registry name Model, id abc123)",
            "  | Name      | Type             | Params | Trainable | Size (MB)",
            "-----------------------------------------------------------------",
            "0 | nn        | Linear           | 10     | 10        | 0.000",
            "1 | criterion | CrossEntropyLoss | 0      | 0         | 0.000",
            "2 | tower     | Tower            | 16.0 K | 16.0 K    | 0.064",
            "3 | half      | Linear           | 110    | 110       | 0.000",
            "-----------------------------------------------------------------",
            "16.1 K    Trainable params",
            "32        Non-trainable params",
            "16.2 K    Total params",
            "0.064     Total params size (MB)",
        ]
    )
    deeper = summarize(model, max_depth=2).splitlines()
    assert [line.split(" | ")[1].strip() for line in deeper[3:10]] == [
        "nn", "criterion", "tower", "tower.embed", "tower.out", "tower.norm", "half"
    ]
    assert deeper[8].startswith("5 | tower.norm  | LayerNorm        | 32     | 0 ")
    assert summarize(Classifier(), max_depth=0).splitlines()[0] == "Classifier (registry name Classifier, id not set)"
    assert summarize(Classifier(), max_depth=0).splitlines()[1] == "10        Trainable params"


def test_sizes_are_bytes_in_each_dtype():
    lines = summarize(Model()).splitlines()
    assert lines[-1] == f"{(16000 * 4 + 32 * 4 + 10 * 4 + 110 * 2) / 1e6:<10.3f}Total params size (MB)"


@pytest.mark.parametrize(
    "count, text", [(0, "0"), (999, "999"), (1000, "1.0 K"), (19010, "19.0 K"), (1_234_567, "1.2 M"),
                    (7_000_000_000, "7.0 B"), (2 * 10**15, "2000.0 T")],
)
def test_human_count(count, text):
    assert human_count(count) == text


def test_printed_at_fit_start_on_stderr_by_default(capfd):
    Trainer(max_epochs=1, enable_progress_bar=False, verbose=False).fit(Classifier(), make_data())
    captured = capfd.readouterr()
    assert captured.err == summarize(Classifier()) + "\n" and captured.out == ""


def test_enable_model_summary_false_prints_none_and_refuses_one(capfd):
    trainer = Trainer(max_epochs=1, enable_progress_bar=False, verbose=False, enable_model_summary=False)
    assert trainer.callbacks == []
    trainer.fit(Classifier(), make_data())
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError, match="enable_model_summary=False, but callbacks holds a ModelSummary"):
        Trainer(callbacks=[ModelSummary()], enable_model_summary=False)
    with pytest.raises(TypeError, match="Trainer: enable_model_summary='no' is invalid; valid: True or False"):
        Trainer(enable_model_summary="no")


def test_a_given_summary_replaces_the_default():
    file = io.StringIO()
    summary = ModelSummary(max_depth=2, file=file)
    trainer = Trainer(callbacks=[summary], max_epochs=1, enable_progress_bar=False, verbose=False)
    assert trainer.callbacks == [summary]
    trainer.fit(Model(), make_data())
    assert file.getvalue() == summary.summary + "\n" and "tower.embed" in summary.summary


@pytest.mark.parametrize("depth", [-1, 1.5, True], ids=["negative", "float", "bool"])
def test_invalid_max_depth(depth):
    with pytest.raises(ValueError, match=r"ModelSummary: max_depth=.* is invalid; valid: an int >= 0"):
        ModelSummary(max_depth=depth)


def test_it_runs_on_rank_zero_only():
    assert ModelSummary.rank_zero_only is True
