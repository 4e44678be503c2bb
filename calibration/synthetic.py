"""Synthetic calibration data from the simulator's ground truth: projected board corners plus noise.

Measures the estimators without the detector (the accuracy table of the
calibration issue is specified this way: corner noise sigma = 0.2 px).
"""

from __future__ import annotations

import numpy as np

from rig.boards import Board
from rig.calibration.intrinsics import ViewPoints
from rig.calibration.pipeline import CalibrationRun
from rig.rigconfig import RigConfig


def synthetic_run(rig: RigConfig, board: Board, plan: list[tuple[np.ndarray, np.ndarray]], cameras: list[str],
                  rng: np.random.Generator, sigma_px: float = 0.2, prefix: str = "v",
                  run: CalibrationRun | None = None, faults_seed: int | None = None) -> CalibrationRun:
    """Add the views of ``plan`` (board poses in the rig frame) seen by ``cameras`` to ``run``.

    ``faults_seed``: apply the rig's per-capture faults (``sim.faults``: jitter,
    outlier pairs, trigger offset; :func:`rig.sim.views.capture_perturbations`)
    drawn from this seed; the names of the outlier captures go into
    ``run.truth["outliers"]`` (view name -> degrees), those a camera numbers by a half
    turn into ``run.truth["half_turned"]`` (camera -> view names).
    """
    from rig.sim.views import camera_model, capture_perturbations, pose_in_camera

    run = run or CalibrationRun(board)
    obj = board.object_points()
    faults = capture_perturbations(rig, len(plan), faults_seed) if faults_seed is not None else [{} for _ in plan]
    outliers = run.truth.setdefault("outliers", {})
    half_turn = board.half_turn()
    for i, f in enumerate(faults):
        if any(p.outlier_deg for p in f.values()):
            outliers[f"{prefix}{i:02d}"] = max(p.outlier_deg for p in f.values())
    for c in cameras:
        spec = rig.camera(c)
        model = camera_model(spec)
        run.points.setdefault(c, {})
        run.image_sizes[c] = model.size
        for i, (R, t) in enumerate(plan):
            Rc, tc = pose_in_camera(spec, R, t, faults[i].get(c), board.center())
            px = model.project(obj @ Rc.T + tc) + rng.normal(0, sigma_px, (len(obj), 2))
            name = f"{prefix}{i:02d}"
            ids = np.arange(len(obj))
            p = faults[i].get(c)
            if p is not None and p.half_turn and half_turn is not None:  # the detector's numbering, half a turn off
                ids = half_turn[0]
                run.truth.setdefault("half_turned", {}).setdefault(c, []).append(name)
            run.points[c][name] = ViewPoints(name, px, obj[ids], ids)
    return run


def synthetic_single_run(rig: RigConfig, board: Board, views: int, seed: int, sigma_px: float = 0.2) -> CalibrationRun:
    """What one ``rig calibrate`` run sees on the sim: coverage views for each camera plus simultaneous views.

    The simultaneous views carry the rig's faults (``sim.faults``), if it has any.
    """
    from rig.sim import coverage_pose_plan
    from rig.sim import board_pose_plan

    rng = np.random.default_rng(seed)
    run = CalibrationRun(board)
    synthetic_run(rig, board, coverage_pose_plan(rig, board, views, seed=seed, cameras=["visible"]), ["visible"], rng,
                  sigma_px, "v", run)
    synthetic_run(rig, board, coverage_pose_plan(rig, board, views, seed=seed, cameras=["lwir"]), ["lwir"], rng,
                  sigma_px, "l", run)
    synthetic_run(rig, board, board_pose_plan(rig, board, views, seed=seed), ["visible", "lwir"], rng, sigma_px, "j", run,
                  faults_seed=seed)
    return run
