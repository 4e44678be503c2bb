"""Targetless refinement of a registered visible/LWIR pair, and what a drive does with it.

A calibrated homography is exact on one plane and only while the rig does not
move; vibration, warm-up and a bumped mount leave a residual misalignment of a
few pixels and a fraction of a degree. :func:`refine_alignment` measures that
residual on the registered pair itself (no target) as a small correction ``H``
(LWIR px -> visible px): a similarity, a rigid motion, an affine map, or the
image of a turn of the LWIR camera about its centre (``model="rotation"``, the
physics of a flexing or bumped rig, keystone included), and refuses rather
than guesses when the pair cannot tell. :func:`correction_px`,
:func:`rig.registration.temporal.smooth_corrections` and
:func:`~rig.registration.temporal.detect_drift` are what a drive needs
around it: a correction in pixels at the output centre and corners, temporal
smoothing (a single frame cannot jump, refused frames take their neighbours'
value) and a "calibration drift: recalibrate" verdict.

Everything here is a pure function of its arguments (no global state, no I/O).

Method
------
*Features.* Intensities do not agree across modalities (a warm body is bright in
LWIR and may be dark in visible; polarity flips from object to object), but
where both see a boundary they agree on its *position and orientation*. Each
image is mapped to a two-channel field of doubled-angle gradient vectors

    f = (gx^2 - gy^2, 2 gx gy) / (gx^2 + gy^2 + a * E_local + e0^2)

i.e. ``s(m) * (cos 2t, sin 2t)`` with ``t`` the gradient angle: flipping the
polarity (``t -> t + pi``) leaves ``f`` unchanged, thin lines and edges both
count, and the magnitude weight ``s`` saturates (a strong edge counts about as
much as a moderate one, so a hot exhaust cannot dominate) and is locally
normalised by the neighbourhood's gradient energy ``E_local`` (weak but real
thermal contrast still counts). ``e0`` is a per-image noise floor, so sensor
noise in a dark image stays near zero. The field is blurred slightly, which
gives the cost a smooth basin. Under a rotation by ``r`` the doubled-angle
vector turns by ``2 r``; the warped LWIR field is rotated back accordingly, so
the features of a rotated image equal the rotated features.

*Estimation.* Lucas-Kanade on the similarity (4), rigid (3), rotation (3) or affine (6) parameters with
the ESM Jacobian (Benhimane & Malis 2004: the mean of the visible template's
and the warped LWIR field's gradients - plain inverse-compositional steps
shrink where the two modalities' features differ in strength), coarse to fine
on a three-level pyramid of a reduced-resolution copy (at most ``work_px`` on
the long side: the correction is a low-order warp, sub-pixel precise at that
resolution, and it keeps the cost at a few milliseconds); the coarsest level
finds the shift first. At most ``max_points`` informative pixels (a fixed,
regular subsample of those where the visible field has a gradient) enter the
normal equations. Each Gauss-Newton step is iteratively reweighted with
Tukey's biweight on the per-pixel residual norm (scale from the median
residual), so structure that disagrees - parallax of objects off the working
plane, edges seen in one modality only (shadows, heat) - is pushed to weight
zero and the estimate follows the dominant, agreeing structure. Parameters are
scaled so each is a displacement in pixels at the image corners, which makes
the Hessian well scaled and its conditioning meaningful.

*Parallax.* With a baseline (``parallax_dir``) each pixel's shift along the epipolar
direction is eliminated from the normal equations (:mod:`rig.registration.parallax`) and the
shift along the baseline is read off the farthest structure. The elimination is exact only
within the features' linear range, so the finest level runs a second pass that first moves
each block's LWIR samples by that block's own located parallax
(:func:`~rig.registration.parallax.block_shifts`) and eliminates only the remainder.

*Refusal.* The estimate is checked, and ``accepted = False`` with
``H = identity`` and a ``reason`` is returned, when

* too little structure is shared (fraction of pixels where both images have a
  gradient above their noise floor): night visible, sky, fog, flat images;
* the Gauss-Newton Hessian is ill-conditioned (aperture problem: e.g. only
  horizontal edges leave horizontal shift unconstrained);
* the correction reaches ``max_shift_px`` anywhere in the image (also the
  search is stopped there: a bound, not a clamp);
* the search did not converge at the finest level (a cost without a clear
  minimum drifts; a real one converges);
* the inlier fraction is too low (most structure disagrees);
* a correction larger than ``free_px`` does not improve the agreement
  (normalised correlation of the feature fields) over identity by
  ``min_gain``: a real misalignment of a few pixels always does.

``confidence`` (0..1) is the product of the aligned agreement, the inlier
fraction and saturating terms of the shared structure and the conditioning.

Conventions: pixel centres at integer coordinates (OpenCV); ``H`` maps LWIR
pixels of the given pair to visible pixels of the pair, i.e. the corrected LWIR
image is ``cv2.warpPerspective(lwir, H, size)``; composing it into a
registration whose output-from-LWIR map is ``M`` gives ``H @ M``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from rig.camera_model import apply_h
from rig.registration.geometry import centre_and_corners
from rig.registration.parallax import FarStructure, block_shifts, eliminate_along, far_shift, observable_basis
from rig.registration.warps import MODELS, WarpModel, n_params

__all__ = [
    "MODELS", "Correction", "RefineResult", "correction_px", "grid_error_px", "refine_alignment",
]


# Feature constants (in pixels of the working level).
_PRE_SIGMA = 0.8  # blur before the gradient
_NORM_SIGMA = 6.0  # neighbourhood of the local gradient energy
_NORM_ALPHA = 0.5  # weight of the local energy in the normaliser
_FEAT_SIGMA = 1.0  # blur of the feature field
_TUKEY_C = 4.685
_CYCLE_STEPS = 4  # limit-cycle convergence: the last steps' estimates ...
_CYCLE_TOL = 10.0  # ... within this many times the tolerance
_MIN_PARALLAX_BLOCKS = 12  # blocks located along the baseline that the parallax-compensated pass needs


@dataclass(frozen=True)
class Correction:
    """A correction ``H`` in pixels: what it does at the image centre and corners.

    Attributes:
        centre: ``(dx, dy)`` displacement of the image centre, px.
        corners: ``(4, 2)`` displacements of the corner pixels (top-left, top-right, bottom-right, bottom-left), px.
        max_px: largest displacement over the centre and the corners, px.
        rotation_deg: rotation of the linear part (positive: x towards y, i.e. clockwise on screen), degrees.
        scale: isotropic scale of the linear part (``sqrt(|det|)``), 1 = none.
    """

    centre: tuple[float, float]
    corners: np.ndarray
    max_px: float
    rotation_deg: float
    scale: float

    def as_dict(self) -> dict:
        """Plain JSON-ready values (for ``frames.jsonl``)."""
        return {"centre_px": [round(float(v), 3) for v in self.centre],
                "corners_px": [[round(float(v), 3) for v in c] for c in self.corners],
                "max_px": round(float(self.max_px), 3), "rotation_deg": round(float(self.rotation_deg), 4),
                "scale": round(float(self.scale), 6)}


@dataclass(frozen=True)
class RefineResult:
    """What :func:`refine_alignment` found.

    Attributes:
        H: ``(3, 3)`` float64 correction, LWIR px -> visible px of the pair; identity when refused.
        accepted: whether ``H`` is the estimate (True) or identity because the estimate was refused.
        confidence: 0..1 (0 when refused for lack of structure or a diverged search).
        reason: why it was refused; ``""`` when accepted.
        estimate: ``(3, 3)`` the raw estimate, also when refused (diagnostics; identity if none was made).
        correction: :class:`Correction` of ``estimate`` at this image size.
        model: one of :data:`~rig.registration.warps.MODELS`.
        iterations: Gauss-Newton steps over all pyramid levels.
        structure_fraction: share of the evaluated pixels with structure in both images (after alignment).
        inlier_fraction: share of the structured pixels with non-zero robust weight at the solution.
        agreement: normalised correlation of the feature fields after the correction (-1..1).
        agreement_identity: the same without correction (NaN where a baseline-aware estimate within ``free_px``
            did not need it).
        condition: smallest / largest eigenvalue of the Hessian (parameters in px at the corners).
        work_size: ``(w, h)`` of the finest level the estimate was computed at.
        far_shift_px: with ``parallax_dir``: the shift along the baseline taken from the farthest structure
            (px of the pair, relative to ``far_px``); ``None`` when too few blocks located it (then not corrected).
        far_blocks: blocks that located themselves along the baseline.
        far_method: how ``far_shift_px`` was found: ``"depth"`` (extrapolated to infinity along the blocks'
            inverse depths from ``flow``) or ``"quantile"`` (the farthest blocks); ``""`` without a baseline.
            In a drive, ``"offset"``: the farthest blocks' shift less its offset from the drive's depth
            estimates (:func:`rig.registration.correction.offset_far_layer`).
    """

    H: np.ndarray
    accepted: bool
    confidence: float
    reason: str
    estimate: np.ndarray
    correction: Correction
    model: str
    iterations: int = 0
    structure_fraction: float = 0.0
    inlier_fraction: float = 0.0
    agreement: float = 0.0
    agreement_identity: float = 0.0
    condition: float = 0.0
    work_size: tuple[int, int] = (0, 0)
    far_shift_px: float | None = None
    far_blocks: int = 0
    far_method: str = ""

    def as_dict(self) -> dict:
        """Plain JSON-ready values (for ``frames.jsonl``)."""
        return {"accepted": bool(self.accepted), "confidence": round(float(self.confidence), 4), "reason": self.reason,
                "model": self.model, "H": np.round(self.H, 8).tolist(), "correction": self.correction.as_dict(),
                "iterations": int(self.iterations), "structure_fraction": round(float(self.structure_fraction), 4),
                "inlier_fraction": round(float(self.inlier_fraction), 4), "agreement": round(float(self.agreement), 4),
                "agreement_identity": (None if not math.isfinite(self.agreement_identity)
                                       else round(float(self.agreement_identity), 4)),
                "condition": round(float(self.condition), 5),
                "far_shift_px": None if self.far_shift_px is None else round(float(self.far_shift_px), 3),
                "far_blocks": int(self.far_blocks), "far_method": self.far_method}


# --------------------------------------------------------------------------- corrections in pixels
def correction_px(H: np.ndarray, size: tuple[int, int]) -> Correction:
    """Displacement of a correction at the centre and the corners of a ``size = (w, h)`` image.

    Args:
        H: ``(3, 3)`` correction, LWIR px -> visible px.
        size: ``(w, h)`` of the image ``H`` acts on (e.g. the 800x600 output).

    Returns:
        :class:`Correction` (centre and corner displacements, their maximum, rotation and scale).

    Example:
        >>> c = correction_px(np.array([[1, 0, 2.0], [0, 1, -1.0], [0, 0, 1]]), (800, 600))
        >>> c.centre, c.max_px
        ((2.0, -1.0), 2.23606797749979)
    """
    H = np.asarray(H, np.float64)
    pts = centre_and_corners(size)
    d = apply_h(H, pts) - pts
    A = H[:2, :2] / H[2, 2]
    rot = math.degrees(math.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1]))
    scale = math.sqrt(abs(float(np.linalg.det(A))))
    return Correction((float(d[0, 0]), float(d[0, 1])), d[1:].copy(), float(np.hypot(d[:, 0], d[:, 1]).max()), rot, scale)


def grid_error_px(H_a: np.ndarray, H_b: np.ndarray, size: tuple[int, int], step: float = 20.0) -> np.ndarray:
    """Distances between where two maps put the points of a ``step``-px grid over a ``size = (w, h)`` image."""
    w, h = size
    u, v = np.meshgrid(np.arange(0, w, step, dtype=np.float64), np.arange(0, h, step, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel()], axis=1)
    return np.hypot(*(apply_h(np.asarray(H_a, np.float64), pts) - apply_h(np.asarray(H_b, np.float64), pts)).T)


# --------------------------------------------------------------------------- features
def _noise_sigma(img: np.ndarray) -> float:
    """Robust estimate of additive noise (grey levels), Immerkaer's Laplacian-difference operator with a median."""
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    r = np.abs(cv2.filter2D(img, cv2.CV_32F, k, borderType=cv2.BORDER_REPLICATE)[1:-1:2, 1:-1:2]).ravel()
    return _quantile(r, 0.5) * 1.4826 / 6.0


