"""The foundation's CLI commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2

from rig.boards import load_board


def rig(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}  # wide enough that rich tables do not wrap
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, env=env)


def test_board_render_writes_a_printable_png(tmp_path):
    out = tmp_path / "ir.png"
    proc = rig("board", "render", "ir_board.yaml", str(out), "--dpi", "72")
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    w_m, _ = load_board("ir_board").size_m()
    assert abs(img.shape[1] - w_m / 0.0254 * 72) < 0.02 * img.shape[1]
    assert "680 x 500 mm" in proc.stdout


def test_board_render_bad_input(tmp_path):
    proc = rig("board", "render", str(tmp_path / "none.yaml"), str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "none.yaml: no such file" in proc.stderr and "Traceback" not in proc.stderr
    proc = rig("board", "render", "ir_board", str(tmp_path / "no" / "dir" / "x.png"))
    assert proc.returncode == 2 and "cannot write" in proc.stderr


def test_check_lists_reachable_sim_cameras():
    proc = rig("check")
    assert proc.returncode == 0, proc.stderr
    assert "ok rig simulated visible camera s/n SIM-visible" in proc.stdout
    assert "s/n SIM-lwir" in proc.stdout


def test_check_reports_unreachable_hardware():
    proc = rig("check", "--rig", "fmb_roof")
    assert proc.returncode == 1 and "unreachable" in proc.stdout


def test_session_info(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_session import record

    record(tmp_path / "s")
    proc = rig("session", "info", str(tmp_path / "s"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["status"] == "complete" and info["cameras"]["lwir"]["frames"] == 20
    table = rig("session", "info", str(tmp_path / "s"))
    assert table.returncode == 0 and "complete" in table.stdout
    missing = rig("session", "info", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such session directory" in missing.stderr
