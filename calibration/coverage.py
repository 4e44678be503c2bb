"""Coverage of board views: where in the image the corners reached, and how varied the board tilts were.

A calibration is only as good as the views constrain it: corners absent from
an image region leave its distortion extrapolated, and boards that all face the
camera leave the focal length correlated with distance. This module is the one
definition of coverage, used twice:

* after detection, :func:`analyse_coverage` (``rig calibrate``) measures it with
  the calibrated board poses and phrases what is missing as warnings;
* while recording, :class:`CoverageTracker` and :func:`coverage_sufficient`
  (``rig record --calibration``, :mod:`rig.calibration.record`) decide when the
  kept views are enough, with no calibration yet: board tilts come from
  :func:`estimate_tilts_deg` (one focal length fitted to all views' homographies,
  principal point at the image centre, then each view's pose).

Both use the same cells (:func:`cells_of`), the same outline area
(:func:`fill_outline`), the same tilt (angle between the board normal and the
optical axis, :func:`board_tilt_deg`) and the same thresholds
(:data:`MIN_AREA`, :data:`MIN_TILT_DEG`), so views that recording calls
sufficient are not called "near fronto-parallel" by calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

ROW_NAMES = ("upper", "middle", "lower")
COL_NAMES = ("left", "centre", "right")
GRID = 3  # the image is judged in thirds
MIN_AREA = 0.5  # share of the image inside at least one board outline
MIN_TILT_DEG = 20.0  # a view constrains the focal length when its board is tilted at least this much
AREA_SCALE = 4  # outlines are filled into a mask at 1/AREA_SCALE of the image size


@dataclass
class Coverage:
    """Corner coverage of one camera.

    ``cells``: 3x3 counts of views with corners in each third of the image
    (rows top to bottom); ``heat``: corner counts on a coarse grid;
    ``area_fraction``: share of the image inside at least one view's board
    outline; ``tilts_deg``: per-view angle between board normal and optical axis.
    """

    camera: str
    image_size: tuple[int, int]
    cells: np.ndarray
    heat: np.ndarray
    area_fraction: float
    tilts_deg: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    tilt_warnings: list[str] = field(default_factory=list)  # those of ``warnings`` about the board's tilt


def cell_name(row: int, col: int) -> str:
    if row == 1 and col == 1:
        return "centre"
    if row == 1:
        return f"middle-{COL_NAMES[col]}"
    if col == 1:
        return f"{ROW_NAMES[row]}-centre"
    return f"{ROW_NAMES[row]}-{COL_NAMES[col]}"


def board_tilt_deg(R: np.ndarray) -> float:
    """Angle between the board normal and the camera's optical axis (0 = fronto-parallel)."""
    return float(np.degrees(np.arccos(np.clip(abs(R[2, 2]), 0.0, 1.0))))


