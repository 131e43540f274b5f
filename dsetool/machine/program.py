"""The accelerator's program: what `dsetool.machine.compiler` makes of an integer model, and what the
sequencer (`hw.sequencer`), the memories and the reference model (`dsetool.machine.reference`) read.

Pure data, no torch. The machine has five memories, each a list of words:

- the activation buffer: words of `lanes` codes; a tensor of C channels at H x W lives at `base` as
  H * W * ceil(C / lanes) words, pixel-major, each pixel's channels in consecutive words of `lanes`
  channels (padding lanes hold 0): `Tensor.address(y, x, group)`. A vector (a linear layer's input or
  output) is the 1 x 1 case; a flatten is no instruction at all: the linear layer that reads it takes
  its words in this order, and the compiler permutes its weight rows to match.
- the weight memory: words of `cols` weights, one row of a weight-stationary tile each, in the order the
  array loads them (per tile the row of its last lane first): a GEMM's tiles are consecutive from
  `Gemm.weight_base`, N slice by N slice, each N slice's K slices in `Gemm.k_slices` order.
- the constant memory: one word per N slice of a GEMM (`Gemm.const_base` + n), `cols` `Constants` (bias,
  requantization multiplier and shift, range-check bounds) of the N slice's columns.
- the bounds memory: the range checks' per-channel bounds, one word of `lanes` (lo, hi) pairs per
  word group of a checked tensor (lane l of group g: channel g * lanes + l; padding lanes hold the
  codes' whole range): a GEMM's input check reads its K slice's group's (`Gemm.bound_word`), a vector
  instruction's output check its output word's group's (`Vector.bounds` + g). Per-layer bounds are
  the same pair in every lane.
- the logits memory: logit c at word c // cols, lane c % cols: the last GEMM's raw sums (no output
  stage), or the vector unit's sums when the logits are an average pool's (SqueezeNet ends so).

A `Slice` is one K slice of a GEMM: `rows` consecutive lanes (from `lane`) of the word of group `group`
at the pixel offset (dy, dx) from the output pixel's window origin. Slices whose lanes are all padding
are never listed, so a 1-channel first layer does not stream 7 empty slices per tap on an 8-row array.

Grouped and depthwise convolutions: output channel n of group g reads only that group's input channels,
so N slices read different K slices. `Gemm.slices` then holds one list per N slice, each listing only
the (tap, word, lane part) slices holding a channel of one of its columns' groups; tile rows of lanes
outside a column's group are zero weights. N slices may differ in K slice count (a depthwise conv of 6
channels on a 2 x 4 array: 18 slices, then 9): the slice table marks each N slice's last entry, so the
machine runs exactly the listed tiles (27 there, where padding every N slice to the largest count would
run 36), and `program_cycles` counts them (`Gemm.tiles`). A depthwise 3 x 3 conv of C channels on an
R x C_a array costs at most 9 * ceil(C / C_a) * ceil(C_a / R) tiles, 9 C / min(R, C_a) when the sides
divide C, each streaming every output pixel with min(R, C_a) useful weights in its R x C_a: the array
runs at 1 / max(R, C_a) of its peak, the known weakness of systolic arrays on depthwise layers (a
column's output reads one input channel, so the K that would fill the rows is only the 9 taps, which
the feed streams as separate slices of one word each).

Concatenation along the channels is no instruction: each input's producer writes its channels into its
range of the concat's one tensor (`Gemm.dest_offset`, `Vector.dest_offset`). A GEMM whose range starts
inside a `cols`-wide part of a word runs with `lead` = dest_offset % cols empty columns first (zero
weights, never written), so its N slices line up with the destination's parts.
"""

from __future__ import annotations

from dataclasses import dataclass


