"""Board detection: corners/centres in one image, checked and in a canonical order.

Every detector returns a :class:`Detection` whose ``ids`` index
:meth:`rig.boards.Board.object_points`, so views of one board by different
cameras correspond point by point (what joint calibration needs).

* chessboard: cheap searches first, on every preprocessing variant: visible
  images the classic ``findChessboardCorners`` (milliseconds) then
  ``findChessboardCornersSB`` without exhaustive search; LWIR the other way
  round, SB's ``CALIB_CB_ACCURACY`` fit being the more accurate on blurry,
  noisy frames. Only when all fail, the exhaustive SB search (0.2-0.5 s) on the
  variants where it ever helped. Large images are searched at half resolution;
  corners are refined with ``cornerSubPix`` at full resolution (window 0.4 x the
  corner spacing, at most 11: a wider window drifts to neighbouring corners).
* symmetric / asymmetric circle grids: ``findCirclesGrid`` (both polarities).
* ChArUco: ``CharucoDetector`` + ``Board.matchImagePoints`` (OpenCV 5 has no
  ``calibrateCameraCharuco``); aprilgrid: ``ArucoDetector`` + ``matchImagePoints``.

Chessboards with an odd number of squares in one direction look the same
rotated by 180 degrees with colours swapped, so detectors return either order.
:func:`canonical_order` fixes it from the colours: the square diagonally outside
corner 0 is printed black. For LWIR with ``polarity: auto`` the printed white is
recognised as the material of the board's margin, which also gives the polarity.

A full-grid detection that fails :func:`grid_sanity` (non-convex outer quad,
folded cells, wildly uneven spacing) or :func:`outer_ring_check` (a phantom row
or column on the edge of a board cut by the image border) is rejected with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rig.boards import Board
from rig.calibration import thermal as th

SUBPIX_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-3)


@dataclass
class Detection:
    """Board points found in one image.

    ``image_points`` ``(N, 2)`` float64 pixels; ``ids`` ``(N,)`` indices into
    ``board.object_points()``; ``method`` the detector; ``variant`` the
    preprocessing that succeeded; ``polarity`` ``normal``/``inverted`` when
    known (chessboards).
    """

    image_points: np.ndarray
    ids: np.ndarray
    method: str
    variant: str = "plain"
    polarity: str | None = None

    def object_points(self, board: Board) -> np.ndarray:
        return board.object_points()[self.ids]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DetectionOutcome:
    """A detection, or ``None`` with the reason nothing usable was found."""

    detection: Detection | None
    reason: str = ""
    tried: tuple[str, ...] = ()


# --------------------------------------------------------------------------- geometry checks
def grid_sanity(points: np.ndarray, cols: int, rows: int, max_ratio: float = 2.0) -> str | None:
    """Reason a full ``cols x rows`` grid detection is implausible, or ``None`` if it is fine.

    Checks: the outer quad (corners 0, cols-1, last, last row start) is convex;
    every cell has the same orientation (no folds); along every row and column,
    neighbouring spacings differ by less than ``max_ratio`` (perspective changes
    spacing gradually; a mismatched corner does not).
    """
    p = np.asarray(points, dtype=np.float64).reshape(rows, cols, 2)
    quad = np.array([p[0, 0], p[0, -1], p[-1, -1], p[-1, 0]])
    def cross(a: np.ndarray, b: np.ndarray) -> float:
        return float(a[0] * b[1] - a[1] * b[0])

    cross = [cross(quad[(i + 1) % 4] - quad[i], quad[(i + 2) % 4] - quad[(i + 1) % 4]) for i in range(4)]
    if not (all(c > 0 for c in cross) or all(c < 0 for c in cross)):
        return "outer corners do not form a convex quadrilateral"
    a = p[:-1, 1:] - p[:-1, :-1]
    b = p[1:, :-1] - p[:-1, :-1]
    cell = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if not ((cell > 0).all() or (cell < 0).all()):
        return "corner grid folds over itself (inconsistent cell orientation)"
    for d in (np.linalg.norm(np.diff(p, axis=1), axis=2), np.linalg.norm(np.diff(p, axis=0), axis=2).T):
        if (d <= 1e-6).any():
            return "duplicate corners"
        if d.shape[1] >= 2:
            r = d[:, 1:] / d[:, :-1]
            if (r > max_ratio).any() or (r < 1.0 / max_ratio).any():
                return f"uneven corner spacing (neighbouring spacings differ by more than {max_ratio:g}x)"
    return None


def _sample(gray: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, np.float32).reshape(-1, 1, 2)
    v = cv2.remap(gray, pts[..., 0], pts[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    return v.ravel()


def _edge_ring(p: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres of the outer ring of squares, matching points in the margin, and the squares' ``(u, v)``.

    ``p`` is the ``(rows, cols, 2)`` corner grid; ``k`` the margin midline
    distance from the edge corners in units of the square size.
    """
    rows, cols = p.shape[:2]
    centres, margin, uv = [], [], []
    sides = ((p[0], p[1], lambda i: (i, -1)), (p[-1], p[-2], lambda i: (i, rows - 1)),
             (p[:, 0], p[:, 1], lambda j: (-1, j)), (p[:, -1], p[:, -2], lambda j: (cols - 1, j)))
    for edge, inner, square in sides:
        mid = 0.5 * (edge[:-1] + edge[1:])
        out = mid - 0.5 * (inner[:-1] + inner[1:])
        centres.append(mid + 0.5 * out)
        margin.append(mid + k * out)
        uv.extend(square(i) for i in range(len(mid)))
    return np.concatenate(centres), np.concatenate(margin), np.array(uv)


