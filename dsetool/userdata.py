"""A user's own images: an image folder (torchvision's `ImageFolder` layout) or a NumPy `.npz` file.

- `folder`: `data.root/<class>/<image>`; classes are the sub-folders that hold images, in sorted order (class
  index = position), as `torchvision.datasets.ImageFolder` numbers them. Images are 8-bit, read with
  Pillow; the first image decides the channels (grey-scale: one, anything else: RGB) and the size, and every
  image is converted and resized (bilinear) to them, so a folder of mixed images loads; the model's input
  size is applied later, as for every data set. 16-bit and float images are refused (convert them).
- `npz`: `data.root` is the file; arrays `x` (N, H, W) or (N, C, H, W) with C 1 or 3, uint8 (0..255) or
  float (0..1), and `y` (N,) integer labels 0..K-1, each class present; optionally `x_test`, `y_test` as the test split.

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

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
GREY_MODES = ("1", "L", "LA")
WIDE_MODES = ("I", "F")   # and I;16*: more than 8 bits per value


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
    try:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if files:
                classes.append((folder.name, files))
    except OSError as exc:
        raise UserDataError(f"{root}: cannot list the folder ({exc.strerror or type(exc).__name__})") from None
    if not classes:
        raise UserDataError(f"{root}: no images (expected {root}/<class>/<image>, images ending in "
                            f"{', '.join(IMAGE_SUFFIXES)})")
    if len(classes) < 2:
        raise UserDataError(f"{root}: only one class ({classes[0][0]!r}); a classifier needs at least two")
    return classes


def _read(path: Path, grey: bool | None, size: tuple[int, int] | None) -> tuple[np.ndarray, bool, tuple[int, int]]:
    """Return an image as uint8 (C, H, W), converted to grey or RGB and resized to `size` (width, height);
    None: as the image is (the first image decides for all)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            _check_mode(image.mode, path)
            grey = image.mode in GREY_MODES if grey is None else grey
            size = image.size if size is None else size
            converted = image.convert("L" if grey else "RGB")
            if converted.size != size:
                converted = converted.resize(size, Image.Resampling.BILINEAR)
            array = np.asarray(converted, dtype=np.uint8)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise UserDataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return (array[None] if grey else array.transpose(2, 0, 1)), grey, size


def _check_mode(mode: str, path: Path) -> None:
    if mode in WIDE_MODES or mode.startswith("I;16"):
        raise UserDataError(f"{path}: a {mode} image (more than 8 bits per value); convert the images to 8 bits")


def load_folder(root: Path) -> Images:
    """Load every image of an image folder as uint8 arrays (see the module docstring)."""
    classes = class_folders(root)
    files = [(index, path) for index, (_, paths) in enumerate(classes) for path in paths]
    first, grey, size = _read(files[0][1], None, None)
    arrays = [first, *(_read(path, grey, size)[0] for _, path in files[1:])]
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
    classes = _classes(y, y_test, path)
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return Images(x, y, x_test, y_test, scale, classes)


def _classes(y: np.ndarray, y_test: np.ndarray | None, path: Path) -> int:
    """Return K for labels that are exactly 0..K-1 with every class in `y` (a class without training images
    would be an output the model never learns)."""
    present = np.unique(y)
    if len(present) < 2:
        raise UserDataError(f"{path}: y has only one class; a classifier needs at least two")
    if present[-1] != len(present) - 1:
        # The first missing labels lie below len(present) + 5 (present has only that many values).
        missing = np.setdiff1d(np.arange(min(int(present[-1]), len(present) + 5)), present)[:5].tolist()
        raise UserDataError(f"{path}: labels must be 0..K-1 with every class in y; missing {missing}")
    if y_test is not None and y_test.size and int(y_test.max()) >= len(present):
        raise UserDataError(f"{path}: y_test has label {int(y_test.max())}, beyond y's classes 0..{len(present) - 1}")
    return len(present)


def _npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Return the arrays of a .npz file (only `keys`, those present, when given)."""
    if not path.is_file():
        raise UserDataError(f"{path}: no such file (data.root of an npz data set is the .npz file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files if keys is None or key in keys}
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
    """Return a user data set's geometry without loading its images (the first image, or the arrays'
    headers and labels), by the same rules as loading."""
    if name == "folder":
        classes = class_folders(root)
        first, _, _ = _read(classes[0][1][0], None, None)
        return Geometry(first.shape[0], (first.shape[1], first.shape[2]), len(classes))
    shapes = _npz_shapes(root)
    x = shapes.get("x")
    if x is None or "y" not in shapes:
        raise UserDataError(f"{root}: arrays x and y expected, found {', '.join(sorted(shapes)) or 'none'}")
    _check_image_shape(x, "x", root)
    labels = _npz(root, ("y", "y_test"))
    y = _labels(labels, "y", root)
    y_test = _labels(labels, "y_test", root) if "y_test" in labels else None
    return Geometry(1 if len(x) == 3 else x[1], (x[-2], x[-1]), _classes(y, y_test, root))


def validate(name: str, root: Path) -> None:
    """Check a user data set as loading it would (every image's header, or every array), so a bad file is
    a configuration error before anything is computed or written."""
    if name == "npz":
        load_npz(root)
        return
    from PIL import Image, UnidentifiedImageError

    for _, paths in class_folders(root):
        for path in paths:
            try:
                with Image.open(path) as image:
                    mode = image.mode
            except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
                raise UserDataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
            _check_mode(mode, path)


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
    if name == "npz" and not root.is_file():
        raise UserDataError(f"{root}: no such file (data.root of an npz data set is the .npz file)")
    try:
        for relative, path in files:
            digest.update(relative.encode() + b"\0")
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    except OSError as exc:
        raise UserDataError(f"{exc.filename or root}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return digest.hexdigest()
