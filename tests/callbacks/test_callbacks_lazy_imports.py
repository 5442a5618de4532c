"""Importing the package or its callbacks loads neither tensorboard, tqdm, rich nor torchmetrics (which brings scipy):
they load when a fit needs them.

``import torch`` itself imports ``tqdm`` (through ``torch.hub``), so for tqdm the claim is that nothing beyond
what torch already loaded comes in; tensorboard must not be loaded at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, sys
import torch
before = set(sys.modules)
heavy = ("tensorboard", "tqdm", "torch.utils.tensorboard", "torchmetrics", "scipy", "rich", "yaml")
report = {}
for module in ("torchsystem_trainer", "torchsystem_trainer.callbacks", "torchsystem_trainer.callbacks.tensorboard",
               "torchsystem_trainer.callbacks.progress_bar", "torchsystem_trainer.callbacks.rich_progress",
               "torchsystem_trainer.callbacks.csv_logger", "torchsystem_trainer.callbacks.console",
               "torchsystem_trainer.callbacks.model_summary", "torchsystem_trainer.trainer"):
    importlib.import_module(module)
    added = set(sys.modules) - before
    report[module] = sorted(m for m in added if any(m == h or m.startswith(h + ".") for h in heavy))
report["tensorboard loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "tensorboard")
print(json.dumps(report))
"""


def test_imports_load_neither_tensorboard_tqdm_nor_torchmetrics():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "torchsystem_trainer": [],
        "torchsystem_trainer.callbacks": [],
        "torchsystem_trainer.callbacks.tensorboard": [],
        "torchsystem_trainer.callbacks.progress_bar": [],
        "torchsystem_trainer.callbacks.rich_progress": [],
        "torchsystem_trainer.callbacks.csv_logger": [],
        "torchsystem_trainer.callbacks.console": [],
        "torchsystem_trainer.callbacks.model_summary": [],
        "torchsystem_trainer.trainer": [],
        "tensorboard loaded": [],
    }
