"""Tests for dsetool.data: split rules on the bundled digits, our readers on tiny synthetic files."""

from __future__ import annotations

import gzip
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from dsetool.data import DATASETS, DatasetError, DataSplits, Split, load_dataset

IDX_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def rows(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> list[bytes]:
    """Return one sortable byte string per sample (pixels then label), so splits compare as multisets."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.int64)
    return sorted(xi.tobytes() + yi.tobytes() for xi, yi in zip(x, y, strict=True))


def split_rows(split: Split) -> list[bytes]:
    """Return ``rows`` of a split."""
    return rows(split.x.numpy(), split.y.numpy())


def sizes(splits: DataSplits) -> tuple[int, int, int, int]:
    """Return the (train, val, test, calib) sample counts."""
    return len(splits.train.y), len(splits.val.y), len(splits.test.y), len(splits.calib.y)


def all_digits_rows() -> list[bytes]:
    """Return ``rows`` of every digits sample, scaled to [0, 1] as load_dataset does."""
    bunch = load_digits()
    return rows(bunch.images[:, None].astype(np.float32) / np.float32(16.0), bunch.target)


def assert_partition(parts: list[Split], whole: list[bytes]) -> None:
    """Assert that ``parts`` use every sample of ``whole`` exactly once (disjoint and covering)."""
    assert sorted(row for part in parts for row in split_rows(part)) == whole


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """Write ``array`` (uint8) in the IDX format: big-endian magic 0x0000080<ndim>, 32-bit dims, bytes."""
    data = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    if gz:
        path, data = path.with_name(path.name + ".gz"), gzip.compress(data)
    path.write_bytes(data)


def write_idx_set(root: Path, folder: str, gz: bool = False, n_train: int = 50, n_test: int = 20) -> dict:
    """Write a tiny MNIST-layout set (random pixels, 5 train samples per class) and return its arrays."""
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


def write_cifar(root: Path, per_batch: int = 10, n_test: int = 20) -> dict:
    """Write five tiny CIFAR-10 train batches and a test batch as python pickles; return their arrays."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(n) % 10)]
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"tiny"}, f)
        arrays[name] = (data, np.array(labels))
    return arrays


# --- digits ---------------------------------------------------------------------------------------


def test_digits_sizes_follow_fractions_of_all_samples() -> None:
    splits = load_dataset("digits")
    assert sizes(splits) == (1077, 360, 360, 256)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, (8, 8))
    assert splits.name == "digits"


def test_digits_tensors_have_documented_types_and_range() -> None:
    splits = load_dataset("digits")
    for split in (splits.train, splits.val, splits.test, splits.calib):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.shape[0] == split.y.shape[0]
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
    assert splits.train.x.max() == 1.0  # 16/16: the scale is 16, not 255


def test_digits_splits_partition_the_data_set() -> None:
    splits = load_dataset("digits")
    assert_partition([splits.train, splits.val, splits.test], all_digits_rows())


@settings(max_examples=15, deadline=None)
@given(
    val_fraction=st.floats(0.05, 0.45),
    test_fraction=st.floats(0.05, 0.45),
    seed=st.integers(0, 2**31 - 1),
)
def test_digits_splits_are_disjoint_stratified_and_sized(val_fraction, test_fraction, seed) -> None:
    splits = load_dataset("digits", val_fraction=val_fraction, test_fraction=test_fraction, split_seed=seed)
    assert len(splits.test.y) == math.ceil(round(test_fraction * 1797, 6))
    assert len(splits.val.y) == math.ceil(round(val_fraction * 1797, 6))
    assert_partition([splits.train, splits.val, splits.test], all_digits_rows())
    for split in (splits.train, splits.val, splits.test):
        assert set(split.y.tolist()) == set(range(10))


def test_digits_same_seed_gives_identical_splits() -> None:
    first, second = load_dataset("digits", split_seed=3), load_dataset("digits", split_seed=3)
    for name in ("train", "val", "test", "calib"):
        assert torch.equal(getattr(first, name).x, getattr(second, name).x)
        assert torch.equal(getattr(first, name).y, getattr(second, name).y)


def test_digits_other_seed_gives_other_splits() -> None:
    first, second = load_dataset("digits", split_seed=0), load_dataset("digits", split_seed=1)
    assert split_rows(first.test) != split_rows(second.test)
    assert split_rows(first.val) != split_rows(second.val)


def test_digits_resize_to_32() -> None:
    splits = load_dataset("digits", image_size=32)
    assert splits.train.x.shape == (1077, 1, 32, 32) and splits.image_size == (32, 32)
    assert splits.calib.x.shape == (256, 1, 32, 32)
    assert 0.0 <= splits.test.x.min() and splits.test.x.max() <= 1.0


def test_digits_native_image_size_is_not_resampled() -> None:
    assert torch.equal(load_dataset("digits", image_size=8).val.x, load_dataset("digits").val.x)


def test_max_train_subsets_train_only_and_calib_comes_from_train() -> None:
    full, small = load_dataset("digits"), load_dataset("digits", max_train=100, calib_size=30)
    assert len(small.train.y) == 100 and set(small.train.y.tolist()) == set(range(10))
    assert set(split_rows(small.train)) <= set(split_rows(full.train))
    assert torch.equal(small.val.x, full.val.x) and torch.equal(small.test.x, full.test.x)
    assert len(small.calib.y) == 30 and set(small.calib.y.tolist()) == set(range(10))
    assert set(split_rows(small.calib)) <= set(split_rows(small.train))


