"""PE-register faults in the RTL arrays: one bit flipped in a PE register at one streaming cycle changes the
GEMM exactly as the fast model `dsetool.faults.pe.apply_pe_faults` says, for every site of the schedule.

A site (tile, u, r, c) of `LayerTiling.shape` follows the semantics of `tests/fixtures/systolic_sim.py`:

- `pe.psum` at cycle u already includes PE(r, c)'s product of cycle u. In the RTL that is the `psum` register
  just after clock edge u, so the fault is forced there, before the outputs are read.
- `pe.act` / `pe.weight` at cycle u is the operand PE(r, c) multiplies at edge u and passes on. The RTL PEs
  multiply their *inputs* (`act_in`, and in OS `w_in`), so the register holding that operand is the one that
  feeds PE(r, c), forced between edges u-1 and u: PE(r, c-1)'s `act` (PE(r-1, c)'s `weight` in OS), or, on the
  array's edge, the input lane, whose skew registers the value crosses before reaching PE(r, 0) (PE(0, c)).
  A lane outside its valid window holds a bubble the array gates to zero; the schedule says those faults are
  masked, and the check is that the fast model agrees. The WS weight is stationary and multiplied from its
  own register, so `pes[r][c].weight` is forced before edge u and stays corrupted for the rest of the tile.

PE(r, c)'s own `act` register at cycle u is therefore schedule site (u+1, r, c+1), and the last column's
`act` (the last row's OS `weight`) feeds nothing: a fault there is always masked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import torch
from amaranth.hdl import Value

from dsetool.engine.tiling import LayerTiling
from dsetool.faults.pe import apply_pe_faults
from hw.array import OSArray, WSArray
from hw.arrayconfig import ArrayConfig
from tests.hw.drivers import Hook, drive_gemm, operands, simulate, wrap

N_FAULTS = 200
ARRAYS = [(2, 2), (3, 2), (4, 4)]
DATAFLOWS = ("ws", "os")
SITES = ("pe.act", "pe.weight", "pe.psum")
ACT_BITS, WEIGHT_BITS = 4, 4
MAX_M, MAX_K, MAX_N = 5, 7, 5


@dataclass(frozen=True)
class Injection:
    """The RTL register (or input lane) that holds a site's value, and the streaming cycle of the tile at
    which the testbench forces it: before that cycle's clock edge, or after it."""

    signal: Value
    cycle: int
    before_edge: bool


def injection(array: WSArray | OSArray, site: str, u: int, r: int, c: int) -> Injection:
    """Return where a fault at schedule site (u, r, c) of `site` lives in the RTL (see the module docstring)."""
    pes = array.pes
    if site == "pe.psum":
        return Injection(pes[r][c].psum, u, before_edge=False)
    if site == "pe.weight" and array.dataflow == "ws":
        return Injection(pes[r][c].weight, u, before_edge=True)
    if site == "pe.act":
        return Injection(pes[r][c - 1].act, u, True) if c > 0 else Injection(array.a[r], u - r, True)
    return Injection(pes[r - 1][c].weight, u, True) if r > 0 else Injection(array.w[c], u - c, True)


def flip(value: int, bit: int, width: int, signed: bool) -> int:
    """Return `value` with one bit of its `width`-bit register pattern inverted, read back as the register."""
    pattern = (value % (1 << width)) ^ (1 << bit)
    return pattern - (1 << width) if signed and pattern >> (width - 1) else pattern


@dataclass(frozen=True)
class Trial:
    """One random GEMM and one fault: flat site element of `tiling.shape` and bit."""

    a: np.ndarray
    w: np.ndarray
    tiling: LayerTiling
    element: int
    bit: int

    @property
    def site(self) -> tuple[int, int, int, int]:
        tile, u, r, c = np.unravel_index(self.element, self.tiling.shape)
        return int(tile), int(u), int(r), int(c)


def register_format(array: WSArray | OSArray, site: str) -> tuple[int, bool]:
    """Return (width, signed) of the register a site names, as the fast model is told."""
    return {"pe.act": (ACT_BITS, False), "pe.weight": (WEIGHT_BITS, True), "pe.psum": (array.acc_bits, True)}[site]


