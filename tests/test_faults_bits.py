"""Two's complement bit faults and rate statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dsetool.faults.bits import apply_fault, flip_mask
from dsetool.faults.stats import leveugle_samples, wilson


def reference(value: int, bit: int, model: str, width: int, signed: bool) -> int:
    pattern = value % (1 << width)
    if model == "bitflip":
        pattern ^= 1 << bit
    elif model == "stuck1":
        pattern |= 1 << bit
    elif model == "stuck0":
        pattern &= ~(1 << bit)
    else:
        pattern = 0
    return pattern - (1 << width) if signed and pattern >= 1 << (width - 1) else pattern


@given(st.integers(2, 32), st.booleans(), st.data(), st.sampled_from(["bitflip", "stuck0", "stuck1", "zero"]))
def test_faults_match_reference(width, signed, data, model):
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
    values = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=20))
    bits = data.draw(st.lists(st.integers(0, width - 1), min_size=len(values), max_size=len(values)))
    got = apply_fault(torch.tensor(values), torch.tensor(bits), model, width, signed).tolist()
    assert got == [reference(v, b, model, width, signed) for v, b in zip(values, bits, strict=True)]
    assert all(lo <= g <= hi for g in got)


@given(st.data(), st.sampled_from(["bitflip", "stuck0", "stuck1", "zero"]))
def test_numpy_arrays_with_per_element_widths_match_reference(data, model):
    """The sparse fault path gives numpy codes with each fault's own register width and signedness."""
    n = data.draw(st.integers(1, 20))
    widths = data.draw(st.lists(st.integers(2, 48), min_size=n, max_size=n))
    signs = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    values = [data.draw(st.integers(-(1 << (w - 1)) if s else 0, (1 << (w - 1)) - 1 if s else (1 << w) - 1))
              for w, s in zip(widths, signs, strict=True)]
    bits = [data.draw(st.integers(0, w - 1)) for w in widths]
    got = apply_fault(np.array(values), np.array(bits, dtype=np.int8), model, np.array(widths), np.array(signs))
    cases = zip(values, bits, widths, signs, strict=True)
    assert got.tolist() == [reference(v, b, model, w, s) for v, b, w, s in cases]


def test_numpy_bool_signedness_keeps_torch_codes_integer():
    got = apply_fault(torch.tensor([5]), torch.tensor([39]), "bitflip", 40, np.bool_(True))
    assert got.dtype == torch.int64 and got.item() == 5 - (1 << 39)


def test_msb_flip_is_twos_complement():
    assert apply_fault(torch.tensor([5]), torch.tensor([7]), "bitflip", 8, True).item() == -123
    assert apply_fault(torch.tensor([5]), torch.tensor([7]), "bitflip", 8, False).item() == 133


def test_flip_mask_flips_several_bits():
    assert flip_mask(torch.tensor([0]), torch.tensor([0b1000_0001]), 8, True).item() == -127


def test_wilson_known_values():
    rate = wilson(10, 100)
    assert rate.rate == 0.1
    assert rate.low == pytest.approx(0.05522, abs=1e-4) and rate.high == pytest.approx(0.17436, abs=1e-4)
    zero = wilson(0, 50)
    assert zero.low == 0.0 and 0 < zero.high < 0.08


def test_leveugle_sample_size():
    # e = 1 %, 95 %, p = 0.5: the classic 9604 for an infinite population, fewer for a finite one
    assert leveugle_samples(1e12, 0.01) == math.ceil(0.25 * 1.959963984540054**2 / 1e-4)
    assert leveugle_samples(1000, 0.01) < 1000