def test_calib_is_capped_at_train_size() -> None:
    splits = load_dataset("digits", max_train=40, calib_size=256)
    assert split_rows(splits.calib) == split_rows(splits.train)


def test_tiny_subsets_fall_back_to_an_unstratified_draw() -> None:
    splits = load_dataset("digits", max_train=5, calib_size=3, val_fraction=0.0)
    assert sizes(splits) == (5, 0, 360, 3)
    assert splits.val.x.shape == (0, 1, 8, 8)
    assert set(split_rows(splits.calib)) <= set(split_rows(splits.train))


def test_fractions_leaving_no_train_data_are_rejected() -> None:
    with pytest.raises(DatasetError, match=r"^val_fraction and test_fraction must be in \[0, 1\), not 1\.5$"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(DatasetError, match=r"no training samples left: 1797 samples, of which 1079 test and 718 "
                                           r"validation .* lower val_fraction \(0.6\) or test_fraction \(0.6\)"):
        load_dataset("digits", val_fraction=0.6, test_fraction=0.6)


# --- MNIST and Fashion-MNIST from IDX files --------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_sets_load_pixels_and_labels_as_written(tmp_path: Path, name: str, gz: bool) -> None:
    written = write_idx_set(tmp_path, IDX_FOLDERS[name], gz=gz)
    splits = load_dataset(name, root=tmp_path, calib_size=10)
    images, labels = written["t10k"]
    assert torch.equal(splits.test.x, torch.from_numpy(images[:, None]).float() / 255)
    assert splits.test.y.tolist() == labels.tolist()
    assert sizes(splits) == (40, 10, 20, 10)
    assert (splits.in_channels, splits.image_size, splits.name) == (1, (28, 28), name)
    train_images, train_labels = written["train"]
    assert_partition([splits.train, splits.val], rows(train_images[:, None] / np.float32(255), train_labels))
    assert splits.val.y.bincount(minlength=10).tolist() == [1] * 10


def test_idx_resize_keeps_range(tmp_path: Path) -> None:
    write_idx_set(tmp_path, "MNIST")
    splits = load_dataset("mnist", root=tmp_path, image_size=16)
    assert splits.test.x.shape == (20, 1, 16, 16) and splits.image_size == (16, 16)
    assert 0.0 <= splits.test.x.min() and splits.test.x.max() <= 1.0


def test_missing_files_say_where_and_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert message.startswith(f"mnist: no data under {tmp_path / 'MNIST' / 'raw'} (expected train-images")
    assert "download" in message and "\n" not in message


def test_missing_cifar_mentions_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^cifar10: no data under .*cifar-10-batches-py.*download"):
        load_dataset("cifar10", root=tmp_path)


def test_bad_idx_magic_names_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, "FashionMNIST")
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    expected = r"t10k-labels-idx1-ubyte: bad magic 0x00000803, expected 0x00000801"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("fashion-mnist", root=tmp_path)


def test_truncated_idx_reports_size_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path, "MNIST")
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: size mismatch"):
        load_dataset("mnist", root=tmp_path)


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, "MNIST", gz=True)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\.gz: unreadable or corrupt \("):
        load_dataset("mnist", root=tmp_path)


def test_download_fetches_through_torchvision_then_parses(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_idx_set(Path(root), "MNIST")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    assert len(load_dataset("mnist", root=tmp_path, download=True).test.y) == 20
    assert len(load_dataset("mnist", root=tmp_path, download=True).test.y) == 20  # files present: no fetch
    assert calls == [(str(tmp_path), True)]


# --- CIFAR-10 from python pickles ------------------------------------------------------------------


def test_cifar_rows_are_red_then_green_then_blue(tmp_path: Path) -> None:
    written = write_cifar(tmp_path)
    splits = load_dataset("cifar10", root=tmp_path, calib_size=10)
    data, labels = written["test_batch"]
    assert splits.test.y.tolist() == labels.tolist()
    for channel in range(3):
        plane = data[:, channel * 1024 : (channel + 1) * 1024].reshape(-1, 32, 32)
        assert torch.equal(splits.test.x[:, channel], torch.from_numpy(plane).float() / 255)
    assert (splits.in_channels, splits.image_size) == (3, (32, 32))
    assert sizes(splits) == (40, 10, 20, 10)
    train = [written[f"data_batch_{i}"] for i in range(1, 6)]
    x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32) / np.float32(255)
    assert_partition([splits.train, splits.val], rows(x, np.concatenate([lab for _, lab in train])))


def test_corrupt_cifar_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_3: not a readable CIFAR-10 batch"):
        load_dataset("cifar10", root=tmp_path)


# --- names and imports -----------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest() -> None:
    expected = r"^unknown data set 'mnsit'; did you mean 'mnist'\? valid names: digits, mnist, fashion-mnist"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("mnsit")


def test_every_listed_name_is_loadable_or_asks_for_download_or_for_files(tmp_path: Path) -> None:
    for name in DATASETS:
        try:
            assert isinstance(load_dataset(name, root=tmp_path, calib_size=0), DataSplits)
        except DatasetError as exc:
            assert "download" in str(exc) if name not in ("folder", "npz") else str(tmp_path) in str(exc)


def test_import_does_not_load_torch() -> None:
    code = "import sys, dsetool.data; sys.exit('torch' in sys.modules or 'sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