def random_trial(rng: np.random.Generator, array: WSArray | OSArray, site: str) -> Trial:
    """Draw a GEMM whose tiled dimensions are not multiples of the array, a site element and a bit."""
    rows, cols, dataflow = array.config.rows, array.config.cols, array.dataflow

    def size(most: int, tiled_over: int | None) -> int:
        return int(rng.choice([d for d in range(1, most + 1) if tiled_over is None or d % tiled_over]))

    m = size(MAX_M, rows if dataflow == "os" else None)
    k = size(MAX_K, rows if dataflow == "ws" else None)
    n = size(MAX_N, cols)
    a, w = operands(rng, array.config, m, k, n)
    tiling = LayerTiling(m, k, n, rows, cols, dataflow)
    return Trial(a, w, tiling, int(rng.integers(0, np.prod(tiling.shape))),
                 int(rng.integers(0, register_format(array, site)[0])))


def forcing(where: Injection, trial: Trial) -> tuple[Hook | None, Hook | None]:
    """Return the driver's (present, observe) hooks that flip the trial's bit of `where` in the trial's tile."""
    tile = trial.site[0]
    width, signed = len(where.signal), where.signal.shape().signed
    at = (*divmod(tile, trial.tiling.tile_grid[1]), where.cycle)

    def force(ctx: Any, ta: int, tn: int, cycle: int) -> None:
        if (ta, tn, cycle) == at:
            ctx.set(where.signal, flip(ctx.get(where.signal), trial.bit, width, signed))

    return (force, None) if where.before_edge else (None, force)


def fast_model(array: WSArray | OSArray, site: str, trial: Trial) -> np.ndarray:
    """Return the output (M, N) that `apply_pe_faults` predicts for the trial's fault."""
    a, w, acc_bits = trial.a, trial.w, array.acc_bits
    width, signed = register_format(array, site)
    got = apply_pe_faults(site, trial.tiling, torch.tensor(a.T[None], dtype=torch.float64),
                          torch.tensor(w.T, dtype=torch.float64),
                          torch.tensor(wrap(a @ w, acc_bits).T[None], dtype=torch.float64),
                          np.array([0]), np.array([trial.element]),
                          np.array([1 << trial.bit]), "bitflip", width, signed, acc_bits)
    return got[0].T.numpy().astype(np.int64)


def run_faulty(array: WSArray | OSArray, trials: list[Trial], wheres: list[Injection]) -> list[np.ndarray]:
    """Run every trial's faulty GEMM back to back in one Simulator, forcing its `wheres`; return the outputs."""
    outs: list[np.ndarray] = []

    async def bench(ctx: Any) -> None:
        for trial, where in zip(trials, wheres, strict=True):
            present, observe = forcing(where, trial)
            out, _ = await drive_gemm(ctx, array, trial.a, trial.w, observe=observe, present=present)
            outs.append(out)

    simulate(array, bench)
    return outs


def cross_check(config: ArrayConfig, site: str, faults: int, seed: list[int]) -> tuple[int, list[tuple[Any, ...]]]:
    """Run `faults` random faults on the RTL array; return how many changed the output, and the disagreements."""
    array = (WSArray if config.dataflow == "ws" else OSArray)(config, k=MAX_K)
    rng = np.random.default_rng(seed)
    trials = [random_trial(rng, array, site) for _ in range(faults)]
    wheres = [injection(array, site, *trial.site[1:]) for trial in trials]
    changed, wrong = 0, []
    for trial, out in zip(trials, run_faulty(array, trials, wheres), strict=True):
        expected = fast_model(array, site, trial)
        changed += not np.array_equal(out, wrap(trial.a @ trial.w, array.acc_bits))
        if not np.array_equal(out, expected):
            wrong.append((trial.tiling, trial.site, trial.bit, trial.a.tolist(), trial.w.tolist(), out.tolist(),
                          expected.tolist()))
    return changed, wrong


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("dataflow", DATAFLOWS)
@pytest.mark.parametrize(("rows", "cols"), ARRAYS)
def test_rtl_register_faults_equal_fast_model(rows: int, cols: int, dataflow: str, site: str) -> None:
    config = ArrayConfig(rows=rows, cols=cols, act_bits=ACT_BITS, weight_bits=WEIGHT_BITS, dataflow=dataflow)
    seed = [rows, cols, DATAFLOWS.index(dataflow), SITES.index(site)]
    changed, wrong = cross_check(config, site, N_FAULTS, seed)
    assert not wrong, f"{len(wrong)} of {N_FAULTS} faults disagree; first: {wrong[0]}"
    assert changed > 0, "every fault was masked, so the check could not fail"
    print(f"{rows}x{cols} {dataflow} {site}: {changed}/{N_FAULTS} faults changed the output")


