"""A faulted layer's accumulators as golden + a sparse correction, for faults in its input buffer.

An activation fault changes one input value by d; a conv layer's accumulators change by d * W[n, c, ky, kx]
at the at most kh x kw output positions whose window covers it (a linear layer's by d * W[n, e]). Adding
that to the golden accumulators replaces the layer's whole GEMM by a scatter of a few hundred values.
Exact: integer corrections of exact integer accumulators.
"""

from __future__ import annotations

import numpy as np
import torch

from dsetool.engine.intmodel import Conv2d, WeightOp


def act_fault_accumulators(op: WeightOp, weight: torch.Tensor, golden_in: torch.Tensor, golden_acc: torch.Tensor,
                           rows: np.ndarray, elements: np.ndarray, faulty: torch.Tensor) -> torch.Tensor:
    """Return the accumulators of rows whose input values `elements` became `faulty`.

    `weight` is the layer's weight tensor in torch layout (accumulator dtype); `golden_in` (B, ...) and `golden_acc`
    (B, ...) are its fault-free input and output for the rows; `rows[j]`, `elements[j]` (flat index into
    one row's input) and `faulty[j]` describe changed value j (one per (row, element)).
    """
    flat_in = golden_in.reshape(golden_in.shape[0], -1)
    r, e = torch.from_numpy(rows), torch.from_numpy(elements)
    delta = faulty.to(flat_in.dtype) - flat_in[r, e]
    out = golden_acc.clone(memory_format=torch.contiguous_format)
    n_out = weight.shape[0]
    if not isinstance(op, Conv2d):
        flat = out.view(out.shape[0], n_out)
        flat.index_put_((r[:, None].expand(-1, n_out), torch.arange(n_out).expand(len(r), -1)),
                        delta[:, None] * weight[:, e].T, accumulate=True)
        return out
    height, width = golden_in.shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    out_h, out_w = out.shape[2:]
    c, y, x = e // (height * width), (e // width) % height, e % width
    ky, kx = torch.meshgrid(torch.arange(kh), torch.arange(kw), indexing="ij")
    ky, kx = ky.reshape(-1), kx.reshape(-1)
    oy_num, ox_num = y[:, None] + ph - ky, x[:, None] + pw - kx        # (F, kh*kw)
    oy, ox = torch.div(oy_num, sh, rounding_mode="floor"), torch.div(ox_num, sw, rounding_mode="floor")
    valid = (oy_num % sh == 0) & (ox_num % sw == 0) & (oy >= 0) & (oy < out_h) & (ox >= 0) & (ox < out_w)
    f_idx, t_idx = torch.nonzero(valid, as_tuple=True)
    taps = weight[:, c[f_idx], ky[t_idx], kx[t_idx]]                   # (N, hits)
    values = delta[f_idx][None, :] * taps
    index = (((r[f_idx][None, :] * n_out + torch.arange(n_out)[:, None]) * out_h + oy[f_idx, t_idx][None, :])
             * out_w + ox[f_idx, t_idx][None, :])
    out.view(-1).index_add_(0, index.reshape(-1), values.reshape(-1))
    return out
