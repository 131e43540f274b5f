"""Encode an accelerator program into the memory images and parameters `hw.machine.Machine` is built
with (`hw.isa` formats): the one place where the program's fields become bits."""

from __future__ import annotations

from dsetool.machine.compiler import UnsupportedOp
from dsetool.machine.program import Gemm, Program, Tensor, Vector, sum_bits
from hw import isa
from hw.arrayconfig import ArrayConfig
from hw.machine_format import SHIFT_BITS, MachineImages, MachineShape


def _bits(largest: int) -> int:
    return max(1, int(largest).bit_length())


def widths_of(program: Program, multiplier_bits: int) -> isa.Widths:
    """Return field widths that hold every value the program's instructions and slices carry."""
    tensors = [program.input] + [t for i in program.instructions for t in _tensors(i)]
    dims = [max(t.height, t.width) for t in tensors] + [max(i.out_height, i.out_width)
                                                         for i in program.instructions]
    slices = sum(len(one) for i in program.instructions if isinstance(i, Gemm) for one in i.slices)
    strides = [s for i in program.instructions for s in i.stride]
    largest_pitch = max(t.width * t.groups * max(strides + [1]) for t in tensors)
    return isa.Widths(address=_bits(max(program.buffer_words, largest_pitch) + 1), dim=_bits(max(dims) + 1),
                      weight=_bits(len(program.weights) + 1), const=_bits(len(program.constants) + 1),
                      slice=_bits(slices + 1), lane=_bits(program.lanes // program.rows),
                      code=program.act_bits + 1, multiplier=multiplier_bits, shift=SHIFT_BITS,
                      column=_bits(max(program.cols, program.lanes // program.cols)),
                      bounds=_bits(len(program.bounds) + 1))


def _tensors(instr: Gemm | Vector) -> list[Tensor]:
    others = [instr.other] if isinstance(instr, Vector) and instr.other is not None else []
    return [instr.source, *others] + ([instr.dest] if instr.dest is not None else [])


def _gemm(instr: Gemm, slice_first: int, program: Program) -> tuple[dict[str, int], list[dict[str, int]]]:
    src, (sy, sx) = instr.source, instr.stride
    pitch = src.width * src.groups
    fields = {"opcode": isa.GEMM, "src_base": src.base, "src_h": src.height, "src_w": src.width,
              "src_groups": src.groups, "row_pitch": pitch, "step_y": sy * pitch, "step_x": sx * src.groups,
              "sy": sy, "sx": sx, "out_h": instr.out_height, "out_w": instr.out_width, "m_count": instr.m,
              "n_count": instr.n_slices(program.cols), "slice_first": slice_first,
              "slice_walk": int(len(instr.slices) > 1), "weight_base": instr.weight_base,
              "const_base": instr.const_base, "relu": int(instr.relu), "check": int(instr.check != "none"),
              "in_check": int(instr.input_check != "none"),
              "logits": int(instr.logits), "qmin": instr.qmin, "qmax": instr.qmax, **_gemm_writer(instr, program)}
    slices = [{"dy": s.dy, "dx": s.dx, "row_off": s.dy * pitch + s.group, "col_off": s.dx * src.groups,
               "part": s.lane // program.rows, "last": int(j == len(one) - 1),
               "bound": instr.bound_word(s) if instr.input_check != "none" else 0}
              for one in instr.slices for j, s in enumerate(one)]
    return fields, slices


def _gemm_writer(instr: Gemm, program: Program) -> dict[str, int]:
    """Return where the output writer starts (the word and `cols`-wide part of column 0 of N slice 0)
    and the columns it leaves unwritten (before the first channel, after the last)."""
    dest, cols = instr.dest, program.cols
    if dest is None:
        return {}
    lead = instr.lead(cols)
    group, part = divmod((instr.dest_offset - lead) // cols, program.lanes // cols)
    return {"dst_base": dest.base + group, "dst_groups": dest.groups, "dst_part": part, "dst_lead": lead,
            "dst_trail": instr.n_slices(cols) * cols - lead - instr.out_channels}


def _vector(instr: Vector) -> dict[str, int]:
    src, dest = instr.source, instr.dest
    (kh, kw), (sy, sx), (py, px) = instr.kernel, instr.stride, instr.padding
    pitch = src.width * src.groups
    fields = {"opcode": isa.VECTOR, "src_base": src.base, "src_h": src.height, "src_w": src.width,
              "src_groups": src.groups, "row_pitch": pitch, "step_y": sy * pitch, "step_x": sx * src.groups,
              "sy": sy, "sx": sx, "py": py, "px": px, "kh": kh, "kw": kw, "out_h": instr.out_height,
              "out_w": instr.out_width, "row_off": -py * pitch, "col_off": -px * src.groups,
              "ky_step": pitch, "kx_step": src.groups, "bounded": 1, "reduce_max": int(instr.reduce == "max"),
              "multiplier": instr.multiplier, "shift": instr.shift, "relu": int(instr.relu),
              "qmin": instr.qmin, "qmax": instr.qmax, "check": int(instr.check != "none"),
              "bounds_base": instr.bounds, "logits": int(instr.logits)}
    if dest is not None:   # a range of a concat's tensor starts dest_offset // lanes words into each pixel's
        fields |= {"dst_base": dest.base + instr.dest_offset // dest.lanes, "dst_skip": dest.groups - src.groups}
    if instr.other is not None:   # an add: a 1 x 2 window whose second tap is the other addend's word
        fields |= {"kw": 2, "kx_step": instr.other.base - src.base, "bounded": 0}
    return fields


def check_mode(program: Program) -> str:
    """Return the range-check mode the machine's units need: the one its checks use, or none."""
    try:
        return program.check
    except ValueError as error:
        raise UnsupportedOp(str(error)) from None


def machine_of(program: Program, multiplier: str = "dsp", multiplier_bits: int | None = None,
               acc_bits: int | None = None, tmr: bool = False, weight_buffers: int = 1, dataflow: str = "ws"
               ) -> tuple[MachineShape, MachineImages]:
    """Return the shape of the machine that runs `program` and the images its host loads.
    `multiplier_bits`: the requantization multiplier's width (the design's; by default what the
    program's constants need); `tmr`: the datapath triplicated and voted (`hw.machine_datapath`);
    `weight_buffers`: 2 for double-buffered weights (`MachineShape.weight_buffers`; the images are the
    same); `dataflow`: "os" for the output-stationary machine (`hw.machine_stream`: same images, and
    its weights stream, so `weight_buffers` must be 1)."""
    bits = multiplier_bits or program.multiplier_bits
    widths = widths_of(program, bits)
    instruction, slice_ = isa.instruction_layout(widths), isa.slice_layout(widths)
    words: list[int] = []
    slice_words: list[int] = []
    for instr in program.instructions:
        if isinstance(instr, Gemm):
            fields, slices = _gemm(instr, len(slice_words), program)
            slice_words.extend(isa.pack(slice_, s) for s in slices)
        else:
            fields = _vector(instr)
        words.append(isa.pack(instruction, fields))
    words.append(isa.pack(instruction, {"opcode": isa.END}))
    taps = [i.taps for i in program.instructions if isinstance(i, Vector)]
    if acc_bits is not None and acc_bits < program.acc_bits:
        raise UnsupportedOp(f"the program's accumulators need {program.acc_bits} bits; the machine has {acc_bits}")
    array = ArrayConfig(rows=program.rows, cols=program.cols, act_bits=program.act_bits,
                        weight_bits=program.weight_bits, acc_bits=acc_bits or program.acc_bits,
                        act_signed=program.act_signed, multiplier=multiplier, tmr=tmr, dataflow=dataflow)
    if bits < program.multiplier_bits or program.shift_bits > SHIFT_BITS:
        raise UnsupportedOp(f"The program's constants need a {program.multiplier_bits}-bit multiplier and "
                         f"{program.shift_bits}-bit shift; the machine has {bits} and {SHIFT_BITS}")
    shape = MachineShape(array=array, lanes=program.lanes, widths=widths, multiplier_bits=bits,
                         check=check_mode(program), buffer_words=program.buffer_words,
                         input_base=program.input.base, input_words=program.input.words,
                         num_classes=program.num_classes, instruction_words=len(words),
                         slice_words=len(slice_words), weight_words=len(program.weights),
                         const_words=len(program.constants),
                         max_rows=max(i.m for i in program.instructions if isinstance(i, Gemm)),
                         sum_bits=sum_bits(program.act_bits, max([1] + taps)), bounds_words=len(program.bounds),
                         input_check=program.input_checked,
                         output_check=any(i.check != "none" for i in program.instructions),
                         weight_buffers=weight_buffers)
    constants = tuple(tuple((c.bias, c.multiplier, c.shift, c.lo, c.hi) for c in word) for word in program.constants)
    return shape, MachineImages(tuple(words), tuple(slice_words), program.weights, constants, program.bounds)


def input_codes(program: Program, codes: object) -> list[int]:
    """Return the host's input stream for one image's input codes (C, H, W): the input tensor's words
    lane by lane, padding lanes 0 (`hw.machine.Machine`'s `in_*` stream)."""
    import numpy as np

    t = program.input
    padded = np.zeros((t.groups * t.lanes, t.height, t.width), dtype=np.int64)
    padded[:t.channels] = np.asarray(codes, dtype=np.int64).reshape(t.channels, t.height, t.width)
    return [int(v) for v in padded.reshape(t.groups * t.lanes, -1).T.reshape(-1)]
