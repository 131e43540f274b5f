"""The host side of `hw.machine.Machine`'s port, over a compiled simulation (`hw.rtlsim.Session`): load
the images once, then run inferences (and read the detector's `alarm` after each). A board's host script
speaks the same protocol over a UART."""

from __future__ import annotations

from collections.abc import Sequence

from hw.machine_format import PE_CYCLE_BITS, PE_TILE_BITS, MachineImages, MachineShape, change_beats, load_beats
from hw.rtlsim import Session

MAX_CYCLES = 100_000_000   # per inference: far beyond any network that fits a device


def load(session: Session, shape: MachineShape, images: MachineImages) -> int:
    """Load the program, weights and constants; return the cycles the load stream took."""
    return session.send("load_data", "load_valid", "load_ready", load_beats(shape, images))


def load_changes(session: Session, shape: MachineShape, loaded: dict[int, list[int]],
                 images: dict[int, list[int]]) -> int:
    """Write only the memory words where `images` differ from the `loaded` ones (both as
    `hw.machine_format.memory_words` gives them); return the cycles the load stream took."""
    return session.send("load_data", "load_valid", "load_ready", change_beats(shape, loaded, images))


def infer(session: Session, shape: MachineShape, codes: Sequence[int]) -> tuple[list[int], int]:
    """Send one image's input codes (the input tensor's words, lane by lane), run the program and return
    its logits and the cycles from the cycle that presents `start` to the one that presents the first
    logit (what `hw.cycles`' machine schedule counts)."""
    if len(codes) != shape.input_words * shape.lanes:
        raise ValueError(f"The machine's input takes {shape.input_words * shape.lanes} codes, not {len(codes)}")
    session.send("in_data", "in_valid", "in_ready", codes)
    session.set("start", 1)
    session.tick()
    session.set("start", 0)
    cycles = 1 + session.run_until("out_valid", 1, MAX_CYCLES)
    logits = session.receive("out_data", "out_valid", "out_ready", shape.num_classes, MAX_CYCLES)
    return logits, cycles


def alarm(session: Session) -> bool:
    """Return the machine's detector after an inference (`infer`): whether a range check fired."""
    return bool(session.get("alarm"))


def tmr_mismatch(session: Session) -> bool:
    """Return whether the voters of a TMR machine built with `fault_port` saw its replicas disagree during
    the last inference."""
    return bool(session.get("tmr_mismatch"))


def arm_fault(session: Session, pc: int, address: int, lane: int, mask: int) -> None:
    """Arm the fault port of a machine built with `fault_port`: the next runs flip bits `mask` of lane
    `lane` of buffer word `address` when they fetch instruction `pc`."""
    for port, value in (("fault_pc", pc), ("fault_address", address), ("fault_lane", lane), ("fault_mask", mask),
                        ("fault_arm", 1)):
        session.set(port, value)


def arm_pe_fault(session: Session, pc: int, tile: int, cycle: int, row: int, col: int, register: int, bank: int,
                 mask: int) -> None:
    """Arm the PE fault port of a machine built with `fault_port` (with TMR: in replica `rep0`): the next
    runs flip bits
    `mask` of register `register` (`hw.array.FAULT_REGISTERS`; bank `bank` of a weight) of PE(`row`,
    `col`) `cycle` cycles after tile `tile` of GEMM instruction `pc` reaches the array.

    Raises ValueError for a tile or cycle beyond the port's counters (`PE_TILE_BITS`, `PE_CYCLE_BITS`)."""
    if not (0 <= tile < 1 << PE_TILE_BITS and 0 <= cycle < 1 << PE_CYCLE_BITS):
        raise ValueError(f"the PE fault port counts {PE_TILE_BITS}-bit tiles and {PE_CYCLE_BITS}-bit cycles, "
                         f"not tile {tile}, cycle {cycle}")
    for port, value in (("pe_pc", pc), ("pe_tile", tile), ("pe_cycle", cycle), ("pe_row", row), ("pe_col", col),
                        ("pe_register", register), ("pe_bank", bank), ("pe_mask", mask), ("pe_arm", 1)):
        session.set(port, value)


def disarm_fault(session: Session) -> None:
    """Let the next runs go fault-free (the PE fault port too, where the machine has one)."""
    session.set("fault_arm", 0)
    if session.has("pe_arm"):
        session.set("pe_arm", 0)
