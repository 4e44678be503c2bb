"""Rig definition schema: shipped files load; every kind of invalid input names file, key and problem."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from rig.errors import RigError
from rig.rigconfig import load_rig

VALID = """\
rig: test
cameras:
  - name: vis
    role: visible
    driver: genicam
    resolution: [1920, 1200]
    fps: 30
    genicam: {serial: "123"}
  - name: ir
    role: lwir
    driver: boson
    resolution: [640, 512]
    pixel_format: Y16
    fps: 60
    sync: {mode: hardware, master: vis}
    boson: {serial_port: /dev/ttyACM0, video_device: /dev/video0}
output: {size: [640, 480]}
registration: {plane_distance_m: 20}
calibration: cal/test.yaml
"""


def test_shipped_sim_rig_ground_truth(sim_rig):
    vis, ir = sim_rig.camera("visible"), sim_rig.camera("lwir")
    assert vis.resolution == (1920, 1200) and ir.resolution == (640, 512)
    assert ir.pixel_format == "Mono16" and ir.is_16bit
    # The LWIR camera sits 10-20 cm from the visible one (the rig frame is the visible camera).
    centre = -ir.sim.R.T @ ir.sim.t
    assert 0.10 <= np.linalg.norm(centre) <= 0.20
    assert np.allclose(vis.sim.R, np.eye(3)) and np.allclose(vis.sim.t, 0)
    assert abs(ir.sim.dist[0]) > abs(vis.sim.dist[0])  # stronger distortion
    assert sim_rig.output_size == (800, 600)


def test_shipped_template_rig():
    rig = load_rig("fmb_roof")
    assert rig.camera("visible").driver == "genicam" and rig.camera("lwir").driver == "boson"
    assert rig.camera("lwir").boson.serial_port == "/dev/ttyACM0"


def test_valid_rig_file(write_yaml):
    path = write_yaml(VALID)
    rig = load_rig(path)
    assert rig.output_size == (640, 480) and rig.plane_distance_m == 20
    assert rig.calibration == path.parent / "cal/test.yaml"
    assert rig.is_hardware_synced and rig.camera("ir").sync.master == "vis"
    assert rig.camera("lwir").name == "ir"  # lookup by role


@pytest.mark.parametrize(
    "old,new,key,problem",
    [
        ("rig: test\n", "", "rig", "missing required key"),
        ("    role: visible\n", "    role: thermal\n", "cameras[0].role", "'thermal' is not one of"),
        ("    driver: genicam\n", "    driver: usb\n", "cameras[0].driver", "is not one of"),
        ("    resolution: [1920, 1200]\n", "    resolution: [1920]\n", "cameras[0].resolution", "expected 2 integers"),
        ("    fps: 30\n", "    fps: fast\n", "cameras[0].fps", "expected a number"),
        ("    fps: 30\n", "    fps: 0\n", "cameras[0].fps", "must be > 0"),
        ('    genicam: {serial: "123"}\n', "", "cameras[0].genicam", "missing required key"),
        ('    genicam: {serial: "123"}\n', "    genicam: {exposure_us: 100}\n", "cameras[0].genicam",
         "give 'serial' or 'device_id'"),
        ("    pixel_format: Y16\n", "    pixel_format: Mono8\n", "cameras[1].pixel_format", "16-bit"),
        ("master: vis}", "master: nope}", "cameras[1].sync.master", "not a camera of this rig"),
        ("{mode: hardware, master: vis}", "{mode: hardware}", "cameras[1].sync.master", "needs 'master'"),
        ("  - name: ir\n", "  - name: vis\n", "cameras[1].name", "duplicate camera name"),
        ("output: {size: [640, 480]}\n", "output: {size: [640, 480], fps: 3}\n", "output.fps", "unknown key"),
        ("registration: {plane_distance_m: 20}", "registration: {plane_distance_m: -1}",
         "registration.plane_distance_m", "must be > 0"),
    ],
)
def test_invalid_rig_names_file_key_and_problem(write_yaml, old, new, key, problem):
    assert old in VALID
    path = write_yaml(VALID.replace(old, new))
    with pytest.raises(RigError) as err:
        load_rig(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert problem in msg
    assert "\n" not in msg


def test_two_cameras_with_one_role(write_yaml):
    path = write_yaml(VALID.replace("role: lwir", "role: visible"))
    with pytest.raises(RigError, match="more than one camera with role 'visible'"):
        load_rig(path)


def test_not_yaml_and_not_found(write_yaml, tmp_path):
    path = write_yaml("rig: [unclosed\n")
    with pytest.raises(RigError, match=r"not valid YAML: line \d+"):
        load_rig(path)
    with pytest.raises(RigError, match="no such file, and no shipped rig of that name"):
        load_rig(tmp_path / "missing.yaml")
    with pytest.raises(RigError, match="expected a mapping"):
        load_rig(write_yaml("- a\n- b\n", "list.yaml"))


def test_cli_error_is_one_line_without_traceback(write_yaml):
    path = write_yaml(VALID.replace("fps: 60", "fps: -60"))
    proc = subprocess.run([sys.executable, "-m", "rig.cli", "check", "--rig", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "cameras[1].fps: must be > 0" in lines[0] and "Traceback" not in proc.stderr
    debug = subprocess.run([sys.executable, "-m", "rig.cli", "--debug", "check", "--rig", str(path)],
                           capture_output=True, text=True)
    assert "Traceback" in debug.stderr
