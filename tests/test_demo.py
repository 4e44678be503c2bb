"""`rig demo`, end to end on the simulated rig (small settings), as a user runs it at 80 columns."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import cv2
import pytest
import yaml

from rig.demo import MARKER, prepare_out
from rig.errors import RigError


def _rig(*argv, cwd=None, timeout=600):
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "rig.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)


def test_demo_runs_the_whole_chain(tmp_path):
    out = tmp_path / "demo"
    proc = _rig("demo", "--out", str(out), "--views", "16", "--duration", "1", "--every", "10")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Where to look" in proc.stdout and str(out / "fmb" / "contact_sheet.html") in proc.stdout
    # Step headings are whole at 80 columns (rich cuts an over-long rule title with an ellipsis).
    headings = [line for line in proc.stdout.splitlines() if line.startswith("─")]
    assert len(headings) == 4 and not any("…" in h for h in headings), headings
    assert "$ rig calibrate --board ir_board --views 16 --out " + str(out / "calibration") in proc.stdout
    cal = yaml.safe_load((out / "calibration" / "calibration.yaml").read_text())
    assert set(cal["cameras"]) == {"visible", "lwir"} and cal["homography"]["method"] == "plane"
    run = cal["provenance"]["runs"][-1]
    assert run["rig"] == "sim" and run["bundle_adjustment"]["free_intrinsics"] == ["lwir", "visible"]
    assert (out / "calibration" / "report.html").is_file()
    # The session carries its calibration (a copy inside it, named in the manifest).
    session_manifest = yaml.safe_load((out / "session" / "manifest.yaml").read_text())
    assert session_manifest["calibration"] == "calibration.yaml"
    assert (out / "session" / "calibration.yaml").read_bytes() == (out / "calibration" / "calibration.yaml").read_bytes()
    manifest = yaml.safe_load((out / "fmb" / "manifest.yaml").read_text())
    assert manifest["status"] == "complete"
    frames = [json.loads(line) for line in (out / "fmb" / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == 3  # 30 pairs, every 10th
    for d, shape in (("Visible", (600, 800, 3)), ("Infrared", (600, 800)), ("Infrared16", (600, 800)),
                     ("Fusion", (600, 800, 3)), ("Label", (600, 800)), ("Color", (600, 800, 3))):
        img = cv2.imread(str(out / "fmb" / d / frames[0]["file"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == shape, d
    assert cv2.imread(str(out / "fmb" / "Label" / frames[0]["file"]), cv2.IMREAD_UNCHANGED).max() < 15
    # Every command the demo suggests runs as printed (the session finds its own calibration).
    where = proc.stdout[proc.stdout.index("Where to look"):].splitlines()
    commands = [line[line.index(" rig ") + 1:].strip() for line in where if re.search(r"\s{2,}rig \w", line)]
    assert any(c.startswith("rig register ") for c in commands) and any(c.startswith("rig session info") for c in commands)
    for command in commands:
        run = _rig(*shlex.split(command)[1:])
        assert run.returncode == 0, (command, run.stderr[-1500:])
    assert (out / "registered" / "frames.jsonl").is_file()
    # A second run refuses to overwrite without --force.
    again = _rig("demo", "--out", str(out))
    assert again.returncode == 2 and "already holds a demo; pass --force" in again.stderr


def test_force_never_removes_a_folder_the_demo_did_not_write(tmp_path):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(RigError, match=f"not written by 'rig demo' \\(no {MARKER} marker\\)"):
        prepare_out(precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    # As a user types it: `rig demo --out . --force` in a working directory.
    proc = _rig("demo", "--out", ".", "--force", cwd=precious, timeout=60)
    assert proc.returncode == 2 and "never removed" in proc.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.tex"]


def test_force_replaces_an_earlier_demo_but_not_the_working_directory(tmp_path, monkeypatch):
    demo = tmp_path / "rig-demo"
    prepare_out(demo, force=False)
    assert (demo / MARKER).is_file()
    (demo / "session").mkdir()
    (demo / "session" / "old.frames").write_bytes(b"x")
    with pytest.raises(RigError, match="already holds a demo; pass --force"):
        prepare_out(demo, force=False)
    prepare_out(demo, force=True)
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]
    (demo / "calibration").mkdir()
    monkeypatch.chdir(demo / "calibration")
    with pytest.raises(RigError, match="holds the working directory"):
        prepare_out(demo, force=True)
    assert (demo / "calibration").is_dir()
