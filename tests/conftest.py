"""Shared fixtures: everything is built from the simulator, never from ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rig.rigconfig import RigConfig, load_rig


@pytest.fixture(scope="session")
def sim_rig() -> RigConfig:
    return load_rig("sim")


@pytest.fixture()
def write_yaml(tmp_path: Path):
    """Write a YAML text to a file in tmp_path and return its path."""

    def _write(text: str, name: str = "file.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    # Keep numeric libraries from oversubscribing the 2-core CI machine.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
