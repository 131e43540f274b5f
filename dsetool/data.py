"""Load image-classification data sets as deterministic, stratified tensor splits.

MNIST, Fashion-MNIST and CIFAR-10 are parsed by the small readers below, not by torchvision's dataset
classes, because those verify md5 sums that tiny test files (or trimmed laptop copies) cannot pass;
torchvision only fetches the files when ``download=True``. Importing this module imports neither torch
nor scikit-learn, so the CLI starts at once.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import torch

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10", "folder", "npz")
USER_DATASETS = ("folder", "npz")   # the user's own images: geometry and classes come from the files
# (channels, native height x width) of every set, for code that needs shapes without loading data
GEOMETRY: dict[str, tuple[int, tuple[int, int]]] = {
    "digits": (1, (8, 8)), "mnist": (1, (28, 28)), "fashion-mnist": (1, (28, 28)), "cifar10": (3, (32, 32))}

_Images = NDArray[Any]  # (N, C, H, W) integers in [0, scale]
_Labels = NDArray[np.int64]
_Index = NDArray[np.intp]
NUM_CLASSES = 10  # every built-in set has ten classes; a user's set has its own (`geometry_of`)
_NUM_CLASSES = NUM_CLASSES
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


class DatasetError(Exception):
    """A data set cannot be loaded; the message is one line meant for the user (CLI exit code 2)."""


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 (N,) class indices."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class DataSplits:
    """Disjoint train/val/test splits plus ``calib``, a subset of ``train`` for post-training quantization."""

    train: Split
    val: Split
    test: Split
    calib: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    name: str


@dataclass(frozen=True)
class _Raw:
    """Native-resolution arrays before splitting; ``x_test`` is None when there is no official test set."""

    x_train: _Images
    y_train: _Labels
    x_test: _Images | None
    y_test: _Labels | None
    scale: float  # the value of a white pixel
    num_classes: int = NUM_CLASSES


def load_dataset(
    name: str,
    *,
    root: str | Path = "data",
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    calib_size: int = 256,
    max_train: int = 0,
    split_seed: int = 0,
) -> DataSplits:
    """Load data set ``name`` and split it deterministically by ``split_seed``, stratified by class.

    - ``digits`` (no official test set): test = ceil(test_fraction * N) of all N samples, then
      val = ceil(val_fraction * N) from the remainder: both fractions are of ALL samples; train is the rest.
    - ``folder`` and ``npz`` (the user's images under ``root``, see `dsetool.userdata`): as digits, unless the
      .npz file has ``x_test`` / ``y_test``, which are then the official test set.
    - other sets: test = the official test set; val = ceil(val_fraction * N_train) of the official train
      set; train is the rest and ``test_fraction`` is ignored.
    - ``max_train > 0`` then keeps a subset of that many train samples (val and test are unchanged);
      ``calib`` is a subset of the final train split of size min(calib_size, len(train)).

    train, val and test are disjoint; calib is a subset of train. ``image_size`` resizes bilinearly to a
    square; None keeps the native size. Raises DatasetError for unknown names, missing or corrupt files,
    fractions outside [0, 1) and splits that leave no training data.
    """
    loader = _LOADERS.get(name)
    if loader is None:
        raise _unknown_name(name)
    raw = loader(Path(root), download)
    parts = _split(raw, val_fraction, test_fraction, max_train, calib_size, split_seed)
    splits = {key: _to_split(x, y, raw.scale, image_size) for key, (x, y) in parts.items()}
    _, channels, height, width = splits["train"].x.shape
    size = (height, width)
    return DataSplits(**splits, num_classes=raw.num_classes, in_channels=channels, image_size=size, name=name)


def _unknown_name(name: str) -> DatasetError:
    close = difflib.get_close_matches(name.lower(), DATASETS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DatasetError(f"unknown data set {name!r}; {hint}valid names: {', '.join(DATASETS)}")


def _split(
    raw: _Raw, val_fraction: float, test_fraction: float, max_train: int, calib_size: int, seed: int
) -> dict[str, tuple[_Images, _Labels]]:
    """Return {"train", "val", "test", "calib"} -> (x, y) arrays, following load_dataset's size rules."""
    x, y, n_all = raw.x_train, raw.y_train, len(raw.y_train)
    if raw.x_test is None or raw.y_test is None:
        rest, test = _take(y, _count(test_fraction, n_all), seed)
        x_test, y_test, x, y = x[test], y[test], x[rest], y[rest]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    train, val = _take(y, _count(val_fraction, n_all), seed)
    if max_train > 0:
        train = train[_take(y[train], max_train, seed)[1]]
    if len(train) == 0:
        raise DatasetError(f"no training samples left: {n_all} samples, of which {len(y_test)} test and {len(val)} "
                           f"validation (each fraction rounds up to at least one); give more samples or lower "
                           f"val_fraction ({val_fraction}) or test_fraction ({test_fraction})")
    calib = train[_take(y[train], calib_size, seed)[1]]
    pairs = (x[train], y[train]), (x[val], y[val]), (x_test, y_test), (x[calib], y[calib])
    return dict(zip(("train", "val", "test", "calib"), pairs, strict=True))


def _count(fraction: float, n: int) -> int:
    """Round ``fraction * n`` up as scikit-learn does, ignoring float noise such as 5.000000000000001."""
    if not 0 <= fraction < 1:
        raise DatasetError(f"val_fraction and test_fraction must be in [0, 1), not {fraction!r}")
    return math.ceil(round(fraction * n, 6))


def _take(y: _Labels, n_take: int, seed: int) -> tuple[_Index, _Index]:
    """Split indices of ``y`` into (rest, taken) with ``len(taken) == min(n_take, len(y))``, by class.

    Falls back to an unstratified (still seeded) draw when the data are too small to stratify: a class
    with a single sample, or fewer samples on either side than classes. Tiny laptop subsets still load.
    """
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    if n_take <= 0 or n_take >= len(y):
        return (index, index[:0]) if n_take <= 0 else (index[:0], index)
    counts = np.unique(y, return_counts=True)[1]
    strata = y if counts.min() >= 2 and min(n_take, len(y) - n_take) >= len(counts) else None
    rest, taken = train_test_split(index, test_size=n_take, stratify=strata, random_state=seed)
    return rest, taken


def _to_split(x: _Images, y: _Labels, scale: float, size: int | None) -> Split:
    """Convert integer images to float32 tensors in [0, 1], resized to ``size`` x ``size`` if given.

    Bilinear interpolation can overshoot [0, 1] by rounding, hence the clamp.
    """
    import torch
    import torch.nn.functional as F

    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(scale)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, (size, size), mode="bilinear", align_corners=False, antialias=False)
        images = images.clamp_(0.0, 1.0)
    return Split(images, torch.from_numpy(y.astype(np.int64)))


