"""The host side of `hw.machine.Machine`'s port, over a compiled simulation (`hw.rtlsim.Session`): load
the images once, then run inferences (and read the detector's `alarm` after each). A board's host script
speaks the same protocol over a UART."""

from __future__ import annotations

from collections.abc import Sequence

from hw.machine_format import MachineImages, MachineShape, load_beats
from hw.rtlsim import Session

MAX_CYCLES = 100_000_000   # per inference: far beyond any network that fits a device


def load(session: Session, shape: MachineShape, images: MachineImages) -> int:
    """Load the program, weights and constants; return the cycles the load stream took."""
    return session.send("load_data", "load_valid", "load_ready", load_beats(shape, images))


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
