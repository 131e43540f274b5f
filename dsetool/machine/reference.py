"""Run an accelerator program on one image as the machine does, word by word, without RTL.

It reads only the program's memory images (the weights as the array loads them, the constants as the
output stage reads them, the bounds memory as the range checks read it, the buffer layout), so it
checks the compiler against the engine (`tests/test_machine.py`), and the RTL is checked against it.
Accumulators wrap at the program's `acc_bits`, as the machine's registers do. `alarm` is the machine's
detector output: whether any range check found a code outside its bounds during the last `run` (the
codes a GEMM reads from the buffer, not its padding zeros; the channels an output stage writes).
"""

from __future__ import annotations

import numpy as np

from dsetool.machine.program import Gemm, Program, Slice, Tensor, Vector


def _wrap(values: np.ndarray, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((values + half) & ((1 << bits) - 1)) - half


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, relu: bool, qmin: int, qmax: int
               ) -> np.ndarray:
    """Return clamp(round_half_even(relu?(acc) * M / 2**s), qmin, qmax) on int64 (the output stage)."""
    product = (np.maximum(acc, 0) if relu else acc) * multiplier
    right = np.clip(shift, 0, 63)
    kept = product >> right
    dropped = product - (kept << right)
    half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
    up = (right > 0) & ((dropped > half) | ((dropped == half) & (kept & 1 == 1)))
    rounded = (kept + up) << np.maximum(-shift, 0)
    return np.clip(rounded, qmin, qmax)


