"""Faults injected into the simulated accelerator, checked against the engine's fault model.

The engine's campaigns compute what a fault does without simulating hardware (`dsetool.faults.apply`).
This module injects the same faults into the compiled RTL of the accelerator that runs the network and
compares the logits bit for bit, so the fault model is checked against the machine, as ENFOR-SA checks
its injector against RTL:

- `act` (the activation buffer a weight layer reads): the stored code (`lane_mask`) is flipped in the machine's
  activation buffer through `hw.machine.Machine`'s fault port, when the instruction of the engine's first
  reader of that buffer is fetched: after every instruction before it wrote the tensor, before any read
  of it. Every later read sees the flip (a residual branch's second reader too), and an input-side range
  check meets the faulty code as the engine's `input_check` does.
- `out` (a layer's requantized output): the code its output stage wrote is flipped in the activation
  buffer, through the same port, when the first instruction reading that tensor is fetched (a pooling
  vector instruction, or the next layer): after the whole tensor is written (and checked, with a range
  check at the outputs), before any read, as the engine flips the requantizer's codes after its check.
  The logits layer's `out` sites are its accumulators, which the machine streams out and never stores:
  they are not injected (`machine_groups`).
- `weight` (a layer's stored weights): the machine is loaded with the program compiled from the model
  with that weight flipped, which is what a flipped cell of the weight memory holds for the whole
  inference, the engine's semantics.
- `pe.act`, `pe.weight`, `pe.psum`, `pe.shadow` (a PE register at one cycle, `dsetool.engine.tiling`'s sites): the
  register of the PE the site names is flipped through the machine's PE fault port on the cycle the site
  names, counted from the presentation of the layer's tile (`pe_flip`): the fault model's K order,
  columns, tile order and timeline are then checked against the machine that runs them. Every machine
  has the port; with TMR it reaches one replica, whose fault the voters must mask (`check_faults`). A
  grouped or depthwise conv's sites are the machine's GEMM over all its input channels, each N slice
  streaming its own K slices (`LayerTiling.slice_orders`); layers whose sites are not the machine's
  schedule (output-stationary layers with K' < C, whose tiles wait, or a grouped conv whose N slices
  stream different K' there) are left out (`machine_groups`).

`check_faults` draws faults uniformly over the population of the sites (each site's groups weighted by
their size, bit uniform over the register's width), runs each on its image, and returns how many give the
engine's logits (and, with a range check, whether the machine's alarm is what the engine says: raised
fault-free on that image, or a check acted on a value the fault changed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from dsetool.engine import Engine
from dsetool.engine.intmodel import IntModel, WeightOp
from dsetool.engine.tiling import LayerTiling
from dsetool.faults import site_registry
from dsetool.faults.sites import SiteError, SiteGroup, site_groups
from dsetool.machine.program import Gemm, Program, Tensor, Vector
from hw.arrayconfig import ArrayConfig


@dataclass(frozen=True)
class BufferFlip:
    """Where one activation-buffer fault lands in the machine: the bits `mask` of lane `lane` of word
    `address`, flipped at the fetch of instruction `pc`."""

    pc: int
    address: int
    lane: int
    mask: int


def _reads(instr: Gemm | Vector) -> list[Tensor]:
    return [instr.source] + ([instr.other] if isinstance(instr, Vector) and instr.other is not None else [])


def buffer_flip(program: Program, group: SiteGroup, element: int, bit: int) -> BufferFlip:
    """Return where an `act` fault (of `group`, on its flat `element`, bit `bit`) lands in the machine.

    Raises ValueError for a code wider than the machine's lanes (a compiled program's lanes hold every
    quantizer's codes, so only a hand-made program has one)."""
    if group.width > program.act_bits:
        raise ValueError(f"layer {group.layer}'s input codes have {group.width} bits, more than the machine's "
                         f"lanes ({program.act_bits})")
    instructions = program.instructions
    at = _gemm_of(program, group.layer)
    view = instructions[at].source
    written, tensor = _stored(program, at, view, group.size)
    pc = min(i for i in range(written + 1, at + 1) if any(t.base == view.base for t in _reads(instructions[i])))
    return _flip_in(program, tensor, pc, group, element, bit)


