"""Stage keys, cache hits without torch, and crash safety of training stages."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dsetool.config import RunConfig, load_experiment
from dsetool.stages import stage_key
from tests.conftest import REPO, TINY_EXPERIMENT


def test_pretrain_key_of_defaults_is_pinned():
    """Same inputs, same key, on any machine: a change here invalidates every user's cache."""
    key, inputs = stage_key("pretrain", RunConfig())
    assert key == "897b9b4f4ba19f940128e8d0e7b21edc16490bd83d40f69b66e3c14b23653ea9", json.dumps(inputs)


@pytest.mark.parametrize("stage, pinned", [
    ("train-qat", "5ce4946fb04fcb7407c30d920aa5829b4a2a6a42b8f36bc3fe6697fe833a6410"),
    ("ptq", "57eb207afcf2848cee016512dda71f4302893716cefe62c67ecd226469449883"),
    ("range-restrict", "7b6f1fed37d2d6d97828d809d692647a1fd3ccee696c38dccb0c43cc1d3959e5"),
    # inject v9 (paired accuracies, sizing by what is sampled, detection per protection): a new key on purpose
    ("inject", "024621b346d012cb136d483089b9b90e9d621bde7eb05f75972a92fa27cf9d01"),
])
def test_keys_of_defaults_are_pinned(stage, pinned):
    key, inputs = stage_key(stage, RunConfig())
    assert key == pinned, json.dumps(inputs)


@pytest.mark.slow
def test_training_the_same_point_twice_gives_identical_weights(tmp_path, write_experiment):
    """Float training is reproducible on one machine (seeded, fixed thread count); across CPUs it is not,
    which is why the README's accuracy figures say where they were measured."""
    import torch

    from dsetool.stages import ensure
    from dsetool.stages.common import MODEL_FILE
    from dsetool.store import Store

    point = load_experiment(write_experiment({**TINY_EXPERIMENT, "quant": {"bits": 4}})).points[0].config
    weights = []
    for store in ("a", "b"):
        entry, cached = ensure(Store(tmp_path / store), "train-qat", point)
        assert not cached
        weights.append(torch.load(entry.artifact(MODEL_FILE), weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_keys_depend_on_exactly_what_a_stage_reads():
    base = RunConfig()
    four = dataclasses.replace(base, quant=dataclasses.replace(base.quant, weight_bits=4, act_bits=4))
    ptq_method = dataclasses.replace(base, quant=dataclasses.replace(base.quant, method="ptq"))
    calib = dataclasses.replace(base, data=dataclasses.replace(base.data, calib_size=100))
    threads = dataclasses.replace(base, threads=3, name="other")
    elsewhere = dataclasses.replace(base, data=dataclasses.replace(base.data, root="/mnt/data", download=True))
    assert stage_key("train-qat", elsewhere)[0] == stage_key("train-qat", base)[0]
    assert stage_key("pretrain", four)[0] == stage_key("pretrain", base)[0]
    assert stage_key("train-qat", four)[0] != stage_key("train-qat", base)[0]
    assert stage_key("train-qat", ptq_method)[0] == stage_key("train-qat", base)[0]
    assert stage_key("pretrain", calib)[0] == stage_key("pretrain", base)[0]
    assert stage_key("ptq", calib)[0] != stage_key("ptq", base)[0]
    assert stage_key("train-qat", threads)[0] == stage_key("train-qat", base)[0]
    one = dataclasses.replace(base, train=dataclasses.replace(base.train, threads=1))
    for stage in ("pretrain", "train-qat", "ptq"):   # the thread count changes the weights: it is in the key
        assert stage_key(stage, one)[0] != stage_key(stage, base)[0]
    # What a campaign is sized and judged by changes its key; the models it runs on keep theirs.
    for change in ({"margin_relative": True}, {"max_samples": 5000}, {"golden_agreement": 0.9}):
        other = dataclasses.replace(base, faults=dataclasses.replace(base.faults, **change))
        assert stage_key("inject", other)[0] != stage_key("inject", base)[0], change
        assert stage_key("train-qat", other)[0] == stage_key("train-qat", base)[0]


def test_model_making_stages_run_on_the_training_threads_whatever_the_task_was_given():
    """A pool worker hands each task its share of the cores (`threads`); training must not see it, or
    `--jobs 2` would cache other weights under the same key than `--jobs 1`."""
    import torch

    from dsetool.stages.common import prepare

    squeezed = dataclasses.replace(RunConfig(), threads=1)
    before = torch.get_num_threads()
    try:
        prepare(squeezed)
        assert torch.get_num_threads() == squeezed.train.threads == 2
        prepare(squeezed, squeezed.threads)               # what a campaign asks for
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _dsetool(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dsetool.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _write(tmp_path: Path, content: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.mark.slow
def test_cache_hit_needs_no_torch(tmp_path):
    path = _write(tmp_path, TINY_EXPERIMENT)
    first = _dsetool("train-qat", str(path), cwd=tmp_path)
    assert first.wait(300) == 0, first.stderr.read() if first.stderr else ""
    probe = ("import sys; from dsetool.cli import main\n"
             f"try:\n    main(['train-qat', {str(path)!r}, '--json'])\nexcept SystemExit as e:\n    code = e.code\n"
             "print('heavy=' + ','.join(m for m in ('torch', 'brevitas') if m in sys.modules), 'code=%s' % code)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "heavy= code=0", out.stdout + out.stderr
    assert json.loads(out.stdout.splitlines()[0])["cached"] is True


KILL_EXPERIMENT = {**TINY_EXPERIMENT, "name": "killed", "model": {"arch": "lenet5"},
                   "train": {"pretrain": {"epochs": 8, "batch_size": 64}, "qat": {"epochs": 1}}}


@pytest.mark.slow
def test_kill_9_during_training_then_rerun_resumes_and_matches(tmp_path):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_dir.mkdir()
    clean_dir.mkdir()
    path = _write(killed_dir, KILL_EXPERIMENT)
    proc = _dsetool("train-qat", str(path), "--json", cwd=killed_dir)
    deadline = time.time() + 240
    while not list((killed_dir / "runs").glob("pretrain/*/.partial-*/epoch.pt")):
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((killed_dir / "runs").glob("pretrain/??/[0-9a-f]*/manifest.json"))
    rerun = _dsetool("train-qat", str(path), "--json", cwd=killed_dir)
    resumed_out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    clean = _dsetool("train-qat", str(_write(clean_dir, KILL_EXPERIMENT)), "--json", cwd=clean_dir)
    clean_out, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err
    resumed, reference = json.loads(resumed_out.splitlines()[0]), json.loads(clean_out.splitlines()[0])
    assert resumed["key"] == reference["key"]
    manifests = [json.loads((d / r["path"] / "manifest.json").read_text())
                 for d, r in ((killed_dir, resumed), (clean_dir, reference))]
    assert manifests[0]["artifacts"]["model.pt"]["sha256"] == manifests[1]["artifacts"]["model.pt"]["sha256"]
    assert not list((killed_dir / "runs").rglob(".partial-*"))
    load_experiment(path)  # the experiment file itself is untouched
