"""The benchmark workloads: a network, its loss, its optimizer, and the batches every variant trains on.

Three workloads, each built the same way in every variant (same seed, same data, same order):

* ``mlp``: MNIST-shaped MLP, ``Linear(784, 256) -> ReLU -> Linear(256, 10)``, cross-entropy, SGD (lr 0.01).
  One epoch of 60000 samples, batch 64 (938 steps); validation on the 10000 test samples. The issue's headline
  case (Lightning's overhead on small models: its issues #6196, #8857, #1986, #19261).
* ``cnn``: a small CNN on the same images, ``Conv(1, 8, 3) -> ReLU -> MaxPool(2) -> Conv(8, 16, 3) -> ReLU ->
  MaxPool(2) -> Linear(784, 10)``, SGD with momentum. One epoch of the first 12800 samples, batch 64 (200 steps).
* ``lstm``: Lightning's own parity benchmark (``tests/parity_pytorch``, ``ParityModuleRNN`` on
  ``AverageDataset``): ``LSTM(10, 20, batch_first=True) -> Linear(20, 5)``, MSE, Adam (lr 0.02), 300 sequences
  of length 100, batch 30 (10 batches per epoch), 20 epochs (200 steps).

MNIST is read from ``../shared/data/mnist`` (relative to the repository root; ``--data-dir`` or
``TORCHSYSTEM_BENCH_MNIST`` override it) with the example's IDX readers, when the four files are there; otherwise
random data of the same shape and dtype stands in (the timings hardly depend on the values). ``quick=True``
shrinks every workload (for a smoke run, not for numbers).

Batches are built once, before any timer starts, as a list of ``(inputs, targets)`` views on one contiguous
tensor; :class:`Batches` iterates it. So every variant times the training loop, not data loading, and sees the
batches in the same order. ``loader="dataloader"`` uses a ``torch.utils.data.DataLoader`` over a
``TensorDataset`` instead (``shuffle=False``), the way most scripts feed data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["WORKLOADS", "Batches", "Data", "Workload", "load", "mnist_dir"]

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the PyTorch examples' normalisation (examples/mnist/data.py)
DATA_SEED = 1234  # random stand-in data, and the LSTM's sequences
Loader = Literal["tensors", "dataloader"]


class Batches:
    """A re-iterable, sized sequence of pre-built batches: what every variant's loop iterates.

    Args:
        batches: ``(inputs, targets)`` pairs, in the order every variant sees them.
    """

    def __init__(self, batches: Sequence[tuple[Tensor, Tensor]]) -> None:
        self.batches = list(batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(frozen=True)
class Data:
    """A workload's loaders: ``train`` and ``validation`` iterables of ``(inputs, targets)`` batches."""

    train: Any
    validation: Any
    source: str  # "mnist" or "random" or "average-dataset"


@dataclass(frozen=True)
class Workload:
    """One benchmark case.

    Attributes:
        name: ``"mlp"``, ``"cnn"`` or ``"lstm"``.
        epochs: epochs per fit.
        batch_size: samples per batch.
        network: builds the network (call it right after ``torch.manual_seed``).
        criterion: builds the loss module.
        optimizer: builds the optimizer from the network's parameters.
        metric: builds the torchmetrics metric of the standard callback set.
        metric_name: the name the metric is reported under.
    """

    name: str
    epochs: int
    batch_size: int
    network: Callable[[], nn.Module]
    criterion: Callable[[], nn.Module]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    metric: Callable[[], Any]
    metric_name: str
    data: Callable[[bool, Loader, Path | None], Data]

    def steps(self, data: Data) -> int:
        """Training steps (batches) in one fit."""
        return self.epochs * len(data.train)


# -- networks -----------------------------------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )


