"""Coverage analysis: where in the image the corners reached, and how varied the board tilts were.

A calibration is only as good as the views constrain it: corners absent from
an image region leave its distortion extrapolated, and boards that all face the
camera leave the focal length correlated with distance. :func:`analyse_coverage`
measures both and phrases what is missing as warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

ROW_NAMES = ("upper", "middle", "lower")
COL_NAMES = ("left", "centre", "right")


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


def analyse_coverage(camera: str, image_size: tuple[int, int], points: dict[str, np.ndarray],
                     poses: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     heat_cells: int = 32, min_area: float = 0.5, min_tilt_deg: float = 20.0) -> Coverage:
    """Coverage of ``points`` (view name -> ``(N, 2)`` pixels) in an image of ``image_size``.

    ``poses`` (view -> board pose ``(R, t)``) gives the tilt variety. Warnings:
    an empty third ("no views in the lower-left third"), low total area, and
    "all views near fronto-parallel: focal length poorly constrained" when no
    view is tilted by ``min_tilt_deg`` or more.
    """
    w, h = image_size
    cells = np.zeros((3, 3), int)
    hw = heat_cells
    hh = max(1, int(round(heat_cells * h / w)))
    heat = np.zeros((hh, hw), int)
    scale = 4
    mask = np.zeros((max(1, h // scale), max(1, w // scale)), np.uint8)
    for pts in points.values():
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        if len(pts) == 0:
            continue
        ci = np.clip((pts[:, 0] * 3 // w).astype(int), 0, 2)
        ri = np.clip((pts[:, 1] * 3 // h).astype(int), 0, 2)
        seen = np.zeros((3, 3), bool)
        seen[ri, ci] = True
        cells += seen
        hx = np.clip((pts[:, 0] * hw // w).astype(int), 0, hw - 1)
        hy = np.clip((pts[:, 1] * hh // h).astype(int), 0, hh - 1)
        np.add.at(heat, (hy, hx), 1)
        if len(pts) >= 3:
            hull = cv2.convexHull((pts / scale).astype(np.float32)).astype(np.int32)
            cv2.fillConvexPoly(mask, hull, 1)
    area = float(mask.mean())
    tilts = {name: board_tilt_deg(R) for name, (R, _) in (poses or {}).items()}
    warnings = []
    for r in range(3):
        for c in range(3):
            if cells[r, c] == 0:
                warnings.append(f"{camera}: no views in the {cell_name(r, c)} third of the image")
    if area < min_area:
        warnings.append(f"{camera}: boards cover only {area:.0%} of the image; move the board towards the edges")
    if tilts and max(tilts.values()) < min_tilt_deg:
        warnings.append(f"{camera}: all views near fronto-parallel: focal length poorly constrained "
                        f"(max tilt {max(tilts.values()):.0f} deg; tilt the board by 20-50 deg)")
    return Coverage(camera, image_size, cells, heat, area, tilts, warnings)
