"""Held-out pairs decide between the guard's solution and the joint solve (rig.calibration.crossval)."""

from __future__ import annotations

import numpy as np
import pytest

from rig.boards import load_board
from rig.calibration.crossval import compare_held_out, pair_folds, pair_transfer_error
from rig.calibration.intrinsics import ViewPoints, calibrate_intrinsics
from rig.calibration.joint import JointOptions, solve_joint
from rig.calibration.pipeline import CalibrationRun
from rig.calibration.synthetic import synthetic_run
from rig.sim import board_pose_plan, coverage_pose_plan

SIGMA = 0.2


def _truth(rig):
    """Both cameras' ground truth and the extrinsics ``X_v = R X_l + t``."""
    v, l = rig.camera("visible").sim, rig.camera("lwir").sim
    R = v.R @ l.R.T
    return v, l, R, v.t - R @ l.t


def _weak_lwir_run(rig, seed: int, pairs: int) -> CalibrationRun:
    """Many visible coverage views, and the LWIR camera only in ``pairs`` pairs: its own fit leaves the focal
    length uncertain (a few px), the pairs pin it to the visible camera's board distances."""
    board = load_board("ir_board")
    rng = np.random.default_rng(seed)
    run = CalibrationRun(board)
    synthetic_run(rig, board, coverage_pose_plan(rig, board, 20, seed=seed, cameras=["visible"]), ["visible"], rng,
                  SIGMA, "v", run)
    synthetic_run(rig, board, board_pose_plan(rig, board, pairs, seed=seed), ["visible", "lwir"], rng, SIGMA, "j", run)
    return run


def test_pair_folds_hold_every_pair_out_once():
    names = [f"p{i:02d}" for i in range(19)]
    folds = pair_folds(names, 8)
    assert len(folds) == 8 and sorted(sum(folds, [])) == names
    assert all(abs(len(f) - 19 / 8) < 1 for f in folds) and folds[0][:2] == ["p00", "p08"]
    assert pair_folds(names[:5], 8) == [[n] for n in names[:5]]


def test_pair_transfer_error_is_zero_at_the_truth_and_grows_with_a_wrong_rotation(sim_rig):
    """Noise-free corners of one pair map exactly through the truth's board-plane homography; a 0.1 deg error of
    the extrinsic rotation moves them by about fx * 0.1 deg."""
    from rig.rigconfig import rotation_from_vector_deg

    board = load_board("ir_board")
    run = synthetic_run(sim_rig, board, board_pose_plan(sim_rig, board, 1, seed=3), ["visible", "lwir"],
                        np.random.default_rng(0), 0.0, "j")
    a, b = run.points["visible"]["j00"], run.points["lwir"]["j00"]
    v, l, R_vl, t_vl = _truth(sim_rig)
    Kv, Kl = v.K, l.K
    dv, dl = np.asarray(v.dist, float), np.asarray(l.dist, float)
    assert pair_transfer_error(a, b, Kv, dv, Kl, dl, R_vl, t_vl) < 1e-3
    off = pair_transfer_error(a, b, Kv, dv, Kl, dl, rotation_from_vector_deg([0.0, 0.1, 0.0]) @ R_vl, t_vl)
    assert off == pytest.approx(Kv[0, 0] * np.radians(0.1), rel=0.15)
    few = ViewPoints("j00", a.image_points[:3], a.object_points[:3], a.ids[:3])
    assert np.isnan(pair_transfer_error(few, b, Kv, dv, Kl, dl, R_vl, t_vl))


def test_compare_held_out_holds_each_fold_out_of_both_candidates(sim_rig):
    """The solver sees neither camera's views of the held-out pairs, and both candidates get the same folds."""
    run = _weak_lwir_run(sim_rig, 0, 5)
    own = {c: calibrate_intrinsics(c, list(run.points[c].values()), run.image_sizes[c]) for c in ("visible", "lwir")}
    pairs = sorted(run.points["lwir"])
    seen = []
    v, l, R, t = _truth(sim_rig)

    def solve(vf, lf, coupled, which):
        seen.append((which, {x.name for x in vf.views} & set(pairs), {x.name for x in lf.views}, set(coupled)))
        K_l = l.K * (1.0 if which == "joint" else np.array([[1.01, 1, 1], [1, 1.01, 1], [1, 1, 1]]))
        return v.K, np.asarray(v.dist, float), K_l, np.asarray(l.dist, float), R, t

    cmp = compare_held_out(own["visible"], own["lwir"], pairs, solve)
    assert cmp.folds == 5 and cmp.pairs == 5 and len(seen) == 10
    for which, vis_pairs, lw_views, coupled in seen:
        assert len(vis_pairs) == len(lw_views) == len(coupled) == 4 and vis_pairs == lw_views == coupled
    # the truth against a focal length 1 % off: the truth is kept
    assert cmp.joint_px < 0.5 * cmp.guarded_px and cmp.keep_joint and cmp.as_dict()["kept"] == "joint"