def canonical_order(image: np.ndarray, points: np.ndarray, board: Board, polarity: str) -> tuple[np.ndarray, str | None]:
    """Put chessboard corners in board order; return ``(points, polarity)``.

    ``image``: the raw image (any depth; sampled as float). ``polarity``:
    ``normal`` (printed black looks dark), ``inverted``, or ``auto``: the outer
    ring of squares is compared with the margin just outside it; squares that
    look like the margin are printed white (the margin's material), which fixes
    the order whatever the polarity, and the polarity follows. Returns the
    polarity found (``None`` if undecidable; the detector's order is then kept).
    """
    cols, rows = board.cols, board.rows
    p = np.asarray(points, np.float64).reshape(rows, cols, 2)
    if (cols + rows) % 2 == 0:  # 180-degree rotation keeps colours: order undecidable
        return p.reshape(-1, 2), None
    img = cv2.GaussianBlur(th.to_float(image), (0, 0), 1.5)
    centres = 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])  # square (u, v), u,v >= 0
    vals = _sample(img, centres.reshape(-1, 2)).reshape(rows - 1, cols - 1)
    v, u = np.mgrid[0:rows - 1, 0:cols - 1]
    even = (u + v) % 2 == 0  # printed black in canonical order
    i_even, i_odd = np.nanmedian(vals[even]), np.nanmedian(vals[~even])
    even_is_black: bool | None = None
    if polarity == "auto":
        m = board.spacing if board.margin is None else board.margin
        ring, margin, uv = _edge_ring(p, (board.spacing + 0.5 * m) / board.spacing)
        d = np.abs(_sample(img, margin) - _sample(img, ring))
        ring_even = (uv.sum(axis=1) % 2) == 0
        d_even, d_odd = np.nanmedian(d[ring_even]), np.nanmedian(d[~ring_even])
        if np.isfinite(d_even) and np.isfinite(d_odd) and abs(d_even - d_odd) > 0.25 * max(d_even, d_odd, 1e-9):
            even_is_black = bool(d_even > d_odd)  # black squares differ from the (white) margin
        else:
            polarity = "normal"
    if even_is_black is None:
        darker_even = i_even < i_odd
        even_is_black = darker_even if polarity == "normal" else not darker_even
    black, white = (i_even, i_odd) if even_is_black else (i_odd, i_even)
    found = "normal" if black < white else "inverted"
    flat = p.reshape(-1, 2)
    return (flat if even_is_black else flat[::-1].copy()), found


