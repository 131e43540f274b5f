"""Median feature selection and anomalous feature suppression on requantized codes, along channels."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from dsetool.protect.schemes import SCHEMES, AnomalySuppression, MedianFilter, scheme

SHAPES = [(2, 7, 2, 3), (3, 10), (1, 6, 1, 1), (2, 1, 2, 2)]


def _random_codes(shape: tuple[int, ...], seed: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """Small integer codes with a few spikes, so that every rule has something to act on."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(-9 if signed else 0, 10, shape, generator=generator)
    spikes = torch.rand(shape, generator=generator) < 0.15
    return torch.where(spikes, codes * 16, codes).to(dtype)


def _per_position(codes: torch.Tensor) -> tuple[list[list[list[float]]], tuple[int, ...]]:
    """Return codes as [image][channel][position] lists, and the shape to rebuild them."""
    batch, channels = codes.shape[:2]
    return codes.reshape(batch, channels, -1).tolist(), tuple(codes.shape)


def _median_reference(codes: torch.Tensor, window: int, chunk: int) -> torch.Tensor:
    values, shape = _per_position(codes)
    half = window // 2
    out = []
    for image in values:
        channels = len(image)
        rows = []
        for c in range(channels):
            start = c - c % chunk
            end = min(start + chunk, channels)
            row = []
            for p in range(len(image[c])):
                taps = [image[n][p] if start <= n < end else 0.0 for n in range(c - half, c + half + 1)]
                row.append(sorted(taps)[half])
            rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=codes.dtype).reshape(shape)


def _afd_reference(codes: torch.Tensor, gamma: float, gates: int, action: str) -> torch.Tensor:
    values, shape = _per_position(codes)
    out = []
    for image in values:
        channels = len(image)
        rows = []
        for c in range(channels):
            neighbours = [(c + 1) % channels] if gates == 1 else [(c - 1) % channels, (c + 1) % channels]
            row = []
            for p, a in enumerate(image[c]):
                limits = [gamma * abs(image[n][p]) for n in neighbours]
                if all(abs(a) > limit for limit in limits):
                    a = 0.0 if action == "drop" else math.copysign(math.floor(max(limits)), a)
                row.append(a)
            rows.append(row)
        out.append(rows)
    return torch.tensor(out, dtype=codes.dtype).reshape(shape)


def _row(values: list[float]) -> torch.Tensor:
    """Return one image of a linear layer's output: (1, C)."""
    return torch.tensor([values])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("window", [3, 5])
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_median_matches_per_element_reference(
    shape: tuple[int, ...], seed: int, window: int, chunk: int, signed: bool
) -> None:
    codes = _random_codes(shape, seed, signed, torch.float32)
    assert torch.equal(MedianFilter(window, chunk)(codes), _median_reference(codes, window, chunk))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("gates", [1, 2])
@pytest.mark.parametrize("action", ["drop", "clip"])
@pytest.mark.parametrize("signed", [False, True])
def test_afd_matches_per_element_reference(
    shape: tuple[int, ...], seed: int, gamma: float, gates: int, action: str, signed: bool
) -> None:
    codes = _random_codes(shape, seed, signed, torch.float64)
    assert torch.equal(AnomalySuppression(gamma, gates, action)(codes), _afd_reference(codes, gamma, gates, action))


@pytest.mark.parametrize(
    "protection",
    [MedianFilter(3, 4), MedianFilter(5, 3), AnomalySuppression(2.0, 2, "clip"), AnomalySuppression(0.5, 1, "drop")],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 6, 3, 2), (4, 9)])