def output_flip(program: Program, group: SiteGroup, element: int, bit: int) -> BufferFlip:
    """Return where an `out` fault (of `group`: a weight layer's requantized codes, on their flat `element`,
    bit `bit`) lands in the machine: the word its GEMM instruction wrote, flipped when the first
    instruction after it that reads the tensor is fetched.

    Raises ValueError for a layer whose output the machine does not store (the logits layer's
    accumulators) or stores at another size than the group's (a layer with two requantizers)."""
    instructions = program.instructions
    at = _gemm_of(program, group.layer)
    tensor = instructions[at].dest
    if tensor is None or tensor.channels * tensor.height * tensor.width != group.size:
        raise ValueError(f"layer {group.layer}'s output is not stored in the activation buffer as its "
                         f"{group.size} requantized codes")
    pc = next(i for i in range(at + 1, len(instructions))
              if any(t.base == tensor.base for t in _reads(instructions[i])))
    return _flip_in(program, tensor, pc, group, element, bit)


def _gemm_of(program: Program, layer: str) -> int:
    """Return the index of the GEMM instruction that runs weight layer `layer`."""
    return next(i for i, instr in enumerate(program.instructions) if isinstance(instr, Gemm) and instr.name == layer)


def _flip_in(program: Program, tensor: Tensor, pc: int, group: SiteGroup, element: int, bit: int) -> BufferFlip:
    """Return the flip of bit `bit` of `group`'s code at flat (channel, y, x) `element` of `tensor` as
    stored, at the fetch of instruction `pc`."""
    channel, y, x = np.unravel_index(element, (tensor.channels, tensor.height, tensor.width))
    return BufferFlip(pc, tensor.address(int(y), int(x), int(channel) // tensor.lanes),
                      int(channel) % tensor.lanes, lane_mask(bit, group.width, group.signed, program.act_bits))


@dataclass(frozen=True)
class PEFlip:
    """Where one PE-register fault lands in the machine (`hw.machine.Machine`'s `pe_*` port): the bits
    `mask` of register `register` (an index of `hw.array.FAULT_REGISTERS`; a weight in bank `bank`) of
    PE(`row`, `col`), flipped `cycle` cycles after the first row of tile `tile` of GEMM instruction `pc`
    is presented to the array."""

    pc: int
    tile: int
    cycle: int
    row: int
    col: int
    register: int
    bank: int
    mask: int


PE_REGISTERS = {site_registry.INPUT: 0, site_registry.WEIGHTS: 1, site_registry.ACCUMULATOR: 2,
                site_registry.FINISHED: 3}
"""The machine's PE register (`hw.array.FAULT_REGISTERS` index) of each PE site's register kind."""


def pe_flip(program: Program, group: SiteGroup, element: int, bit: int) -> PEFlip:
    """Return where a PE-register fault (of `group`, a `pe.*` site of a layer on the machine's array, at
    its flat `element`, bit `bit`) lands in the machine.

    A single-buffered machine runs a tile at a time: the site's (tile, cycle of its window) is the
    tile's index in the machine's order (N slice after N slice) and its cycle. A double-buffered one,
    and the output-stationary one, run the tiles on one timeline (`LayerTiling.period`): the cycle
    counts from tile 0, and a weight-stationary weight site names its bank (tile j's weights go into
    bank j % 2, as the sequencer alternates them from bank 0 at each GEMM). A code held in a wider register (the
    machine's lanes and weights) is sign- or zero-extended there: `lane_mask` says which bits flip.

    Raises ValueError for a layer whose sites do not follow the machine's schedule (`follows_machine`)."""
    tiling = group.tiling
    if tiling is None or not follows_machine(tiling) or not group.one_gemm:
        raise ValueError(f"layer {group.layer}'s {group.site} sites do not follow the machine's schedule (an array "
                         f"without an accelerator, an output-stationary layer with K' < C or a grouped conv "
                         f"whose N slices stream different K' there)")
    if (tiling.rows, tiling.cols) != (program.rows, program.cols):
        raise ValueError(f"layer {group.layer}'s sites are on a {tiling.rows}x{tiling.cols} array, the machine's "
                         f"is {program.rows}x{program.cols}")
    register = site_registry.site(group.site).register
    pc = _gemm_of(program, group.layer)
    stationary = group.stationary_weights
    if tiling.period:   # (cycle, bank, row, col) for the double-buffered machine's weights, else (cycle, row, col)
        where = [int(x) for x in np.unravel_index(element, group.shape)]   # (`one_gemm`: the timeline's grid)
        cycle, tile_at, bank, r, c = where[0], 0, where[1] if stationary else 0, where[-2], where[-1]
    else:   # a window per tile: the tile's place in the machine's order, the cycle of its window
        tile_a, tile_n, cycle, r, c = (int(np.asarray(v).item()) for v in tiling.decode(np.array([element])))
        tile_at, bank = int(tiling.machine_tile(tile_a, tile_n)), 0
    if register is site_registry.INPUT:
        mask = lane_mask(bit, group.width, group.signed, program.act_bits)
    elif register is site_registry.WEIGHTS:
        mask = lane_mask(bit, group.width, True, program.weight_bits)
    else:
        mask = 1 << bit
    return PEFlip(pc, tile_at, cycle, r, c, PE_REGISTERS[register], bank, mask)


def follows_machine(tiling: LayerTiling) -> bool:
    """Tell whether a layer's PE sites are the machine's schedule: the accelerator's K order, and on the
    output-stationary machine its streaming timeline (K' >= C; `LayerTiling.period`)."""
    return (tiling.k_order is not None or tiling.slice_orders is not None) \
        and (tiling.dataflow == "ws" or tiling.period > 0)


def machine_groups(engine: Engine, acc_bits: Mapping[str, int], array: ArrayConfig | None = None,
                   weight_buffers: int = 1) -> list[SiteGroup]:
    """Return the site groups of `SITES` the machine can be faulted at: every one but the logits layer's
    `out` group (accumulators the machine streams out, never stores); with the machine's `array` (and
    its weight buffers), also the PE sites of its layers where they follow its schedule
    (`follows_machine`; with TMR, in replica `rep0`)."""
    groups = [g for site in SITES for g in site_groups(engine.model, site, [], acc_bits)
              if not (site == "out" and g.op_index in engine.layers)]
    if array is not None:
        for site in PE_SITES:
            try:
                found = site_groups(engine.model, site, [], acc_bits, array, weight_buffers)
            except SiteError:   # shadow registers: none on a weight-stationary array or without a streaming layer
                if site_registry.site(site).register is not site_registry.FINISHED:
                    raise
                continue
            groups += [g for g in found
                       if g.tiling is not None and follows_machine(g.tiling) and g.one_gemm]
    return groups


FLIPS: dict[str, Callable[[Program, SiteGroup, int, int], BufferFlip]] = {"act": buffer_flip, "out": output_flip}
"""The sites injected as a flip in the activation buffer, and where each fault lands."""
SITES = (*FLIPS, "weight")   # the sites the machine is faulted at: the weights by loading a faulty model
PE_SITES = tuple(name for name, entry in site_registry.REGISTRY.items() if entry.in_array)   # through the PE fault port


def _stored(program: Program, reader: int, view: Tensor, size: int) -> tuple[int, Tensor]:
    """Return the tensor as written that instruction `reader` reads through `view` (a linear layer reads
    its input's words as one pixel of words x lanes channels), the last one written at that base before
    it, and the instruction that wrote it (-1: the host wrote the input)."""
    written = [(-1, program.input)] + [(i, instr.dest) for i, instr in enumerate(program.instructions[:reader])
                                       if instr.dest is not None]
    for writer, tensor in reversed(written):
        if tensor.base == view.base and tensor.channels * tensor.height * tensor.width == size:
            return writer, tensor
    raise ValueError(f"no tensor of {size} codes at buffer word {view.base} before instruction {reader}")


def lane_mask(bit: int, width: int, signed: bool, lane_bits: int) -> int:
    """Return the lane bits that change when bit `bit` of a `width`-bit code flips: the code is held
    zero- or sign-extended to `lane_bits`, so a signed code's sign bit flips its extension too."""
    if signed and bit == width - 1:
        return ((1 << lane_bits) - 1) ^ ((1 << bit) - 1)
    return 1 << bit


def flipped_weight(model: IntModel, group: SiteGroup, element: int, bit: int) -> IntModel:
    """Return `model` with weight `element` of `group`'s layer (its flat torch-layout index) with bit
    `bit` flipped in the weight's two's complement width."""
    op = model.ops[group.op_index]
    assert isinstance(op, WeightOp)
    weights = np.array(op.weight, dtype=np.int64).reshape(-1)
    width = group.width
    raw = (int(weights[element]) & ((1 << width) - 1)) ^ (1 << bit)
    weights[element] = raw - (1 << width) if raw >> (width - 1) else raw
    ops = list(model.ops)
    ops[group.op_index] = replace(op, weight=weights.reshape(op.weight.shape).astype(op.weight.dtype))
    return replace(model, ops=tuple(ops))


@dataclass(frozen=True)
class FaultCheck:
    """The outcome of `check_faults`."""

    faults: int
    agree: int                 # faulty runs whose logits equal the engine's
    changed: int               # of them, runs whose logits differ from the fault-free ones
    alarm_agree: int | None    # with a range check: runs whose alarm is the engine's
    first_disagreement: str | None
    outvoted: int = 0          # with TMR: PE faults that change one replica's logits, and the vote masked


def draw(groups: Sequence[SiteGroup], images: int, count: int, seed: int
         ) -> list[tuple[int, int, int, int]]:
    """Draw `count` single-bit faults (group, element, bit, image), uniform over the sites' population."""
    rng = np.random.default_rng(seed)
    sizes = np.array([g.size * g.width for g in groups], dtype=np.float64)
    chosen = rng.choice(len(groups), size=count, p=sizes / sizes.sum())
    return [(int(j), int(rng.integers(groups[j].size)), int(rng.integers(groups[j].width)), int(rng.integers(images)))
            for j in chosen]


def engine_outcomes(engine: Engine, x: torch.Tensor, groups: Sequence[SiteGroup],
                    faults: Sequence[tuple[int, int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Return the engine's faulty logits and whether a protection acted on a changed value, per fault."""
    from dsetool.faults.apply import Faults, evaluate
    from dsetool.faults.network import EngineNetwork

    golden = engine.run(x, keep=True)
    table = np.array(faults, dtype=np.int64).reshape(-1, 4)
    rows = np.arange(len(table))
    result = evaluate(EngineNetwork(engine), golden, table[:, 3], groups,
                      Faults(rows, table[:, 0], table[:, 1], table[:, 2]), "bitflip")
    return result.logits.to(torch.int64).numpy(), result.detected


def check_faults(engine: Engine, program: Program, x: torch.Tensor, groups: Sequence[SiteGroup],
                 faults: Sequence[tuple[int, int, int, int]], run: Any, make_engine: Callable[[IntModel], Engine],
                 golden_alarms: np.ndarray | None, tmr: bool = False) -> FaultCheck:
    """Run every fault on the machine (`run(program, codes, flip)` -> (logits, alarm, replicas disagreed:
    None without TMR), `flip` a `BufferFlip`, a `PEFlip` or None; a weight fault passes the program of its
    faulty model, whose engine, with the same range checks, `make_engine` gives) and compare with the
    engine.

    With `tmr` (the machine's datapath triplicated behind voters), a PE fault hits one replica: the vote
    masks it, so the machine must give the fault-free logits and the fault-free alarm (the checks inside
    the datapath are voted too); `outvoted` counts those whose replica's logits (the engine's for the
    fault) differ from them, and each of these must have made the voters see the replicas disagree (else
    the fault never reached the replica: a disagreement). The buffers and the weight memory are not
    triplicated: their faults are the engine's as without TMR. (The campaigns' `tmr` protection is
    coarser, the whole inference three times with a vote on the top-1, `dsetool.faults.campaign.vote`;
    this checks the machine's TMR, not that model.)"""
    from dsetool.machine.compiler import compile_program

    expected, detected = engine_outcomes(engine, x, groups, faults)
    clean = engine.logits(x).to(torch.int64).numpy()
    voted = np.zeros(len(faults), dtype=bool)   # PE faults the vote must mask, changing the replica's logits
    if tmr:
        for row, (g, _, _, image) in enumerate(faults):
            if groups[g].site in PE_SITES:
                voted[row] = not np.array_equal(expected[row], clean[image])
                expected[row], detected[row] = clean[image], False
    codes = engine.quantize_input(x).numpy()
    agree = changed = alarm_agree = 0
    first = None
    for row, (g, element, bit, image) in enumerate(faults):
        group = groups[g]
        if group.site in FLIPS:
            logits, alarm, disagreed = run(program, codes[image], FLIPS[group.site](program, group, element, bit))
        elif group.site in PE_SITES:
            logits, alarm, disagreed = run(program, codes[image], pe_flip(program, group, element, bit))
        else:
            faulty_engine = make_engine(flipped_weight(engine.model, group, element, bit))
            faulty = compile_program(faulty_engine, program.rows, program.cols)
            logits, alarm, disagreed = run(faulty, codes[image], None)
        same = np.array_equal(np.asarray(logits, dtype=np.int64), expected[row])
        if voted[row] and not disagreed:
            same, logits = False, [f"no replica disagreed (the fault missed replica rep0): {list(logits)}"]
        agree += same
        changed += same and not np.array_equal(expected[row], clean[image])
        if golden_alarms is not None:
            alarm_agree += alarm == bool(golden_alarms[image] or detected[row])
        if not same and first is None:
            first = (f"{group.site} fault in layer {group.layer}, element {element}, bit {bit}, image {image}: "
                     f"{list(logits)} against {expected[row].tolist()}")
    return FaultCheck(len(faults), agree, changed, alarm_agree if golden_alarms is not None else None, first,
                      int(voted.sum()))


Run = tuple[list[int], bool, bool | None]   # a faulty run's logits, alarm and (TMR) replicas' disagreement


def session_runner(session: Any, program: Program, shape: Any, images_of: Callable[[Program], Any]
                   ) -> Callable[[Program, np.ndarray, BufferFlip | PEFlip | None], Run]:
    """Return `check_faults`' `run` over a compiled simulation of a machine built with `fault_port` and
    loaded with `program` (exactly `images_of(program)`, the memory images it gives: a weight fault's
    program is loaded for its run, the original again after it, each as the words that differ)."""
    from dsetool.machine.encode import input_codes
    from hw import machine_host
    from hw.machine_format import memory_words

    clean = memory_words(shape, images_of(program))
    loaded: dict[str, Any] = {"program": program, "words": clean}

    def run(prog: Program, codes: np.ndarray, flip: BufferFlip | PEFlip | None) -> Run:
        if prog is not loaded["program"]:
            words = clean if prog is program else memory_words(shape, images_of(prog))
            machine_host.load_changes(session, shape, loaded["words"], words)
            loaded.update(program=prog, words=words)
        machine_host.disarm_fault(session)
        if isinstance(flip, BufferFlip):
            machine_host.arm_fault(session, flip.pc, flip.address, flip.lane, flip.mask)
        elif isinstance(flip, PEFlip):
            machine_host.arm_pe_fault(session, flip.pc, flip.tile, flip.cycle, flip.row, flip.col, flip.register,
                                      flip.bank, flip.mask)
        logits, _ = machine_host.infer(session, shape, input_codes(prog, codes))
        disagreed = machine_host.tmr_mismatch(session) if shape.array.tmr else None
        return logits, machine_host.alarm(session), disagreed

    return run
