"""Calibration capture on the sim: only still, new board views are kept, it stops at sufficient coverage,
and the session it writes reads back as time-matched pairs."""

from __future__ import annotations

import numpy as np
import pytest

from rig.boards import load_board
from rig.calibration.record import CalibrationRecorder, CoverageGoal
from rig.capture.sim_camera import sim_cameras_for_board
from rig.errors import RigError
from rig.rigconfig import parse_rig
from simrigs import small_rig_dict
from rig.session import SessionReader

CAL_RIG = small_rig_dict("calsmall")
GOAL = CoverageGoal(min_views=6, max_views=20, min_cells=0.75, min_area=0.2, min_tilted=2)


@pytest.fixture(scope="module")
def rig():
    return parse_rig(CAL_RIG)


@pytest.fixture(scope="module")
def board():
    return load_board("ir_board")


def test_keeps_only_still_new_views_and_stops_at_sufficient_coverage(rig, board, tmp_path):
    cams = sim_cameras_for_board(rig, board, n_views=14, dwell_s=0.7, seed=3)
    world = cams[0].world
    rec = CalibrationRecorder(rig, board, tmp_path / "cal", cams, goal=GOAL, min_free_bytes=0)
    assert not rec.path.exists()
    with rec:
        result = rec.run(25.0)
    assert result.stop_reason == "coverage" and result.sufficient and result.kept >= GOAL.min_views
    assert result.rejected["moving"] > 0  # views while the board changed pose were refused
    assert all(c >= GOAL.min_cells for c in result.coverage.values())
    with SessionReader(result.path) as r:
        assert r.status == "complete" and r.manifest["stats"]["sufficient"] is True
        vis, lwir = r.records("visible"), r.records("lwir")
        assert len(vis) == len(lwir) == result.kept  # only kept views are written
        pairs = r.pairs()
        assert len(pairs) == result.kept  # every view reads back as a time-matched pair
        poses = []
        for p in pairs:
            t = p.a.frame_counter / 30.0  # the sim camera's own frame time (device_ns is rounded to ns)
            # Still: the board had been at this pose for the whole stillness window (since the frame that many
            # frame periods earlier: in frame counts, as 8.7 - 0.3 s in floats lands a hair before a pose change
            # that the frame taken at 8.4 s already shows).
            t_then = (p.a.frame_counter - round(rec.still_window_s * 30.0)) / 30.0
            assert world.keyframe_index(t_then) == world.keyframe_index(t)
            assert world.keyframe_index(p.b.frame_counter / 60.0) == world.keyframe_index(t)
            poses.append(world.keyframe_index(t))
            assert r.read(p.a).shape == (400, 640) and r.read(p.b).dtype == np.uint16
        assert len(set(poses)) == len(poses)  # new: no pose kept twice
        events = [e for e in r.events()[0] if e["kind"] == "view"]
        assert [e["frames"] for e in events] == result.views
    # Sufficient for recording is sufficient for calibration: with the true poses of the kept views,
    # calibration's coverage check does not call them near fronto-parallel.
    from rig.calibration.coverage import analyse_coverage, board_tilt_deg
    from rig.sim.views import pose_in_camera

    for name, size in (("visible", (640, 400)), ("lwir", (320, 256))):
        true = {f"v{i}": pose_in_camera(rig.camera(name), *world.poses[k]) for i, k in enumerate(poses)}
        warnings = analyse_coverage(name, size, {v: np.zeros((0, 2)) for v in true}, true).warnings
        assert not any("fronto-parallel" in w for w in warnings)
        # the recorder's tilts (estimated without calibration) are the true tilts
        assert np.allclose(result.tilts_deg[name], [board_tilt_deg(R) for R, _ in true.values()], atol=1.5)


def test_a_moving_board_gives_no_views(rig, board, tmp_path):
    cams = sim_cameras_for_board(rig, board, n_views=30, dwell_s=0.1, seed=4)
    with CalibrationRecorder(rig, board, tmp_path / "cal", cams, goal=GOAL, min_free_bytes=0) as rec:
        result = rec.run(3.0)
    assert result.kept == 0 and result.stop_reason == "duration" and not result.sufficient
    assert result.rejected["moving"] >= 5
    with SessionReader(result.path) as r:
        assert r.status == "complete" and r.records("visible") == [] and r.manifest["stats"]["sufficient"] is False


def test_goal_errors_are_one_line(rig, board, tmp_path):
    with pytest.raises(RigError, match="min-views"):
        CalibrationRecorder(rig, board, tmp_path / "x", goal=CoverageGoal(min_views=10, max_views=5))


# -- one definition of coverage for recording and calibration ----------------------------------


def _view(board, K, tilt_deg: float, axis_deg: float, offset, rng):
    """Image points of ``board`` tilted by ``tilt_deg`` about an in-plane axis, 1 m in front of camera ``K``."""
    import cv2

    from rig.rigconfig import rotation_from_vector_deg

    a = np.radians(axis_deg)
    R = rotation_from_vector_deg([tilt_deg * np.cos(a), tilt_deg * np.sin(a), 0.0])
    t = np.array([offset[0], offset[1], 1.0]) - R @ board.center()
    obj = board.object_points()
    img, _ = cv2.projectPoints(obj, cv2.Rodrigues(R)[0], t, K, None)
    return img.reshape(-1, 2) + rng.normal(0, 0.1, (len(obj), 2)), obj, (R, t)


