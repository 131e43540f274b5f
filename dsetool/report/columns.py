"""The columns of `results.csv` / `results.parquet`: one stable, documented name per quantity.

The names are a contract (scripts, notebooks and `dsetool check` read them), so they live in one list with
a one-line meaning each; the README table and the tests are generated from / checked against this list.
Rates and accuracies are fractions in [0, 1]; overheads are percent; a quantity a design point does not
have (no campaign, no synthesis, a design that did not fit) is blank (NaN / None), never zero.
"""

from __future__ import annotations

from dsetool.protect.registry import NAMES as PROTECTIONS

AXIS_PREFIX = "axis_"

# (name, meaning). Axis columns (`axis_<dotted key with _>`) follow `point`, in the experiment's order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("point_id", "1-based number of the design point, in the experiment's order (plots refer to it as P<n>)"),
    ("point", "the design point's label: its axis values, e.g. quant.bits=4,hw.protection=clip"),
    # what the design point is
    ("model", "network architecture (model.arch)"),
    ("dataset", "data set (data.name)"),
    ("weight_bits", "weight bit width (widest layer)"),
    ("act_bits", "activation bit width (widest layer)"),
    ("method", "quantization method: qat or ptq"),
    ("protection", f"output-stage protection (hw.protection): {', '.join(PROTECTIONS)}"),
    ("tmr", "datapath triplicated with majority voters"),
    ("protection_label", "protection and TMR in one word, e.g. clip+tmr (what plots group by)"),
    ("array", "systolic array, rows x cols and dataflow, e.g. 8x8 ws"),
    ("multiplier", "PE multiplier: dsp or lut"),
    ("target", "FPGA the synth stage builds for"),
    # accuracy without faults
    ("float_acc", "float model test accuracy"),
    ("quant_acc", "quantized model accuracy on the whole test split (bit-exact integer engine when a campaign ran)"),
    # how the quantized model was trained shows in these (FlatENN: sparse and sharp models are more fragile)
    ("act_sparsity", "share of the quantized model's post-ReLU activations that are zero on the test set"),
    ("sharpness", "loss increase under the worst-case weight perturbation of radius 0.05 (first-order SAM estimate)"),
    ("hessian_trace", "Hutchinson estimate of the trace of the loss Hessian in the weights"),
    # reliability
    ("fault_scenario", "the fault campaign in one string (site, model, rate, bits); fronts compare within it"),
    ("fault_site", "register(s) the faults hit, joined by + when several"),
    ("fault_model", "bitflip, stuck0, stuck1 or zero"),
    ("ber", "bit error rate (blank when the campaign counts faults per inference)"),
    ("faults_per_inference", "faulty sites per inference (blank when the campaign uses a BER)"),
    ("faulty_inferences", "faulty inferences the campaign ran"),
    ("stop_reason", "why it ran that many: samples (as planned), margin (the SDC interval reached faults.margin), "
                    "population (every single fault), max_samples (the cap, before the margin)"),
    ("golden_accuracy", "fault-free top-1 accuracy of the same inferences (their golden run): what accuracy under "
                        "faults is compared with, not quant_acc, which is on other inputs"),
    ("accuracy_under_faults", "top-1 accuracy of the faulty inferences"),
    ("accuracy_ci_lo", "lower bound of the accuracy under faults' 95 % Wilson interval"),
    ("accuracy_ci_hi", "upper bound of the accuracy under faults' 95 % Wilson interval"),
    ("accuracy_drop", "golden_accuracy minus accuracy_under_faults: what the faults cost, paired per inference"),
    ("accuracy_drop_ci_lo", "lower bound of the drop's 95 % interval (Newcombe's, for paired proportions)"),
    ("accuracy_drop_ci_hi", "upper bound of the drop's 95 % interval"),
    ("masked_rate", "share of faulty inferences whose logits are identical to the golden run"),
    ("masked_ci_lo", "lower bound of the masked rate's 95 % Wilson interval"),
    ("masked_ci_hi", "upper bound of the masked rate's 95 % Wilson interval"),
    ("sdc_rate", "share whose top-1 differs from the golden run (silent data corruption)"),
    ("sdc_ci_lo", "lower bound of the SDC rate's 95 % Wilson interval"),
    ("sdc_ci_hi", "upper bound of the SDC rate's 95 % Wilson interval"),
    ("critical_rate", "share where the golden run was right and the faulty one wrong"),
    ("critical_ci_lo", "lower bound of the critical rate's 95 % Wilson interval"),
    ("critical_ci_hi", "upper bound of the critical rate's 95 % Wilson interval"),
    ("detected_rate", "share where a detector (the range checks clip, zero, sed) flagged a faulty value; blank for "
                      "protections without one"),
    ("sdc_detected_rate", "share of the SDCs a detector flagged (its coverage); blank without a detector or SDC"),
    ("changed_rate", "share where a protection without a detector (median, afd: it filters) changed a faulty value, "
                     "or TMR's vote overruled a faulty replica; blank otherwise"),
    ("golden_agreement", "share of campaign inputs whose fault-free top-1 the integer engine and Brevitas agree on "
                         "(1 with po2 scales, which are bit-exact)"),
    # hardware
    ("synth_status", "ok, does_not_fit or tool_error (blank: not synthesized)"),
    ("synth_scope", "what was synthesized: machine (the whole accelerator that runs the network) or datapath "
                    "(array, accumulator, output stage: where the accelerator is not built, or hw.synth: datapath)"),
    ("lut", "LUTs of the synthesized design (Yosys; known even when the design does not fit)"),
    ("ff", "flip-flops"),
    ("dsp", "DSP blocks"),
    ("bram", "block RAMs"),
    ("datapath_lut", "LUTs of the accelerator's array, K accumulator and output stage (machine scope)"),
    ("datapath_ff", "flip-flops of the accelerator's array, K accumulator and output stage (machine scope)"),
    ("fmax_mhz", "maximum clock after place and route (blank when it did not fit)"),
    ("cycles", "cycles of one inference of the network: the accelerator's schedule, as its RTL simulation "
               "measures it (machine scope), or the closed form over the datapath"),
    ("latency_us", "cycles / Fmax, microseconds per inference"),
    ("lut_overhead_pct", "LUT increase over the same design (accelerator or datapath) without protection or TMR, "
                         "percent"),
    ("ff_overhead_pct", "FF increase over the unprotected design, percent"),
    ("dsp_overhead_pct", "DSP increase over the unprotected design, percent"),
    ("bram_overhead_pct", "block RAM increase over the unprotected design, percent"),
    ("fmax_overhead_pct", "Fmax change against the unprotected design, percent (negative: slower)"),
    # the front
    ("pareto", "on the Pareto front of its fault scenario (accuracy under faults up; LUT, DSP, latency down)"),
    ("pareto_excluded", "why the point cannot be on a front (missing objectives, did not fit); blank otherwise"),
    # provenance
    ("quant_key", "store key of the quantized model (train-qat or ptq)"),
    ("inject_key", "store key of the fault campaign"),
    ("synth_key", "store key of the synthesis"),
)

NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
# The columns after which the axis columns are inserted.
AXES_AFTER = "point"


def axis_column(dotted: str) -> str:
    """Return the column of a sweep axis: `quant.bits` -> `axis_quant_bits` (snake case, stable)."""
    return AXIS_PREFIX + dotted.replace(".", "_").replace("-", "_")


def ordered(axes: list[str]) -> list[str]:
    """Return every column in file order: the fixed ones with the axis columns after `point`."""
    at = NAMES.index(AXES_AFTER) + 1
    return [*NAMES[:at], *(axis_column(a) for a in axes), *NAMES[at:]]


def markdown_table() -> str:
    """Return the column list as a markdown table (for the README and the summary)."""
    lines = ["| column | meaning |", "|---|---|", "| `axis_*` | one per sweep axis: its value at the point |"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in COLUMNS]
    return "\n".join(lines)
