"""The user's own images: an image folder and an .npz file, any number of classes, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsetool.data import DatasetError, content_fingerprint, geometry_of, load_dataset, require_available


def write_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (12, 10), mode: str = "L") -> None:
    """Write `count` images per class; class k's images are filled with the value 40 * k + image number."""
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            value = 40 * k + i
            Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(root / name / f"{i}.png")


def test_a_folder_loads_with_one_class_per_sub_folder_in_sorted_order(tmp_path):
    write_folder(tmp_path, {"cat": 10, "ant": 10, "bee": 10})
    splits = load_dataset("folder", root=tmp_path, test_fraction=0.2, val_fraction=0.2, calib_size=4)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (3, 1, (10, 12))
    assert sum(len(s.y) for s in (splits.train, splits.val, splits.test)) == 30 and len(splits.test.y) == 6
    x, y = splits.train.x, splits.train.y
    # Written cat, ant, bee (pixel values from 0, 40, 80); numbered sorted: ant 0, bee 1, cat 2.
    base = {0: 40, 1: 80, 2: 0}
    assert all(base[int(label)] <= round(255 * float(image.max())) < base[int(label)] + 10
               for image, label in zip(x, y, strict=True))
    assert geometry_of("folder", tmp_path) == (1, (10, 12), 3)


def test_colour_and_mixed_sizes_load_as_rgb_at_the_first_images_size(tmp_path):
    write_folder(tmp_path, {"a": 3, "b": 3}, size=(8, 8), mode="RGB")
    Image.new("RGB", (16, 12), (1, 2, 3)).save(tmp_path / "b" / "big.png")
    splits = load_dataset("folder", root=tmp_path, test_fraction=0.2, val_fraction=0.2, calib_size=2)
    assert (splits.in_channels, splits.image_size) == (3, (8, 8))
    assert geometry_of("folder", tmp_path)[0] == 3


