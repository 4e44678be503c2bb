"""report.html and its plots: axes, ticks, view names, colour bars, residual rings scaled to the RMS,
and the checker blends' captions with their numbers; warnings versus notes."""

from __future__ import annotations

import dataclasses
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from rig.boards import load_board
from rig.calibration import pipeline as pl
from rig.calibration import plots
from rig.calibration.intrinsics import Dropped
from rig.calibration.report import blend_captions, plane_check
from rig.calibration.workflow import CalibrateRequest, calibrate
from rig.rigconfig import load_rig

sys.path.insert(0, str(Path(__file__).parent))
from test_calibration_cli import make_folders  # noqa: E402


class _Figures(HTMLParser):
    """``{image file name: (alt, caption)}`` of every <figure> in report.html."""

    def __init__(self):
        super().__init__()
        self.figures, self._src, self._in_caption = {}, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self._src = Path(a["src"]).name
            self.figures[self._src] = [a.get("alt", ""), ""]
        self._in_caption = tag == "figcaption"

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption and self._src:
            self.figures[self._src][1] += data


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    dirs = make_folders(root / "in")
    rig = load_rig("sim")
    options = pl.CalibrateOptions(rig_plane_distance_m=rig.plane_distance_m, output_size=tuple(rig.output_size))
    return calibrate(CalibrateRequest(load_board("ir_board"), rig, options, images=dirs, out=root / "out"))


def _figures(outcome) -> dict[str, list[str]]:
    p = _Figures()
    p.feed(outcome.report.read_text())
    return p.figures


# --------------------------------------------------------------------------- plots
def test_nice_ticks():
    assert plots.nice_ticks(-0.1, 0.1, 5) == [-0.1, -0.05, 0.0, 0.05, 0.1]
    assert plots.nice_ticks(0, 1920, 5) == [0, 500, 1000, 1500]
    ticks = plots.nice_ticks(0, 0.3, 4)
    assert [plots.tick_label(t, ticks) for t in ticks] == ["0.0", "0.1", "0.2", "0.3"]


def test_residual_rings_at_rms_and_three_rms():
    rng = np.random.default_rng(0)
    res = rng.normal(0, 0.03 / np.sqrt(2), (2000, 2))  # RMS 0.03 px, as the visible camera on the sim
    rms = float(np.sqrt((res ** 2).sum(1).mean()))
    f = plots.residual_scatter(res, rms, "visible")
    k = f.marks["px_per_unit"]
    assert f.marks["rms_ring_px"] == pytest.approx(rms * k) and f.marks["rms3_ring_px"] == pytest.approx(3 * rms * k)
    # The axes are scaled to the data: they end on the first tick past 3xRMS (0.1 px here), not at 0.5 px.
    assert f.x_ticks == f.y_ticks == ("-0.10", "-0.05", "0.00", "0.05", "0.10")
    assert (f.x_label, f.y_label) == ("x residual (px)", "y residual (px)")
    half = 0.1 * k
    assert 0.25 < f.marks["rms_ring_px"] / half < 0.35 and 0.8 < f.marks["rms3_ring_px"] / half < 1.0
    # The green ring is drawn where the mark says (legend rows excluded).
    img = f.image.astype(int)
    b, g, r = img[..., 0], img[..., 1], img[..., 2]
    ys, xs = np.nonzero((g > r + 60) & (g > b + 40))
    keep = ys > 45
    d = np.hypot(xs[keep] - f.marks["centre_x"], ys[keep] - f.marks["centre_y"])
    assert len(d) > 100 and abs(np.median(d) - f.marks["rms_ring_px"]) < 1.5


def test_per_view_bars_name_every_view():
    f = plots.per_view_bars({"sim000": 0.02, "sim001": 0.05, "sim002": 0.03}, "lwir", 0.035)
    assert f.x_ticks == ("sim000", "sim001", "sim002") and f.y_label == "RMS (px)"
    assert f.y_ticks == ("0.00", "0.02", "0.04") and "sim001" in f.describe()


def test_coverage_map_has_image_axes_and_colour_bar():
    heat = np.zeros((12, 16))
    heat[3:6, 4:9] = 7
    f = plots.coverage_map(heat, (1920, 1200), "visible")
    assert f.x_ticks == ("0", "500", "1000", "1500") and f.y_ticks == ("0", "500", "1000")
    assert f.colorbar == "corners per cell" and f.colorbar_ticks == ("0", "2", "4", "6")
    # The colour bar: a column right of the map running from the colour map's top (bright) to its bottom (dark).
    lum = cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY).astype(int)
    col = lum[30:-45, 380 + 62 + 12 + 7]
    assert col[:10].mean() > 150 and col[-10:].mean() < 30 and (np.diff(col) <= 3).all()