def cells_of(points: np.ndarray, image_size: tuple[int, int], grid: int = GRID) -> np.ndarray:
    """``(grid, grid)`` booleans (rows top to bottom): which cells of the image ``points`` reach."""
    w, h = image_size
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    seen = np.zeros((grid, grid), bool)
    ci = np.clip((pts[:, 0] * grid // w).astype(int), 0, grid - 1)
    ri = np.clip((pts[:, 1] * grid // h).astype(int), 0, grid - 1)
    seen[ri, ci] = True
    return seen


def outline_mask(image_size: tuple[int, int]) -> np.ndarray:
    """An empty mask for :func:`fill_outline` (1/:data:`AREA_SCALE` of the image size)."""
    w, h = image_size
    return np.zeros((max(1, h // AREA_SCALE), max(1, w // AREA_SCALE)), np.uint8)


def fill_outline(mask: np.ndarray, points: np.ndarray) -> None:
    """Mark the convex outline of ``points`` (pixels) in ``mask`` (its mean is the area share)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if len(pts) >= 3:
        hull = cv2.convexHull((pts / AREA_SCALE).astype(np.float32)).astype(np.int32)
        cv2.fillConvexPoly(mask, hull, 1)


def _centred_homography(image_points: np.ndarray, object_points: np.ndarray, image_size: tuple[int, int]):
    """Board plane -> image homography in coordinates centred on the image and scaled by its larger side."""
    w, h = image_size
    s = float(max(w, h))
    img = (np.asarray(image_points, np.float64).reshape(-1, 2) - [w / 2.0, h / 2.0]) / s
    obj = np.asarray(object_points, np.float64).reshape(-1, 3)[:, :2]
    if len(img) < 4:
        return None
    H, _ = cv2.findHomography(obj, img, 0)
    if H is None:
        return None
    return H / np.linalg.norm(H)


def estimate_focal_px(views: Sequence[tuple[np.ndarray, np.ndarray]], image_size: tuple[int, int]) -> float:
    """One focal length (pixels) for all ``views`` (image points, board object points), without calibration.

    Zhang's constraints (rotation columns orthogonal and of equal length) on each
    view's homography, with the principal point at the image centre, square
    pixels and no distortion, solved for ``1/f^2`` in least squares: near
    fronto-parallel views contribute ~nothing, tilted ones fix ``f``. Without a
    usable view it is the larger image side (a ~53 deg field of view).
    """
    s = float(max(image_size))
    a, b = [], []
    for img, obj in views:
        H = _centred_homography(img, obj, image_size)
        if H is None:
            continue
        h1, h2 = H[:, 0], H[:, 1]
        a += [h1[0] * h2[0] + h1[1] * h2[1], h1[0] ** 2 + h1[1] ** 2 - h2[0] ** 2 - h2[1] ** 2]
        b += [h1[2] * h2[2], h1[2] ** 2 - h2[2] ** 2]
    a, b = np.asarray(a), np.asarray(b)
    denom = float(a @ a)
    if denom <= 0:
        return s
    inv_f2 = -float(a @ b) / denom
    if not inv_f2 > 0:
        return s
    return float(np.clip(s / np.sqrt(inv_f2), 0.2 * s, 20.0 * s))


def view_tilt_deg(image_points: np.ndarray, object_points: np.ndarray, K: np.ndarray) -> float:
    """Board tilt (:func:`board_tilt_deg`) of one view, from its pose with camera matrix ``K`` (no distortion)."""
    obj = np.asarray(object_points, np.float64).reshape(-1, 3)
    img = np.asarray(image_points, np.float64).reshape(-1, 1, 2)
    ok, rvec, _ = cv2.solvePnP(obj, img, K, None, flags=cv2.SOLVEPNP_IPPE)
    if not ok:
        return 0.0
    R, _ = cv2.Rodrigues(rvec)
    return board_tilt_deg(R)


def estimate_tilts_deg(views: Sequence[tuple[np.ndarray, np.ndarray]], image_size: tuple[int, int]) -> list[float]:
    """Board tilt of each view (image points, object points) with :func:`estimate_focal_px`: no calibration needed."""
    f = estimate_focal_px(views, image_size)
    w, h = image_size
    K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    return [view_tilt_deg(img, obj, K) for img, obj in views]


@dataclass(frozen=True)
class CoverageGoal:
    """When the views of a calibration recording are enough (and the hard stop at ``max_views``).

    Every required camera must reach ``min_cells`` of the ``GRID x GRID`` cells,
    have ``min_area`` of its image inside board outlines and ``min_tilted`` views
    tilted by ``min_tilt_deg`` or more; and ``min_views`` views must be kept.
    """

    min_views: int = 15
    max_views: int = 40
    min_cells: float = 1.0
    min_area: float = MIN_AREA
    min_tilted: int = 3
    min_tilt_deg: float = MIN_TILT_DEG


class CoverageTracker:
    """Coverage of one camera's kept views, updated view by view (the recording side of this module)."""

    def __init__(self, image_size: tuple[int, int]):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.cells = np.zeros((GRID, GRID), bool)
        self._mask = outline_mask(self.image_size)
        self.views: list[tuple[np.ndarray, np.ndarray]] = []  # (image points, object points)
        self._tilts: list[float] | None = []

    def cells_of(self, points: np.ndarray) -> np.ndarray:
        return cells_of(points, self.image_size)

    def new_cells(self, points: np.ndarray) -> bool:
        """Whether ``points`` reach a cell no kept view reached."""
        return bool((self.cells_of(points) & ~self.cells).any())

    def novelty(self, points: np.ndarray) -> float:
        """Smallest mean normalised corner distance to a kept view (either corner order); inf if none kept."""
        if not self.views:
            return np.inf
        size = np.asarray(self.image_size, np.float64)
        n = np.asarray(points, np.float64) / size
        out = np.inf
        for img, _ in self.views:
            k = img / size
            if len(k) != len(n):
                continue
            out = min(out, np.abs(n - k).sum(1).mean(), np.abs(n[::-1] - k).sum(1).mean())
        return float(out)

    def add(self, image_points: np.ndarray, object_points: np.ndarray) -> None:
        img = np.asarray(image_points, np.float64).reshape(-1, 2)
        self.cells |= self.cells_of(img)
        fill_outline(self._mask, img)
        self.views.append((img, np.asarray(object_points, np.float64).reshape(-1, 3)))
        self._tilts = None

    @property
    def cell_share(self) -> float:
        return float(self.cells.mean())

    @property
    def area(self) -> float:
        return float(self._mask.mean())

    def tilts_deg(self) -> list[float]:
        """Tilt of each kept view (re-estimated with all views: the focal length improves as views come)."""
        if self._tilts is None:
            self._tilts = estimate_tilts_deg(self.views, self.image_size)
        return self._tilts

    def tilted(self, min_tilt_deg: float = MIN_TILT_DEG) -> int:
        return sum(t >= min_tilt_deg for t in self.tilts_deg())


def coverage_sufficient(goal: CoverageGoal, trackers: dict[str, CoverageTracker], kept: int) -> bool:
    """Whether ``kept`` views with these per-camera trackers meet ``goal``."""
    return kept >= goal.min_views and all(
        t.cell_share >= goal.min_cells and t.area >= goal.min_area and t.tilted(goal.min_tilt_deg) >= goal.min_tilted
        for t in trackers.values())


def analyse_coverage(camera: str, image_size: tuple[int, int], points: dict[str, np.ndarray],
                     poses: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     heat_cells: int = 32, min_area: float = MIN_AREA, min_tilt_deg: float = MIN_TILT_DEG) -> Coverage:
    """Coverage of ``points`` (view name -> ``(N, 2)`` pixels) in an image of ``image_size``.

    ``poses`` (view -> board pose ``(R, t)``) gives the tilt variety. Warnings:
    an empty third ("no views in the lower-left third"), low total area, and
    "all views near fronto-parallel: focal length poorly constrained" when no
    view is tilted by ``min_tilt_deg`` or more.
    """
    w, h = image_size
    cells = np.zeros((GRID, GRID), int)
    hw = heat_cells
    hh = max(1, int(round(heat_cells * h / w)))
    heat = np.zeros((hh, hw), int)
    mask = outline_mask(image_size)
    for pts in points.values():
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        cells += cells_of(pts, image_size)
        hx = np.clip((pts[:, 0] * hw // w).astype(int), 0, hw - 1)
        hy = np.clip((pts[:, 1] * hh // h).astype(int), 0, hh - 1)
        np.add.at(heat, (hy, hx), 1)
        fill_outline(mask, pts)
    area = float(mask.mean())
    tilts = {name: board_tilt_deg(R) for name, (R, _) in (poses or {}).items()}
    warnings = []
    for r in range(3):
        for c in range(3):
            if cells[r, c] == 0:
                warnings.append(f"{camera}: no views in the {cell_name(r, c)} third of the image")
    if area < min_area:
        warnings.append(f"{camera}: boards cover only {area:.0%} of the image; move the board towards the edges")
    tilt_warnings = []
    if tilts and max(tilts.values()) < min_tilt_deg:
        tilt_warnings.append(f"{camera}: all views near fronto-parallel: focal length poorly constrained "
                             f"(max tilt {max(tilts.values()):.0f} deg; tilt the board by {min_tilt_deg:.0f}-50 deg)")
    return Coverage(camera, image_size, cells, heat, area, tilts, warnings + tilt_warnings, tilt_warnings)
