"""The range check on requantized codes: clip to the nearer bound or zero, per output channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dsetool.protect.check import RangeCheck, range_checks


def test_clip_and_zero_per_channel_on_maps_and_flattened_features() -> None:
    codes = torch.tensor([[[[0.0, 5.0]], [[9.0, 3.0]]]])          # (1, 2 channels, 1, 2)
    lo, hi = np.array([1, 2]), np.array([4, 8])
    assert torch.equal(RangeCheck("clip", lo, hi)(codes), torch.tensor([[[[1.0, 4.0]], [[8.0, 3.0]]]]))
    assert torch.equal(RangeCheck("zero", lo, hi)(codes), torch.tensor([[[[0.0, 0.0]], [[0.0, 3.0]]]]))
    flat = codes.reshape(1, -1)                                    # channel-major, as flatten leaves them
    assert torch.equal(RangeCheck("clip", lo, hi)(flat), torch.tensor([[1.0, 4.0, 8.0, 3.0]]))
    assert RangeCheck("zero", lo, hi).outside(flat).tolist() == [[True, True, True, False]]


def test_bounds_document_gives_one_check_per_protected_output() -> None:
    doc = {"layers": {"conv1": {"op_index": 2, "lo": [0], "hi": [9]},
                      "fc1": {"op_index": 7, "lo": [0, 1, 2], "hi": [5, 6, 7]}}}
    checks = range_checks(doc, "clip", {2: 4, 7: 3})
    assert checks[2].hi.tolist() == [9, 9, 9, 9] and checks[7].lo.tolist() == [0, 1, 2]


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match=r"^Range check mode must be one of clip, zero, detect, not 'median'$"):
        RangeCheck("median", np.zeros(1), np.zeros(1))


def test_detect_mode_flags_without_changing() -> None:
    check = RangeCheck("detect", np.array([0, 2]), np.array([5, 3]))
    codes = torch.tensor([[[[7.0]], [[2.0]]], [[[4.0]], [[1.0]]]])
    assert torch.equal(check(codes), codes)
    assert check.outside(codes).reshape(2, 2).tolist() == [[True, False], [False, True]]
