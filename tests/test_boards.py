"""Board definitions: formats (ours and Kalibr's), object points, printable rendering."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from rig.boards import load_board, parse_board, write_png_with_dpi
from rig.errors import RigError


def test_shipped_boards():
    ir = load_board("ir_board")
    assert (ir.type, ir.pattern_size, ir.spacing, ir.polarity) == ("chessboard", (9, 6), 0.06, "auto")
    pts = ir.object_points()
    assert pts.shape == (54, 3) and np.allclose(pts[1], [0.06, 0, 0]) and np.allclose(pts[9], [0, 0.06, 0])
    vis = load_board("vis_board.yaml")
    assert vis.type == "charuco" and vis.n_points == 11 * 7


def test_asymmetric_grid_follows_opencv_convention():
    b = parse_board({"type": "asymmetric_circles", "cols": 4, "rows": 11, "spacing": 0.02})
    pts = b.object_points()
    assert np.allclose(pts[:5, :2], [[0, 0], [0.04, 0], [0.08, 0], [0.12, 0], [0.02, 0.02]])


def test_half_turn_of_grids_whose_detections_can_be_numbered_either_way():
    b = load_board("ir_board")  # 9x6 chessboard
    perm, c = b.half_turn()
    obj = b.object_points()
    assert np.array_equal(perm, np.arange(54)[::-1]) and np.allclose(c, [8 * 0.06, 5 * 0.06, 0])
    assert np.allclose(obj[perm], c + obj * [-1, -1, 1])  # X' = c + diag(-1, -1, 1) X
    assert parse_board({"type": "circles", "cols": 4, "rows": 3, "spacing": 0.02}).half_turn() is not None
    # Markers fix the order; the asymmetric grid is not mapped onto itself by a half turn.
    assert load_board("vis_board").half_turn() is None
    assert parse_board({"type": "asymmetric_circles", "cols": 4, "rows": 11, "spacing": 0.02}).half_turn() is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("target_type: checkerboard\ntargetCols: 7\ntargetRows: 6\nrowSpacingMeters: 0.03\ncolSpacingMeters: 0.03\n",
         ("chessboard", 7, 6, 0.03)),
        ("target_type: circlegrid\ntargetCols: 4\ntargetRows: 11\nspacingMeters: 0.02\nasymmetricGrid: true\n",
         ("asymmetric_circles", 4, 11, 0.02)),
        ("target_type: aprilgrid\ntagCols: 6\ntagRows: 6\ntagSize: 0.088\ntagSpacing: 0.3\n",
         ("aprilgrid", 6, 6, 0.088)),
    ],
)
def test_kalibr_targets_load_unchanged(write_yaml, text, expected):
    b = load_board(write_yaml(text))
    assert (b.type, b.cols, b.rows, b.spacing) == expected


def test_aprilgrid_is_an_apriltag_36h11_grid(write_yaml):
    b = load_board(write_yaml("target_type: aprilgrid\ntagCols: 3\ntagRows: 2\ntagSize: 0.1\ntagSpacing: 0.3\n"))
    pts = b.object_points()
    assert pts.shape == (3 * 2 * 4, 3)
    # Second tag starts one tag plus one gap to the right.
    assert np.isclose(pts[4, 0] - pts[0, 0], 0.13)
    img = b.render_printable(150)
    corners, ids, _ = cv2.aruco.ArucoDetector(b.aruco_dictionary()).detectMarkers(img)
    assert ids is not None and sorted(ids.ravel().tolist()) == list(range(6))


@pytest.mark.parametrize(
    "text,key,problem",
    [
        ("type: chessboard\ncols: 6\nrows: 6\nsquare_size: 0.05\n", "cols", "ambiguous"),
        ("type: hexagon\ncols: 6\nrows: 5\nsquare_size: 0.05\n", "type", "not one of"),
        ("type: chessboard\ncols: 9\nrows: 6\n", "square_size", "missing required key"),
        ("type: chessboard\ncols: 9\nrows: 6\nspacing: 0.05\n", "spacing", "takes 'square_size'"),
        ("type: charuco\ncols: 5\nrows: 7\nsquare_size: 0.04\nmarker_size: 0.05\n", "marker_size", "smaller"),
        ("type: charuco\ncols: 20\nrows: 20\nsquare_size: 0.04\nmarker_size: 0.03\n", "dictionary", "markers"),
        ("type: chessboard\ncols: 9\nrows: 6\nsquare_size: 0.05\nthermal: {polarity: hot}\n", "thermal.polarity",
         "not one of"),
        ("target_type: checkerboard\ntargetCols: 7\ntargetRows: 6\nrowSpacingMeters: 0.03\n", "colSpacingMeters",
         "missing"),
    ],
)
def test_invalid_boards(write_yaml, text, key, problem):
    path = write_yaml(text)
    with pytest.raises(RigError) as err:
        load_board(path)
    assert str(err.value).startswith(f"{path}: {key}: ") and problem in str(err.value)


def test_board_lookup_by_name_and_missing(tmp_path):
    with pytest.raises(RigError, match="no shipped board of that name .*ir_board"):
        load_board("nope")


def test_printable_render_is_true_scale_and_detectable(tmp_path):
    b = load_board("ir_board")
    dpi = 100.0
    img = b.render_printable(dpi)
    w_m, h_m = b.size_m()
    px_per_m = dpi / 0.0254
    assert abs(img.shape[1] - w_m * px_per_m) <= 0.02 * img.shape[1]
    found, corners = cv2.findChessboardCornersSB(img, b.pattern_size)
    assert found
    spacing_px = np.median(np.linalg.norm(np.diff(corners.reshape(6, 9, 2), axis=1), axis=-1))
    # The square is a whole number of pixels (the render snaps scale for exact corners): within one pixel.
    assert abs(spacing_px - b.spacing * px_per_m) < 1.0
    out = tmp_path / "board.png"
    write_png_with_dpi(out, img, dpi)
    data = out.read_bytes()
    i = data.index(b"pHYs")
    ppx, ppy, unit = struct.unpack(">IIB", data[i + 4:i + 13])
    assert (ppx, ppy, unit) == (round(dpi / 0.0254),) * 2 + (1,)
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), img)


def test_charuco_and_circle_renders_detectable():
    ch = load_board("vis_board")
    img = ch.render_printable(120)
    corners, ids, _, _ = cv2.aruco.CharucoDetector(ch.opencv_board()).detectBoard(img)
    assert ids is not None and len(ids) == ch.n_points
    circ = parse_board({"type": "circles", "cols": 7, "rows": 5, "spacing": 0.03})
    found, centres = cv2.findCirclesGrid(circ.render_printable(60), circ.pattern_size, flags=cv2.CALIB_CB_SYMMETRIC_GRID)
    assert found and centres.shape[0] == 35
    asym = parse_board({"type": "asymmetric_circles", "cols": 4, "rows": 11, "spacing": 0.02})
    found, _ = cv2.findCirclesGrid(asym.render_printable(60), asym.pattern_size, flags=cv2.CALIB_CB_ASYMMETRIC_GRID)
    assert found


@pytest.mark.parametrize("text,key,value,hint", [
    ("type: chessboard\ncols: 9\nrows: 6\nsquare_size: 60\n", "square_size", "60", "0.06 (60 mm)"),
    ("target_type: aprilgrid\ntagCols: 6\ntagRows: 6\ntagSize: 88\ntagSpacing: 0.3\n", "tagSize", "88", "0.088 (88 mm)"),
])
def test_size_in_millimetres_names_metres_and_suggests(write_yaml, text, key, value, hint):
    path = write_yaml(text)
    with pytest.raises(RigError) as err:
        load_board(path)
    assert str(err.value) == f"{path}: {key}: must be <= 10 (metres), got {value}; did you mean {hint}?"


def test_negative_size_names_metres(write_yaml):
    path = write_yaml("type: chessboard\ncols: 9\nrows: 6\nsquare_size: -0.06\n")
    with pytest.raises(RigError) as err:
        load_board(path)
    assert str(err.value) == f"{path}: square_size: must be > 0 (metres), got -0.06"