def _gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = cv2.GaussianBlur(img, (0, 0), _PRE_SIGMA, borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REPLICATE)
    return gx, gy


def _features(img: np.ndarray, e0: float) -> tuple[np.ndarray, np.ndarray]:
    """Doubled-angle, saturated, locally normalised gradient field ``(h, w, 2)`` and the squared gradient magnitude."""
    gx, gy = _gradients(img)
    gxx, gyy, gxy = gx * gx, gy * gy, gx * gy
    m2 = gxx + gyy
    k = 2 * int(round(_NORM_SIGMA)) + 1
    den = cv2.boxFilter(m2, -1, (k, k), borderType=cv2.BORDER_REPLICATE)
    den *= _NORM_ALPHA
    den += m2
    den += e0 * e0
    np.reciprocal(den, out=den)
    f = cv2.merge([(gxx - gyy) * den, 2.0 * gxy * den])
    f = cv2.GaussianBlur(f, (0, 0), _FEAT_SIGMA, borderType=cv2.BORDER_REPLICATE)
    return f, m2


# --------------------------------------------------------------------------- warps
def _level_transform(sx: float, sy: float) -> np.ndarray:
    """Full-resolution px -> level px (``x_l = (x + 0.5) * s - 0.5``)."""
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])


def _rotation_of(A: np.ndarray) -> float:
    return math.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1])