def test_the_joint_solve_is_kept_where_held_out_pairs_register_better(sim_rig):
    """A guard that rejects every move (sigma tolerance ~0): where the LWIR camera's own fit rests on 5 views, the
    joint solve, which the pairs pin, registers held-out pairs better and is kept, loudly; its focal length is the
    nearer to the truth. Where the two register alike, the own fit stays."""
    fx_true = sim_rig.camera("lwir").sim.K[0, 0]
    strict = JointOptions(sigma_tolerance=1e-6)
    decided = {}
    for seed in (0, 1):
        run = _weak_lwir_run(sim_rig, seed, 5)
        own = {c: calibrate_intrinsics(c, list(run.points[c].values()), run.image_sizes[c]) for c in ("visible", "lwir")}
        jo = solve_joint(own["visible"], own["lwir"], {"visible", "lwir"}, strict)
        ho = jo.bundle["held_out"]
        assert ho["folds"] == ho["pairs"] == 5
        decided[seed] = ho["kept"]
        if ho["kept"] == "joint":
            assert ho["joint_px"] < 0.95 * ho["guarded_px"]
            assert jo.bundle["kept"]["lwir"] == "joint" and jo.bundle["free_intrinsics"] == ["lwir", "visible"]
            assert abs(jo.intrinsics["lwir"].K[0, 0] - fx_true) < abs(own["lwir"].K[0, 0] - fx_true)
            assert any(w.startswith("JOINT SOLVE KEPT FOR LWIR BEYOND ITS OWN-FIT LIMITS") and "held-out pairs" in w
                       for w in jo.warnings)
            # the report states which solution was kept, and why
            from types import SimpleNamespace

            from rig.calibration.report import intrinsics_table

            html = intrinsics_table(SimpleNamespace(intrinsics=jo.intrinsics, own_fit=own, bundle={
                **jo.bundle, "checks": {c: ch.__dict__ for c, ch in jo.checks.items()}}))
            assert f"registers the held-out pairs at {ho['joint_px']:.2f} px, the own fit at {ho['guarded_px']:.2f}" in html
            assert "Kept: <b>joint</b>" in html
        else:
            assert ho["joint_px"] >= 0.95 * ho["guarded_px"]
            np.testing.assert_array_equal(jo.intrinsics["lwir"].K, own["lwir"].K)
            assert any(w.startswith("JOINT SOLVE REJECTED FOR LWIR") and "held-out pairs register at" in w
                       for w in jo.warnings)
    assert decided == {0: "joint", 1: "own fit"}


def test_no_arbitration_where_the_joint_solve_would_raise_a_cameras_rms_too_far(sim_rig):
    """Held-out pairs may overrule the guard only while no camera's own-view RMS rises beyond the limit: here a
    limit of 1x (any rise), so seed 0's joint solve, kept above, is refused without an arbitration."""
    run = _weak_lwir_run(sim_rig, 0, 5)
    own = {c: calibrate_intrinsics(c, list(run.points[c].values()), run.image_sizes[c]) for c in ("visible", "lwir")}
    jo = solve_joint(own["visible"], own["lwir"], {"visible", "lwir"},
                     JointOptions(sigma_tolerance=1e-6, max_arbitration_rms_ratio=1.0))
    assert jo.bundle["held_out"] is None and jo.bundle["kept"]["lwir"] == "own fit"
    np.testing.assert_array_equal(jo.intrinsics["lwir"].K, own["lwir"].K)


def test_the_arbitration_overrules_only_the_sigma_limit():
    """By default held-out pairs may overrule a rejection for a move beyond sigma, never one for an own-view RMS
    beyond the guard's limit (+20 %, where the rise exceeds detection noise)."""
    from rig.calibration.joint import CameraCheck, _rms_within

    def chk(own, joint):
        return CameraCheck("lwir", own, joint, "fx", 4.0, "own fit")

    o = JointOptions()
    assert _rms_within(chk(0.5, 0.59), o) and not _rms_within(chk(0.5, 0.65), o)
    assert _rms_within(chk(0.02, 0.06), o)  # +200 %, but 0.04 px: within detection noise
    assert not _rms_within(chk(0.5, 0.59), JointOptions(max_arbitration_rms_ratio=1.0))
