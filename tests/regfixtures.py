"""Fixtures for registration tests: ground-truth calibrations and small recorded sim sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rig.calibration.homography import parallax_table, plane_homography, registration_crop
from rig.calibration.results import (Calibration, CameraCalibration, Extrinsics, Homography, Registration,
                                     save_calibration)
from rig.capture.sim_camera import make_sim_cameras
from rig.sim import DriveWorld, RigMotion
from rig.rigconfig import RigConfig
from rig.session import SessionWriter


def lwir_to_visible(rig: RigConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth extrinsics ``X_v = R X_l + t`` of the sim rig (rig frame = visible frame)."""
    l = rig.camera("lwir").sim
    return l.R.T, -l.R.T @ l.t


def truth_calibration(rig: RigConfig, path: Path, plane_m: float = 15.0, output_size=(800, 600)) -> Path:
    """A calibration.yaml holding the simulator's ground truth (what a perfect `rig calibrate` would give)."""
    v, l = rig.camera("visible"), rig.camera("lwir")
    R, t = lwir_to_visible(rig)
    H = plane_homography(v.sim.K, l.sim.K, R, t, plane_m)
    crop = registration_crop(v.sim.K, v.sim.dist, v.resolution, l.sim.K, l.sim.dist, l.resolution, H, output_size)
    par = parallax_table(v.sim.K, l.sim.K, R, t, H, crop, output_size)
    cal = Calibration(
        cameras={"visible": CameraCalibration("visible", "pinhole", v.resolution, v.sim.K, v.sim.dist, 0.0),
                 "lwir": CameraCalibration("lwir", "pinhole", l.resolution, l.sim.K, l.sim.dist, 0.0)},
        extrinsics=Extrinsics("lwir", "visible", R, t),
        homography=Homography("lwir", "visible", H, plane_m, "plane", parallax_px=par),
        registration=Registration(tuple(output_size), crop),
        provenance={"runs": [{"rig": rig.name, "source": "simulator ground truth"}]},
    )
    return save_calibration(cal, path)


def misalignment_with_motion(rig: RigConfig, geom, dR: np.ndarray, C: np.ndarray, depth_m: float = 15.0,
                             grid: int = 9) -> np.ndarray:
    """Output-px misalignment at ``depth_m`` (over a ``grid x grid`` of the output) when the LWIR camera is turned
    by ``dR`` (``RigMotion.rotation``) and registration applies the correction ``C`` (output px)."""
    from rig.registration.geometry import output_to_visible, raw_lwir_to_output
    from rig.sim import camera_model

    W, H = geom.output_size
    u, v = np.meshgrid(np.linspace(0, W - 1, grid), np.linspace(0, H - 1, grid))
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    vis_model, ir_model = camera_model(rig.camera("visible")), camera_model(rig.camera("lwir"))
    rays = np.c_[output_to_visible(geom, uv), np.ones(len(uv))] @ np.linalg.inv(vis_model.K).T
    lw = rig.camera("lwir").sim
    q = raw_lwir_to_output(geom, ir_model.project(((rays * depth_m) @ lw.R.T + lw.t) @ dR.T))
    q = np.c_[q, np.ones(len(q))] @ np.asarray(C, np.float64).T
    return np.linalg.norm(q[:, :2] / q[:, 2:] - uv, axis=1)


def record_sim_session(rig: RigConfig, path: Path, seconds: float = 1.0, seed: int = 1, calibration: str | None = None,
                       ffc_interval_s: float = 0.0, motion: RigMotion | None = None, keyframe_hz: float = 2.0,
                       world: list | None = None) -> Path:
    """Record ``seconds`` of simulated drive (simulated clock, as fast as it renders).

    ``motion`` moves the LWIR camera (ground truth: ``world[0].lwir_rotation(t)`` when a list is passed as ``world``).
    """
    drive = DriveWorld(rig, seed=seed, duration_s=max(seconds, 0.5), keyframe_hz=keyframe_hz, max_render_width=480,
                       motion=motion)
    if world is not None:
        world.append(drive)
    cams = make_sim_cameras(rig, drive, realtime=False, ffc_interval_s=ffc_interval_s)
    with SessionWriter.create(path, rig, calibration=calibration) as w:
        for cam in cams:
            with cam:
                cam.start()
                for _ in range(int(round(seconds * cam.spec.fps))):
                    w.write_frame(cam.grab())
    return path
