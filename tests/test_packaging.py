"""Packaging: every subpackage is installed under rig.*, and shipped definitions are package data."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRS = {"rig": "rig", "capture": "rig.capture", "calibration": "rig.calibration", "registration": "rig.registration",
        "model": "rig.model", "rigs": "rig.rigs"}


def test_every_package_directory_is_listed_in_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    found = set()
    for top, dotted in DIRS.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((dotted, *rel)))
    assert found == listed, f"pyproject packages out of date: missing {found - listed}, extra {listed - found}"
    assert meta["tool"]["setuptools"]["package-dir"] == {v: k for k, v in DIRS.items()}


def test_shipped_definitions_are_found_from_the_installed_package():
    from rig.resources import shipped_dir

    names = {p.name for p in shipped_dir().glob("*.yaml")} | {p.name for p in (shipped_dir() / "boards").glob("*.yaml")}
    assert {"sim.yaml", "fmb_roof.yaml", "ir_board.yaml", "vis_board.yaml"} <= names


def test_cli_version_and_help():
    from rig import __version__

    out = subprocess.run([sys.executable, "-m", "rig.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"rig {__version__}"
    helptext = subprocess.run([sys.executable, "-m", "rig.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("board", "check", "session"):
        assert command in helptext


def test_thread_limits_are_set_before_numeric_libraries_load():
    # OMP_NUM_THREADS read after numpy/torch/cv2 have loaded their thread pools has no effect.
    conftest = sys.modules["conftest"]
    assert conftest.THREAD_LIBRARIES_LOADED_FIRST == []
    import os

    assert os.environ["OMP_NUM_THREADS"]
