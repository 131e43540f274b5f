"""The accelerator's instruction and slice-table formats, shared by the sequencer (`hw.machine`) and the
compiler's encoder (`dsetool.machine.encode`). Pure Python and `amaranth.lib.data` layouts.

An instruction is one word of named fields (`instruction_fields`); which fields an opcode reads:

- `GEMM`: the array runs an im2col GEMM, N slice after N slice (`n_count`), each as tiles, one per K slice
  s: the slice-table entries from `slice_first` up to the one marked `last`. The next N slice's K slices
  start at `slice_first` again, or, with `slice_walk` (a grouped conv, whose N slices read different
  input channels), at the entry after the `last` one. For tile s, output pixel (oy, ox) (row m = oy *
  `out_w` + ox, `m_count` rows) reads the word at `src_base` + s.row_off + oy * `step_y` + s.col_off + ox *
  `step_x`, when the pixel it stands for, (oy * `sy` + s.dy, ox * `sx` + s.dx), lies inside `src_h` x
  `src_w` (else zeros: padding), and takes `rows` lanes of it from lane s.part * rows. Weights: `rows`
  words per tile, consecutive from `weight_base`. Constants: word `const_base` + n. Results: row m of N
  slice n goes to word `dst_base` + m * `dst_groups` + (`dst_part` + n) // (lanes // cols), lanes
  (`dst_part` + n) % (lanes // cols) * cols ..; only the columns holding a channel are written: not the
  first `dst_lead` of N slice 0 nor the last `dst_trail` of the last N slice (a layer writing its range
  of a concat's tensor). With `logits`, the raw sums go to the logits memory, N slice n to its n-th
  `cols`-wide part (logit c at part c // cols, lane c % cols). `check`: the output stage checks each
  column's code against its bounds in the constants word. `in_check`: the codes read from the buffer
  (not the padding zeros, which are no read) are checked before they enter the array, against the
  bounds memory's word s.bound (`hw.machine_format`: `lanes` (lo, hi) pairs, the `rows` of part s.part
  taken), so a fault in the buffer meets the check the layer reading it has.
- `VECTOR`: the vector unit (`hw.vector_unit`) walks output words (oy, ox, g) (`out_h` x `out_w` x
  `src_groups`), reads each one's `kh` x `kw` window taps from `src_base` + `row_off` + oy * `step_y` +
  ky * `ky_step` + `col_off` + ox * `step_x` + kx * `kx_step` + g (when `bounded`, only taps at pixels
  (oy * `sy` - `py` + ky, ox * `sx` - `px` + kx) inside `src_h` x `src_w`), reduces them by maximum
  (`reduce_max`) or sum, requantizes with `multiplier` and `shift` (ReLU, clamp and, with `check`, a
  range check as a GEMM's output stage does, lane by lane against the bounds memory's word `bounds_base`
  + g: per-channel bounds) and writes the words in order from `dst_base`, skipping `dst_skip`
  words after each pixel's (a range of a concat's tensor). With `logits` the sums themselves, not
  requantized, go to the logits memory, one output word (`lanes` logits) after another.
- `END`: the program is done: the logits are streamed out.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

END, GEMM, VECTOR = 0, 1, 2


@dataclass(frozen=True)
class Widths:
    """Field widths, sized from the program so no field is wider than it needs (all at least 1)."""

    address: int     # activation buffer word addresses (unsigned)
    dim: int         # heights, widths, output rows
    weight: int      # weight memory addresses
    const: int       # constant memory addresses
    slice: int       # slice-table addresses
    lane: int        # a K slice's part of a word (lanes // rows parts)
    code: int        # code width + 1 (signed clamp bounds)
    multiplier: int  # the requantization multiplier
    shift: int       # the requantization shift (two's complement)
    column: int = 1  # a column of the array, or an output part of a word (lanes // cols parts)
    bounds: int = 1  # bounds memory addresses


def instruction_layout(w: Widths) -> data.StructLayout:
    """Return the instruction word's layout."""
    address, dim = unsigned(w.address), unsigned(w.dim)
    return data.StructLayout({
        "opcode": unsigned(2),
        "src_base": address, "src_h": dim, "src_w": dim, "src_groups": address, "row_pitch": address,
        "step_y": address, "step_x": address, "sy": unsigned(4), "sx": unsigned(4),
        "py": unsigned(4), "px": unsigned(4), "kh": dim, "kw": dim,
        "out_h": dim, "out_w": dim, "m_count": unsigned(2 * w.dim),
        "dst_base": address, "dst_groups": address,
        "n_count": unsigned(w.const), "slice_first": unsigned(w.slice), "slice_walk": unsigned(1),
        "dst_part": unsigned(w.column), "dst_lead": unsigned(w.column), "dst_trail": unsigned(w.column),
        "dst_skip": address,
        "weight_base": unsigned(w.weight), "const_base": unsigned(w.const),
        "relu": unsigned(1), "check": unsigned(1), "in_check": unsigned(1), "logits": unsigned(1),
        "qmin": signed(w.code), "qmax": signed(w.code),
        "row_off": signed(w.address + 1), "col_off": signed(w.address + 1),
        "ky_step": signed(w.address + 1), "kx_step": signed(w.address + 1), "bounded": unsigned(1),
        "reduce_max": unsigned(1), "multiplier": unsigned(w.multiplier), "shift": signed(w.shift),
        "bounds_base": unsigned(w.bounds),
    })


def slice_layout(w: Widths) -> data.StructLayout:
    """Return the slice-table entry's layout."""
    return data.StructLayout({
        "dy": signed(w.dim + 1), "dx": signed(w.dim + 1),
        "row_off": signed(w.address + 1), "col_off": signed(w.address + 1), "part": unsigned(w.lane),
        "last": unsigned(1), "bound": unsigned(w.bounds),
    })


def pack(layout: data.StructLayout, fields: dict[str, int]) -> int:
    """Return the integer whose bits hold `fields` in `layout` (missing fields are 0); raise ValueError
    when a value does not fit its field."""
    unknown = set(fields) - {name for name, _ in layout}
    if unknown:
        raise ValueError(f"Unknown fields {sorted(unknown)}")
    word = 0
    for name, member in layout:
        value = int(fields.get(name, 0))
        shape = member.shape
        top = 1 << (shape.width - 1) if shape.signed else 1 << shape.width
        lo, hi = (-top, top - 1) if shape.signed else (0, top - 1)
        if not lo <= value <= hi:
            raise ValueError(f"Field {name} = {value} does not fit {shape!r}")
        word |= (value & ((1 << shape.width) - 1)) << member.offset
    return word