def ceil_div(a: int, b: int) -> int:
    """Return ceil(a / b) for positive integers: words of lanes, slices of columns."""
    return -(-a // b)


@dataclass(frozen=True)
class Tensor:
    """Where a tensor of `channels` x `height` x `width` codes lives in the activation buffer."""

    base: int
    channels: int
    height: int
    width: int
    lanes: int

    @property
    def groups(self) -> int:
        """Return the words per pixel: ceil(channels / lanes)."""
        return ceil_div(self.channels, self.lanes)

    @property
    def words(self) -> int:
        return self.height * self.width * self.groups

    def address(self, y: int, x: int, group: int) -> int:
        """Return the word holding channels group * lanes .. of pixel (y, x)."""
        return self.base + (y * self.width + x) * self.groups + group


@dataclass(frozen=True)
class Slice:
    """One K slice: lanes lane .. lane + rows - 1 of group `group`'s word at pixel offset (dy, dx)."""

    dy: int
    dx: int
    group: int
    lane: int


@dataclass(frozen=True)
class Constants:
    """One output channel's output-stage constants: acc + bias is requantized with (multiplier, shift)
    and clamped to the instruction's (qmin, qmax); with a range check, codes outside [lo, hi] are
    corrected (`Gemm.check`)."""

    bias: int
    multiplier: int
    shift: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Gemm:
    """A convolution or linear layer and the quantizer reading its accumulators, on the array.

    Output pixel (oy, ox) reads, for slice s, the word at (oy * stride_y + s.dy, ox * stride_x + s.dx) of
    `source` (zeros outside the map: padding). `slices`: the K slices of every N slice (one list), or of
    each N slice (a grouped conv: one list per N slice). `logits`: the accumulators (bias added) go to the
    logits memory instead of an output stage. Column c of N slice n holds output channel
    n * cols + c - lead (`lead`: none unless the layer writes into a concat at `dest_offset`), which goes
    to channel `dest_offset` + that of `dest`.
    """

    name: str
    source: Tensor
    dest: Tensor | None
    out_height: int
    out_width: int
    stride: tuple[int, int]
    out_channels: int
    slices: tuple[tuple[Slice, ...], ...]
    weight_base: int
    const_base: int
    relu: bool
    qmin: int
    qmax: int
    check: str   # "none", "clip", "zero" or "detect": the output stage's range check for this layer
    dest_offset: int = 0   # the destination channel of output channel 0 (a concat's input: its range)
    input_check: str = "none"   # the range check on the codes read from `source` (engine input_checks)
    input_bounds: int = 0   # its bounds: words input_bounds .. of the bounds memory, one per word group
    input_period: int = 1   # the checked tensor's word groups (a linear layer's view repeats them per pixel)

    def bound_word(self, s: Slice) -> int:
        """Return the bounds memory word that holds the bounds of K slice s's lanes."""
        return self.input_bounds + s.group % self.input_period

    @property
    def logits(self) -> bool:
        return self.dest is None

    @property
    def m(self) -> int:
        """Return the rows of the GEMM: output pixels."""
        return self.out_height * self.out_width

    def lead(self, cols: int) -> int:
        """Return the empty columns before output channel 0, which line its N slices up with the
        destination's `cols`-wide parts of words."""
        return self.dest_offset % cols

    def n_slices(self, cols: int) -> int:
        return ceil_div(self.lead(cols) + self.out_channels, cols)

    def k_slices(self, nt: int) -> tuple[Slice, ...]:
        """Return N slice nt's K slices."""
        return self.slices[nt] if len(self.slices) > 1 else self.slices[0]

    def tiles(self, cols: int) -> int:
        """Return the weight tiles the array runs: every N slice's K slices."""
        return sum(len(self.k_slices(nt)) for nt in range(self.n_slices(cols)))


@dataclass(frozen=True)
class Vector:
    """An op of the vector unit (`hw.vector_unit`): each output word (oy, ox, g) reduces the `kernel`
    window of `source` at (oy * stride_y - pad_y, ox * stride_x - pad_x), lane by lane, by maximum
    (`reduce` "max": taps outside the map are left out) or sum ("sum": they count 0); with `other` (an
    add) the word of `other` at the same place is added. The result is requantized with one
    (multiplier, shift), ReLU when `relu`, clamped to [qmin, qmax] and, with `check`, checked against
    the bounds memory's words `bounds` + g (per channel). A max pool requantizes by 1 to its codes' own
    range. Words go to group dest_offset // lanes + g of `dest`'s pixel (oy, ox); without `dest` (the
    logits: an average pool's sums over one output pixel) the sums themselves, lane by lane, are the
    logits."""

    name: str
    source: Tensor
    other: Tensor | None
    dest: Tensor | None
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    reduce: str
    multiplier: int
    shift: int
    relu: bool
    qmin: int
    qmax: int
    check: str
    bounds: int   # the bounds memory word of output group 0 (with `check`)
    dest_offset: int = 0   # a multiple of lanes: the destination channel of channel 0

    @property
    def logits(self) -> bool:
        return self.dest is None

    @property
    def out_height(self) -> int:
        return self.dest.height if self.dest is not None else 1

    @property
    def out_width(self) -> int:
        return self.dest.width if self.dest is not None else 1

    @property
    def words(self) -> int:
        """Return the output words: one per output pixel and group of the source's channels."""
        return self.out_height * self.out_width * self.source.groups

    @property
    def taps(self) -> int:
        """Return the buffer words read per output word."""
        return self.kernel[0] * self.kernel[1] + (self.other is not None)


Instruction = Gemm | Vector


@dataclass(frozen=True)
class Program:
    """Everything the accelerator holds for one network: its instructions and memory images.

    `input` is where the host writes the input quantizer's codes of an image; `num_classes` logits are
    read from the logits memory, channel c at word c // cols, lane c % cols. `acc_bits` holds every
    layer's accumulators and, when the logits are the vector unit's sums, those.
    """

    rows: int
    cols: int
    lanes: int
    act_bits: int
    act_signed: bool
    weight_bits: int
    acc_bits: int
    multiplier_bits: int
    shift_bits: int
    input: Tensor
    num_classes: int
    instructions: tuple[Instruction, ...]
    weights: tuple[tuple[int, ...], ...]      # weight memory words (cols each)
    constants: tuple[tuple[Constants, ...], ...]   # constant memory words (cols each)
    buffer_words: int                          # activation buffer depth
    bounds: tuple[tuple[tuple[int, int], ...], ...] = ()   # bounds memory words ((lo, hi) per lane)

    @property
    def check(self) -> str:
        """Return the one range-check mode of the program's checks ("none" without any); raise
        ValueError when they differ (the machine builds one mode)."""
        modes = {mode for i in self.instructions for mode in (i.check, getattr(i, "input_check", "none"))} - {"none"}
        if len(modes) > 1:
            raise ValueError(f"The machine builds one range-check mode, and the program asks for {sorted(modes)}")
        return modes.pop() if modes else "none"

    @property
    def input_checked(self) -> bool:
        """Return whether a GEMM checks the codes it reads: the machine then builds the read path's check
        (`hw.machine_format.MachineShape.input_check`), which the double-buffered one pipelines."""
        return any(isinstance(i, Gemm) and i.input_check != "none" for i in self.instructions)



def sum_bits(act_bits: int, taps: int) -> int:
    """Return the width of the vector unit's sums of `taps` codes of `act_bits` (two's complement)."""
    return act_bits + max(1, taps.bit_length()) + 1


def program_cycles(program: Program, weight_buffers: int = 1, dataflow: str = "ws") -> int:
    """Return the cycles from `start` to the first logit on the host stream (`hw.cycles`' machine
    schedule), which the RTL simulation measures, on a machine with `weight_buffers` weight banks per
    PE (`hw.machine_format.MachineShape.weight_buffers`: 1, or 2 to load a tile's weights while the
    previous tile streams), weight-stationary, or output-stationary (`dataflow` "os", whose weights
    stream: `weight_buffers` is not read)."""
    from hw.cycles import machine_end_cycles, machine_gemm_cycles, machine_stream_gemm_cycles, machine_vector_cycles

    if dataflow not in ("ws", "os"):
        raise ValueError(f"The accelerator's dataflow must be 'ws' or 'os', not {dataflow!r}")
    total = machine_end_cycles()
    for instr in program.instructions:
        if isinstance(instr, Gemm) and dataflow == "os":
            total += machine_stream_gemm_cycles(instr.m, [len(instr.k_slices(nt)) for nt in
                                                          range(instr.n_slices(program.cols))],
                                                program.rows, program.cols)
        elif isinstance(instr, Gemm):
            total += machine_gemm_cycles(instr.m, instr.tiles(program.cols), program.rows, program.cols,
                                         weight_buffers, program.input_checked)
        else:
            total += machine_vector_cycles(instr.words, instr.taps)
    return total