def _sample_features(F: np.ndarray, A: np.ndarray, pts: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``F`` sampled at ``A @ pts`` with the doubled angles turned back by ``A``'s rotation, and which were inside."""
    w, h = size
    n, cols = len(pts), 1024  # remap wants maps under 32767 px a side: lay the points out in rows
    rows = -(-n // cols)
    mu, mv = np.zeros(rows * cols, np.float32), np.zeros(rows * cols, np.float32)
    # A @ pts in float32 (level px of at most a few hundred: ~1e-5 px), written straight into the maps.
    Af = A.astype(np.float32)
    x, y = np.asarray(pts[:, 0], np.float32), np.asarray(pts[:, 1], np.float32)
    z = Af[2, 0] * x + Af[2, 1] * y + Af[2, 2]
    u, v = mu[:n], mv[:n]
    np.divide(Af[0, 0] * x + Af[0, 1] * y + Af[0, 2], z, out=u)
    np.divide(Af[1, 0] * x + Af[1, 1] * y + Af[1, 2], z, out=v)
    Fw = cv2.remap(F, mu.reshape(rows, cols), mv.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                   borderValue=0).reshape(rows * cols, -1)[:n]
    ok = (u >= 1.0) & (u <= w - 2.0) & (v >= 1.0) & (v <= h - 2.0)
    r = _rotation_of(A)
    if abs(r) > 1e-9:  # an edge at A x is turned by rot(A) relative to the template: turn its doubled angle back
        c, s = np.float32(math.cos(2 * r)), np.float32(math.sin(2 * r))
        a, b = Fw[:, 0::2], Fw[:, 1::2]  # every channel pair (x, y) -> (x, y) @ [[c, -s], [s, c]]
        turned = np.empty_like(Fw)
        turned[:, 0::2] = a * c + b * s
        turned[:, 1::2] = b * c - a * s
        Fw = turned
    return Fw, ok


def _warp_features(F: np.ndarray, A: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The whole ``F`` warped onto the template grid by ``A`` (see :func:`_sample_features`), ``(h, w, C)``."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    return _sample_features(F, A, np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32), size)[0].reshape(h, w, -1)


def _quantile(x: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a 1-D array (lower sample; ``np.partition``, no interpolation)."""
    k = int(q * (x.size - 1))
    return float(np.partition(x, k)[k])


def _tukey(e: np.ndarray, c: float) -> np.ndarray:
    u = e / c
    w = (1.0 - u * u)
    w = w * w
    w[u >= 1.0] = 0.0
    return w


def _agreement(Fv: np.ndarray, Fw: np.ndarray) -> float:
    num = float(np.sum(Fv * Fw))
    den = math.sqrt(float(np.sum(Fv * Fv)) * float(np.sum(Fw * Fw)))
    return num / den if den > 0 else 0.0


# --------------------------------------------------------------------------- the estimator
def refine_alignment(
    visible: np.ndarray,
    lwir: np.ndarray,
    *,
    max_shift_px: float = 24.0,
    model: str = "similarity",
    mask: np.ndarray | None = None,
    work_px: int = 320,
    levels: int = 3,
    margin_px: float = 4.0,
    min_structure: float = 0.03,
    min_condition: float = 0.02,
    min_inliers: float = 0.25,
    free_px: float = 3.0,
    min_gain: float = 0.01,
    max_iterations: int = 40,
    tolerance_px: float = 0.005,
    max_points: int = 4000,
    parallax_dir: tuple[float, float] | None = None,
    far_px: float = 0.0,
    camera: np.ndarray | None = None,
    flow: np.ndarray | None = None,
    compensate_parallax: bool = True,
) -> RefineResult:
    """Estimate the residual misalignment of a registered visible/LWIR pair (targetless, cross-modal).

    Args:
        visible: ``(h, w)`` uint8 grey visible image of the registered pair (colour: convert first).
        lwir: ``(h, w)`` uint8 LWIR image of the same pair (any polarity).
        max_shift_px: bound on the correction: largest displacement at the centre or a corner, full-resolution px.
            The search stops there and the result is refused (the bound is never returned as a clamped guess).
        model: ``"similarity"`` (shift, rotation, scale), ``"rigid"`` (shift and rotation, no scale),
            ``"rotation"`` (a turn of one camera about its centre, the physics of a rig's flex, vibration and a
            bumped mount: three parameters, the keystone of tilt and pan included; needs ``camera``) or
            ``"affine"``.
        mask: optional ``(h, w)`` bool, pixels where both images hold data (e.g. the LWIR coverage of the output).
        work_px: long side of the finest working level (the pair is reduced to it first; no upsampling).
        levels: pyramid levels (each halves the resolution).
        margin_px: border of the full-resolution image left out of the cost (filter support, resampled borders).
        min_structure: least share of evaluated pixels with structure in both images.
        min_condition: least smallest/largest Hessian eigenvalue ratio (aperture problem below).
        min_inliers: least share of the structured pixels that agree at the solution.
        free_px: corrections up to this size (px) need no agreement gain over identity.
        min_gain: least gain of the feature agreement over identity for larger corrections.
        max_iterations: Gauss-Newton steps per level at most.
        tolerance_px: the finest level stops when a step moves the corners by less (level px; coarser levels: 4x).
        max_points: pixels used per level at most (a regular subsample of the informative ones).
        parallax_dir: unit ``(dx, dy)`` epipolar direction of the pair (where the LWIR content of objects nearer
            than the working plane moves; :func:`rig.registration.parallax.baseline_parallax`). Given, a per-pixel
            shift along it is parallax, not misalignment: it is eliminated from the estimate, and the one parameter
            it hides (the shift along the baseline) is taken from the farthest structure instead
            (:mod:`rig.registration.parallax`). ``None``: every displacement counts (a rig without a baseline).
        far_px: with ``parallax_dir``, where the farthest structure lies along it on a calibrated rig (the
            registration's infinity parallax, px of the pair; negative for a homography at a finite plane).
        camera: ``(3, 3)`` for ``model="rotation"``: the camera that turns, as the registered pair shows it
            (normalised ray -> pair px; e.g. the registration's output-from-LWIR map times the LWIR camera matrix).
        flow: with ``parallax_dir``, optional ``(h, w, 2)`` optical flow (px) of ``visible`` to a later frame of
            the drive: while the car moves it ranks the blocks by inverse depth, and the shift along the
            baseline is extrapolated to infinity instead of read off the farthest blocks
            (:func:`rig.registration.parallax.far_shift`).
        compensate_parallax: with ``parallax_dir``, refine the finest level a second time with each block's own
            shift along the baseline (:func:`rig.registration.parallax.block_shifts`) taken out before the
            linearisation: the per-pixel elimination is exact only for parallax within the features' linear
            range (about a working-level px), and a near building's 3-4 px otherwise tilted the roll (by
            0.05-0.1 deg over a second of a simulated drive). About 5 ms more per estimate.

    Returns:
        :class:`RefineResult`; ``.H`` is the correction to apply (LWIR px -> visible px), identity when refused.

    Raises:
        ValueError: on images of different sizes, non-2D images, an unknown ``model`` or a rotation without ``camera``.

    Example:
        >>> r = refine_alignment(vis_grey, lwir8, max_shift_px=20)
        >>> corrected = cv2.warpPerspective(lwir8, r.H, lwir8.shape[::-1]) if r.accepted else lwir8
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got '{model}'")
    if model == "rotation":
        camera = None if camera is None else np.asarray(camera, np.float64)
        if camera is None or camera.shape != (3, 3) or not np.all(np.isfinite(camera)) or abs(np.linalg.det(camera)) < 1e-12:
            raise ValueError("model 'rotation' needs camera: the turning camera's invertible 3x3 matrix in px of the pair")
    else:
        camera = None
    visible, lwir = np.asarray(visible), np.asarray(lwir)
    if visible.ndim != 2 or lwir.ndim != 2:
        raise ValueError(f"expected 2D grey images, got shapes {visible.shape} and {lwir.shape}")
    if visible.shape != lwir.shape:
        raise ValueError(f"images differ in size: visible {visible.shape}, lwir {lwir.shape}")
    if mask is not None and np.asarray(mask).shape != visible.shape:
        raise ValueError(f"mask has shape {np.asarray(mask).shape}, images {visible.shape}")
    Hh, W = visible.shape
    size = (W, Hh)
    n_p = n_params(model)
    eye = np.eye(3)
    Q_all, Q_shift = observable_basis(model, parallax_dir)
    far: FarStructure | None = None

    def refuse(reason: str, est: np.ndarray = eye, confidence: float = 0.0, **kw) -> RefineResult:
        return RefineResult(eye.copy(), False, float(confidence), reason, est, correction_px(est, size), model, **kw)

    # ---- pyramid (finest level first)
    s0 = min(1.0, work_px / max(W, Hh))
    pyr = []
    m_full = None if mask is None else np.asarray(mask, np.float32)
    w_l, h_l = max(8, int(round(W * s0))), max(8, int(round(Hh * s0)))
    lv = []
    for k in range(levels):
        if k == 0:
            imgs = [im.astype(np.float32) for im in (visible, lwir)] + ([] if m_full is None else [m_full])
            if (w_l, h_l) != size:
                imgs = [cv2.resize(im, (w_l, h_l), interpolation=cv2.INTER_AREA) for im in imgs]
        else:
            w_l, h_l = (w_l + 1) // 2, (h_l + 1) // 2
            imgs = [cv2.resize(im, (w_l, h_l), interpolation=cv2.INTER_AREA) for im in lv]
        lv = imgs
        pyr.append((imgs[0], imgs[1], imgs[2] if len(imgs) > 2 else None, w_l / W, h_l / Hh))
        if min(w_l, h_l) < 48:
            break

    # Noise floors, measured at the finest level (noise shrinks with the reduction: scale them per level).
    nv, ni = _noise_sigma(pyr[0][0]), _noise_sigma(pyr[0][1])

    A_full = eye.copy()  # visible px -> LWIR px, full resolution (the inverse of H)
    iterations = 0
    stats: dict = {}
    for k in reversed(range(len(pyr))):
        v_l, i_l, m_l, sx, sy = pyr[k]
        h_l, w_l = v_l.shape
        f = 2.0 ** (-k)  # noise and gradients of a box-reduced level
        e0v, e0i = 2.0 * nv * f + 0.5, 2.0 * ni * f + 0.5
        Fv, mag_v = _features(v_l, e0v)
        Fi, mag_i = _features(i_l, e0i)
        S = _level_transform(sx, sy)
        Sinv = np.linalg.inv(S)
        A = S @ A_full @ Sinv
        d_l = None
        if parallax_dir is not None:
            dl = np.array([parallax_dir[0] * sx, parallax_dir[1] * sy])
            d_l = tuple(dl / np.linalg.norm(dl))
        cx, cy = (w_l - 1) / 2, (h_l - 1) / 2
        Rl = math.hypot(cx, cy)
        warp = WarpModel.at(model, (cx, cy), Rl, None if camera is None else S @ camera)
        pad = max(2.0, margin_px * sx) + 3.0 * _FEAT_SIGMA
        p0 = int(math.ceil(pad))
        inner = np.zeros((h_l, w_l), bool)
        inner[p0:h_l - p0, p0:w_l - p0] = True
        if m_l is not None:
            inner &= m_l > 0.999
        # Template gradients and steepest-descent images.
        dFx = cv2.Sobel(Fv, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
        dFy = cv2.Sobel(Fv, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
        g2 = dFx * dFx + dFy * dFy
        gmag = g2[..., 0] + g2[..., 1]  # the channel sum (np.sum over a 2-long axis is ~10x slower)
        tv = max(4.0 * f, 3.0 * e0v)  # "structure" = gradient clearly above noise (grey levels per level px)
        struct_v = mag_v > tv * tv
        # Pixels that carry information: template gradient of the features present; at most max_points of them,
        # a regular subsample (the selection depends on the visible image only, so it is the same for any LWIR).
        g_in = gmag[inner]
        thr = 0.02 * _quantile(g_in[::4], 0.99) if g_in.size > 8 else 0.0
        sel_idx = np.flatnonzero(inner & (gmag > thr))
        if sel_idx.size < 50:
            return refuse("too little structure in the visible image", iterations=iterations, work_size=pyr[0][0].shape[::-1])
        if sel_idx.size > max_points:
            sel_idx = sel_idx[np.round(np.linspace(0, sel_idx.size - 1, max_points)).astype(np.int64)]
        px, py = (sel_idx % w_l).astype(np.float32), (sel_idx // w_l).astype(np.float32)
        gx_, gy_ = dFx.reshape(-1, 2)[sel_idx], dFy.reshape(-1, 2)[sel_idx]  # (N, 2)
        Jx, Jy = warp.jacobian(px, py)
        Tv = Fv.reshape(-1, 2)[sel_idx]
        sel_struct = struct_v.ravel()[sel_idx]
        # ESM (Benhimane & Malis 2004): the Jacobian is the mean of the template's and the warped image's gradients,
        # which converges in a few steps even where the two modalities' features differ in strength.
        dIx = cv2.Sobel(Fi, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
        dIy = cv2.Sobel(Fi, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
        Fi6 = cv2.merge([Fi, dIx, dIy])
        w_rob = np.ones(len(px), np.float32)
        Hs = None
        pts = np.stack([px, py], 1)
        tol = tolerance_px if k == 0 else 10 * tolerance_px
        n_free = 2 if k == len(pyr) - 1 else n_p  # the coarsest level finds the shift first, then the full model
        converged = False
        path: list[np.ndarray] = []
        n_it = max_iterations if k == 0 else max(4, max_iterations // 3)  # coarse levels: into the next one's basin
        # With a baseline, the finest level runs twice: the second pass samples the LWIR features where each block's
        # own parallax puts them, so near structure (parallax of several px, beyond the reach of the per-pixel
        # linear elimination) can no longer pull roll and tilt.
        spts = pts
        for pass_ in range(2 if (k == 0 and d_l is not None and compensate_parallax) else 1):
            if pass_ == 1:
                if correction_px(np.linalg.inv(A_full), size).max_px > 1.5 * max_shift_px:
                    break
                reach = min(max_shift_px * sx, 0.25 * min(w_l, h_l))
                shifts = block_shifts(Fv, _warp_features(Fi, A, (w_l, h_l)), d_l, reach, inner)
                if shifts is None or np.count_nonzero(shifts.ok) < _MIN_PARALLAX_BLOCKS:
                    break
                spts = pts + shifts.at(px, py)[:, None] * np.float32(d_l)
                path, converged = [], False
            for it in range(n_it):
                iterations += 1
                s6, ok = _sample_features(Fi6, A, spts, (w_l, h_l))
                r = s6[:, 0:2] - Tv  # (N, 2)
                gu, gv = s6[:, 2:4], s6[:, 4:6]  # d/du, d/dv of the LWIR features at A x; chain rule to d/dx, d/dy:
                gx = 0.5 * (gx_ + gu * np.float32(A[0, 0]) + gv * np.float32(A[1, 0]))
                gy = 0.5 * (gy_ + gu * np.float32(A[0, 1]) + gv * np.float32(A[1, 1]))
                SD3 = gx[:, :, None] * Jx[:, None, :] + gy[:, :, None] * Jy[:, None, :]  # (N, 2, P)
                if d_l is not None:
                    r, SD3 = eliminate_along(r, SD3, gx, gy, d_l)
                SD2 = SD3.reshape(-1, n_p)  # (2N, P)
                e = np.sqrt(r[:, 0] * r[:, 0] + r[:, 1] * r[:, 1])
                ev = e[ok]
                if ev.size < 50:
                    return refuse("correction beyond max_shift_px (search left the image)", est=np.linalg.inv(A_full),
                                  iterations=iterations, work_size=pyr[0][0].shape[::-1])
                sigma = max(1.4826 * float(np.median(ev)), 1e-4)
                w_rob = _tukey(e, _TUKEY_C * sigma) * ok
                wr = np.repeat(w_rob, 2)
                SDw = SD2 * wr[:, None]
                Hs = (SDw.T @ SD2).astype(np.float64)
                b = (SDw.T @ r.reshape(-1)).astype(np.float64)
                Qm = Q_shift if n_free < n_p else Q_all
                try:
                    dp = -Qm @ np.linalg.solve(Qm.T @ Hs @ Qm, Qm.T @ b)
                except np.linalg.LinAlgError:
                    return refuse("ill-conditioned (no structure constrains the warp)", iterations=iterations,
                                  work_size=pyr[0][0].shape[::-1])
                D = warp.matrix(dp)
                A = A @ D
                A_full = Sinv @ A @ S
                step = float(np.abs(dp[:2]).max() + np.abs(dp[2:]).max())
                # Re-weighting can settle into a small limit cycle about the fixed point (the Tukey weights of a few
                # pixels flip from step to step): when the last _CYCLE_STEPS estimates stay within _CYCLE_TOL x the
                # tolerance (parameters in px at the corners), the search has converged as well as it can.
                path.append(path[-1] + dp if path and len(path[-1]) == len(dp) else dp.copy())
                recent = np.array(path[-_CYCLE_STEPS:])
                if len(recent) == _CYCLE_STEPS:
                    span = np.ptp(recent, axis=0)
                    if float(span[:2].max() + span[2:].max()) < _CYCLE_TOL * tol:
                        step = min(step, tol * 0.999)
                if correction_px(np.linalg.inv(A_full), size).max_px > 1.5 * max_shift_px:
                    break
                if step < tol or (n_free < n_p and it >= n_it // 3):
                    if n_free == n_p:
                        converged = step < tol
                        break
                    n_free = n_p
        if correction_px(np.linalg.inv(A_full), size).max_px > 1.5 * max_shift_px:
            break
        if k == 0 and d_l is not None:
            # The shift along the baseline, hidden from the estimate above, from the farthest structure.
            reach = min(max_shift_px * sx, 0.25 * min(w_l, h_l))
            flow_l = None
            if flow is not None:
                flow_l = np.asarray(flow, np.float32)
                if flow_l.shape[:2] != (h_l, w_l):
                    flow_l = cv2.resize(flow_l, (w_l, h_l), interpolation=cv2.INTER_AREA) * np.float32([sx, sy])
            far = far_shift(Fv, _warp_features(Fi, A, (w_l, h_l)), d_l, reach, inner, flow=flow_l)
            # Agreement up to parallax at identity (the plain correlation would reward the depth mix); computed
            # only if the agreement-gain check needs it.
            far_identity = partial(far_shift, Fv, Fi, d_l, reach, inner)
            if far.shift is not None:
                delta = far.shift - far_px * sx
                A = A @ warp.matrix(np.r_[np.array(d_l) * delta, np.zeros(n_p - 2)])
                A_full = Sinv @ A @ S
        if k == 0:
            # Agreement and shared structure over the inner pixels (every other one) at the solution and at identity.
            gy2, gx2 = np.mgrid[p0:h_l - p0:2, p0:w_l - p0:2]
            g_idx = (gy2 * w_l + gx2).ravel()
            g_idx = g_idx[inner.ravel()[g_idx]]
            gpts = np.stack([g_idx % w_l, g_idx // w_l], 1).astype(np.float32)
            Fw_g, ok_g = _sample_features(Fi, A, gpts, (w_l, h_l))
            Fv_g = Fv.reshape(-1, 2)[g_idx]
            u, v = apply_h(A, gpts).astype(np.float32).T
            m2_i = _sample_features(mag_i[..., None], np.eye(3), np.stack([u, v], 1), (w_l, h_l))[0][:, 0]
            ti = max(4.0, 3.0 * e0i)
            shared = struct_v.ravel()[g_idx] & (m2_i > ti * ti) & ok_g
            n_struct = max(1, int(np.count_nonzero(sel_struct)))
            stats = dict(
                converged=converged,
                structure_fraction=float(np.count_nonzero(shared)) / max(1, int(np.count_nonzero(ok_g))),
                inlier_fraction=float(np.count_nonzero((w_rob > 0) & sel_struct)) / n_struct,
                agreement=_agreement(Fv_g[ok_g], Fw_g[ok_g]),
                agreement_identity=_agreement(Fv_g, Fi.reshape(-1, 2)[g_idx]),
            )
            if far is not None:  # with a baseline: agreement up to parallax (see rig.registration.parallax)
                stats.update(agreement=far.agreement, agreement_identity=None, identity_agreement=far_identity)
            if Hs is not None:
                ev_h = np.linalg.eigvalsh(Q_all.T @ Hs @ Q_all)
                stats["condition"] = float(ev_h[0] / ev_h[-1]) if ev_h[-1] > 0 else 0.0
            else:
                stats["condition"] = 0.0

    est = np.linalg.inv(A_full)
    est /= est[2, 2]
    corr = correction_px(est, size)
    if stats and stats["agreement_identity"] is None:  # only the agreement-gain check below needs it
        stats["agreement_identity"] = (stats.pop("identity_agreement")().agreement if corr.max_px > free_px
                                       else float("nan"))
    work_size = pyr[0][0].shape[::-1]
    kw = dict(iterations=iterations, work_size=work_size)
    if far is not None:
        sx0 = pyr[0][3]
        kw.update(far_blocks=far.blocks, far_method=far.method,
                  far_shift_px=None if far.shift is None else (far.shift - far_px * sx0) / sx0)
    if not stats:
        return refuse(f"correction beyond max_shift_px ({corr.max_px:.1f} > {max_shift_px:g} px)", est=est, **kw)
    kw.update(structure_fraction=stats["structure_fraction"], inlier_fraction=stats["inlier_fraction"],
              agreement=stats["agreement"], agreement_identity=stats["agreement_identity"], condition=stats["condition"])
    conf = (max(0.0, stats["agreement"]) * stats["inlier_fraction"] * (1 - math.exp(-stats["structure_fraction"] / 0.05))
            * (1 - math.exp(-stats["condition"] / 0.05)))
    conf = float(min(1.0, max(0.0, conf)))
    if stats["structure_fraction"] < min_structure:
        return refuse(f"too little shared structure ({100 * stats['structure_fraction']:.1f} % of pixels)", est=est, **kw)
    if stats["condition"] < min_condition:
        return refuse(f"ill-conditioned: aperture problem (condition {stats['condition']:.3g})", est=est,
                      confidence=conf, **kw)
    if corr.max_px >= max_shift_px:
        return refuse(f"correction at the bound ({corr.max_px:.1f} >= max_shift_px {max_shift_px:g})", est=est,
                      confidence=conf, **kw)
    if not stats["converged"]:
        return refuse(f"did not converge in {max_iterations} steps at the finest level", est=est, confidence=conf, **kw)
    if stats["inlier_fraction"] < min_inliers:
        return refuse(f"too few inliers ({100 * stats['inlier_fraction']:.0f} %)", est=est, confidence=conf, **kw)
    if corr.max_px > free_px and stats["agreement"] < stats["agreement_identity"] + min_gain:
        return refuse(f"no agreement gain over identity ({stats['agreement']:.3f} vs {stats['agreement_identity']:.3f})",
                      est=est, confidence=conf, **kw)
    return RefineResult(est, True, conf, "", est, corr, model, **kw)
