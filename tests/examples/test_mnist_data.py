"""Tests for examples/mnist/data.py: IDX parsing, digits split, checksum-verified download (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.mnist import data
from examples.mnist.data import (
    IDX_FILES,
    SHA256,
    ChecksumMismatchError,
    DownloadError,
    download,
    load_dataset,
    read_idx_images,
    read_idx_labels,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
ALL_FILES = (*IDX_FILES["train"], *IDX_FILES["test"])

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "mnist").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir(),
    reason=f"real IDX files not found at {SHARED_DATA} (<repo>/../shared/data/{{mnist,fashion-mnist}})",
)


def _idx_bytes(magic: int, shape: tuple[int, ...], payload: bytes | None = None) -> bytes:
    count = 1
    for size in shape:
        count *= size
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in shape)
    return header + (bytes(i % 256 for i in range(count)) if payload is None else payload)


def _write(path: Path, content: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def _write_idx_dataset(folder: Path, n_train: int = 6, n_test: int = 4) -> None:
    """A tiny fake MNIST layout: train/test images [N, 28, 28] and labels [N] in 0..9, gzip-compressed."""
    for (images, labels), n in zip((IDX_FILES["train"], IDX_FILES["test"]), (n_train, n_test)):
        _write(folder / images, _idx_bytes(0x803, (n, 28, 28)), compress=True)
        _write(folder / labels, _idx_bytes(0x801, (n,), bytes(i % 10 for i in range(n))), compress=True)


# ---------------------------------------------------------------- IDX parsing: synthetic files


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    images = read_idx_images(_write(tmp_path / "images", _idx_bytes(0x803, (3, 2, 5)), compress))
    labels = read_idx_labels(_write(tmp_path / "labels", _idx_bytes(0x801, (3,), b"\x07\x00\x09"), compress))

    assert images.dtype == torch.uint8 and images.shape == (3, 2, 5)
    assert torch.equal(images.flatten(), torch.arange(30, dtype=torch.uint8))
    assert torch.equal(labels, torch.tensor([7, 0, 9], dtype=torch.uint8))


def test_bad_magic_names_file_and_both_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels-as-images.gz", _idx_bytes(0x801, (3,)), compress=True)

    with pytest.raises(ValueError, match=r"labels-as-images\.gz.*expected magic number 0x00000803, found 0x00000801"):
        read_idx_images(path)


@pytest.mark.parametrize(
    ("kept_bytes", "match"),
    [
        (16 + 3135, r"header shape \[4, 28, 28\] needs 3136 bytes of data, found 3135 \(truncated\)"),
        (10, r"truncated header, expected 16 bytes, found 10"),
        (3, r"3 bytes, too short for the 4-byte magic number"),
    ],
    ids=["data", "header", "magic"],
)
def test_truncated_file(tmp_path: Path, kept_bytes: int, match: str) -> None:
    content = _idx_bytes(0x803, (4, 28, 28))
    path = _write(tmp_path / "short.gz", content[:kept_bytes], compress=True)

    with pytest.raises(ValueError, match=r"short\.gz.*" + match):
        read_idx_images(path)


def test_trailing_bytes_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "long", _idx_bytes(0x801, (3,)) + b"\x00", compress=False)

    with pytest.raises(ValueError, match=r"needs 3 bytes of data, found 4 \(trailing bytes\)"):
        read_idx_labels(path)


def test_corrupt_gzip_is_value_error(tmp_path: Path) -> None:
    packed = gzip.compress(_idx_bytes(0x801, (100,)))
    path = tmp_path / "broken.gz"
    path.write_bytes(packed[: len(packed) // 2])

    with pytest.raises(ValueError, match=r"broken\.gz.*corrupt gzip"):
        read_idx_labels(path)


def test_count_mismatch_between_images_and_labels(tmp_path: Path) -> None:
    _write_idx_dataset(tmp_path)
    _write(tmp_path / IDX_FILES["test"][1], _idx_bytes(0x801, (5,), bytes(5)), compress=True)

    with pytest.raises(ValueError, match=r"holds 4 images but .*t10k-labels-idx1-ubyte\.gz holds 5 labels"):
        load_dataset("mnist", tmp_path)


def test_load_synthetic_idx_shapes_dtypes_and_normalization(tmp_path: Path) -> None:
    _write_idx_dataset(tmp_path)
    # An uncompressed file is accepted under the name without .gz.
    raw = tmp_path / IDX_FILES["train"][0]
    (tmp_path / raw.name.removesuffix(".gz")).write_bytes(gzip.decompress(raw.read_bytes()))
    raw.unlink()

    train, test = load_dataset("mnist", tmp_path)

    images, labels = train.tensors
    assert images.shape == (6, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (6,) and labels.dtype == torch.int64
    assert len(test) == 4
    mean, std = data.NORMALIZATION["mnist"]
    expected = (torch.arange(6 * 784) % 256).to(torch.float32).div(255.0).sub(mean).div(std).reshape(6, 1, 28, 28)
    torch.testing.assert_close(images, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(labels, torch.tensor([0, 1, 2, 3, 4, 5]))


# ---------------------------------------------------------------- load_dataset: argument errors


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar10'.*'digits', 'mnist', 'fashion-mnist'"):
        load_dataset("cifar10", None)  # type: ignore[arg-type]


def test_idx_dataset_needs_data_dir() -> None:
    with pytest.raises(ValueError, match=r"'mnist'.*data_dir"):
        load_dataset("mnist", None)


def test_missing_files_are_named_with_the_fix(tmp_path: Path) -> None:
    _write_idx_dataset(tmp_path)
    (tmp_path / IDX_FILES["test"][0]).unlink()
    (tmp_path / IDX_FILES["train"][1]).unlink()

    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("fashion-mnist", tmp_path)

    message = str(caught.value)
    assert "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in message
    assert "train-images" not in message and "t10k-labels" not in message
    assert "--download" in message and "--data-dir" in message


# ---------------------------------------------------------------- real data


@requires_shared_data
@pytest.mark.parametrize(
    ("name", "first_label", "histogram"),
    [
        ("mnist", 7, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
        ("fashion-mnist", 9, [1000] * 10),
    ],
    ids=["mnist", "fashion-mnist"],
)
def test_real_test_split(name: str, first_label: int, histogram: list[int]) -> None:
    folder = SHARED_DATA / name
    images = read_idx_images(folder / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_labels(folder / "t10k-labels-idx1-ubyte.gz")

    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.uint8
    assert int(labels[0]) == first_label
    assert torch.bincount(labels.long(), minlength=10).tolist() == histogram
    assert sum(histogram) == 10000


@requires_shared_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_train_split_is_standardised(name: str) -> None:
    train, test = load_dataset(name, SHARED_DATA / name)  # type: ignore[arg-type]

    images, labels = train.tensors
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and len(test) == 10000
    assert torch.bincount(labels, minlength=10).sum() == 60000
    # NORMALIZATION holds the training set's own pixel mean and std, rounded to 4 digits.
    torch.testing.assert_close(images.mean(dtype=torch.float64).item(), 0.0, rtol=0, atol=1e-3)
    torch.testing.assert_close(images.std().item(), 1.0, rtol=0, atol=1e-3)


@requires_shared_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_pinned_digests_match_sha256sums(name: str) -> None:
    lines = (SHARED_DATA / name / "SHA256SUMS").read_text().split("\n")
    listed = {filename: digest for digest, filename in (line.split() for line in lines if line.strip())}

    assert listed == SHA256[name]


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_deterministic_split() -> None:
    pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn (extra 'examples')")
    train, test = load_dataset("digits", None)
    again_train, again_test = load_dataset("digits", None)

    images, labels = train.tensors
    assert images.shape == (1500, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1500,) and labels.dtype == torch.int64
    assert test.tensors[0].shape == (297, 1, 8, 8)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    for first, second in zip((*train.tensors, *test.tensors), (*again_train.tensors, *again_test.tensors)):
        assert torch.equal(first, second)
    # Stratified: every class is in the test split in roughly its share (about 30 of 297 each).
    assert torch.bincount(test.tensors[1], minlength=10).min() >= 28
    # Train + test is exactly sklearn's 1797 samples (pixel values 0..16, scaled by 1/16), each used once.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    split = torch.cat([images, test.tensors[0]]).reshape(-1, 64).mul(16).round().to(torch.int64)
    split_labels = torch.cat([labels, test.tensors[1]])
    ours = sorted(zip(map(tuple, split.tolist()), split_labels.tolist()))
    reference = sorted(zip(map(tuple, bunch.images.reshape(-1, 64).astype(int).tolist()), bunch.target.tolist()))
    assert ours == reference


# ---------------------------------------------------------------- download, with urlopen faked


class _FakeOpener:
    """Stands in for urllib.request.urlopen: serves files from a folder, or fails, and records each URL."""

    def __init__(self, source: Path | None, corrupt: bool = False, fail_hosts: tuple[str, ...] = ()) -> None:
        self.source = source
        self.corrupt = corrupt
        self.fail_hosts = fail_hosts
        self.urls: list[str] = []

    def __call__(self, request: urllib.request.Request | str, timeout: float | None = None) -> Any:
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        self.urls.append(url)
        if self.source is None or any(host in url for host in self.fail_hosts):
            raise urllib.error.URLError(f"no network in tests ({url})")
        payload = (self.source / url.rsplit("/", 1)[1]).read_bytes()
        if self.corrupt:
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        return io.BytesIO(payload)


@requires_shared_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_download_fetches_verifies_and_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    opener = _FakeOpener(SHARED_DATA / name)
    monkeypatch.setattr(urllib.request, "urlopen", opener)

    paths = download(name, tmp_path / "new")  # type: ignore[arg-type]

    assert [path.name for path in paths] == list(ALL_FILES)
    assert opener.urls == [data.MIRRORS[name][0] + filename for filename in ALL_FILES]
    assert sorted(path.name for path in (tmp_path / "new").iterdir()) == sorted(ALL_FILES)
    for path in paths:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[name][path.name]


@requires_shared_data
def test_download_falls_back_to_next_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opener = _FakeOpener(SHARED_DATA / "mnist", fail_hosts=("ossci-datasets",))
    monkeypatch.setattr(urllib.request, "urlopen", opener)

    download("mnist", tmp_path)

    assert len(opener.urls) == 8
    assert all("yann.lecun.com" in url for url in opener.urls[1::2])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(ALL_FILES)


@requires_shared_data
def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", _FakeOpener(SHARED_DATA / "mnist", corrupt=True))

    with pytest.raises(ChecksumMismatchError) as caught:
        download("mnist", tmp_path)

    message = str(caught.value)
    expected = SHA256["mnist"]["train-images-idx3-ubyte.gz"]
    corrupted = bytearray((SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    corrupted[-1] ^= 0xFF
    actual = hashlib.sha256(corrupted).hexdigest()
    assert "train-images-idx3-ubyte.gz" in message
    assert f"expected SHA256 {expected}, got {actual}" in message
    assert list(tmp_path.iterdir()) == []


def test_network_failure_is_download_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urllib.request, "urlopen", _FakeOpener(None))

    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte\.gz for fashion-mnist.*no network in tests"):
        download("fashion-mnist", tmp_path)

    assert list(tmp_path.iterdir()) == []


@requires_shared_data
def test_verified_files_are_not_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for filename in ALL_FILES:
        shutil.copy(SHARED_DATA / "mnist" / filename, tmp_path / filename)
    opener = _FakeOpener(None)  # any fetch would fail
    monkeypatch.setattr(urllib.request, "urlopen", opener)

    train, test = load_dataset("mnist", tmp_path, download=True)

    assert opener.urls == []
    assert len(train) == 60000 and len(test) == 10000


@requires_shared_data
def test_bad_existing_file_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for filename in ALL_FILES:
        shutil.copy(SHARED_DATA / "mnist" / filename, tmp_path / filename)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the real file")
    opener = _FakeOpener(SHARED_DATA / "mnist")
    monkeypatch.setattr(urllib.request, "urlopen", opener)

    with pytest.warns(UserWarning, match=r"t10k-labels-idx1-ubyte\.gz has SHA256 .*downloading it again"):
        download("mnist", tmp_path)

    assert opener.urls == [data.MIRRORS["mnist"][0] + "t10k-labels-idx1-ubyte.gz"]
    assert hashlib.sha256((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest() == SHA256["mnist"][
        "t10k-labels-idx1-ubyte.gz"
    ]


def test_download_rejects_digits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'digits' has no IDX files.*'fashion-mnist', 'mnist'"):
        download("digits", tmp_path)  # type: ignore[arg-type]
