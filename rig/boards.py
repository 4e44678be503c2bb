"""Calibration boards: definitions, 3D object points, and printable/renderable images.

A board file is YAML, either in rig's own format::

    type: chessboard            # chessboard | circles | asymmetric_circles | charuco | aprilgrid
    cols: 9                     # inner corners (chessboard) / circles per row
    rows: 6
    square_size: 0.06           # metres (chessboard, charuco)
    thermal: {polarity: auto}   # normal | inverted | auto (LWIR appearance hint)

or a Kalibr target file, which loads unchanged::

    target_type: checkerboard   # checkerboard | circlegrid | aprilgrid
    targetCols: 9
    targetRows: 6
    rowSpacingMeters: 0.06
    colSpacingMeters: 0.06

Board coordinates: metres, z = 0 on the board surface, x along ``cols``, y along
``rows``. Object points are ordered as OpenCV's detectors return them.
Kalibr's aprilgrid maps to an OpenCV AprilTag 36h11 grid board.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rig.errors import RigError
from rig.resources import resolve_definition
from rig.yamlio import Node, load_yaml

BOARD_TYPES = ("chessboard", "circles", "asymmetric_circles", "charuco", "aprilgrid")
POLARITIES = ("normal", "inverted", "auto")
ARUCO_DICTS = {name[5:]: getattr(cv2.aruco, name) for name in dir(cv2.aruco) if name.startswith("DICT_")}


@dataclass(frozen=True)
class Board:
    """A calibration target.

    ``cols``/``rows``: inner corners (chessboard), circles (circle grids),
    squares (ChArUco) or tags (aprilgrid). ``spacing``: square size (chessboard,
    ChArUco), circle centre spacing (circles; for asymmetric grids OpenCV's
    half-diagonal convention), tag size (aprilgrid).
    """

    type: str
    cols: int
    rows: int
    spacing: float
    marker_size: float | None = None  # ChArUco marker side, metres
    circle_diameter: float | None = None
    tag_spacing: float = 0.3  # aprilgrid: gap between tags as a fraction of the tag size
    dictionary: str = "4X4_50"
    legacy_pattern: bool = False
    polarity: str = "auto"
    margin: float | None = None  # white border around the pattern, metres (default: one square)
    name: str = ""
    source: Path | None = None

    # -- geometry -------------------------------------------------------------
    @property
    def pattern_size(self) -> tuple[int, int]:
        """``(cols, rows)`` as OpenCV's chessboard/circle-grid detectors take it."""
        return self.cols, self.rows

    @property
    def n_points(self) -> int:
        return len(self.object_points())

    def object_points(self) -> np.ndarray:
        """All board points ``(N, 3)`` float64, in detector order."""
        if self.type in ("chessboard", "circles"):
            j, i = np.mgrid[0:self.rows, 0:self.cols]
            pts = np.stack([i.ravel() * self.spacing, j.ravel() * self.spacing, np.zeros(i.size)], axis=1)
            return pts.astype(np.float64)
        if self.type == "asymmetric_circles":
            pts = [((2 * j + i % 2) * self.spacing, i * self.spacing, 0.0) for i in range(self.rows) for j in range(self.cols)]
            return np.array(pts, dtype=np.float64)
        return np.asarray(self.opencv_board().getChessboardCorners() if self.type == "charuco"
                          else np.concatenate(self.opencv_board().getObjPoints()), dtype=np.float64).reshape(-1, 3)

    def half_turn(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The board's point order after a half turn, where a detector cannot tell it from the original.

        Returns ``(perm, c)``: turned by 180 degrees about its centre, the board puts point ``perm[i]`` where
        point ``i`` was, and board coordinates map as ``X' = c + diag(-1, -1, 1) X``. Grids of identical
        points (chessboards, circle grids) look the same turned (a chessboard up to its colours, which an LWIR
        image may not show), so two cameras' detections of one view can disagree by exactly this. ``None``
        for boards whose markers fix the order (ChArUco, aprilgrid) and layouts a half turn does not map
        onto themselves.
        """
        if self.type not in ("chessboard", "circles", "asymmetric_circles"):
            return None
        pts = self.object_points()
        c = np.r_[pts[:, :2].min(0) + pts[:, :2].max(0), 0.0]
        turned = c - pts * np.array([1.0, 1.0, -1.0])
        d = np.linalg.norm(turned[:, None, :] - pts[None, :, :], axis=2)
        perm = d.argmin(axis=1)
        if not np.allclose(d[np.arange(len(pts)), perm], 0.0, atol=1e-9 * max(self.spacing, 1e-9)):
            return None
        return perm, c

    def pattern_extent(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the printed pattern (without margin), board coordinates."""
        s = self.spacing
        if self.type == "chessboard":
            return -s, -s, self.cols * s, self.rows * s
        if self.type in ("circles", "asymmetric_circles"):
            pts = self.object_points()
            r = self.radius + 0.5 * s
            return pts[:, 0].min() - r, pts[:, 1].min() - r, pts[:, 0].max() + r, pts[:, 1].max() + r
        if self.type == "charuco":
            return 0.0, 0.0, self.cols * s, self.rows * s
        gap = self.tag_spacing * s
        return 0.0, 0.0, self.cols * s + (self.cols - 1) * gap, self.rows * s + (self.rows - 1) * gap

    @property
    def radius(self) -> float:
        d = self.circle_diameter if self.circle_diameter is not None else 0.5 * self.spacing
        return 0.5 * d

    def extent(self) -> tuple[float, float, float, float]:
        """Extent of the physical board including its white margin."""
        m = self.spacing if self.margin is None else self.margin
        x0, y0, x1, y1 = self.pattern_extent()
        return x0 - m, y0 - m, x1 + m, y1 + m

    def size_m(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.extent()
        return x1 - x0, y1 - y0

    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.pattern_extent()
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2, 0.0])

    # -- OpenCV objects -------------------------------------------------------
    def aruco_dictionary(self):
        name = "APRILTAG_36h11" if self.type == "aprilgrid" else self.dictionary
        return cv2.aruco.getPredefinedDictionary(ARUCO_DICTS[name])

    def opencv_board(self):
        """``cv2.aruco.CharucoBoard`` or ``cv2.aruco.GridBoard`` (marker boards only)."""
        if self.type == "charuco":
            b = cv2.aruco.CharucoBoard((self.cols, self.rows), self.spacing, self.marker_size, self.aruco_dictionary())
            b.setLegacyPattern(self.legacy_pattern)
            return b
        if self.type == "aprilgrid":
            return cv2.aruco.GridBoard((self.cols, self.rows), self.spacing, self.tag_spacing * self.spacing,
                                       self.aruco_dictionary())
        raise ValueError(f"{self.type} board has no OpenCV board object")

    # -- images ---------------------------------------------------------------
    def texture(self, px_per_m: float) -> tuple[np.ndarray, float, float]:
        """Reflectance image of the whole board (margin included), 8-bit (0 black, 255 white).

        Returns ``(image, x0, y0)``: texel ``(u, v)`` covers board coordinates
        ``[x0 + u/ppm, x0 + (u+1)/ppm)``; the actual scale is adjusted so that
        one square/spacing is a whole number of texels (exact corner positions).
        """
        per = max(4, int(round(self.spacing * px_per_m)))
        ppm = per / self.spacing
        x0, y0, x1, y1 = self.extent()
        # Snap the texture origin to whole texels of the pattern grid, so every
        # square edge falls exactly on a texel boundary.
        x0, y0 = np.floor(x0 * ppm + 1e-9) / ppm, np.floor(y0 * ppm + 1e-9) / ppm
        w, h = int(np.ceil((x1 - x0) * ppm - 1e-9)), int(np.ceil((y1 - y0) * ppm - 1e-9))
        if self.type == "chessboard":
            u = np.floor((x0 + (np.arange(w) + 0.5) / ppm) / self.spacing).astype(int)
            v = np.floor((y0 + (np.arange(h) + 0.5) / ppm) / self.spacing).astype(int)
            img = np.where(((u[None, :] + v[:, None]) % 2) == 0, 0, 255).astype(np.uint8)
            px0, py0, px1, py1 = self.pattern_extent()
            xs = x0 + (np.arange(w) + 0.5) / ppm
            ys = y0 + (np.arange(h) + 0.5) / ppm
            outside = (xs[None, :] < px0) | (xs[None, :] > px1) | (ys[:, None] < py0) | (ys[:, None] > py1)
            img[outside] = 255
            return img, x0, y0
        if self.type in ("circles", "asymmetric_circles"):
            ss = 4  # supersampling for anti-aliased circle edges
            img = np.full((h * ss, w * ss), 255, np.uint8)
            for px, py, _ in self.object_points():
                c = ((px - x0) * ppm * ss, (py - y0) * ppm * ss)
                cv2.circle(img, (int(round(c[0] * 16 - 8)), int(round(c[1] * 16 - 8))), int(round(self.radius * ppm * ss * 16)),
                           0, -1, lineType=cv2.LINE_8, shift=4)
            return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA), x0, y0
        # Marker boards: OpenCV draws the pattern; pad with the margin ourselves.
        px0, py0, px1, py1 = self.pattern_extent()
        pw, ph = int(round((px1 - px0) * ppm)), int(round((py1 - py0) * ppm))
        pattern = self.opencv_board().generateImage((pw, ph), marginSize=0, borderBits=1)
        img = np.full((h, w), 255, np.uint8)
        ox, oy = int(round((px0 - x0) * ppm)), int(round((py0 - y0) * ppm))
        img[oy:oy + ph, ox:ox + pw] = pattern
        return img, x0, y0

    def render_printable(self, dpi: float) -> np.ndarray:
        """The board at true scale for printing at ``dpi``."""
        img, _, _ = self.texture(dpi / 0.0254)
        return img