def _load_digits(root: Path, download: bool) -> _Raw:
    """Load scikit-learn's bundled 8x8 digits (values 0..16); ``root`` and ``download`` do not apply."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return _Raw(bunch.images.astype(np.uint8)[:, None], bunch.target.astype(np.int64), None, None, 16.0)


@dataclass(frozen=True)
class _Files:
    """Where a downloadable set lives under ``root``, and the torchvision class that can fetch it."""

    name: str
    subdir: str
    tv_class: str
    stems: tuple[str, ...]

    def locate(self, root: Path, download: bool) -> list[Path]:
        """Return the path of every file in ``stems``, fetching them first if any is missing and allowed."""
        folder = root / self.subdir
        if download and not all(_find(folder, stem) for stem in self.stems):
            self.fetch(root)
        return [_find(folder, stem) or self.missing(folder, stem) for stem in self.stems]

    def missing(self, folder: Path, stem: str) -> NoReturn:
        """Raise the error for an absent file, saying where we looked and how to get the data."""
        raise DatasetError(
            f"{self.name}: no data under {folder} (expected {stem}); set data.download: true on a machine "
            f"with network access, or copy the files there"
        )

    def fetch(self, root: Path) -> None:
        """Download through torchvision, which knows mirrors and checksums; we parse the files ourselves."""
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, self.tv_class)(root=str(root), train=True, download=True)
        except Exception as exc:  # network and archive errors come in many types; all mean "fetch failed"
            raise DatasetError(
                f"{self.name}: download into {root} failed: {' '.join(str(exc).split())}"
            ) from exc


def _find(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or else its ``.gz`` variant, if either exists."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _read_bytes(path: Path) -> bytes:
    """Return a file's bytes, gunzipping ``*.gz``; a damaged archive or unreadable file is a DatasetError."""
    try:
        return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut-off archive is an EOFError
        raise DatasetError(f"{path}: unreadable or corrupt ({exc})") from exc


def _load_idx(files: _Files, root: Path, download: bool) -> _Raw:
    """Load an MNIST-layout set: train and t10k image/label IDX files, plain or gzipped."""
    paths = files.locate(root, download)
    return _Raw(*_read_idx_pair(*paths[:2]), *_read_idx_pair(*paths[2:]), scale=255.0)


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[_Images, _Labels]:
    """Read matching image and label IDX files as ((N, 1, H, W) uint8, (N,) int64)."""
    images = _read_idx(images_path, _IDX_IMAGES)
    labels = _read_idx(labels_path, _IDX_LABELS).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"{labels_path}: {len(labels)} labels but {images_path.name} has {len(images)}")
    return images[:, None], _checked_labels(labels, labels_path)


