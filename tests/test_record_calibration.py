"""Calibration capture on the sim: only still, new board views are kept, it stops at sufficient coverage,
and the session it writes reads back as time-matched pairs."""

from __future__ import annotations

import numpy as np
import pytest

from rig.boards import load_board
from rig.capture.calib_record import CalibrationRecorder, CoverageGoal, sim_cameras_for_board
from rig.errors import RigError
from rig.rigconfig import parse_rig
from rig.session import SessionReader

CAL_RIG = {
    "rig": "calsmall",
    "cameras": [
        {"name": "visible", "role": "visible", "driver": "sim", "resolution": [640, 400], "pixel_format": "BayerRG8",
         "fps": 30, "sim": {"intrinsics": {"fx": 567, "fy": 567, "cx": 320, "cy": 200}}},
        {"name": "lwir", "role": "lwir", "driver": "sim", "resolution": [320, 256], "pixel_format": "Mono16",
         "fps": 60, "sim": {"intrinsics": {"fx": 371, "fy": 371, "cx": 160, "cy": 128},
                            "pose": {"rotation_deg": [0.6, -0.8, 0.3], "position_m": [0.12, 0.05, 0.0]}}},
    ],
}
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
            t = p.a.device_ns * 1e-9
            # Still: the board had been at this pose for the whole stillness window.
            assert world.keyframe_index(t - rec.still_window_s) == world.keyframe_index(t)
            assert world.keyframe_index(p.b.device_ns * 1e-9) == world.keyframe_index(t)
            poses.append(world.keyframe_index(t))
            assert r.read(p.a).shape == (400, 640) and r.read(p.b).dtype == np.uint16
        assert len(set(poses)) == len(poses)  # new: no pose kept twice
        events = [e for e in r.events()[0] if e["kind"] == "view"]
        assert [e["frames"] for e in events] == result.views


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