def outer_ring_check(image: np.ndarray, points: np.ndarray, board: Board, min_ratio: float = 0.2) -> str | None:
    """Reason a full chessboard detection is a shifted grid, or ``None`` if it is fine.

    Just outside a real corner grid lies the board's outer ring of squares,
    alternately black and white. A board partly out of view can be "found" with
    one row or column of phantom corners along the board's outer edge (strong in
    LWIR, where the board is warmer than the scene): the squares beyond that
    grid edge are then the uniform background. So when the board reaches the
    image border, along each side whose outer squares are inside the image, the
    alternating contrast of those squares must be at least ``min_ratio`` times
    the contrast of the grid's own squares. (Boards wholly in view are not
    checked: on faint real LWIR boards, vimslab_thermal, the ratio of a correct
    detection can be 0.1-0.2; at the border, correct ones were >= 0.2 and the
    simulator's phantoms <= 0.15.)
    """
    cols, rows = board.cols, board.rows
    p = np.asarray(points, np.float64).reshape(rows, cols, 2)
    img = cv2.GaussianBlur(th.to_float(image), (0, 0), 1.0)
    centres = 0.25 * (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:])
    vals = _sample(img, centres.reshape(-1, 2)).reshape(rows - 1, cols - 1)
    v, u = np.mgrid[0:rows - 1, 0:cols - 1]
    even = (u + v) % 2 == 0
    inner = abs(float(np.nanmedian(vals[even])) - float(np.nanmedian(vals[~even])))
    if not np.isfinite(inner) or inner <= 0:
        return None
    sides = (("first row", p[0], p[1]), ("last row", p[-1], p[-2]), ("first column", p[:, 0], p[:, 1]),
             ("last column", p[:, -1], p[:, -2]))
    rings = []
    h, w = img.shape[:2]
    cut = False
    for name, edge, nxt in sides:
        mid = 0.5 * (edge[:-1] + edge[1:])
        out = mid - 0.5 * (nxt[:-1] + nxt[1:])
        rings.append((name, mid + 0.5 * out))
        beyond = mid + 1.5 * out  # the board's outer edge and a little margin
        cut |= bool(((beyond < 0) | (beyond > np.array([w - 1, h - 1]))).any())
    if not cut:  # the whole board is in view: no part of it is missing that a phantom could replace
        return None
    for name, centres_out in rings:
        ring = _sample(img, centres_out)
        alt = np.where(np.arange(len(ring)) % 2 == 0, 1.0, -1.0)
        ok = np.isfinite(ring)
        if ok.sum() < 3 or (ok & (alt > 0)).sum() == 0 or (ok & (alt < 0)).sum() == 0:
            continue  # those squares are out of the image: nothing to check
        amp = abs(float(ring[ok & (alt > 0)].mean() - ring[ok & (alt < 0)].mean()))
        if amp < min_ratio * inner:
            return (f"squares beyond the {name} do not alternate (contrast {amp:.3g} vs {inner:.3g} inside): "
                    "a phantom row or column at the board's edge")
    return None


# --------------------------------------------------------------------------- detectors
def _subpix(gray: np.ndarray, pts: np.ndarray, spacing_px: float) -> np.ndarray:
    w = int(np.clip(spacing_px * 0.4, 2, 11))
    if gray.dtype != np.uint8:
        gray = np.ascontiguousarray(gray, np.float32)
    refined = cv2.cornerSubPix(gray, np.ascontiguousarray(pts, np.float32).reshape(-1, 1, 2), (w, w), (-1, -1),
                               SUBPIX_CRITERIA)
    return refined.reshape(-1, 2).astype(np.float64)


def _min_spacing(pts: np.ndarray, cols: int, rows: int) -> float:
    p = pts.reshape(rows, cols, 2)
    return float(min(np.linalg.norm(np.diff(p, axis=1), axis=2).min(), np.linalg.norm(np.diff(p, axis=0), axis=2).min()))