def _read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """Parse an IDX file of unsigned bytes: big-endian magic, one 32-bit size per dimension, then data."""
    data = _read_bytes(path)
    found = int.from_bytes(data[:4], "big")
    if len(data) < 4 or found != magic:
        raise DatasetError(f"{path}: bad magic 0x{found:08x}, expected 0x{magic:08x} (not an IDX file?)")
    header = 4 + 4 * (magic & 0xFF)
    dims = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4))
    needed = header + math.prod(dims)
    if len(data) != needed:
        raise DatasetError(f"{path}: size mismatch, header {dims} needs {needed} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _checked_labels(labels: _Labels, path: Path) -> _Labels:
    """Return ``labels`` after checking that each is a class index, which training relies on."""
    if len(labels) and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DatasetError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return labels


def _load_cifar10(root: Path, download: bool) -> _Raw:
    """Load CIFAR-10 from its python pickles: five train batches, then the test batch."""
    paths = _CIFAR.locate(root, download)
    images, labels = zip(*(_read_cifar_batch(path) for path in paths[:-1]), strict=True)
    return _Raw(np.concatenate(images), np.concatenate(labels), *_read_cifar_batch(paths[-1]), scale=255.0)


def _read_cifar_batch(path: Path) -> tuple[_Images, _Labels]:
    """Read one batch pickle; each data row is 1024 red, then 1024 green, then 1024 blue bytes.

    Unpickling runs code from the file, as with torchvision; only load data sets you trust.
    """
    try:
        batch = pickle.loads(_read_bytes(path), encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # a damaged pickle can raise almost any exception type
        raise DatasetError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(f"{path}: size mismatch, data {data.shape} should be ({len(labels)}, 3072)")
    return data.reshape(-1, 3, 32, 32), _checked_labels(labels, path)


_IDX_STEMS = tuple(f"{s}-{kind}-ubyte" for s in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))
_CIFAR_STEMS = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
_FILES = {
    "mnist": _Files("mnist", "MNIST/raw", "MNIST", _IDX_STEMS),
    "fashion-mnist": _Files("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", _IDX_STEMS),
    "cifar10": _Files("cifar10", "cifar-10-batches-py", "CIFAR10", _CIFAR_STEMS),
}
_CIFAR = _FILES["cifar10"]
def _load_user(name: str, root: Path, download: bool) -> _Raw:
    """Load a folder or .npz data set (`dsetool.userdata`); ``download`` does not apply."""
    from dsetool import userdata

    try:
        images = userdata.load_folder(root) if name == "folder" else userdata.load_npz(root)
    except userdata.UserDataError as exc:
        raise DatasetError(str(exc)) from None
    return _Raw(images.x, images.y, images.x_test, images.y_test, images.scale, images.num_classes)


_LOADERS: dict[str, Callable[[Path, bool], _Raw]] = {
    "digits": _load_digits,
    "mnist": partial(_load_idx, _FILES["mnist"]),
    "fashion-mnist": partial(_load_idx, _FILES["fashion-mnist"]),
    "cifar10": _load_cifar10,
    "folder": partial(_load_user, "folder"),
    "npz": partial(_load_user, "npz"),
}


def geometry_of(name: str, root: str | Path = "data") -> tuple[int, tuple[int, int], int]:
    """Return (channels, native (height, width), number of classes) without loading the images: fixed for
    the built-in sets, read from the files (one image, or the .npz headers and labels) for a user's."""
    if name not in USER_DATASETS:
        channels, native = GEOMETRY[name]
        return channels, native, NUM_CLASSES
    return _user_geometry(name, str(root), _stamp(Path(root)))


def _stamp(path: Path) -> tuple[int, int]:
    """Return (mtime, size) of a path, (0, 0) when missing: what a cached answer about it depends on."""
    try:
        stat = path.stat()
    except OSError:
        return 0, 0
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=32)
def _user_geometry(name: str, root: str, stamp: tuple[int, int]) -> tuple[int, tuple[int, int], int]:
    """Return a user set's geometry, once per file state (every synth and PE-campaign key asks for it)."""
    from dsetool import userdata

    try:
        found = userdata.geometry(name, Path(root))
    except userdata.UserDataError as exc:
        raise DatasetError(str(exc)) from None
    return found.channels, found.size, found.num_classes


def content_fingerprint(name: str, root: str | Path) -> str | None:
    """Return the sha256 of a user data set's files (None for built-in sets, fixed by their name)."""
    if name not in USER_DATASETS:
        return None
    from dsetool import userdata

    try:
        return userdata.fingerprint(name, Path(root))
    except userdata.UserDataError as exc:
        raise DatasetError(str(exc)) from None


def require_available(name: str, *, root: str | Path = "data", download: bool = False) -> None:
    """Raise DatasetError unless `name` can be loaded without a download (or a download is allowed).

    Cheap (file existence only, no torch): the CLI calls it before touching the store.
    """
    if name not in _LOADERS:
        raise _unknown_name(name)
    if name in USER_DATASETS:
        from dsetool import userdata

        try:   # every image or array checked as loading would: a bad file fails here, not in a stage
            userdata.validate(name, Path(root))
        except userdata.UserDataError as exc:
            raise DatasetError(str(exc)) from None
        return
    files = _FILES.get(name)
    if files is None or download:
        return
    folder = Path(root) / files.subdir
    for stem in files.stems:
        if _find(folder, stem) is None:
            files.missing(folder, stem)
