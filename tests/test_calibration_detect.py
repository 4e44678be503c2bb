"""Board detection on simulator renders: order, accuracy, LWIR polarity, faint 16-bit boards."""

from __future__ import annotations

import numpy as np
import pytest

from rig.boards import load_board
from rig.calibration.detect import detect
from rig.sim import ThermalLook
from rig.sim import BoardViewRenderer, board_pose_plan


@pytest.fixture(scope="module")
def ir_views(sim_rig):
    """One pose, LWIR only: normal look, and the hardest setting (0.5 K contrast, heated = inverted)."""
    board = load_board("ir_board")
    R, t = board_pose_plan(sim_rig, board, 1, seed=1)[0]
    normal = BoardViewRenderer(sim_rig, board).render(R, t, np.random.default_rng(0), ["lwir"])
    hard = BoardViewRenderer(sim_rig, board, thermal_look=ThermalLook(contrast_k=0.5, polarity="inverted")).render(
        R, t, np.random.default_rng(0), ["lwir"])
    return board, normal, hard


def test_lwir_normal_in_board_order(ir_views):
    board, view, _ = ir_views
    out = detect(view.images["lwir"], board, thermal=True)
    d = out.detection
    assert d is not None and d.polarity == "normal"
    assert (d.ids == np.arange(54)).all()
    err = np.linalg.norm(d.image_points - view.corners["lwir"], axis=1)
    assert err.mean() < 0.25 and err.max() < 0.8


def test_lwir_faint_inverted_found_with_polarity(ir_views):
    board, _, view = ir_views
    img = view.images["lwir"]
    assert img.dtype == np.uint16 and np.ptp(img) < 1000  # a narrow band of 16-bit counts
    out = detect(img, board, thermal=True)
    d = out.detection
    assert d is not None, out.reason
    assert d.polarity == "inverted" and d.variant != "plain"  # found by a retry with other preprocessing
    err = np.linalg.norm(d.image_points - view.corners["lwir"], axis=1)
    assert err.mean() < 0.8  # right order despite the inverted polarity
    # The naive path (divide by 256, plain detector) loses the board.
    import cv2

    assert not cv2.findChessboardCorners((img // 256).astype(np.uint8), board.pattern_size)[0]


def test_no_board_gives_reason(ir_views):
    board, view, _ = ir_views
    blank = np.full((512, 640), 8000, np.uint16)
    out = detect(blank, board, thermal=True)
    assert out.detection is None and out.reason and len(out.tried) > 1


def test_charuco_partial_view(sim_rig):
    board = load_board("vis_board")
    R, t = board_pose_plan(sim_rig, board, 1, seed=2, cameras=["visible"])[0]
    view = BoardViewRenderer(sim_rig, board).render(R, t, np.random.default_rng(0), ["visible"])
    img = view.images["visible"].copy()
    img[:, :450] = 128  # hide the left part of the board: ChArUco still gives the rest
    d = detect(img, board).detection
    assert d is not None and 6 <= len(d) < board.n_points
    err = np.linalg.norm(d.image_points - view.corners["visible"][d.ids], axis=1)
    assert err.mean() < 0.3


# --------------------------------------------------------------------------- search order and phantoms
def test_visible_found_by_the_cheap_classic_search(sim_rig):
    board = load_board("ir_board")
    R, t = board_pose_plan(sim_rig, board, 1, seed=3, cameras=["visible"])[0]
    view = BoardViewRenderer(sim_rig, board).render(R, t, np.random.default_rng(0), ["visible"])
    out = detect(view.images["visible"], board)
    d = out.detection
    assert d is not None and d.method == "classic" and out.tried == ("plain",)
    err = np.linalg.norm(d.image_points - view.corners["visible"], axis=1)
    assert err.mean() < 0.05 and err.max() < 0.15  # half-resolution search, full-resolution cornerSubPix


def test_faint_lwir_found_without_the_exhaustive_search(ir_views):
    board, _, view = ir_views
    out = detect(view.images["lwir"], board, thermal=True)
    assert out.detection is not None and out.detection.method == "sb"
    assert not any("exhaustive" in t for t in out.tried)
    err = np.linalg.norm(out.detection.image_points - view.corners["lwir"], axis=1)
    assert err.mean() < 0.5  # SB's CALIB_CB_ACCURACY fit (cornerSubPix gave 0.9 px at this contrast)


def test_exhaustive_search_is_the_last_resort(ir_views):
    board, _, _ = ir_views
    blank = np.full((512, 640), 8000, np.uint16)
    quick = detect(blank, board, thermal=True, exhaustive=False)
    assert quick.detection is None and not any("exhaustive" in t for t in quick.tried)
    full = detect(blank, board, thermal=True)
    ex = [t for t in full.tried if "exhaustive" in t]
    assert full.tried[:len(quick.tried)] == quick.tried  # every variant cheaply first
    assert ex == ["flat+denoise+clahe (exhaustive)", "flat+denoise (exhaustive)"]  # where it ever helped


@pytest.mark.parametrize("index", [6, 26])
def test_board_cut_by_the_lwir_border_gives_no_shifted_grid(sim_rig, index):
    """The rig calibration's pose plan puts boards partly outside the LWIR image; the exhaustive
    search then returned a 9x6 grid with a phantom column on the board's edge (300 px off)."""
    from rig.sim import coverage_pose_plan

    board = load_board("ir_board")
    names = [c.name for c in sim_rig.cameras if c.driver == "sim"]
    R, t = coverage_pose_plan(sim_rig, board, 40, seed=1, cameras=names)[index]
    view = BoardViewRenderer(sim_rig, board).render(R, t, np.random.default_rng(1000 + index), ["lwir"])
    truth = view.corners["lwir"]
    assert not ((truth >= 0) & (truth <= [639, 511])).all(axis=1).all()  # some corners out of view
    out = detect(view.images["lwir"], board, thermal=True)
    assert out.detection is None and "phantom" in out.reason
