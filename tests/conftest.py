"""Shared fixtures: everything is built from the simulator, never from ../shared data."""

from __future__ import annotations

import os
import sys

# Thread limits must be in the environment before numpy, OpenCV or torch load their thread pools: they read
# OMP_NUM_THREADS once, at import. Keep the numeric libraries from oversubscribing the 2-core CI machine.
THREAD_LIBRARIES_LOADED_FIRST = sorted(m for m in ("numpy", "torch", "cv2") if m in sys.modules)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from rig.rigconfig import RigConfig, load_rig  # noqa: E402


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
