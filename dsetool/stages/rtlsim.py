"""Stage `rtlsim`: run the design point's network on its accelerator, compiled RTL simulation, and check
it against the integer engine bit for bit.

The quantized model is compiled into the accelerator's program (`dsetool.machine`), the machine of that
program's shape is generated (`hw.machine`) and compiled by Verilator (`hw.rtlsim`; one build serves
every point whose machine has the same shape: the build cache is shared by the store), the program,
weights and constants go in over the host port, then `hw.rtl_images` test images, one after the other.
`rtl_agreement` is the share of images whose logits equal the engine's (with the point's range checks,
clip, zero or sed, per layer or per channel, placed as `protect.placement` says: after the output
stages, or where the weight layers read their inputs from the buffer); anything below 1.0 fails the
stage, naming the first image that differs. `rtl_cycles` is the measured cycles per inference (from
`start` to the first logit), `model_cycles` what `hw.cycles`' machine schedule counts for the program
without simulating it. With a range check, `rtl_alarms` counts the images on which the machine's
detector (its `alarm`) was raised, `engine_alarms` those on which one of the engine's checks fired
(`dsetool.machine.alarms`), and `alarm_agreement` the share of images on which they agree; an alarm the
engine has no cause for fails the stage (the machine checks only codes the engine checks too).

Then the engine's fault model is checked against the machine (`dsetool.machine.faults`): `hw.rtl_faults`
single-bit faults, drawn with the experiment's seed over the activation buffers the weight layers read,
their requantized outputs, their stored weights and the PE registers of the array at every cycle of
each layer whose sites follow the machine's schedule (`pe.act`, `pe.weight`,
`pe.psum`, `pe.shadow`, laid out as the campaigns' sites are on the machine's array, whose accumulator
width is the design's; `dsetool.machine.faults.machine_groups`), each on one
of those images, are injected into a build of the machine with its fault ports (a stored code flipped in
the buffer after it is written, before it is read; a weight flipped in the weight memory; a PE register
flipped on its cycle) and every faulty run must give the logits the engine's campaign path computes for
that fault (`rtl_fault_agreement`; anything else fails the stage, naming the fault). With `hw.tmr` a PE
fault hits one of the three datapaths, and the voters must mask it: the machine must give the fault-free
logits and the fault-free alarm (its output checks are inside the datapath, voted), and every fault that
changes that replica's logits by the engine's model must make the voters see the replicas disagree
(`rtl_faults_outvoted` counts those).
`rtl_faults_changing_logits` says how many of them reached the logits; with a range check, every faulty
run's alarm must be what the engine says (raised fault-free on that image, or a check acted on a value
the fault changed: `fault_alarm_agreement`, else the stage fails).

With `hw.tmr` the machine's datapath (array, K accumulator, column stage) is built three times behind
bitwise majority voters (`hw.machine_datapath`); fault-free it computes what one datapath does.

A network or design the machine does not build (an op without a unit, a protection other than a range
check, one array row, sides that do not divide one another: `Design.no_machine`) is `status: not_built` with the
reason, not a failure. The machine is the one stage synth measures for the point
(`dsetool.machine.build.design_machine`): accumulators as wide as the design's, one bit over the array's
worst case for the bias (`hw.acc_bits` when set); a model whose biases need more is not built, and says so.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dsetool.design import design_of
from dsetool.engine import Engine, load_intmodel
from dsetool.machine.build import checked_engine, design_machine
from dsetool.stages import StageContext, quant_stage
from dsetool.stages.common import prepare
from dsetool.stages.restrict import read_bounds
from dsetool.store import Result

BUILD_DIR = "rtlsim"   # under the store's shared build cache


def run(ctx: StageContext) -> Result:
    """Compile, build, simulate; return agreement and cycles, or why the machine is not built."""
    cfg = ctx.config
    design = design_of(cfg)
    reason = design.no_machine
    widths = {"weight_bits": cfg.quant.weight_bits, "act_bits": cfg.quant.act_bits}
    if reason:
        return Result({"status": "not_built", "message": reason, **widths})
    model = load_intmodel(ctx.upstream[quant_stage(cfg)].path)
    bounds = read_bounds(ctx, design)
    engine = checked_engine(design, model, bounds)
    from dsetool.machine.compiler import UnsupportedOp, compile_program

    try:
        program = compile_program(engine, design.array.rows, design.array.cols)
        shape, images = design_machine(design, program)
    except UnsupportedOp as error:
        return Result({"status": "not_built", "message": str(error), **widths})
    splits, _ = prepare(cfg, cfg.threads)
    x = splits.test.x[:cfg.hw.rtl_images]
    ctx.reporter.note(f"rtlsim {design.array.rows}x{design.array.cols} on {len(x)} images")
    measured = _simulate(ctx, program, shape, images, engine, x)
    if cfg.hw.rtl_faults:
        measured |= _inject(ctx, program, shape, images, engine, x, cfg.hw.rtl_faults, cfg.seed,
                            lambda faulty: checked_engine(design, faulty, bounds),
                            lambda faulty: design_machine(design, faulty)[1])
    return Result({"status": "ok", **widths, **measured, **_shape_metrics(program, shape)})


def _simulate(ctx: StageContext, program: Any, shape: Any, images: Any, engine: Engine, x: Any) -> dict[str, Any]:
    from dsetool.machine.encode import input_codes
    from dsetool.machine.program import program_cycles
    from hw import machine_host, rtlsim
    from hw.machine import Machine

    began = time.perf_counter()
    compiled = rtlsim.build(Machine(shape), ctx.cache / BUILD_DIR)
    built = time.perf_counter()
    expected = engine.logits(x).numpy()
    got, cycles, alarms = [], [], []
    with compiled.open() as session:
        machine_host.load(session, shape, images)
        for codes in engine.quantize_input(x).numpy():
            logits, count = machine_host.infer(session, shape, input_codes(program, codes))
            got.append(logits)
            cycles.append(count)
            alarms.append(machine_host.alarm(session))
        rate = session.cycles_per_second
    agree = np.all(np.array(got) == expected, axis=1)
    if not agree.all():
        first = int(np.flatnonzero(~agree)[0])
        raise RuntimeError(f"the RTL's logits differ from the engine's on {int((~agree).sum())} of {len(agree)} "
                           f"images (first: image {first}, {got[first]} against {expected[first].tolist()})")
    return {"rtl_agreement": float(agree.mean()), "rtl_images": len(agree), "rtl_cycles": max(cycles),
            "model_cycles": program_cycles(program, shape.weight_buffers, shape.array.dataflow),
            "sim_cycles_per_second": rate,
            **(_alarms(engine, x, np.array(alarms)) if shape.check != "none" else {}),
            "seconds_build": built - began, "seconds_sim": time.perf_counter() - built, "build_cached": compiled.cached}


def _inject(ctx: StageContext, program: Any, shape: Any, images: Any, engine: Engine, x: Any, count: int, seed: int,
            make_engine: Any, images_of: Any) -> dict[str, Any]:
    """Inject `count` faults into the machine (a build with its fault port) and compare each run with the
    engine's fault model (`dsetool.machine.faults`; `make_engine` and `images_of` give a faulty model's
    engine and memory images); raise on the first that differs."""
    from dsetool.faults.network import EngineNetwork
    from dsetool.machine.alarms import engine_alarms
    from dsetool.machine.faults import check_faults, draw, machine_groups, session_runner
    from hw import machine_host, rtlsim
    from hw.machine import Machine

    began = time.perf_counter()
    acc_bits = EngineNetwork(engine).acc_bits()
    groups = machine_groups(engine, acc_bits, shape.array, shape.weight_buffers)
    faults = draw(groups, len(x), count, seed)
    sites = sorted({group.site for group in groups})
    ctx.reporter.note(f"rtlsim: {count} faults at {', '.join(sites)} (the activation buffer, the weight memory"
                      f"{', the PE registers' if any(site.startswith('pe.') for site in sites) else ''})")
    compiled = rtlsim.build(Machine(shape, fault_port=True), ctx.cache / BUILD_DIR)
    with compiled.open() as session:
        machine_host.load(session, shape, images)
        run = session_runner(session, program, shape, images_of)
        golden_alarms = engine_alarms(engine, x) if shape.check != "none" else None
        outcome = check_faults(engine, program, x, groups, faults, run, make_engine, golden_alarms,
                               tmr=shape.array.tmr)
    if outcome.first_disagreement is not None:
        raise RuntimeError(f"the RTL's faulty logits differ from the engine's fault model on "
                           f"{outcome.faults - outcome.agree} of {outcome.faults} faults (first: "
                           f"{outcome.first_disagreement})")
    figures: dict[str, Any] = {"rtl_faults": outcome.faults, "rtl_fault_agreement": outcome.agree / outcome.faults,
                               "rtl_faults_changing_logits": outcome.changed,
                               **({"rtl_faults_outvoted": outcome.outvoted} if shape.array.tmr else {}),
                               "seconds_faults": time.perf_counter() - began}
    if outcome.alarm_agree is not None:
        if outcome.alarm_agree < outcome.faults:
            raise RuntimeError(f"the RTL's alarm differs from the engine's on {outcome.faults - outcome.alarm_agree} "
                               f"of {outcome.faults} faulty runs")
        figures["fault_alarm_agreement"] = outcome.alarm_agree / outcome.faults
    return figures


def _alarms(engine: Engine, x: Any, rtl: np.ndarray) -> dict[str, Any]:
    """Return the detector's figures against the engine's checks; raise on an alarm the engine has no
    cause for."""
    from dsetool.machine.alarms import engine_alarms

    fired = engine_alarms(engine, x)
    unexplained = np.flatnonzero(rtl & ~fired)
    if len(unexplained):
        raise RuntimeError(f"the RTL raised its alarm on {len(unexplained)} of {len(rtl)} images where no range check "
                           f"of the engine fires (first: image {int(unexplained[0])})")
    return {"rtl_alarms": int(rtl.sum()), "engine_alarms": int(fired.sum()),
            "alarm_agreement": float((rtl == fired).mean())}


def _shape_metrics(program: Any, shape: Any) -> dict[str, Any]:
    return {"lanes": shape.lanes, "lane_bits": shape.array.act_bits, "acc_bits": shape.array.acc_bits,
            "multiplier_bits": shape.multiplier_bits, "buffer_words": shape.buffer_words,
            "weight_words": shape.weight_words, "const_words": shape.const_words, "bounds_words": shape.bounds_words,
            "instructions": len(program.instructions)}
