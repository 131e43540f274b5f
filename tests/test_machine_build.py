"""The accelerator a design point builds: synth's key reads `MACHINE_VERSION` (and the version of the part
only some machines build), not the generator's sources, so a pinned digest of a small machine's RTLIL and
schedule says when a version must be raised."""

from __future__ import annotations

import hashlib

import amaranth
import pytest

from dsetool.machine.build import CHECKED_READ_VERSION, MACHINE_VERSION, OVERLAP_VERSION
from dsetool.machine.compiler import compile_program
from dsetool.machine.encode import machine_of
from dsetool.machine.program import program_cycles
from hw.flow import emit_rtlil
from hw.machine import Machine
from tests.fixtures.engines import digits, factory_engine
from tests.fixtures.range_checks import checked_engine

TINY_CNN = "tests.fixtures.tiny_cnn:make"
PINNED_AMARANTH = "0.5.10"   # the RTLIL's bytes are Amaranth's: the digest holds for this version


@pytest.mark.skipif(amaranth.__version__ != PINNED_AMARANTH, reason="the digest is Amaranth 0.5.10's RTLIL")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_change_to_the_generated_accelerator_raises_its_version(tmp_path):
    """If this fails after a change to `hw/machine*.py`, its parts, `hw/isa.py`, `hw/cycles.py` or the
    compiler, raise `dsetool.machine.build.MACHINE_VERSION` (every synthesized accelerator is then made
    again) and pin the new digest and cycles with it; if only the double-buffered machine's changed
    (`Machine._overlap`), raise `OVERLAP_VERSION` instead, and if only its input-checked read path's,
    `CHECKED_READ_VERSION`, so that the other machines keep their keys."""
    engine = factory_engine(tmp_path / "model", TINY_CNN, bits=4, size=12)
    program = compile_program(engine, 4, 4)
    built = {}
    for buffers in (1, 2):   # one weight bank per PE, and the double-buffered default
        shape, _ = machine_of(program, weight_buffers=buffers)
        rtlil = emit_rtlil(Machine(shape), tmp_path / f"machine{buffers}.il").read_bytes()
        built[buffers] = (hashlib.sha256(rtlil).hexdigest(), program_cycles(program, buffers))
    checked = compile_program(checked_engine(engine, digits(12).test.x[:2], "clip", "channel", "input"), 4, 4)
    shape, _ = machine_of(checked, weight_buffers=2)   # the double-buffered machine's checked read path
    rtlil = emit_rtlil(Machine(shape), tmp_path / "checked.il").read_bytes()
    built["checked"] = (hashlib.sha256(rtlil).hexdigest(), program_cycles(checked, 2))
    assert (MACHINE_VERSION, OVERLAP_VERSION, CHECKED_READ_VERSION, built) == (5, 1, 1, {
        1: ("a3c3b4f662352d7ee36d954f6ae595f1bea52ac1ad923a1120571ef0be566585", 2175),
        2: ("629cf532d6770b1bc7dc013e3570e6efb4c6ff558b122d6dd6aea2db3d3d4f02", 1338),
        "checked": ("4baee51c77e0fce8abc87bca5fd296373832b8db6973777780670af8b62f0012", 1341)})
