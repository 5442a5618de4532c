"""Datasets for the MNIST example: MNIST, Fashion-MNIST and scikit-learn's bundled digits.

Three datasets, all real data:

* ``"digits"`` (the default: it needs no files and no network): the 1797 8x8 handwritten digits bundled with
  scikit-learn (``sklearn.datasets.load_digits``), a copy of the test part of the UCI "Optical Recognition of
  Handwritten Digits" data set (Alpaydin & Kaynak, 1998; https://archive.ics.uci.edu/dataset/80).
* ``"mnist"``: LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition",
  Proc. IEEE 86(11), 1998. 60000 train / 10000 test 28x28 grey images.
* ``"fashion-mnist"``: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
  Learning Algorithms", arXiv:1708.07747, 2017. Same layout and file names as MNIST.

MNIST and Fashion-MNIST are read from their original IDX files (gzip-compressed or not) in a folder ``data_dir``;
:func:`download` fetches them from the canonical mirrors and checks each against a SHA256 digest pinned in
:data:`SHA256` before it moves the file into place.

IDX format (LeCun's page): a big-endian header, ``0x00 0x00 <dtype> <ndim>`` then one uint32 per dimension, then
the values in C order. Images are ``0x00000803`` (uint8, 3 dims: count, rows, cols); labels are ``0x00000801``
(uint8, 1 dim: count).
"""

from __future__ import annotations

import gzip
import http.client
import hashlib
import logging
import os
import tempfile
import urllib.request
import warnings
from pathlib import Path
from typing import Literal, get_args

import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DATASETS",
    "IDX_FILES",
    "MIRRORS",
    "NORMALIZATION",
    "SHA256",
    "ChecksumMismatchError",
    "DatasetName",
    "DownloadError",
    "download",
    "load_dataset",
    "read_idx_images",
    "read_idx_labels",
]

logger = logging.getLogger(__name__)

DatasetName = Literal["digits", "mnist", "fashion-mnist"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

# (images, labels) file names for each split; identical for MNIST and Fashion-MNIST.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# SHA256 of the canonical .gz release files (the ones the mirrors below serve).
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# Base URLs, tried in order. yann.lecun.com is the original MNIST host but often refuses automated downloads, so the
# PyTorch S3 copy (byte-identical, same digests) comes first.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# Per-pixel (mean, std) of the training images after scaling to [0, 1]. MNIST's pair is the one used by the PyTorch
# examples (pytorch/examples mnist/main.py); Fashion-MNIST's is computed the same way over its 60000 training images
# (0.28604, 0.35302). Both reproduce here from the files pinned in SHA256.
NORMALIZATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}

DIGITS_TEST_SIZE = 297  # 1797 = 1500 train + 297 test
DIGITS_SPLIT_SEED = 0

_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """No mirror could deliver a dataset file."""


class ChecksumMismatchError(DownloadError):
    """A downloaded file's SHA256 digest differs from the pinned one; the file was not kept."""


def read_idx_images(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX image file (``magic 0x00000803``), gzip-compressed or not.

    Args:
        path: The IDX file, e.g. ``t10k-images-idx3-ubyte.gz``. Compression is detected from the content.

    Returns:
        images: [N, rows, cols] uint8, raw pixel values 0..255 ([N, 28, 28] for MNIST and Fashion-MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not an IDX image file (wrong magic number) or its size does not match its header.
    """
    return _read_idx(Path(path), IDX_IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX label file (``magic 0x00000801``), gzip-compressed or not.

    Args:
        path: The IDX file, e.g. ``t10k-labels-idx1-ubyte.gz``. Compression is detected from the content.

    Returns:
        labels: [N] uint8.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not an IDX label file (wrong magic number) or its size does not match its header.
    """
    return _read_idx(Path(path), IDX_LABELS_MAGIC)


def _read_idx(path: Path, expected_magic: int) -> torch.Tensor:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"IDX file {path}: corrupt gzip stream ({error})") from error
    if len(raw) < 4:
        raise ValueError(f"IDX file {path}: {len(raw)} bytes, too short for the 4-byte magic number")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"IDX file {path}: expected magic number 0x{expected_magic:08x}, found 0x{magic:08x}")
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise ValueError(f"IDX file {path}: truncated header, expected {header_bytes} bytes, found {len(raw)}")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = 1
    for size in shape:
        count *= size
    found = len(raw) - header_bytes
    if found != count:
        raise ValueError(
            f"IDX file {path}: header shape {shape} needs {count} bytes of data, found {found}"
            + (" (truncated)" if found < count else " (trailing bytes)")
        )
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header_bytes, count=count)
    return data.reshape(shape)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_idx_name(name: str) -> None:
    if name not in SHA256:
        raise ValueError(f"dataset {name!r} has no IDX files to download; valid names: {sorted(SHA256)}")


def download(name: Literal["mnist", "fashion-mnist"], data_dir: str | os.PathLike[str]) -> list[Path]:
    """Fetch the four IDX files of ``name`` into ``data_dir``, each checked against its pinned SHA256.

    Each file is streamed into a temporary file in ``data_dir``, hashed, and moved into place with ``os.replace``
    only if its digest matches :data:`SHA256`, so ``data_dir`` never holds a partial or unverified file under the
    real name. Files already present with the right digest are not fetched again; a present file with the wrong
    digest is fetched again and replaced, with a warning. Mirrors in :data:`MIRRORS` are tried in order.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: Folder to hold the files; created if missing.

    Returns:
        The paths of the four verified ``.gz`` files, train images/labels then test images/labels.

    Raises:
        ValueError: ``name`` is not a downloadable dataset.
        ChecksumMismatchError: Every mirror failed and at least one served a file with the wrong digest; the
            message names the file, the expected and the actual digest.
        DownloadError: Every mirror failed for a file (network or HTTP errors), listed in the message.
    """
    return _download(name, Path(data_dir))