class Machine:
    """The accelerator's memories and one image's execution: `load(codes)`, `run()`, then `logits` and
    `alarm`."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.buffer = np.zeros((max(1, program.buffer_words), program.lanes), dtype=np.int64)
        self.weights = np.asarray(program.weights, dtype=np.int64).reshape(-1, program.cols)
        self.logits = np.zeros(-(-program.num_classes // program.lanes) * program.lanes, dtype=np.int64)
        self.bounds = np.asarray(program.bounds, dtype=np.int64).reshape(-1, program.lanes, 2)
        self.alarm = False

    def load(self, codes: np.ndarray) -> None:
        """Write one image's input codes (C, H, W) into the buffer (what the host port does)."""
        self._write(self.program.input, np.asarray(codes, dtype=np.int64))

    def _write(self, tensor: Tensor, values: np.ndarray) -> None:
        lanes = tensor.lanes
        padded = np.zeros((tensor.groups * lanes, tensor.height, tensor.width), dtype=np.int64)
        padded[:tensor.channels] = values.reshape(tensor.channels, tensor.height, tensor.width)
        words = padded.reshape(tensor.groups, lanes, tensor.height * tensor.width).transpose(2, 0, 1)
        self.buffer[tensor.base:tensor.base + tensor.words] = words.reshape(-1, lanes)

    def read(self, tensor: Tensor) -> np.ndarray:
        """Return a tensor's codes (C, H, W) from the buffer."""
        words = self.buffer[tensor.base:tensor.base + tensor.words]
        grid = words.reshape(tensor.height * tensor.width, tensor.groups * tensor.lanes).T
        return grid[:tensor.channels].reshape(tensor.channels, tensor.height, tensor.width)

    def run(self) -> np.ndarray:
        """Execute every instruction; return the logits (num_classes,)."""
        self.alarm = False
        for instr in self.program.instructions:
            if isinstance(instr, Gemm):
                self._gemm(instr)
            else:
                self._vector(instr)
        return self.logits[:self.program.num_classes].copy()

    def _stream(self, instr: Gemm, slices: tuple[Slice, ...]) -> np.ndarray:
        """Return the rows the array streams, (M, slices * rows): per output pixel each slice's lanes."""
        src, rows = instr.source, self.program.rows
        sy, sx = instr.stride
        oy, ox = np.divmod(np.arange(instr.m), instr.out_width)
        parts = []
        for s in slices:
            y, x = oy * sy + s.dy, ox * sx + s.dx
            inside = (y >= 0) & (y < src.height) & (x >= 0) & (x < src.width)
            address = src.base + (np.where(inside, y, 0) * src.width + np.where(inside, x, 0)) * src.groups + s.group
            words = self.buffer[address, s.lane:s.lane + rows]
            if instr.input_check != "none":   # the codes as read, before the padding zeros replace some
                bounds = self.bounds[instr.bound_word(s), s.lane:s.lane + rows]
                words, fired = _checked(words, bounds[:, 0], bounds[:, 1], instr.input_check)
                self.alarm |= bool((fired & inside[:, None]).any())
            parts.append(np.where(inside[:, None], words, 0))
        return np.concatenate(parts, axis=1)

    def _tile_weights(self, first: int, count: int) -> np.ndarray:
        """Return an N slice's weights (count * rows, cols) from weight memory word `first`, as loaded."""
        rows = self.program.rows
        block = self.weights[first:first + count * rows].reshape(count, rows, self.program.cols)
        return block[:, ::-1, :].reshape(count * rows, self.program.cols)   # each tile's last row first

    def _gemm(self, instr: Gemm) -> None:
        p = self.program
        streams = {id(slices): self._stream(instr, slices) for slices in instr.slices}
        first = instr.weight_base
        for nt in range(instr.n_slices(p.cols)):
            slices = instr.k_slices(nt)
            constants = p.constants[instr.const_base + nt]
            bias = np.array([c.bias for c in constants], dtype=np.int64)
            acc = _wrap(streams[id(slices)] @ self._tile_weights(first, len(slices)) + bias, p.acc_bits)
            first += len(slices) * p.rows
            if instr.dest is None:
                self.logits[nt * p.cols:(nt + 1) * p.cols] = acc[0]
                continue
            codes = requantize(acc, np.array([c.multiplier for c in constants]), np.array([c.shift for c in constants]),
                               instr.relu, instr.qmin, instr.qmax)
            if instr.check != "none":
                lo, hi = (np.array([getattr(c, name) for c in constants], dtype=np.int64) for name in ("lo", "hi"))
                codes, fired = _checked(codes, lo, hi, instr.check)
                real = (np.arange(p.cols) + nt * p.cols - instr.lead(p.cols) >= 0) & \
                    (np.arange(p.cols) + nt * p.cols - instr.lead(p.cols) < instr.out_channels)
                self.alarm |= bool(fired[:, real].any())
            self._write_columns(instr, nt, codes)

    def _write_columns(self, instr: Gemm, nt: int, codes: np.ndarray) -> None:
        """Write N slice nt's codes (M, cols) into `cols` lanes of the destination's words: the columns
        holding output channels only, each at its channel of the destination."""
        dest, cols = instr.dest, self.program.cols
        assert dest is not None
        lead = instr.lead(cols)
        channel = instr.dest_offset - lead + nt * cols   # of column 0
        group, lane = divmod(channel, dest.lanes)
        real = [c for c in range(cols) if 0 <= nt * cols + c - lead < instr.out_channels]
        pixels = np.arange(instr.m)
        self.buffer[dest.base + pixels[:, None] * dest.groups + group, lane + np.array(real)] = codes[:, real]

    def _vector(self, instr: Vector) -> None:
        """Reduce each output word's window (and add the other addend), then requantize and check; or
        keep the sums as the logits."""
        src = instr.source
        (kh, kw), (sy, sx), (py, px) = instr.kernel, instr.stride, instr.padding
        words = self._words(src)
        out = np.empty((instr.out_height, instr.out_width, src.groups, src.lanes), dtype=np.int64)
        for oy in range(instr.out_height):
            for ox in range(instr.out_width):
                ys = slice(max(0, oy * sy - py), min(src.height, oy * sy - py + kh))
                xs = slice(max(0, ox * sx - px), min(src.width, ox * sx - px + kw))
                window = words[ys, xs]
                out[oy, ox] = window.max(axis=(0, 1)) if instr.reduce == "max" else window.sum(axis=(0, 1))
        if instr.other is not None:
            out += self._words(instr.other)
        if instr.dest is None:
            self.logits[:out.size] = out.reshape(-1)
            return
        codes = requantize(out, np.array(instr.multiplier), np.array(instr.shift), instr.relu, instr.qmin, instr.qmax)
        if instr.check != "none":   # output group g against bounds word `bounds` + g, lane by lane
            bounds = self.bounds[instr.bounds:instr.bounds + src.groups]
            codes, fired = _checked(codes, bounds[..., 0], bounds[..., 1], instr.check)
            self.alarm |= bool(fired.any())
        dest = instr.dest
        pixels = np.arange(dest.height * dest.width)[:, None] * dest.groups
        address = dest.base + pixels + instr.dest_offset // dest.lanes + np.arange(src.groups)[None, :]
        self.buffer[address.reshape(-1)] = codes.reshape(-1, dest.lanes)

    def _words(self, tensor: Tensor) -> np.ndarray:
        words = self.buffer[tensor.base:tensor.base + tensor.words]
        return words.reshape(tensor.height, tensor.width, tensor.groups, tensor.lanes)


def _checked(codes: np.ndarray, lo: np.ndarray, hi: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the codes the range check in `mode` gives (bounds broadcast over the codes' last axes) and
    where it fired."""
    fired = (codes < lo) | (codes > hi)
    if mode == "clip":
        return np.minimum(np.maximum(codes, lo), hi), fired
    if mode == "zero":
        return np.where(fired, 0, codes), fired
    return codes, fired


def run_image(program: Program, codes: np.ndarray) -> np.ndarray:
    """Return the logits the machine computes for one image's input codes (C, H, W)."""
    return run_detecting(program, codes)[0]


def run_detecting(program: Program, codes: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return the logits the machine computes for one image's input codes (C, H, W) and its alarm."""
    machine = Machine(program)
    machine.load(codes)
    return machine.run(), machine.alarm