# --------------------------------------------------------------------------- report.html
def test_report_figures_describe_their_axes(outcome):
    figs = _figures(outcome)
    run = outcome.run
    for cam in ("visible", "lwir"):
        alt, caption = figs[f"residuals_{cam}.png"]
        assert "x axis: x residual (px)" in alt and "y axis: y residual (px)" in alt
        rms = run.intrinsics[cam].rms_px
        assert f"rings at the RMS ({rms:.3f} px) and 3xRMS ({3 * rms:.3f} px)" in caption
        alt, _ = figs[f"per_view_{cam}.png"]
        assert all(v in alt for v in run.intrinsics[cam].per_view_rms) and "y axis: RMS (px)" in alt
        alt, _ = figs[f"coverage_{cam}.png"]
        assert "x axis: x (image px)" in alt and "colour bar: corners per cell" in alt
        for name in (f"residuals_{cam}.png", f"per_view_{cam}.png", f"coverage_{cam}.png"):
            assert cv2.imread(str(outcome.paths.folder / "report_files" / name)) is not None


def test_checker_blends_at_board_and_working_plane(outcome):
    run, cal = outcome.run, outcome.calibration
    view = run.stereo.views[len(run.stereo.views) // 2]
    pc = plane_check(run, cal, view)
    # Board 1.0-1.3 m away (see make_folders); the board's own plane lines it up, the 15 m plane cannot.
    assert 1.0 < pc.board_distance_m < 1.4 and pc.working_plane_m == 15.0
    assert pc.board_plane_px < 1.0 and pc.working_plane_px > 20 * pc.board_plane_px
    figs = _figures(outcome)
    board_caption, work_caption = blend_captions(pc)
    assert figs["checker_blend.png"][1] == board_caption
    assert figs["checker_blend_working_plane.png"][1] == work_caption
    assert f"board {pc.board_distance_m:.2f} m away" in board_caption and f"{pc.board_plane_px:.2f} px" in board_caption
    assert (f"stored homography of the 15 m working plane: the board, {pc.board_distance_m:.2f} m away, shows "
            f"{pc.working_plane_px:.1f} px of parallax" in work_caption) and "as expected" in work_caption


# --------------------------------------------------------------------------- warnings and notes
def test_outlier_corners_are_one_note_with_one_threshold():
    dropped = [Dropped("lwir", "sim001", "corners", 1, "residual > 0.52 px (4x the median residual)", 0.52),
               Dropped("lwir", "sim003", "corners", 2, "residual > 0.52 px (4x the median residual)", 0.52),
               Dropped("lwir", "sim001", "corners", 1, "residual > 0.51 px (4x the median residual)", 0.51)]
    warnings, notes = pl.summarise_dropped("lwir", dropped, 1188, 4.0)
    assert warnings == []
    assert notes == ["lwir: 4 outlier corner(s) of 1188 left out, in 2 view(s) (sim001, sim003; residual > 0.51 px, "
                     "4x the median residual)"]
    # Many corners, or a whole view, are worth a look: warnings.
    warnings, notes = pl.summarise_dropped("lwir", dropped, 100, 4.0)
    assert notes == [] and len(warnings) == 1 and "more than usual" in warnings[0]
    view = Dropped("lwir", "sim007", "view", 54, "RMS 2.00 px > 0.60 px (3x the median view RMS)", 0.6)
    warnings, notes = pl.summarise_dropped("lwir", [view], 1188, 4.0)
    assert warnings == ["lwir: view 'sim007' dropped: RMS 2.00 px > 0.60 px (3x the median view RMS)"] and notes == []


def test_expected_behaviour_is_a_note_real_problems_stay_warnings(outcome):
    run = outcome.run
    # Boards at ~1.2 m favour the RANSAC homography over the 15 m plane one: expected, a note with its numbers.
    ho = run.held_out
    assert ho["better"] == "ransac" and run.homography.method == "plane"
    assert not any("homography" in w for w in run.warnings)
    note = [n for n in run.notes if "fit the ransac homography better" in n]
    assert len(note) == 1 and f"({ho['ransac']['mean_px']:.2f} px vs {ho['plane']['mean_px']:.2f} px)" in note[0]
    # Recorded images whose boards missed the LWIR corners: the user can add views, so it stays a warning.
    assert any(w.startswith("registration crop limited") and "add views" in w for w in run.warnings)
    # The simulated rig's pose plan places the boards, so there it is a note.
    sim = pl.CalibrationRun(run.board, dataclasses.replace(run.source, kind="sim"), points=run.points,
                            image_sizes=run.image_sizes)
    pl.solve(sim)
    assert not any("registration crop" in w for w in sim.warnings)
    assert any(n.startswith("registration crop limited") for n in sim.notes)