def test_recording_and_calibration_use_the_same_tilt_and_threshold(board):
    import inspect

    from rig.calibration.coverage import MIN_TILT_DEG, CoverageTracker, analyse_coverage, board_tilt_deg

    assert CoverageGoal().min_tilt_deg == MIN_TILT_DEG == inspect.signature(analyse_coverage).parameters[
        "min_tilt_deg"].default == 20.0
    rng = np.random.default_rng(0)
    K = np.array([[567.0, 0, 320], [0, 567.0, 200], [0, 0, 1]])
    offsets = [(-0.05, -0.03), (0.05, 0.03), (0.0, 0.0), (0.05, -0.03), (-0.05, 0.03), (0.02, 0.0)]
    for tilts, tilted in (([14, 15, 16, 17, 15, 16], 0), ([14, 25, 30, 16, 35, 10], 3)):
        tracker = CoverageTracker((640, 400))
        points, poses = {}, {}
        for i, (tilt, off) in enumerate(zip(tilts, offsets)):
            img, obj, pose = _view(board, K, tilt, 60.0 * i, off, rng)
            tracker.add(img, obj)
            points[f"v{i}"], poses[f"v{i}"] = img, pose
        # Without any calibration, the recorder's tilt matches the true board tilt...
        truth = [board_tilt_deg(R) for R, _ in poses.values()]
        assert np.allclose(tracker.tilts_deg(), truth, atol=1.0)
        # ...so it counts tilted views as calibration does.
        assert tracker.tilted() == tilted
        warned = [w for w in analyse_coverage("visible", (640, 400), points, poses).warnings if "fronto-parallel" in w]
        assert bool(warned) == (tilted == 0)


def test_views_called_sufficient_are_not_fronto_parallel_for_calibration(rig, board, tmp_path):
    """A board plan tilted 15-18.5 deg: the old edge-ratio rule (1.08) called it sufficient, calibration warns."""
    from rig.calibration.coverage import analyse_coverage
    from rig.rigconfig import rotation_from_vector_deg
    from rig.sim import board_pose_plan
    from rig.sim.views import pose_in_camera

    rng = np.random.default_rng(5)
    poses = []
    for R, t in board_pose_plan(rig, board, 9, seed=5, max_tilt_deg=10.0):
        a, mag = rng.uniform(0, 2 * np.pi), rng.uniform(15.0, 18.5)
        R2 = rotation_from_vector_deg([mag * np.cos(a), mag * np.sin(a), 0.0])
        poses.append((R2, t + R @ board.center() - R2 @ board.center()))  # same board centre, new tilt
    cams = sim_cameras_for_board(rig, board, poses=poses, dwell_s=0.7, seed=5)
    world = cams[0].world
    goal = CoverageGoal(min_views=5, max_views=9, min_cells=0.5, min_area=0.1, min_tilted=2)
    with CalibrationRecorder(rig, board, tmp_path / "cal", cams, goal=goal, min_free_bytes=0) as rec:
        result = rec.run(9 * 0.7)
    assert result.kept >= goal.min_views  # enough views, cells and area: only the tilt can stop it
    with SessionReader(result.path) as r:
        tilts = [e["tilt_deg"] for e in r.events()[0] if e["kind"] == "view"]
        kept_poses = {}
        for i, p in enumerate(r.pairs()):
            R, t = world.poses[world.keyframe_index(p.a.frame_counter / 30.0)]
            kept_poses[f"view{i}"] = pose_in_camera(rig.camera("visible"), R, t)
            points = {f"view{i}": np.zeros((0, 2))}
    warnings = analyse_coverage("visible", (640, 400), points, kept_poses).warnings
    fronto = any("fronto-parallel" in w for w in warnings)
    assert fronto  # calibration would warn: every view is below 20 deg
    assert not result.sufficient and result.tilted == 0  # and recording agrees
    assert all(v["visible"] < 20.0 for v in tilts)


def test_stillness_window_is_measured_on_the_cameras_clock_not_on_arrival():
    """A loaded host delivers frames late by varying amounts: the latest frame arrives 0.15 s after it was taken,
    the older ones at once. By arrival time the frame 0.3 s earlier is one taken after the board stopped (0.2 s
    before): 'still' too early (the suite saw such views kept on a loaded machine). By the camera's clock it is
    one taken while the board was elsewhere."""
    from rig.calibration.record import image_still
    from rig.capture.camera import Frame

    def frame(t_s: float, lag_s: float, moved: bool) -> Frame:
        img = np.zeros((48, 64), np.uint8)
        img[10:30, (5 if moved else 30):(25 if moved else 50)] = 255
        return Frame("visible", img, int(round(t_s * 30)), int((t_s + lag_s) * 1e9), 0, int(t_s * 1e9))

    ring = [frame(i / 30, 0.0, i / 30 >= 0.8) for i in range(30)]  # the board moved to a new pose at 0.8 s
    now = frame(1.0, 0.15, True)
    assert not image_still(ring, now, 0.3, 8.0)
    assert image_still(ring, frame(1.15, 0.0, True), 0.3, 8.0)  # still for 0.35 s by then
    no_clock = [Frame(f.camera, f.image, f.frame_counter, f.host_ns, 0, None) for f in ring]
    assert image_still(no_clock, Frame("visible", now.image, 30, now.host_ns, 0, None), 0.3, 8.0)  # arrival only