def _download(name: str, folder: Path) -> list[Path]:
    _check_idx_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename in (*IDX_FILES["train"], *IDX_FILES["test"]):
        target = folder / filename
        expected = SHA256[name][filename]
        if target.exists():
            actual = _sha256(target)
            if actual == expected:
                logger.debug("%s: %s already present and verified", name, target)
                paths.append(target)
                continue
            warnings.warn(
                f"{target} has SHA256 {actual}, expected {expected}; downloading it again",
                stacklevel=3,
            )
        _fetch_verified(name, filename, expected, target)
        paths.append(target)
    return paths


def _fetch_verified(name: str, filename: str, expected: str, target: Path) -> None:
    failures: list[str] = []
    mismatch: ChecksumMismatchError | None = None
    for base in MIRRORS[name]:
        url = base + filename
        logger.info("%s: downloading %s", name, url)
        try:
            _fetch_one(url, expected, target)
            return
        except ChecksumMismatchError as error:
            mismatch = mismatch or error
            failures.append(str(error))  # already names the URL
        except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {error}")
    if mismatch is not None:
        raise ChecksumMismatchError("; ".join(failures)) from mismatch
    raise DownloadError(f"could not download {filename} for {name}: " + "; ".join(failures))


def _fetch_one(url: str, expected: str, target: Path) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "torchsystem-trainer-examples"})
        with (
            os.fdopen(descriptor, "wb") as out,
            urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise ChecksumMismatchError(f"{target.name} from {url}: expected SHA256 {expected}, got {actual}")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _locate_idx_files(name: str, folder: Path) -> list[tuple[Path, Path]]:
    """(images, labels) paths for train then test; each the ``.gz`` file if present, else the uncompressed one."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for filename in (*IDX_FILES["train"], *IDX_FILES["test"]):
        candidates = [folder / filename, folder / filename.removesuffix(".gz")]
        present = [path for path in candidates if path.is_file()]
        if present:
            found[filename] = present[0]
        else:
            missing.append(filename)
    if missing:
        raise FileNotFoundError(
            f"{name}: missing in {folder}: {', '.join(missing)} (or the same names without .gz). "
            "Pass --download (download=True) to fetch them, or point --data-dir at a folder holding the IDX files."
        )
    return [(found[images], found[labels]) for images, labels in (IDX_FILES["train"], IDX_FILES["test"])]


def _load_idx_split(name: str, images_path: Path, labels_path: Path) -> TensorDataset:
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name}: {images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    mean, std = NORMALIZATION[name]
    pixels = images.unsqueeze(1).to(torch.float32).div_(255.0)
    pixels.sub_(mean).div_(std)
    return TensorDataset(pixels, labels.to(torch.int64))


def _load_digits() -> tuple[TensorDataset, TensorDataset]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn: pip install 'torchsystem-trainer[examples]'"
        ) from error
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    return (
        TensorDataset(images[train_index], labels[train_index]),
        TensorDataset(images[test_index], labels[test_index]),
    )


def load_dataset(
    name: DatasetName, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> tuple[TensorDataset, TensorDataset]:
    """Load the train and test splits of ``name`` as in-memory tensors.

    ``"digits"``: scikit-learn's 1797 bundled 8x8 digits (UCI optdigits), values 0..16 scaled to [0, 1] and not
    standardised. Split 1500 train / 297 test with ``sklearn.model_selection.train_test_split(test_size=297,
    stratify=labels, random_state=0)``: the same split on every call and machine, each class in the same
    proportion in both splits. ``data_dir`` and ``download`` are ignored.

    ``"mnist"`` / ``"fashion-mnist"``: the original IDX files in ``data_dir`` (``train-images-idx3-ubyte.gz``,
    ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``; each may also be
    uncompressed, without ``.gz``). Pixels are scaled to [0, 1] then standardised with the training-set mean and
    std in :data:`NORMALIZATION`. Files found are read as they are; only :func:`download` checks digests.

    Args:
        name: ``"digits"``, ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: Folder holding the four IDX files (or to download them into). Required unless ``name`` is
            ``"digits"``.
        download: Fetch missing files (checksum-verified, see :func:`download`) before loading.

    Returns:
        (train, test). Each is a ``TensorDataset`` of ``images, labels`` with
        images: [N, 1, 28, 28] float32 (MNIST, Fashion-MNIST; N = 60000 / 10000) or [N, 1, 8, 8] float32 (digits;
        N = 1500 / 297), and labels: [N] int64 in 0..9.

    Raises:
        ValueError: ``name`` is unknown (the message lists the valid names), ``data_dir`` is None for an IDX
            dataset, or an IDX file is malformed or its image and label counts differ.
        FileNotFoundError: Some IDX files are missing and ``download`` is False; the message names them.
        ImportError: ``name`` is ``"digits"`` and scikit-learn is not installed.
        DownloadError: ``download`` is True and a file could not be fetched or failed its checksum.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {list(DATASETS)}")
    if name == "digits":
        return _load_digits()
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} is read from IDX files: pass data_dir (--data-dir) naming the folder that holds them"
        )
    folder = Path(data_dir)
    if download:
        _download(name, folder)
    (train_images, train_labels), (test_images, test_labels) = _locate_idx_files(name, folder)
    train = _load_idx_split(name, train_images, train_labels)
    test = _load_idx_split(name, test_images, test_labels)
    return train, test