def search_scale(shape: tuple[int, ...], max_pixels: int = 2_000_000) -> int:
    """Integer downscale for the corner search: 2 for images over ``max_pixels`` (4x fewer pixels), else 1."""
    return 2 if shape[0] * shape[1] > max_pixels else 1


def _downscale(gray: np.ndarray, scale: int) -> np.ndarray:
    return cv2.resize(gray, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA) if scale > 1 else gray


#: Chessboard search strategies, cheapest first (see :func:`find_chessboard`).
CLASSIC_FLAGS = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
SB_FAST_FLAGS = cv2.CALIB_CB_NORMALIZE_IMAGE
SB_EXHAUSTIVE_FLAGS = cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY


def find_chessboard(gray: np.ndarray, board: Board, detectors: tuple[str, ...] = ("sb", "classic"),
                    refine: np.ndarray | None = None, exhaustive: bool = True,
                    check: np.ndarray | None = None, fast_check: bool = False) -> tuple[np.ndarray | None, str, str]:
    """Chessboard corners in detector order: ``(points | None, method, reason)``.

    Cheap searches run first: the classic ``findChessboardCorners`` (adaptive
    threshold; milliseconds on a clear board), then ``findChessboardCornersSB``
    without its exhaustive search. ``exhaustive=True`` adds, as the last resort,
    ``findChessboardCornersSB`` with ``CALIB_CB_EXHAUSTIVE | CALIB_CB_ACCURACY``
    (slow: 0.2-0.5 s per image, but it finds faint LWIR boards the others miss).
    ``detectors`` selects the searches, tried in the order given: ``"classic"``,
    ``"sb"`` (fast; with ``exhaustive`` the exhaustive one is added last) and
    ``"sb-exhaustive"`` alone.

    Images larger than 2 MP are searched at half resolution. Every result except
    a full-resolution ``CALIB_CB_ACCURACY`` one is refined at full resolution with
    ``cornerSubPix`` on ``refine`` (default ``gray``; for LWIR a flat-fielded float
    image, which removes the bias that vignetting gives the refinement).
    ``check``: image (any depth) for :func:`outer_ring_check` (default ``gray``).
    ``fast_check``: the classic search gives up early (``CALIB_CB_FAST_CHECK``)
    on images without chessboard-like quads: 2-3x cheaper on a miss.
    A fast SB hit at full resolution is re-run with ``CALIB_CB_ACCURACY``.
    """
    refine = gray if refine is None else refine
    check = gray if check is None else check
    size = board.pattern_size
    scale = search_scale(gray.shape)
    small = _downscale(gray, scale)
    attempts: list[tuple[str, int]] = []
    for d in detectors:  # in the order given
        if d == "classic":
            attempts.append(("classic", CLASSIC_FLAGS | (cv2.CALIB_CB_FAST_CHECK if fast_check else 0)))
        elif d == "sb":
            attempts.append(("sb", SB_FAST_FLAGS))
    if "sb-exhaustive" in detectors or (exhaustive and "sb" in detectors):
        attempts.append(("sb-exhaustive", SB_EXHAUSTIVE_FLAGS))
    reason = "no chessboard found"
    for method, flags in attempts:
        if method != "classic":
            ok, c = cv2.findChessboardCornersSB(small, size, flags=flags)
        else:
            ok, c = cv2.findChessboardCorners(small, size, flags=flags)
        if not ok or c is None:
            continue
        if method == "sb" and scale == 1:
            # Found: now let SB fit the corners to sub-pixel accuracy (only worth its cost on success;
            # on LWIR more accurate than cornerSubPix).
            ok_acc, c_acc = cv2.findChessboardCornersSB(small, size, flags=flags | cv2.CALIB_CB_ACCURACY)
            if ok_acc and c_acc is not None:
                c, flags = c_acc, flags | cv2.CALIB_CB_ACCURACY
        pts = c.reshape(-1, 2).astype(np.float64)
        if scale > 1:
            pts = (pts + 0.5) * scale - 0.5
        bad = grid_sanity(pts, board.cols, board.rows)
        if bad:
            reason = f"{method} detection rejected: {bad}"
            continue
        if not (flags & cv2.CALIB_CB_ACCURACY and scale == 1):
            pts = _subpix(refine, pts, _min_spacing(pts, board.cols, board.rows))
        bad = grid_sanity(pts, board.cols, board.rows) or outer_ring_check(check, pts, board)
        if bad:
            reason = f"{method} detection rejected: {bad}"
            continue
        return pts, method, ""
    return None, "", reason