class ParityRNN(nn.Module):
    """Lightning's ``ParityModuleRNN`` network: ``LSTM(10, 20) -> Linear(20, 5)`` applied to every time step.

    Shapes: inputs ``[batch, 100, 10] float32`` -> outputs ``[batch, 100, 5] float32``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(10, 20, batch_first=True)
        self.linear_out = nn.Linear(in_features=20, out_features=5)

    def forward(self, x: Tensor) -> Tensor:
        seq, _ = self.rnn(x)
        return self.linear_out(seq)  # type: ignore[no-any-return]


def _accuracy() -> Any:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=10, average="micro")


def _mse() -> Any:
    from torchmetrics import MeanSquaredError

    return MeanSquaredError()


# -- data -----------------------------------------------------------------------------------------------------


def mnist_dir(data_dir: Path | None = None) -> Path | None:
    """The MNIST folder when all four IDX files are in it, else ``None``.

    Args:
        data_dir: the folder to use; default ``$TORCHSYSTEM_BENCH_MNIST``, else ``<repo>/../shared/data/mnist``.
    """
    folder = data_dir or Path(os.environ.get("TORCHSYSTEM_BENCH_MNIST", REPO_ROOT.parent / "shared" / "data" / "mnist"))
    return folder if all((folder / name).is_file() for name in MNIST_FILES) else None


def _images(train: bool, count: int, data_dir: Path | None) -> tuple[Tensor, Tensor, str]:
    """``count`` MNIST images ``[count, 1, 28, 28] float32`` (normalised) and labels ``[count] int64``."""
    folder = mnist_dir(data_dir)
    if folder is not None:
        from examples.mnist.data import read_idx_images, read_idx_labels

        images_file, labels_file = MNIST_FILES[0:2] if train else MNIST_FILES[2:4]
        images = read_idx_images(folder / images_file)[:count]
        labels = read_idx_labels(folder / labels_file)[:count]
        inputs = images.unsqueeze(1).float()
        del images
        inputs.div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)  # in place: loading must not set the peak RSS
        return inputs, labels.long(), "mnist"
    generator = torch.Generator().manual_seed(DATA_SEED + int(train))
    inputs = torch.randn(count, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return inputs, labels, "random"


def _loader(inputs: Tensor, targets: Tensor, batch_size: int, loader: Loader) -> Any:
    if loader == "dataloader":
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=False)
    return Batches(list(zip(inputs.split(batch_size), targets.split(batch_size))))


def _mnist_data(train_count: int, val_count: int, flat: bool) -> Callable[[bool, Loader, Path | None], Data]:
    def build(quick: bool, loader: Loader, data_dir: Path | None) -> Data:
        n_train, n_val = (train_count // 10, val_count // 10) if quick else (train_count, val_count)
        x, y, source = _images(True, n_train, data_dir)
        vx, vy, _ = _images(False, n_val, data_dir)
        if flat:
            x, vx = x.reshape(len(x), 784), vx.reshape(len(vx), 784)
        return Data(_loader(x, y, 64, loader), _loader(vx, vy, 64, loader), source)

    return build


def _average_dataset(length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Lightning's ``AverageDataset``: ``[length, 100, 10]`` random sequences and ``[length, 100, 5]`` targets."""
    inputs = torch.randn(length, 100, 10, generator=generator)
    top, bottom = inputs.chunk(2, -1)
    return inputs, (top + bottom.roll(shifts=1, dims=-1)).contiguous()


def _lstm_data(quick: bool, loader: Loader, data_dir: Path | None) -> Data:
    generator = torch.Generator().manual_seed(DATA_SEED)
    x, y = _average_dataset(300, generator)
    vx, vy = _average_dataset(90, generator)
    return Data(_loader(x, y, 30, loader), _loader(vx, vy, 30, loader), "average-dataset")


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload(
        name="mlp",
        epochs=1,
        batch_size=64,
        network=_mlp,
        criterion=nn.CrossEntropyLoss,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
        metric=_accuracy,
        metric_name="accuracy",
        data=_mnist_data(60000, 10000, flat=True),
    ),
    "cnn": Workload(
        name="cnn",
        epochs=1,
        batch_size=64,
        network=_cnn,
        criterion=nn.CrossEntropyLoss,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        metric=_accuracy,
        metric_name="accuracy",
        data=_mnist_data(12800, 2560, flat=False),
    ),
    "lstm": Workload(
        name="lstm",
        epochs=20,
        batch_size=30,
        network=ParityRNN,
        criterion=nn.MSELoss,
        optimizer=lambda params: torch.optim.Adam(params, lr=0.02),
        metric=_mse,
        metric_name="mse",
        data=_lstm_data,
    ),
}


def load(name: str, quick: bool = False, loader: Loader = "tensors", data_dir: Path | None = None) -> tuple[Workload, Data]:
    """The workload ``name`` and its data (``quick``: fewer samples, or fewer epochs for the LSTM).

    Raises:
        KeyError: for an unknown workload, listing the known ones.
    """
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    workload = WORKLOADS[name]
    if quick and name == "lstm":
        workload = Workload(**{**workload.__dict__, "epochs": 3})
    return workload, workload.data(quick, loader, data_dir)
