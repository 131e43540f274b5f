"""A user's own images: an image folder (torchvision's `ImageFolder` layout) or a NumPy `.npz` file.

- `folder`: `data.root/<class>/<image>`; classes are the sub-folders that hold images, in sorted order (class
  index = position), as `torchvision.datasets.ImageFolder` numbers them. Images are read with Pillow; all
  grey-scale images give one channel, otherwise every image is converted to RGB. Every image is resized
  (bilinear) to the size of the first one, so a folder of mixed sizes loads; the model's input size is
  applied later, as for every data set.
- `npz`: `data.root` is the file; arrays `x` (N, H, W) or (N, C, H, W) with C 1 or 3, uint8 (0..255) or
  float (0..1), and `y` (N,) integer labels 0..K-1; optionally `x_test`, `y_test` as the official test set.

Neither has a fixed geometry, so `geometry` reads it cheaply (one image, or the array headers) for code that
must know shapes without loading the data (the synth stage's GEMMs), and `fingerprint` digests the
content, which goes into the store key: a changed file is a new model, a moved one is not.
Importing this module imports neither torch nor Pillow.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class UserDataError(Exception):
    """The user's data cannot be read; one line naming the file and the reason (raised as DatasetError)."""


@dataclass(frozen=True)
class Geometry:
    """Channels, native (height, width) and number of classes of a data set."""

    channels: int
    size: tuple[int, int]
    num_classes: int


@dataclass(frozen=True)
class Images:
    """Loaded arrays: images (N, C, H, W) with values in [0, scale], labels (N,); test arrays or None."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    scale: float
    num_classes: int


def class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """Return (class name, image files) for every sub-folder of `root` holding images, sorted by name."""
    if not root.is_dir():
        raise UserDataError(f"{root}: no such folder (data.root of a folder data set: one sub-folder per class)")
    classes = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes.append((folder.name, files))
    if not classes:
        raise UserDataError(f"{root}: no images (expected {root}/<class>/<image>, images ending in "
                            f"{', '.join(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise UserDataError(f"{root}: only one class ({classes[0][0]!r}); a classifier needs at least two")
    return classes


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as exc:
        raise UserDataError(f"{path}: not a readable image ({type(exc).__name__})") from None


def load_folder(root: Path) -> Images:
    """Load every image of an image folder as uint8 arrays (see the module docstring)."""
    from PIL import Image

    classes = class_folders(root)
    files = [(index, path) for index, (_, paths) in enumerate(classes) for path in paths]
    images = [_open(path) for _, path in files]
    grey = all(image.mode in GREY_MODES for image in images)
    size = images[0].size   # (width, height)
    arrays = []
    for image in images:
        image = image.convert("L" if grey else "RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        arrays.append(array[None] if grey else array.transpose(2, 0, 1))
    labels = np.array([index for index, _ in files], dtype=np.int64)
    return Images(np.stack(arrays), labels, None, None, 255.0, len(classes))


def load_npz(path: Path) -> Images:
    """Load `x`, `y` (and `x_test`, `y_test` when present) from a .npz file, checked."""
    arrays = _npz(path)
    x, y = _images(arrays, "x", path), _labels(arrays, "y", path)
    if len(x) != len(y):
        raise UserDataError(f"{path}: x has {len(x)} images but y {len(y)} labels")
    x_test = y_test = None
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserDataError(f"{path}: x_test and y_test come together (found only one)")
    if "x_test" in arrays:
        x_test, y_test = _images(arrays, "x_test", path), _labels(arrays, "y_test", path)
        if len(x_test) != len(y_test) or x_test.shape[1:] != x.shape[1:]:
            raise UserDataError(f"{path}: x_test {x_test.shape} and y_test {y_test.shape} must match each other "
                                f"and x's image shape {x.shape[1:]}")
    classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    if len(np.unique(y)) < 2:
        raise UserDataError(f"{path}: y has only one class; a classifier needs at least two")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return Images(x, y, x_test, y_test, scale, classes)


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserDataError(f"{path}: no such file (data.root of an npz data set is the .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserDataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def _images(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise UserDataError(f"{path}: no array {key!r} (expected x: images, y: labels)")
    x = arrays[key]
    _check_image_shape(x.shape, key, path)
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise UserDataError(f"{path}: {key} must be uint8 (0..255) or float (0..1), not {x.dtype}")
    if x.dtype.kind == "f" and x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise UserDataError(f"{path}: float {key} must lie in [0, 1]")
    return x[:, None] if x.ndim == 3 else x


def _check_image_shape(shape: tuple[int, ...], key: str, path: Path) -> None:
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[1] not in (1, 3)) or 0 in shape:
        raise UserDataError(f"{path}: {key} must be (N, H, W) or (N, C, H, W) with C 1 or 3, not {shape}")


def _labels(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise UserDataError(f"{path}: no array {key!r} (expected x: images, y: labels)")
    y = arrays[key]
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and y.min() < 0):
        raise UserDataError(f"{path}: {key} must be a 1-D array of integer labels 0..K-1, not {y.dtype} {y.shape}")
    return y.astype(np.int64)


def geometry(name: str, root: Path) -> Geometry:
    """Return a user data set's geometry without loading it (one image, or the arrays' headers)."""
    if name == "folder":
        classes = class_folders(root)
        image = _open(classes[0][1][0])
        channels = 1 if all(_open(paths[0]).mode in GREY_MODES for _, paths in classes) else 3
        return Geometry(channels, (image.size[1], image.size[0]), len(classes))
    shapes = _npz_shapes(root)
    x = shapes.get("x")
    if x is None or "y" not in shapes:
        raise UserDataError(f"{root}: arrays x and y expected, found {', '.join(sorted(shapes)) or 'none'}")
    _check_image_shape(x, "x", root)
    with np.load(root, allow_pickle=False) as npz:   # reads y alone
        y = _labels({"y": npz["y"]}, "y", root)
    return Geometry(1 if len(x) == 3 else x[1], (x[-2], x[-1]), int(y.max()) + 1 if y.size else 0)


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Return each array's shape from the .npz headers alone."""
    if not path.is_file():
        raise UserDataError(f"{path}: no such file (data.root of an npz data set is the .npz file)")
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for member in archive.namelist():
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, _ = read(handle)
                shapes[member.removesuffix(".npy")] = tuple(shape)
            return shapes
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserDataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None


def fingerprint(name: str, root: Path) -> str:
    """Return a sha256 of the data's content (file names relative to the folder, and bytes)."""
    digest = hashlib.sha256()
    if name == "npz":
        files = [("", root)]
    else:
        files = [(f"{label}/{path.relative_to(root / label)}", path) for label, paths in class_folders(root)
                 for path in paths]
    for relative, path in files:
        digest.update(relative.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
