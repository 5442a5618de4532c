"""The profilers on a GPU: the PyTorch profiler records the CUDA kernels of the active steps in its trace, and the
simple profiler's wrapping adds no host-device synchronisation per batch."""

from __future__ import annotations

import io
import json

import torch

from tests.gpu.helpers import Plain, SyncChecked, loader
from torchsystem_trainer import Trainer
from torchsystem_trainer.profilers import PyTorchProfiler, SimpleProfiler
from torchsystem_trainer.strategies import SingleDeviceStrategy


def test_the_pytorch_profiler_traces_cuda_kernels(tmp_path):
    torch.manual_seed(0)
    profiler = PyTorchProfiler(wait=1, warmup=1, active=2, file=io.StringIO())
    trainer = Trainer(strategy=SingleDeviceStrategy("cuda"), profiler=profiler, default_root_dir=tmp_path,
                      enable_progress_bar=False)
    trainer.fit(Plain(), loader(samples=32))
    (trace,) = profiler.traces
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(event.get("cat") == "kernel" for event in events)  # the GPU's side
    assert any(event.get("name") == "train: Plain.fit" for event in events)
    assert "Self CUDA" in profiler.report


def test_the_simple_profiler_makes_no_sync_per_batch():
    torch.manual_seed(0)
    train = SyncChecked(loader(samples=32))
    profiler = SimpleProfiler(file=io.StringIO())
    Trainer(strategy=SingleDeviceStrategy("cuda"), profiler=profiler, max_epochs=2, enable_progress_bar=False).fit(
        Plain(), train
    )
    assert train.batches == 16 and "train: Plain.fit" in profiler.report
