"""The GPU tests: every test under ``tests/gpu`` gets the ``gpu`` marker, and is skipped with the reason where
``torch.cuda.is_available()`` is False (Lightning Fabric's ``RunIf(min_cuda_gpus=1)``). ``pytest -m gpu`` runs them
alone; on a machine without CUDA the whole suite stays green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# cuBLAS reads its workspace setting when its first handle is made: set before any test touches CUDA, so that
# deterministic=True (which sets it too, later) gives deterministic matrix products in this process.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

HERE = Path(__file__).resolve().parent
NO_CUDA = "CUDA is not available here (torch.cuda.is_available() is False): run on a GPU machine, `pytest -m gpu`"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be there when it looks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = torch.cuda.is_available()
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not cuda:
                item.add_marker(pytest.mark.skip(reason=NO_CUDA))


@pytest.fixture(autouse=True)
def _cuda_state() -> Iterator[None]:
    """Leave CUDA as a test found it: sync debugging off, the memory a test cached given back."""
    yield
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
