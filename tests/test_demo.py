"""`rig demo`, end to end on the simulated rig (small settings), as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import yaml


def test_demo_runs_the_whole_chain(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "rig.cli", "demo", "--out", str(out), "--views", "16", "--duration", "1",
                           "--every", "10"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Where to look" in proc.stdout and str(out / "fmb" / "contact_sheet.html") in proc.stdout
    cal = yaml.safe_load((out / "calibration" / "calibration.yaml").read_text())
    assert set(cal["cameras"]) == {"visible", "lwir"} and cal["homography"]["method"] == "plane"
    run = cal["provenance"]["runs"][-1]
    assert run["rig"] == "sim" and run["bundle_adjustment"]["free_intrinsics"] == ["lwir", "visible"]
    assert (out / "calibration" / "report.html").is_file()
    manifest = yaml.safe_load((out / "fmb" / "manifest.yaml").read_text())
    assert manifest["status"] == "complete" and manifest["model_version"]
    frames = [json.loads(line) for line in (out / "fmb" / "frames.jsonl").read_text().splitlines()]
    assert len(frames) == 3  # 30 pairs, every 10th
    for d, shape in (("Visible", (600, 800, 3)), ("Infrared", (600, 800)), ("Infrared16", (600, 800)),
                     ("Fusion", (600, 800, 3)), ("Label", (600, 800)), ("Color", (600, 800, 3))):
        img = cv2.imread(str(out / "fmb" / d / frames[0]["file"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == shape, d
    assert cv2.imread(str(out / "fmb" / "Label" / frames[0]["file"]), cv2.IMREAD_UNCHANGED).max() < 15
    # A second run refuses to overwrite without --force.
    again = subprocess.run([sys.executable, "-m", "rig.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "already holds a demo; pass --force" in again.stderr