def test_the_first_image_decides_channels_for_sizing_and_loading_alike(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    Image.new("RGB", (12, 10), (9, 200, 9)).save(tmp_path / "b" / "colour.png")
    splits = load_dataset("folder", root=tmp_path, test_fraction=0.2, val_fraction=0.2, calib_size=2)
    assert splits.in_channels == geometry_of("folder", tmp_path)[0] == 1


def test_sixteen_bit_images_are_refused_not_clipped(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(tmp_path / "b" / "deep.png")
    for check in (lambda: load_dataset("folder", root=tmp_path), lambda: require_available("folder", root=tmp_path)):
        with pytest.raises(DatasetError, match=r"deep.png: a I;16\S* image \(more than 8 bits per value\)"):
            check()


def test_a_missing_npz_is_a_one_line_error_for_the_key_too(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        content_fingerprint("npz", tmp_path / "gone.npz")


def test_an_npz_file_loads_its_labels_classes_and_optional_test_set(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 6, 7), dtype=np.uint8), np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    splits = load_dataset("npz", root=tmp_path / "d.npz", test_fraction=0.25, val_fraction=0.25, calib_size=3)
    assert (splits.num_classes, splits.in_channels, splits.image_size, len(splits.test.y)) == (4, 1, (6, 7), 10)
    assert geometry_of("npz", tmp_path / "d.npz") == (1, (6, 7), 4)
    x_test = rng.random((5, 3, 6, 7)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=rng.random((20, 3, 6, 7)).astype(np.float32), y=np.arange(20) % 5,
             x_test=x_test, y_test=np.arange(5))
    official = load_dataset("npz", root=tmp_path / "t.npz", val_fraction=0.2, calib_size=2)
    assert official.num_classes == 5 and official.in_channels == 3
    assert np.allclose(official.test.x.numpy(), x_test) and official.test.y.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("build, expected", [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "no images"),
    (lambda root: write_folder(root, {"only": 4}), "only one class \\('only'\\)"),
    (lambda root: (write_folder(root, {"a": 2, "b": 2}), (root / "b" / "x.png").write_bytes(b"junk")),
     "x.png: not a readable image"),
])
def test_bad_folders_are_one_line_errors_naming_the_path(tmp_path, build, expected):
    root = tmp_path / "images"
    build(root)
    with pytest.raises(DatasetError, match=expected) as info:
        load_dataset("folder", root=root)
    assert str(root) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("arrays, expected", [
    ({"x": np.zeros((4, 5, 5), np.uint8)}, "no array 'y'"),
    ({"x": np.zeros((4, 5), np.uint8), "y": np.arange(4)}, "must be \\(N, H, W\\) or \\(N, C, H, W\\)"),
    ({"x": np.zeros((4, 5, 5), np.int32), "y": np.arange(4)}, "uint8 \\(0..255\\) or float"),
    ({"x": np.full((4, 5, 5), 2.0), "y": np.arange(4)}, "must lie in \\[0, 1\\]"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.zeros(4, int)}, "only one class"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.arange(3)}, "4 images but y 3 labels"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": -np.arange(4)}, "labels 0..K-1"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.array([0, 2, 0, 2])}, "every class in y; missing \\[1\\]"),
    ({"x": np.zeros((2, 5, 5), np.uint8), "y": np.array([0, 10**9])}, "missing \\[1, 2, 3, 4, 5\\]"),
    ({"x": np.zeros((4, 5, 5), np.uint8), "y": np.arange(4) % 2, "x_test": np.zeros((1, 5, 5), np.uint8),
      "y_test": np.array([2])}, "y_test has label 2, beyond y's classes 0..1"),
])
def test_bad_npz_files_are_one_line_errors(tmp_path, arrays, expected):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DatasetError, match=expected):
        load_dataset("npz", root=tmp_path / "d.npz")
    with pytest.raises(DatasetError, match=expected):   # the cheap check before the store says the same
        require_available("npz", root=tmp_path / "d.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        load_dataset("npz", root=tmp_path / "junk.npz")


def test_the_fingerprint_follows_the_content_not_the_location(tmp_path):
    write_folder(tmp_path / "one", {"a": 2, "b": 2})
    write_folder(tmp_path / "two", {"a": 2, "b": 2})
    assert content_fingerprint("folder", tmp_path / "one") == content_fingerprint("folder", tmp_path / "two")
    Image.new("L", (12, 10), 200).save(tmp_path / "two" / "b" / "1.png")
    assert content_fingerprint("folder", tmp_path / "one") != content_fingerprint("folder", tmp_path / "two")
    assert content_fingerprint("digits", tmp_path) is None


def separable_npz(path: Path, classes: int = 4, per_class: int = 60) -> None:
    """Write 8x8 images whose bright quadrant-row says the class (an MLP learns it in an epoch or two)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 40, (classes * per_class, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(classes), per_class)
    for index, label in enumerate(y):
        x[index, 2 * label:2 * label + 2] = 250
    np.savez(path, x=x, y=y)


@pytest.mark.slow
def test_a_campaign_on_an_npz_data_set_with_four_classes(tmp_path, write_experiment):
    import json

    from click.testing import CliRunner

    from dsetool.cli import main
    from tests.conftest import TINY_EXPERIMENT

    separable_npz(tmp_path / "four.npz")
    path = write_experiment({**TINY_EXPERIMENT, "data": {"name": "npz", "root": str(tmp_path / "four.npz"),
                                                         "calib_size": 32},
                             "train": {"pretrain": {"epochs": 20, "batch_size": 32, "lr": 0.01},
                                       "qat": {"epochs": 2, "batch_size": 32}},
                             "faults": {"samples": 200, "inputs": 32}})
    result = CliRunner().invoke(main, ["inject", str(path), "--runs", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout.splitlines()[0])["metrics"]
    assert metrics["golden_agreement"] == 1.0 and metrics["faulty_inferences"] == 200
    assert metrics["quant_test_acc"] > 0.9   # four classes, not ten: chance would be 25 %
    exported = next((tmp_path / "runs").glob("train-qat/*/*/intmodel.json"))
    assert json.loads(exported.read_text())["num_classes"] == 4


def test_a_bad_folder_is_a_one_line_configuration_error_before_the_store(tmp_path, write_experiment):
    from click.testing import CliRunner

    from dsetool.cli import main

    write_folder(tmp_path / "images", {"only": 3})
    path = write_experiment({"name": "one-class", "data": {"name": "folder", "root": str(tmp_path / "images")}})
    result = CliRunner().invoke(main, ["sweep", str(path), "--runs", str(tmp_path / "runs")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and ": data: " in lines[0] and "only one class" in lines[0]
    assert not (tmp_path / "runs").exists()
