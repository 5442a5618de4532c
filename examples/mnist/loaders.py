"""Data loaders for the examples: a seeded train/validation split of the training data, and the test data.

Shared by the Trainer application (:mod:`examples.mnist.cli`) and the services application
(:mod:`examples.services`), so both train on exactly the same samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, random_split

from examples.mnist.data import DatasetName, load_dataset

__all__ = ["Loaders", "make_loaders"]

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True, slots=True)
class Loaders:
    """The three loaders of a run. Each yields ``[images, labels]``: images [batch, 1, H, W] float32
    (28x28 for MNIST and Fashion-MNIST, 8x8 for digits), labels [batch] int64 in 0..9.

    Attributes:
        train: the training split less the validation samples, reshuffled every epoch.
        validation: the held-out part of the training split, in a fixed order.
        test: the test split, in a fixed order.
        features: pixels per image (784 or 64): the input size of a network on flattened images.
    """

    train: DataLoader[Batch]
    validation: DataLoader[Batch]
    test: DataLoader[Batch]
    features: int


def make_loaders(
    dataset: DatasetName,
    batch_size: int,
    validation_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Loaders:
    """Load ``dataset`` and split ``validation_fraction`` of its training split off for validation.

    The split is drawn with ``torch.utils.data.random_split`` and a generator seeded with ``seed``, so it is the
    same on every call. The training loader shuffles with torch's global generator (seed it for a reproducible
    order; ``Trainer(seed=...)`` does).

    Args:
        dataset: ``"digits"``, ``"mnist"`` or ``"fashion-mnist"`` (see :func:`examples.mnist.data.load_dataset`).
        batch_size: samples per batch (>= 1); the last batch of each loader may be smaller.
        validation_fraction: share of the training split held out, in ``(0, 1)``; at least one sample.
        seed: seeds the split.
        data_dir: the folder of the IDX files (MNIST and Fashion-MNIST only).
        download: fetch missing IDX files, checksum-verified.

    Returns:
        The :class:`Loaders`.

    Raises:
        ValueError: for a ``batch_size`` < 1 or a ``validation_fraction`` outside ``(0, 1)``, and as
            :func:`~examples.mnist.data.load_dataset`.
        FileNotFoundError: when IDX files are missing and ``download`` is False.
    """
    if batch_size < 1:
        raise ValueError(f"make_loaders: batch_size={batch_size!r} is invalid; valid: an int >= 1")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"make_loaders: validation_fraction={validation_fraction!r} is invalid; valid: a float in (0, 1)"
        )
    train, test = load_dataset(dataset, data_dir, download)
    held_out = max(1, round(len(train) * validation_fraction))
    generator = torch.Generator().manual_seed(seed)
    fit_split, validation_split = random_split(train, [len(train) - held_out, held_out], generator=generator)

    def loader(data: Dataset[Batch], shuffle: bool) -> DataLoader[Batch]:
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle)

    return Loaders(
        train=loader(fit_split, True),
        validation=loader(validation_split, False),
        test=loader(test, False),
        features=train.tensors[0][0].numel(),
    )
