"""Closed-form cycle counts: the formulas of DESIGN §6, their monotonicity and their tile decomposition."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw.cycles import (
    MACHINE_CHECKED_READ,
    MACHINE_FETCH,
    MACHINE_GEMM_TAIL,
    MACHINE_SETUP,
    VECTOR_PIPELINE,
    conv_gemm,
    gemm_cycles,
    linear_gemm,
    machine_gemm_cycles,
    machine_tile_period,
    network_cycles,
    tile_cycles,
    tile_grid,
    tiles,
    vector_cycles,
)

dims = st.integers(1, 40)
arrays = st.integers(1, 9)
dataflows = st.sampled_from(["ws", "os", "is"])


def test_formulas_match_design_examples() -> None:
    # M=5, K=7, N=5 on 2x2: WS 4*3 tiles of 4+2+5-2; OS 3*3 tiles of 2+2+7-2; IS 4*3 tiles of 4+2+5-2.
    assert gemm_cycles(5, 7, 5, 2, 2, "ws") == 12 * 9
    assert gemm_cycles(5, 7, 5, 2, 2, "os") == 9 * 9
    assert gemm_cycles(5, 7, 5, 2, 2, "is") == 12 * 9
    assert gemm_cycles(196, 27, 64, 8, 8, "ws") == 4 * 8 * (16 + 8 + 196 - 2)


@given(dims, dims, dims, arrays, arrays, dataflows)
def test_monotonic_in_m_k_n(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> None:
    base = gemm_cycles(m, k, n, rows, cols, dataflow)
    assert gemm_cycles(m + 1, k, n, rows, cols, dataflow) >= base
    assert gemm_cycles(m, k + 1, n, rows, cols, dataflow) >= base
    assert gemm_cycles(m, k, n + 1, rows, cols, dataflow) >= base


@given(dims, dims, dims, arrays, arrays, dataflows)
def test_sum_over_tiles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> None:
    parts = list(tiles(m, k, n, rows, cols, dataflow))
    first, second = tile_grid(m, k, n, rows, cols, dataflow)
    assert len(parts) == first * second
    assert gemm_cycles(m, k, n, rows, cols, dataflow) == sum(tile_cycles(*p, rows, cols, dataflow) for p in parts)
    # The tiles cover the pinned dimensions exactly once.
    covered = {"ws": lambda p: p[1] * p[2], "os": lambda p: p[0] * p[2], "is": lambda p: p[1] * p[0]}[dataflow]
    assert sum(map(covered, parts)) * {"ws": m, "os": k, "is": n}[dataflow] == m * k * n


@given(dims, st.integers(1, 5), st.integers(1, 40), dims, arrays, arrays)
def test_ws_splits_additively_at_tile_boundaries(m: int, k_tiles: int, k_rest: int, n: int, rows: int,
                                                 cols: int) -> None:
    k = k_tiles * rows
    assert gemm_cycles(m, k + k_rest, n, rows, cols) == gemm_cycles(m, k, n, rows, cols) + gemm_cycles(
        m, k_rest, n, rows, cols)


def test_layer_shapes_and_network_sum() -> None:
    conv = conv_gemm(3, 16, (3, 3), (6, 5))
    fc = linear_gemm(480, 10)
    assert conv == (30, 27, 16)
    assert fc == (1, 480, 10)
    assert network_cycles([conv, fc], 4, 4) == gemm_cycles(30, 27, 16, 4, 4) + gemm_cycles(1, 480, 10, 4, 4)
    assert network_cycles([], 4, 4, "os") == 0


@pytest.mark.parametrize(("call", "message"), [
    (lambda: gemm_cycles(0, 1, 1, 2, 2), "GEMM m must be a positive integer, not 0"),
    (lambda: gemm_cycles(1, 1, 1, 2.0, 2), "GEMM rows must be a positive integer, not 2.0"),  # type: ignore[arg-type]
    (lambda: gemm_cycles(1, 1, 1, 2, 2, "xs"), "GEMM dataflow must be one of 'ws', 'os', 'is', not 'xs'"),
    (lambda: conv_gemm(3, 16, (3, 0), (6, 5)), "GEMM kw must be a positive integer, not 0"),
    (lambda: linear_gemm(True, 10), "GEMM in_features must be a positive integer, not True"),
    (lambda: vector_cycles(16, 64, 0, 8), "Vector pass window must be a positive integer, not 0"),
    (lambda: vector_cycles(16, 64, 1, 0), "Vector pass lanes must be a positive integer, not 0"),
])
def test_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()  # type: ignore[operator]


@given(dims, dims, dims, arrays, arrays, dataflows, st.integers(0, 12))
def test_drain_is_paid_once_per_gemm(m: int, k: int, n: int, rows: int, cols: int, dataflow: str, drain: int) -> None:
    assert gemm_cycles(m, k, n, rows, cols, dataflow, drain) == gemm_cycles(m, k, n, rows, cols, dataflow) + drain
    gemms = [(m, k, n), (n, m, k)]
    assert network_cycles(gemms, rows, cols, dataflow, drain) == network_cycles(gemms, rows, cols, dataflow) + 2 * drain


@pytest.mark.parametrize("drain", [-1, 1.0, True])
def test_drain_must_be_a_non_negative_integer(drain: object) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(f'GEMM drain must be a non-negative integer, not {drain!r}')}$"):
        gemm_cycles(4, 4, 4, 2, 2, "ws", drain)  # type: ignore[arg-type]


def test_vector_pass_reads_each_window_once_per_lane_group() -> None:
    # a 2x2 max pool of 6 channels to 14x14 on 4 lanes: two groups of channels, 196 outputs, 4 reads each
    assert vector_cycles(6, 196, 4, 4) == 2 * 196 * 4 + VECTOR_PIPELINE
    # lanes beyond the channels do not help; more lanes than channels cost as many groups as one lane
    assert vector_cycles(6, 196, 4, 8) == vector_cycles(6, 196, 4, 6) == 196 * 4 + VECTOR_PIPELINE
    assert vector_cycles(64, 1, 16, 8) == 8 * 16 + VECTOR_PIPELINE   # a global average pool of a 4x4 map


@given(st.integers(1, 600), st.integers(1, 1024), st.integers(1, 49), arrays)
def test_vector_cycles_cover_every_read(channels: int, positions: int, window: int, lanes: int) -> None:
    busy = vector_cycles(channels, positions, window, lanes) - VECTOR_PIPELINE
    assert busy * lanes >= channels * positions * window > (busy - positions * window) * lanes


def test_double_buffered_machine_pays_setup_and_drain_once_per_gemm() -> None:
    # a linear layer on 8 x 8: tiles every R = 8 cycles (their weights load while the previous streams)
    assert machine_tile_period(1, 8, 8) == 8
    assert machine_gemm_cycles(1, 750, 8, 8, 2) == MACHINE_FETCH + MACHINE_SETUP + 749 * 8 + 1 + 16 + MACHINE_GEMM_TAIL
    single = MACHINE_FETCH + 750 * (MACHINE_SETUP + 16 + 8 - 2 + 1) + MACHINE_GEMM_TAIL
    assert machine_gemm_cycles(1, 750, 8, 8) == single
    # a conv streams M rows per tile; the bank a tile loads is free once the tile two before has passed it
    assert machine_tile_period(100, 8, 8) == 100
    assert machine_tile_period(2, 2, 8) == 5   # ceil((M + C - 1) / 2)
    assert machine_tile_period(1, 2, 2) == 2
    # an input check registers the codes before checking them: each GEMM presents its rows a cycle later
    staged = machine_gemm_cycles(1, 750, 8, 8, 2, input_check=True)
    assert staged == machine_gemm_cycles(1, 750, 8, 8, 2) + MACHINE_CHECKED_READ and MACHINE_CHECKED_READ == 1
    assert machine_gemm_cycles(1, 750, 8, 8, 1, input_check=True) == single


@given(st.integers(1, 300), st.integers(1, 50), st.integers(2, 16), st.integers(1, 16))
def test_double_buffered_machine_is_never_slower(m: int, tiles: int, rows: int, cols: int) -> None:
    period = machine_tile_period(m, rows, cols)
    assert period >= max(m, rows, 2) and 2 * period + 1 >= m + cols
    single, double = machine_gemm_cycles(m, tiles, rows, cols, 1), machine_gemm_cycles(m, tiles, rows, cols, 2)
    assert double < single or (double == single and tiles == 1 and rows == 2)   # one tile: R - 2 fewer


@pytest.mark.parametrize("buffers", [0, 3, True, "2"])
def test_machine_weight_buffers_are_one_or_two(buffers: object) -> None:
    with pytest.raises(ValueError, match="weight_buffers"):
        machine_gemm_cycles(4, 2, 4, 4, buffers)  # type: ignore[arg-type]