@pytest.mark.parametrize(("dataflow", "site"), [("ws", "pe.act"), ("ws", "pe.weight"), ("os", "pe.weight")])
def test_operand_faults_wrap_in_a_narrow_accumulator(dataflow: str, site: str) -> None:
    """With acc_bits = 8 a corrupted operand can overflow the accumulator: the fast model wraps like the RTL."""
    config = ArrayConfig(rows=2, cols=2, act_bits=ACT_BITS, weight_bits=WEIGHT_BITS, acc_bits=8, dataflow=dataflow)
    _, wrong = cross_check(config, site, N_FAULTS // 2, [8, DATAFLOWS.index(dataflow), SITES.index(site)])
    assert not wrong, f"{len(wrong)} of {N_FAULTS // 2} faults disagree; first: {wrong[0]}"


def downstream(tiling: LayerTiling, site: str, element: int) -> int | None:
    """Return the schedule site a PE's own moving register is, one cycle later and one PE on (None: nowhere)."""
    tile, u, r, c = np.unravel_index(element, tiling.shape)
    u, r, c = u + 1, r + (site == "pe.weight"), c + (site == "pe.act")
    if u < tiling.window and r < tiling.rows and c < tiling.cols:
        return int(np.ravel_multi_index((tile, u, r, c), tiling.shape))
    return None


@pytest.mark.parametrize(("dataflow", "site"), [("ws", "pe.act"), ("os", "pe.act"), ("os", "pe.weight")])
@pytest.mark.parametrize(("rows", "cols"), ARRAYS)
def test_own_moving_register_is_the_next_pes_site(rows: int, cols: int, dataflow: str, site: str) -> None:
    """A flip in PE(r, c)'s own `act` (OS `weight`) register just after edge u is schedule site (u+1, r, c+1)
    ((u+1, r+1, c)): it feeds the next PE, not PE(r, c)'s product; past the array's edge it is masked."""
    config = ArrayConfig(rows=rows, cols=cols, act_bits=ACT_BITS, weight_bits=WEIGHT_BITS, dataflow=dataflow)
    array = (WSArray if dataflow == "ws" else OSArray)(config, k=MAX_K)
    rng = np.random.default_rng([rows, cols, DATAFLOWS.index(dataflow), SITES.index(site), 1])
    trials = [random_trial(rng, array, site) for _ in range(N_FAULTS // 2)]
    wheres = [Injection(getattr(array.pes[r][c], site[3:]), u, before_edge=False)
              for _, u, r, c in (trial.site for trial in trials)]
    for trial, out in zip(trials, run_faulty(array, trials, wheres), strict=True):
        element = downstream(trial.tiling, site, trial.element)
        golden = wrap(trial.a @ trial.w, array.acc_bits)
        expected = golden if element is None else fast_model(array, site, replace(trial, element=element))
        np.testing.assert_array_equal(out, expected, err_msg=str((trial.tiling, trial.site, trial.bit)))


@pytest.mark.parametrize(("value", "bit", "width", "signed", "flipped"), [
    (5, 7, 8, True, 5 - 128), (-1, 0, 8, True, -2), (-8, 3, 4, True, 0), (3, 3, 4, False, 11), (15, 0, 4, False, 14),
])
def test_flip_is_twos_complement_at_register_width(value: int, bit: int, width: int, signed: bool,
                                                   flipped: int) -> None:
    assert flip(value, bit, width, signed) == flipped
