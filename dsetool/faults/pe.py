"""Faults in PE registers at one cycle, turned into exact corrections of a layer's accumulators.

A flipped register changes a few products or one partial sum; `dsetool.engine.tiling` says which. The
correction is computed from the layer's actual operands and added to the golden accumulators, so the
layer is never re-simulated cycle by cycle. Partial-sum faults wrap at the accumulator width, as a
two's complement adder does.
"""

from __future__ import annotations

import numpy as np
import torch

from dsetool.engine.tiling import LayerTiling
from dsetool.faults import site_registry
from dsetool.faults.bits import with_masks


def wrap(values: torch.Tensor, width: int) -> torch.Tensor:
    """Reduce integers to a `width`-bit two's complement register."""
    half = 1 << (width - 1)
    return torch.remainder(values + half, 1 << width) - half


def apply_pe_faults(site: str, tiling: LayerTiling, operands: torch.Tensor, weights: torch.Tensor,
                    acc: torch.Tensor, rows: np.ndarray, elements: np.ndarray,
                    masks: np.ndarray, model: str, width: int, signed: bool, acc_bits: int,
                    groups: int = 1) -> torch.Tensor:
    """Return accumulators (B, N, M) corrected for one fault per (row, element).

    `operands` are the layer's (B, K, M) input matrices, `weights` its (N, K) integer weights, `acc`
    the fault-free accumulators (B, N, M), bias included. `masks` hold each fault's bit mask. A grouped
    conv on the accelerator's schedule (`tiling.slice_orders`, `groups` > 1) has operands over all its
    input channels (K = groups x K_group) and weights (N, K_group): output n multiplies its own group's
    rows by them and every other row by zero, the block-diagonal matrix the accelerator holds.
    `acc_bits` is the array's accumulator width: every corrected sum wraps there, bias included, as the
    accelerator's adders do (its K accumulator starts each sum at the bias, `hw.accumulator`; a corrupted
    operand can overflow a narrow accumulator too, not only a corrupted partial sum).
    """

    register = site_registry.site(site).register   # which operand or sum the PE register holds
    ws = tiling.dataflow == "ws"
    stationary = site_registry.stationary(register, tiling.dataflow)
    held = None
    if register is site_registry.FINISHED:   # a shadow: the whole sum of its tile, until drained
        tm, tn_, kept, rr, cc = tiling.decode_shadow(elements)
        decoded = (tm, tn_, np.where(kept, tiling.k_stream - 1 + rr + cc, -1), rr, cc)
        held = torch.from_numpy(kept)
    else:
        decoded = tiling.decode(elements, stationary)
    ta, tn, u, r, c = (torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in decoded)
    b = torch.from_numpy(rows.astype(np.int64))
    mask = torch.from_numpy(masks.astype(np.int64))
    R, C, M, K, N = tiling.rows, tiling.cols, tiling.m, tiling.k, tiling.n
    m = u - r - c if ws else ta * R + r
    k = _k_at(tiling, ta * R + r if ws else u - r - c, tn)   # -1: a padding lane, or outside the stream
    n = tn * C + c - tiling.lead   # < 0: an empty column before channel 0
    out = acc.clone(memory_format=torch.contiguous_format)
    flat = out.view(-1)

    def add(row: torch.Tensor, col_n: torch.Tensor, col_m: torch.Tensor, value: torch.Tensor) -> None:
        keep = value != 0
        flat.index_add_(0, ((row * N + col_n) * M + col_m)[keep], value[keep].to(flat.dtype))

    def operand(bb: torch.Tensor, mm: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
        return operands[bb, kk.clamp(0, K - 1), mm.clamp(0, M - 1)]

    def weight(kk: torch.Tensor, nn: torch.Tensor) -> torch.Tensor:
        return _weight_at(weights, groups, kk.clamp(0, K - 1), nn.clamp(0, N - 1))

    if register is site_registry.INPUT:
        valid = (m >= 0) & (m < M) & (k >= 0)
        old = operand(b, m, k).to(torch.int64)
        delta = (with_masks(old, mask, model, width, signed) - old) * valid
        cols = torch.arange(C)
        n_all = tn[:, None] * C + cols - tiling.lead                      # the value moves right
        live = (cols >= c[:, None]) & (n_all >= 0) & (n_all < N)
        value = delta[:, None] * weight(k[:, None].expand_as(n_all), n_all) * live
        add(b[:, None].expand_as(n_all).reshape(-1), n_all.clamp(0, N - 1).reshape(-1),
            m[:, None].expand_as(n_all).clamp(0, M - 1).reshape(-1), value.reshape(-1))
    elif register is site_registry.WEIGHTS:
        valid = (n >= 0) & (n < N) & (k >= 0)
        old = weight(k, n).to(torch.int64)
        delta = (with_masks(old, mask, model, width, True) - old) * valid
        if ws:   # stationary: every later row m of the tile uses the corrupted weight
            ms = torch.arange(M)
            live = ms >= (u - r - c)[:, None]
            value = delta[:, None] * operands[b[:, None], k.clamp(0, K - 1)[:, None], ms] * live
            add(b[:, None].expand_as(value).reshape(-1), n.clamp(0, N - 1)[:, None].expand_as(value).reshape(-1),
                ms.expand_as(value).reshape(-1), value.reshape(-1))
        else:    # moves down: PE rows r' >= r of the tile (rows m' = mt*R + r') see it
            rs = torch.arange(R)
            m_all = ta[:, None] * R + rs
            live = (rs >= r[:, None]) & (m_all < M)
            value = delta[:, None] * operand(b[:, None].expand_as(m_all), m_all, k[:, None].expand_as(m_all)) * live
            add(b[:, None].expand_as(m_all).reshape(-1), n.clamp(0, N - 1)[:, None].expand_as(m_all).reshape(-1),
                m_all.clamp(0, M - 1).reshape(-1), value.reshape(-1))
    else:   # the partial sum, or the finished one in the shadow
        valid = (m >= 0) & (m < M) & (n >= 0) & (n < N)
        if held is not None:
            valid &= held
        elif tiling.period and not ws:   # the streaming machine: its last product's sum is already in the shadow
            valid &= (u >= 0) & (u - r - c < tiling.k_stream - 1)
        partial = _partial_sums(tiling, operands, weights, groups, b, m, n, ta, tn, r, u, c)
        faulty = with_masks(partial.to(torch.int64), mask, model, acc_bits, True)
        delta = (faulty - partial.to(torch.int64)) * valid
        index = (b * N + n.clamp(0, N - 1)) * M + m.clamp(0, M - 1)
        total = torch.zeros_like(flat, dtype=torch.int64).index_add_(0, index, delta)
        hit = torch.unique(index[delta != 0])
        # wrapping is modular, so several faults on one accumulator may be summed before one wrap
        flat[hit] = wrap(flat[hit].to(torch.int64) + total[hit], acc_bits).to(flat.dtype)
    if register not in (site_registry.ACCUMULATOR, site_registry.FINISHED) and acc_bits:
        out.copy_(wrap(out.to(torch.int64), acc_bits).to(out.dtype))
    return out


def _partial_sums(tiling: LayerTiling, operands: torch.Tensor, weights: torch.Tensor, groups: int,
                  b: torch.Tensor, m: torch.Tensor, n: torch.Tensor, ta: torch.Tensor, tn: torch.Tensor,
                  r: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return the value each faulted psum register holds at its cycle (0 where it holds a bubble)."""
    R, K, M, N = tiling.rows, tiling.k, tiling.m, tiling.n
    mm, nn = m.clamp(0, M - 1), n.clamp(0, N - 1)
    if tiling.dataflow == "ws":   # rows r' <= r of this k-tile have added their products
        offsets = torch.arange(R)
        positions = ta[:, None] * R + offsets
        live = offsets <= r[:, None]
    else:                         # products at streamed positions <= u - r - c have been accumulated
        positions = torch.arange(tiling.k_stream).expand(len(b), tiling.k_stream)
        live = positions <= (u - r - c)[:, None]
    ks = _k_at(tiling, positions, tn[:, None])
    live = live & (ks >= 0)       # padding lanes add a zero product
    ks = ks.clamp(0, K - 1)
    terms = operands[b[:, None], ks, mm[:, None]] * _weight_at(weights, groups, ks, nn[:, None].expand_as(ks))
    return (terms * live).sum(dim=1)


def _weight_at(weights: torch.Tensor, groups: int, k: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Return the weight of output n at K index k: `weights[n, k]`, or for a grouped conv over all input
    channels, n's own weight where k is in n's group and 0 elsewhere."""
    if groups == 1:
        return weights[n, k]
    k_group, n_group = weights.shape[1], weights.shape[0] // groups
    local = k - torch.div(n, n_group, rounding_mode="floor") * k_group
    mine = (local >= 0) & (local < k_group)
    return weights[n, local.clamp(0, k_group - 1)] * mine


def _k_at(tiling: LayerTiling, positions: torch.Tensor, n_slice: torch.Tensor) -> torch.Tensor:
    """Return the K index the array holds at streamed K `positions` of N slices `n_slice`
    (`LayerTiling.k_at`; -1: none)."""
    return torch.from_numpy(tiling.k_at(positions.numpy(), n_slice.numpy()))
