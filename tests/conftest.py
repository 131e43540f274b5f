"""Shared fixtures: fixed seeds, a private store per test, experiment files written on the fly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(0)


@pytest.fixture(autouse=True)
def _one_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps in tests run in their own process (spies and interrupts see the tasks) unless a test asks."""
    monkeypatch.setenv("DSETOOL_JOBS", "1")


@pytest.fixture(scope="session")
def rtl_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Verilator build directory per test process: a machine several tests simulate is compiled once,
    and Verilator's run-time library once for all (`hw.rtlsim.build` keys each design by its Verilog)."""
    return tmp_path_factory.mktemp("rtl-builds")


@pytest.fixture
def write_experiment(tmp_path: Path) -> Any:
    """Write an experiment mapping (or raw text) to a YAML file and return its path."""

    def write(content: dict[str, Any] | str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


TINY_EXPERIMENT: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "digits", "calib_size": 32, "max_train": 400},
    "model": {"arch": "mlp", "mlp_hidden": [16]},
    "threads": 1,
    "train": {"pretrain": {"epochs": 2, "batch_size": 128}, "qat": {"epochs": 1, "batch_size": 128}},
}
