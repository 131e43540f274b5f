"""What `hw.machine.Machine` is built with (`MachineShape`) and what the host loads into it
(`MachineImages`), and the host's load stream that carries the images (`load_beats`).

The shape depends only on the network's layer shapes and the design's widths, so one synthesis (and
one compiled simulation) serves every trained model of a design point: the weights, constants and
program arrive over the host port, as they would on a board.

Load stream (while the machine is idle): 32-bit beats. A block is three header beats (the memory:
`IMEM`, `SMEM`, `WMEM`, `CMEM` or, in a machine with range checks, `BMEM`; the first word address; the
word count), then every word as ceil(width / 32) beats, least significant first. Blocks follow one
another.

The bounds memory (`BMEM`) holds range-check bounds by activation word: a word is `lanes` (lo, hi)
pairs, lane l's at bits 2 * l * w .. (w the code width), for the channels a word of a checked tensor
holds (lane l of group g: channel g * lanes + l). A GEMM's input check reads the word of its current K
slice's group (the slice entry's `bound`), a vector instruction's output check that of its output
word's group (`bounds_base` + g). Padding lanes hold the codes' whole range, so they never fire.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Shape, signed, unsigned

from hw import isa
from hw.arrayconfig import ArrayConfig
from hw.cycles import check_weight_buffers

BEAT = 32
PE_TILE_BITS = PE_CYCLE_BITS = 32   # the PE fault port's tile and cycle counts (simulation builds only)
IMEM, SMEM, WMEM, CMEM, BMEM = 0, 1, 2, 3, 4
MEMORY_BITS = 3   # the width of a block's memory id in the load stream's register
SHIFT_BITS = 8   # the requantization shift's width: s in -128..127, whatever the scales


@dataclass(frozen=True)
class MachineShape:
    """The machine's build parameters: the array, the widths, the memories' depths, the host layout.

    `check` is the range-check mode of every unit built ("none", or `hw.protect.MACHINE_MODES`: "clip",
    "zero", "detect"); `output_check` whether the output stages (array columns and vector unit) have a
    range-check unit, `input_check` whether the activation buffer's read path into the array has one;
    `bounds_words` the bounds memory's depth (`BMEM`, built when `check` is not "none"). `max_rows` the
    largest GEMM M (the K accumulator's depth); `input_base` / `input_words` where the host's input codes
    go; `sum_bits` the width of the vector unit's reductions. `weight_buffers` the weight registers per
    PE: 1, every tile loads, streams and drains in turn; 2, the next tile's weights load into the other
    bank while the current tile streams, tiles back to back (`hw.machine`, `hw.cycles.machine_gemm_cycles`).
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
    bounds_words: int = 0
    input_check: bool = False
    output_check: bool = True
    weight_buffers: int = 1

    def __post_init__(self) -> None:
        check_weight_buffers(self.weight_buffers, "MachineShape")

    @property
    def checked_read(self) -> bool:
        """Return whether the read path into the array has a range-check unit (`input_check` with a mode):
        on the double-buffered machine it registers the codes before checking them, a cycle per GEMM."""
        return self.input_check and self.check != "none"

    @property
    def memories(self) -> tuple[int, ...]:
        """Return the loadable memories the machine has: the bounds memory only with range checks."""
        return (IMEM, SMEM, WMEM, CMEM) + ((BMEM,) if self.check != "none" else ())

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
                CMEM: self.array.cols * sum(self.const_fields),
                BMEM: self.lanes * 2 * self.code_shape.width}[memory]

    def depth(self, memory: int) -> int:
        return max(1, {IMEM: self.instruction_words, SMEM: self.slice_words, WMEM: self.weight_words,
                       CMEM: self.const_words, BMEM: self.bounds_words}[memory])


@dataclass(frozen=True)
class MachineImages:
    """The contents the host loads: packed instruction and slice words (`hw.isa.pack`), weight rows of
    `cols` weights, constant words of `cols` (bias, multiplier, shift, lo, hi), and bounds words of
    `lanes` (lo, hi)."""

    instructions: tuple[int, ...]
    slices: tuple[int, ...]
    weights: tuple[tuple[int, ...], ...]
    constants: tuple[tuple[tuple[int, int, int, int, int], ...], ...]
    bounds: tuple[tuple[tuple[int, int], ...], ...] = ()


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
    """Return each loadable memory's words as integers; raise ValueError for bounds a machine without
    range checks cannot hold."""
    a = shape.array
    fields = shape.const_fields
    words = {IMEM: list(images.instructions), SMEM: list(images.slices),
             WMEM: [pack_fields(row, (a.weight_bits,) * a.cols) for row in images.weights],
             CMEM: [pack_fields(tuple(v for column in word for v in column), fields * a.cols)
                    for word in images.constants]}
    if BMEM not in shape.memories:
        if images.bounds:
            raise ValueError("A machine without range checks has no bounds memory to load")
        return words
    code = shape.code_shape.width
    words[BMEM] = [pack_fields(tuple(v for pair in word for v in pair), (code,) * (2 * shape.lanes))
                   for word in images.bounds]
    return words


def load_beats(shape: MachineShape, images: MachineImages) -> list[int]:
    """Return the load stream that writes the images into a machine of this shape."""
    return change_beats(shape, {}, memory_words(shape, images))


def change_beats(shape: MachineShape, loaded: dict[int, list[int]], images: dict[int, list[int]]) -> list[int]:
    """Return the load stream that turns a machine holding the `loaded` memory words into one holding
    `images` (both as `memory_words` gives them): a block per run of words that differ, so a faulty
    model's one flipped weight costs one word, not the whole load."""
    beats: list[int] = []
    for memory, words in images.items():
        before = loaded.get(memory, [])
        if len(words) > shape.depth(memory):
            raise ValueError(f"Memory {memory} holds {shape.depth(memory)} words, not {len(words)}")
        if len(before) != len(words):   # nothing loaded yet, or another layout: the whole memory
            beats += _block(shape, memory, 0, words) if words else []
            continue
        differ = [i for i, (old, new) in enumerate(zip(before, words, strict=True)) if old != new]
        start = 0
        while start < len(differ):
            end = start
            while end + 1 < len(differ) and differ[end + 1] == differ[end] + 1:
                end += 1
            beats += _block(shape, memory, differ[start], words[differ[start]:differ[end] + 1])
            start = end + 1
    return beats


def _block(shape: MachineShape, memory: int, address: int, words: list[int]) -> list[int]:
    """Return one block of the load stream: its header (memory, first address, words) and the words' beats."""
    per_word = -(-shape.word_bits(memory) // BEAT)
    beats = [memory, address, len(words)]
    for word in words:
        beats += [(word >> (BEAT * i)) & ((1 << BEAT) - 1) for i in range(per_word)]
    return beats