def write_png_with_dpi(path: str | Path, image: np.ndarray, dpi: float) -> None:
    """Write a PNG carrying a pHYs chunk, so printers reproduce the true scale."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RigError("could not encode PNG", path=path)
    data = buf.tobytes()
    ppm = int(round(dpi / 0.0254))
    body = b"pHYs" + struct.pack(">IIB", ppm, ppm, 1)
    chunk = struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    ihdr_end = 8 + 8 + 13 + 4  # signature + IHDR length/type + IHDR data + CRC
    try:
        Path(path).write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])
    except OSError as exc:
        raise RigError(f"cannot write ({exc.strerror})", path=path) from None


# --------------------------------------------------------------------------- loading
def load_board(name_or_path: str | Path) -> Board:
    """Load a board by path, or by the name of a shipped board (``ir_board``)."""
    path = resolve_definition(name_or_path, "board")
    return parse_board(load_yaml(path), path)


def parse_board(data: object, path: Path | None = None) -> Board:
    root = Node(data, path).mapping()
    name = Path(path).stem if path else ""
    if "target_type" in root.data:
        board = _parse_kalibr(root)
    else:
        board = _parse_native(root)
    return Board(**{**board.__dict__, "name": name, "source": Path(path) if path else None})


MAX_SIZE_M = 10.0  # no calibration board has squares, tags or spacings this large: a larger size is a unit mistake


def _metres(node: Node) -> float:
    """A board length in metres (> 0, <= :data:`MAX_SIZE_M`); a millimetre value gets a hint."""
    value = node.float(0.0, open_lo=True, unit="metres")
    if value > MAX_SIZE_M:
        raise node.error(f"must be <= {MAX_SIZE_M:g} (metres), got {value:g}; did you mean {value / 1000:g} "
                         f"({value:g} mm)?")
    return value


def _parse_native(root: Node) -> Board:
    root.reject_unknown({"type", "cols", "rows", "square_size", "spacing", "marker_size", "circle_diameter",
                         "dictionary", "legacy_pattern", "margin", "thermal", "name", "description"})
    kind = root.req("type").str(BOARD_TYPES)
    cols, rows = root.req("cols").int(lo=2), root.req("rows").int(lo=2)
    size_key = "square_size" if kind in ("chessboard", "charuco", "aprilgrid") else "spacing"
    other = "spacing" if size_key == "square_size" else "square_size"
    if root.has(other) and not root.has(size_key):
        raise root.error(f"a {kind} board takes '{size_key}', not '{other}'", other)
    spacing = _metres(root.req(size_key))
    marker = diameter = None
    dictionary, legacy = "4X4_50", False
    if kind == "charuco":
        if cols < 3 or rows < 3:
            raise root.error("a ChArUco board needs at least 3x3 squares", "cols")
        marker = _metres(root.req("marker_size"))
        if marker >= spacing:
            raise root.error(f"marker_size ({marker:g}) must be smaller than square_size ({spacing:g})", "marker_size")
        if root.has("dictionary"):
            dictionary = root.child("dictionary").str(sorted(ARUCO_DICTS))
        legacy = root.child("legacy_pattern").bool() if root.has("legacy_pattern") else False
        needed = (cols * rows) // 2
        dict_size = int(dictionary.rsplit("_", 1)[-1]) if dictionary.rsplit("_", 1)[-1].isdigit() else 10**6
        if needed > dict_size:
            raise root.error(f"{cols}x{rows} squares need {needed} markers but {dictionary} has {dict_size}", "dictionary")
    if kind in ("circles", "asymmetric_circles") and root.has("circle_diameter"):
        diameter = _metres(root.child("circle_diameter"))
        limit = spacing * (2 ** 0.5 if kind == "asymmetric_circles" else 1.0)
        if diameter >= limit:
            raise root.error(f"circle_diameter ({diameter:g}) must be smaller than the circle spacing ({limit:g})",
                             "circle_diameter")
    if kind == "chessboard" and cols == rows:
        raise root.error("a square chessboard (cols == rows) is ambiguous under rotation; use e.g. 9x6", "cols")
    margin = root.child("margin").float(0.0, unit="metres") if root.has("margin") else None
    polarity = "auto"
    if (th := root.opt("thermal")) is not None:
        th.reject_unknown({"polarity"})
        polarity = th.req("polarity").str(POLARITIES)
    return Board(kind, cols, rows, spacing, marker, diameter, 0.3, dictionary, legacy, polarity, margin)


def _parse_kalibr(root: Node) -> Board:
    kind = root.req("target_type").str(("checkerboard", "circlegrid", "aprilgrid"))
    if kind == "checkerboard":
        root.reject_unknown({"target_type", "targetCols", "targetRows", "rowSpacingMeters", "colSpacingMeters"})
        row, col = _metres(root.req("rowSpacingMeters")), _metres(root.req("colSpacingMeters"))
        if abs(row - col) > 1e-9:
            raise root.error(f"non-square checkerboard cells ({row:g} x {col:g}) are not supported", "colSpacingMeters")
        return Board("chessboard", root.req("targetCols").int(lo=2), root.req("targetRows").int(lo=2), col)
    if kind == "circlegrid":
        root.reject_unknown({"target_type", "targetCols", "targetRows", "spacingMeters", "asymmetricGrid"})
        asym = root.child("asymmetricGrid").bool() if root.has("asymmetricGrid") else False
        return Board("asymmetric_circles" if asym else "circles", root.req("targetCols").int(lo=2),
                     root.req("targetRows").int(lo=2), _metres(root.req("spacingMeters")))
    root.reject_unknown({"target_type", "tagCols", "tagRows", "tagSize", "tagSpacing", "codeOffset"})
    return Board("aprilgrid", root.req("tagCols").int(lo=1), root.req("tagRows").int(lo=1),
                 _metres(root.req("tagSize")), tag_spacing=root.req("tagSpacing").float(0.0, 2.0, open_lo=True),
                 dictionary="APRILTAG_36h11")
