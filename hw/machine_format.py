"""What `hw.machine.Machine` is built with (`MachineShape`) and what the host loads into it
(`MachineImages`), and the host's load stream that carries the images (`load_beats`).

The shape depends only on the network's layer shapes and the design's widths, so one synthesis (and
one compiled simulation) serves every trained model of a design point: the weights, constants and
program arrive over the host port, as they would on a board.

Load stream (while the machine is idle): 32-bit beats. A block is three header beats (the memory:
`IMEM`, `SMEM`, `WMEM` or `CMEM`; the first word address; the word count), then every word as
ceil(width / 32) beats, least significant first. Blocks follow one another.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Shape, signed, unsigned

from hw import isa
from hw.arrayconfig import ArrayConfig

BEAT = 32
IMEM, SMEM, WMEM, CMEM = 0, 1, 2, 3
SHIFT_BITS = 8   # the requantization shift's width: s in -128..127, whatever the scales


@dataclass(frozen=True)
class MachineShape:
    """The machine's build parameters: the array, the widths, the memories' depths, the host layout.

    `check` is the range-check unit built ("none", "clip", "zero"); `max_rows` the largest GEMM M (the
    K accumulator's depth); `input_base` / `input_words` where the host's input codes go; `sum_bits`
    the width of the vector unit's reductions.
    """

    array: ArrayConfig
    lanes: int
    widths: isa.Widths
    multiplier_bits: int
    check: str
    buffer_words: int
    input_base: int
    input_words: int
    num_classes: int
    instruction_words: int
    slice_words: int
    weight_words: int
    const_words: int
    max_rows: int
    sum_bits: int    # the vector unit's sums: a window's codes, or an add's two

    @property
    def shift_bits(self) -> int:
        return SHIFT_BITS

    @property
    def code_shape(self) -> Shape:
        a = self.array
        return signed(a.act_bits) if a.act_signed else unsigned(a.act_bits)

    @property
    def const_fields(self) -> tuple[int, int, int, int, int]:
        """Return the widths of one column's constants: bias, multiplier, shift, lo, hi."""
        code = self.code_shape.width
        return self.array.acc_bits, self.multiplier_bits, SHIFT_BITS, code, code

    def word_bits(self, memory: int) -> int:
        """Return the width of one word of a loadable memory."""
        return {IMEM: isa.instruction_layout(self.widths).size, SMEM: isa.slice_layout(self.widths).size,
                WMEM: self.array.cols * self.array.weight_bits,
                CMEM: self.array.cols * sum(self.const_fields)}[memory]

    def depth(self, memory: int) -> int:
        return max(1, {IMEM: self.instruction_words, SMEM: self.slice_words, WMEM: self.weight_words,
                       CMEM: self.const_words}[memory])


@dataclass(frozen=True)
class MachineImages:
    """The contents the host loads: packed instruction and slice words (`hw.isa.pack`), weight rows of
    `cols` weights, and constant words of `cols` (bias, multiplier, shift, lo, hi)."""

    instructions: tuple[int, ...]
    slices: tuple[int, ...]
    weights: tuple[tuple[int, ...], ...]
    constants: tuple[tuple[tuple[int, int, int, int, int], ...], ...]


def _bits(value: int, width: int) -> int:
    return value & ((1 << width) - 1)


def pack_fields(values: tuple[int, ...], widths: tuple[int, ...]) -> int:
    """Return the values packed least significant first, each in its width (two's complement)."""
    word, offset = 0, 0
    for value, width in zip(values, widths, strict=True):
        word |= _bits(value, width) << offset
        offset += width
    return word


def memory_words(shape: MachineShape, images: MachineImages) -> dict[int, list[int]]:
    """Return each loadable memory's words as integers."""
    a = shape.array
    fields = shape.const_fields
    return {IMEM: list(images.instructions), SMEM: list(images.slices),
            WMEM: [pack_fields(row, (a.weight_bits,) * a.cols) for row in images.weights],
            CMEM: [pack_fields(tuple(v for column in word for v in column), fields * a.cols)
                   for word in images.constants]}


def load_beats(shape: MachineShape, images: MachineImages) -> list[int]:
    """Return the load stream that writes the images into a machine of this shape."""
    beats: list[int] = []
    for memory, words in memory_words(shape, images).items():
        if len(words) > shape.depth(memory):
            raise ValueError(f"Memory {memory} holds {shape.depth(memory)} words, not {len(words)}")
        if not words:
            continue
        per_word = -(-shape.word_bits(memory) // BEAT)
        beats += [memory, 0, len(words)]
        for word in words:
            beats += [(word >> (BEAT * i)) & ((1 << BEAT) - 1) for i in range(per_word)]
    return beats