def find_circles(gray: np.ndarray, board: Board) -> tuple[np.ndarray | None, str]:
    flags = cv2.CALIB_CB_ASYMMETRIC_GRID if board.type == "asymmetric_circles" else cv2.CALIB_CB_SYMMETRIC_GRID
    reason = "no circle grid found"
    for img in (gray, 255 - gray):
        ok, c = cv2.findCirclesGrid(img, board.pattern_size, flags=flags)
        if ok:
            pts = c.reshape(-1, 2).astype(np.float64)
            if board.type == "circles":
                bad = grid_sanity(pts, board.cols, board.rows)
                if bad:
                    reason = f"circle grid rejected: {bad}"
                    continue
            return pts, ""
    return None, reason


def find_markers(gray: np.ndarray, board: Board) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """ChArUco corners or aprilgrid tag corners: ``(points, ids, reason)``."""
    cvb = board.opencv_board()
    obj_all = board.object_points()
    if board.type == "charuco":
        det = cv2.aruco.CharucoDetector(cvb)
        ch_corners, ch_ids, _, _ = det.detectBoard(gray)
        if ch_ids is None or len(ch_ids) < 6:
            return None, None, "fewer than 6 ChArUco corners found"
        obj, img = cvb.matchImagePoints(ch_corners, ch_ids)
    else:
        det = cv2.aruco.ArucoDetector(board.aruco_dictionary(), cv2.aruco.DetectorParameters())
        corners, ids, _ = det.detectMarkers(gray)
        if ids is None or len(ids) < 2:
            return None, None, "fewer than 2 tags found"
        obj, img = cvb.matchImagePoints(corners, ids)
    if obj is None or len(obj) < 6:
        return None, None, "too few board points matched"
    obj = obj.reshape(-1, 3).astype(np.float64)
    d = np.linalg.norm(obj[:, None, :] - obj_all[None, :, :], axis=2)
    ids_out = d.argmin(axis=1)
    img = img.reshape(-1, 2).astype(np.float64)
    if board.type == "aprilgrid":
        img = _subpix(gray, img, 8.0)
    return img, ids_out, ""


#: Preprocessing variants worth the exhaustive SB search, in order. On vimslab_thermal every
#: board that only the exhaustive search found was found in ``flat+denoise+clahe``; ``plain`` and the
#: last two LWIR variants never were: skipping them halves the cost of an image without a complete board.
EXHAUSTIVE_VARIANTS: tuple[str, ...] = ("flat+denoise+clahe", "flat+denoise", "clahe", "plain")