def test_shape_and_dtype_kept_and_input_untouched(
    protection: MedianFilter | AnomalySuppression, dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    codes = _random_codes(shape, 5, True, dtype)
    before = codes.clone()
    out = protection(codes)
    assert out.shape == codes.shape and out.dtype == dtype and out.device == codes.device
    assert torch.equal(codes, before) and out.data_ptr() != codes.data_ptr()
    assert not torch.equal(out, codes)   # the random spikes give every protection something to change


def test_median3_removes_a_spike_from_smooth_channels() -> None:
    assert MedianFilter(3, 8)(_row([1, 2, 9, 3, 4])).tolist() == [[1, 2, 3, 4, 3]]


def test_median5_removes_two_adjacent_spikes_that_median3_keeps() -> None:
    codes = _row([3, 3, 40, 40, 3, 3, 3])
    assert MedianFilter(5, 7)(codes).tolist() == [[3, 3, 3, 3, 3, 3, 3]]
    assert MedianFilter(3, 7)(codes).tolist() == [[3, 3, 40, 40, 3, 3, 3]]


def test_median_runs_along_channels_at_each_position_of_a_map() -> None:
    codes = torch.tensor([[[[5.0, 1.0]], [[90.0, 1.0]], [[5.0, 70.0]], [[6.0, 1.0]]]])   # (1, 4, 1, 2)
    out = MedianFilter(3, 4)(codes)
    assert out[0, :, 0, 0].tolist() == [5, 5, 6, 5] and out[0, :, 0, 1].tolist() == [1, 1, 1, 1]


def test_median_spike_at_a_chunk_edge_sees_the_zero_padding() -> None:
    # The 9 closes the first chunk: its window is (2, 9, 0), not (2, 9, 2) across the boundary.
    assert MedianFilter(3, 4)(_row([2, 2, 2, 9, 2, 2])).tolist() == [[2, 2, 2, 2, 2, 2]]
    # Chunks of two keep the 9s apart, so neither has a large neighbour; one chunk of four keeps both.
    assert MedianFilter(3, 2)(_row([1, 9, 9, 1])).tolist() == [[1, 1, 1, 1]]
    assert MedianFilter(3, 4)(_row([1, 9, 9, 1])).tolist() == [[1, 9, 9, 1]]


def test_median_chunk_no_wider_than_half_the_window_gives_zeros() -> None:
    codes = _row([4, -5, 6, 7, -8])
    assert MedianFilter(3, 1)(codes).tolist() == [[0, 0, 0, 0, 0]]
    assert MedianFilter(5, 2)(codes).tolist() == [[0, 0, 0, 0, 0]]


def test_afd_two_gates_drop_or_clip_an_isolated_spike() -> None:
    codes = _row([4, 5, 60, 6, 5])
    assert AnomalySuppression(2.0, 2, "drop")(codes).tolist() == [[4, 5, 0, 6, 5]]
    assert AnomalySuppression(2.0, 2, "clip")(codes).tolist() == [[4, 5, 12, 6, 5]]   # the larger of 10, 12
    assert AnomalySuppression(2.0, 2, "clip")(-codes).tolist() == [[-4, -5, -12, -6, -5]]


def test_afd_one_gate_drops_an_edge_that_two_gates_keep() -> None:
    codes = _row([10, 10, 1, 1])
    assert AnomalySuppression(2.0, 1, "drop")(codes).tolist() == [[10, 0, 1, 1]]
    assert AnomalySuppression(2.0, 2, "drop")(codes).tolist() == [[10, 10, 1, 1]]


def test_afd_neighbours_wrap_around_the_channel_axis() -> None:
    assert AnomalySuppression(1.0, 1, "drop")(_row([1, 1, 1, 7])).tolist() == [[1, 1, 1, 0]]
    assert AnomalySuppression(1.0, 2, "drop")(_row([7, 1, 1, 1])).tolist() == [[0, 1, 1, 1]]


def test_afd_keeps_a_code_equal_to_the_threshold() -> None:
    assert AnomalySuppression(2.0, 1, "drop")(_row([8, 4])).tolist() == [[8, 4]]
    assert AnomalySuppression(2.0, 1, "drop")(_row([9, 4])).tolist() == [[0, 4]]


def test_afd_clip_threshold_truncates_to_a_code() -> None:
    # gamma * |3| = 1.5: 7 exceeds it and is clipped to 1, what a right shift by one gives.
    assert AnomalySuppression(0.5, 1, "clip")(_row([7, 3])).tolist() == [[1, 3]]
    assert AnomalySuppression(0.5, 1, "clip")(_row([-7, 3])).tolist() == [[-1, 3]]


def test_afd_clip_to_a_zero_threshold_gives_positive_zero() -> None:
    out = AnomalySuppression(1.0, 1, "clip")(_row([-5, 0]))
    assert out.tolist() == [[0, 0]] and not torch.signbit(out).any()


def test_afd_single_channel_is_its_own_neighbour() -> None:
    codes = torch.tensor([[[[-7.0, 0.0, 5.0]]]])   # (1, 1, 1, 3)
    assert torch.equal(AnomalySuppression(1.0, 2, "drop")(codes), codes)
    assert AnomalySuppression(0.5, 2, "drop")(codes).tolist() == [[[[0, 0, 0]]]]
    assert AnomalySuppression(0.5, 1, "clip")(codes).tolist() == [[[[-3, 0, 2]]]]


def test_afd_is_exact_on_large_float32_codes() -> None:
    codes = torch.tensor([[2.0**20 + 1, 2.0**13]], dtype=torch.float32)
    assert AnomalySuppression(2.0**7, 1, "clip")(codes).tolist() == [[2.0**20, 2.0**13]]


def test_scheme_names_build_their_protections() -> None:
    built = [scheme(name, chunk=8, gamma=4.0, gates=2, action="clip") for name in SCHEMES]
    assert built == [MedianFilter(3, 8), MedianFilter(5, 8), AnomalySuppression(4.0, 2, "clip")]


GAMMA_RANGE = r"^AFD gamma must be a power of two from 2\*\*-4 to 2\*\*7, not "
A_FLOAT: Any = 2.0   # typed Any: a caller's config may hand over any value


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MedianFilter(4, 8), r"^Median window must be one of 3, 5, not 4$"),
        (lambda: MedianFilter(3, 0), r"^Median chunk must be a positive integer, not 0$"),
        (lambda: MedianFilter(3, A_FLOAT), r"^Median chunk must be a positive integer, not 2\.0$"),
        (lambda: AnomalySuppression(3.0, 1, "drop"), GAMMA_RANGE + r"3\.0$"),
        (lambda: AnomalySuppression(256.0, 1, "drop"), GAMMA_RANGE + r"256\.0$"),
        (lambda: AnomalySuppression(2.0, 3, "drop"), r"^AFD gates must be one of 1, 2, not 3$"),
        (lambda: AnomalySuppression(2.0, 1, "zero"), r"^AFD action must be one of drop, clip, not 'zero'$"),
        (
            lambda: scheme("median7", chunk=8, gamma=1.0, gates=1, action="drop"),
            r"^Protection scheme must be one of median3, median5, afd, not 'median7'$",
        ),
    ],
)
def test_invalid_parameters(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("protection", [MedianFilter(3, 4), AnomalySuppression(1.0, 1, "drop")])
def test_codes_without_a_channel_axis(protection: MedianFilter | AnomalySuppression) -> None:
    with pytest.raises(ValueError, match=r"^Protected codes must be laid out \(B, C, \.\.\.\), not shape \(5,\)$"):
        protection(torch.zeros(5))
