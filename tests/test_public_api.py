"""The package reaches into no private attribute of torch, torchmetrics or another module, except where no public
way exists: those few are listed here, each guarded so that a library that renames it fails loudly."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest
import torch
import torchmetrics
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import Classifier, make_data
from torchsystem_trainer import Trainer
from torchsystem_trainer.callbacks import Callback
from torchsystem_trainer.checkpoint import resume
from torchsystem_trainer.strategies import routing
from torchsystem_trainer.strategies.samplers import unshardable_reason
from torchsystem_trainer.trainer.results import PhaseResults, build_metrics, load_metric_states

ROOT = Path(__file__).resolve().parents[1] / "torchsystem_trainer"

GUARDED = {
    # (file, attribute): why there is no public way; each use is checked and fails naming the library's version
    ("checkpoint/resume.py", "_iterator"): "a persistent-workers DataLoader's iterator",
    ("checkpoint/resume.py", "_index_sampler"): "the index sampler a persistent iterator reuses",
    ("trainer/results.py", "_update_count"): "torchmetrics' update count has no setter",
    ("strategies/routing.py", "_remove_autograd_hooks"): "DDP's reducer hooks outlive an unwrapped module",
    ("strategies/optimizer_step.py", "_foreach_mul_"): "torch.optim's own multi-tensor kernel (with a fallback)",
    ("strategies/launchers.py", "_inheriting"): "the standard library's spawn check (skipped without it)",
    ("callbacks/tensorboard.py", "_get_file_writer"): "not yet replaced (the callbacks' branch)",
    ("tuner/snapshot.py", "_iterator"): "not yet guarded (the tuner's branch)",
    ("tracking/tracker.py", "_mapping"): "SQLAlchemy's documented public Row._mapping (underscore to avoid clashes)",
}


def _private_uses() -> set[tuple[str, str]]:
    """``(file, attribute)`` for every ``x._name`` and ``getattr(x, "_name")`` where ``x`` is not ``self``/``cls``."""
    found = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            base, name = None, None
            if isinstance(node, ast.Attribute):
                base, name = node.value, node.attr
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                base, name = node.args[0], node.args[1].value
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            found.add((path.relative_to(ROOT).as_posix(), name))
    return found


def test_only_the_guarded_private_attributes_are_used():
    uses = _private_uses()
    assert uses - set(GUARDED) == set()
    assert ("trainer/results.py", "_update_count") in uses  # the scanner sees what it should


def test_a_torchmetrics_without_the_update_count_fails_loudly():
    metrics = build_metrics(torchmetrics.Accuracy("multiclass", num_classes=2))
    results = PhaseResults(metrics.clone())
    results.update(torch.tensor(0.5), 4, torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    state = results.state_dict()["metrics"]
    target = metrics.clone()
    for metric in target.values(copy_state=False):
        del metric._update_count
    with pytest.raises(RuntimeError, match=rf"torchmetrics {re.escape(torchmetrics.__version__)}: .*_update_count"):
        load_metric_states(target, state)


def test_a_torch_without_the_reducer_hook_removal_fails_loudly():
    with pytest.raises(RuntimeError, match=rf"torch {re.escape(torch.__version__)}: .*_remove_autograd_hooks"):
        routing._remove_autograd_hooks(object())


def test_a_torch_without_the_persistent_iterator_fails_loudly():
    loader = DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)
    del loader.__dict__["_iterator"]
    expected = rf"torch {re.escape(torch.__version__)}: DataLoader has no attribute '_iterator'"
    with pytest.raises(RuntimeError, match=expected):
        resume._persistent_iterator(loader)


def test_metric_states_with_compute_groups_resume_exactly():
    """Precision and recall share their states (a compute group); saved after two batches and restored into a fresh
    clone, two more batches give exactly the uninterrupted results."""
    template = build_metrics(
        torchmetrics.MetricCollection(
            {
                "precision": torchmetrics.Precision("multiclass", num_classes=3, average="macro"),
                "recall": torchmetrics.Recall("multiclass", num_classes=3, average="macro"),
            }
        )
    )
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(4)
    ]
    whole, first = PhaseResults(template.clone()), PhaseResults(template.clone())
    for predictions, targets in batches:
        whole.update(torch.tensor(1.0), 8, predictions, targets)
    for predictions, targets in batches[:2]:
        first.update(torch.tensor(1.0), 8, predictions, targets)
    resumed = PhaseResults(template.clone())
    resumed.load_state_dict(first.state_dict())
    for predictions, targets in batches[2:]:
        resumed.update(torch.tensor(1.0), 8, predictions, targets)
    assert resumed.compute() == whole.compute()


class Scheduled(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)

    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


class LateScheduler(Callback):
    """Builds the aggregate's scheduler once its optimizer is bound (a scheduler made during the fit)."""

    def on_fit_started(self, event):
        aggregate = event.aggregate
        aggregate.scheduler = torch.optim.lr_scheduler.StepLR(aggregate.optimizer, step_size=1, gamma=0.5)


class LateScheduled(Classifier):
    def fit(self, inputs, targets):
        outputs, loss = super().fit(inputs, targets)
        self.scheduler.step()
        return outputs, loss


@pytest.mark.parametrize("built", ["before", "during"], ids=["scheduler-before-binding", "scheduler-during-fit"])
def test_bound_optimizers_raise_no_scheduler_order_warning(built):
    """torch's LRScheduler warns when it finds the optimizer's step replaced, or stepped before the optimizer; a
    bound step (here: gradient clipping) is neither, whether the scheduler was made before or after binding."""
    torch.manual_seed(0)
    aggregate = Scheduled() if built == "before" else LateScheduled()
    callbacks = [] if built == "before" else [LateScheduler()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(callbacks=callbacks, gradient_clip_val=1.0, enable_progress_bar=False).fit(aggregate, make_data())
    assert aggregate.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)


def test_a_random_sampler_with_its_own_number_of_samples_is_not_sharded():
    """Read through RandomSampler's public num_samples (it was its private _num_samples)."""
    dataset = TensorDataset(torch.zeros(8, 1))
    own = DataLoader(dataset, sampler=torch.utils.data.RandomSampler(dataset, num_samples=5))
    assert "num_samples" in unshardable_reason(own)
    assert unshardable_reason(DataLoader(dataset, shuffle=True)) is None