def detect(image: np.ndarray, board: Board, *, thermal: bool = False, detectors: tuple[str, ...] = ("sb", "classic"),
           retries: bool = True, exhaustive: bool = True) -> DetectionOutcome:
    """Find ``board`` in one image (8/16-bit gray or RGB).

    ``thermal``: the image is LWIR: 16-bit frames are normalised robustly, the
    board's polarity hint applies (``auto`` resolves it from the margin), and
    preprocessing variants are retried (:func:`rig.calibration.thermal.variants`).
    ``retries=False`` tries only the plain conversion.

    ``detectors`` says which chessboard detectors may be used (``"sb"``,
    ``"classic"``); the order is chosen here. Chessboards are searched in two
    passes, cheapest first: every variant with the fast detectors (LWIR: SB
    without exhaustive search, then classic; visible: classic, then SB), then, only if all of those
    fail and ``exhaustive`` is set, every variant with the exhaustive SB search
    (see :func:`find_chessboard`). A clear board costs a few milliseconds; an
    image without a complete board costs the whole search.
    """
    polarity = board.polarity if thermal else "normal"
    tried: list[str] = []
    reason = "board not found"
    gen = th.variants(image, thermal)
    if not retries:
        gen = iter([next(gen)])
    if board.type != "chessboard":
        for name, gray in gen:
            tried.append(name)
            if board.type in ("circles", "asymmetric_circles"):
                pts, why = find_circles(gray, board)
                if pts is not None:
                    return DetectionOutcome(Detection(pts, np.arange(len(pts)), "circles", name), "", tuple(tried))
            else:
                pts, ids, why = find_markers(gray, board)
                if pts is not None:
                    return DetectionOutcome(Detection(pts, ids, board.type, name), "", tuple(tried))
            if why and (reason == "board not found" or "rejected" in why):
                reason = why
        return DetectionOutcome(None, reason, tuple(tried))

    refine = cv2.GaussianBlur(th.flatten(image, 15.0), (0, 0), 1.0) if thermal else None
    seen: list[tuple[str, np.ndarray]] = []
    # LWIR frames are blurry and noisy: SB's own sub-pixel fit (CALIB_CB_ACCURACY) beats cornerSubPix
    # there (0.15 vs 0.20 px on the simulator, 0.40 vs 0.89 px at 0.5 K contrast). Sharp visible frames:
    # the classic detector (milliseconds) + cornerSubPix at full resolution is as accurate and 50x faster.
    order = ("sb", "classic") if thermal else ("classic", "sb")
    fast = tuple(d for d in order if d in detectors)

    def attempt(name: str, gray: np.ndarray, dets: tuple[str, ...], exh: bool) -> DetectionOutcome | None:
        nonlocal reason
        pts, method, why = find_chessboard(gray, board, dets, refine, exhaustive=exh, check=image, fast_check=not exh)
        if pts is not None:
            pts, pol = canonical_order(image, pts, board, polarity)
            return DetectionOutcome(Detection(pts, np.arange(board.n_points), method, name, pol), "", tuple(tried))
        if why and (reason == "board not found" or "rejected" in why):
            reason = why
        return None

    for name, gray in gen:  # pass 1: cheap detectors on every variant
        tried.append(name)
        seen.append((name, gray))
        if fast and (out := attempt(name, gray, fast, False)) is not None:
            return out
    if exhaustive and "sb" in detectors:  # pass 2: the exhaustive search, last resort
        for name, gray in sorted(seen, key=lambda v: EXHAUSTIVE_VARIANTS.index(v[0]) if v[0] in EXHAUSTIVE_VARIANTS else 99):
            if name not in EXHAUSTIVE_VARIANTS or (thermal and name == "plain"):
                continue  # LWIR boards strong enough for the plain variant are found by the cheap searches
            tried.append(f"{name} (exhaustive)")
            out = attempt(name, gray, ("sb-exhaustive",), True)
            if out is not None:
                return out
    return DetectionOutcome(None, reason, tuple(tried))


def count_boards_hint(image: np.ndarray, board: Board) -> str:
    """A short hint when a chessboard of another size seems present (wrong board file)."""
    if board.type != "chessboard":
        return ""
    gray = th.to8(image)
    scale = 2 if gray.shape[0] * gray.shape[1] > 2_000_000 else 1
    small = cv2.resize(gray, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA) if scale > 1 else gray
    for dc, dr in ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (-2, 0), (0, -2)):
        c, r = board.cols + dc, board.rows + dr
        if c < 3 or r < 3 or c == r:
            continue
        ok, _ = cv2.findChessboardCorners(small, (c, r), flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_FAST_CHECK)
        if ok:
            return f"a {c}x{r} chessboard is visible, but the board file says {board.cols}x{board.rows}"
    return ""
