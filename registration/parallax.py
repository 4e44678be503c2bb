"""Plane + parallax: what the camera baseline does to a registered pair, and how refinement keeps it apart.

A registration homography is exact on one plane. A rig's two cameras sit a baseline apart, so an
object off that plane is displaced in the registered LWIR image along the *epipolar direction* (the
line towards the epipole, the image of the other camera's centre) by ``b f (1/Z - 1/Z_plane)``: an
amount that depends on its depth and nothing else. On the simulated rig (12 x 5 cm) that is 7.6 px at
infinity and 15 px at 5 m. A drive's depth mix changes all the time, so a refinement that treats
this displacement as misalignment "corrects" a perfectly calibrated rig (a static 4 s sim drive
received up to 2 px of such false correction, single estimates carried 4-9 px).

What separates the two (Irani & Anandan's plane + parallax decomposition): parallax moves every
pixel only *along* the epipolar direction, by its own amount. Modelling a free per-pixel shift along
that direction and eliminating it leaves the perpendicular component of the misalignment, which
parallax cannot touch: tilt, roll and scale of a similarity are measured from it exactly as before
(:func:`eliminate_along`, :func:`observable_basis`). The one parameter that is lost is the shift
*along* the baseline (the camera's pan, for a side-by-side rig): no single pair can tell it from a
change of depth. It is measured from the *farthest* structure instead (:func:`far_shift`): nothing
can lie beyond infinity, so the far end of the distribution of per-block shifts along the baseline
(its low quantile) sits at the infinity parallax on a calibrated rig and moves only when the
calibration does. Distant structure (horizon, far buildings, tree lines) is present in nearly
every road scene; where it is not, the along-baseline shift is left uncorrected.

"Farthest" is not infinity: on a street the far layer may be 50 m away and come nearer as the car
drives (0.6 px of change on the simulated rig between 50 and 40 m). While the car moves, the visible
stream itself says how far each block is: its optical flow to a later frame is a rotation (nearly a
uniform shift) plus ``rho (x - e)`` away from the focus of expansion ``e``, with ``rho`` proportional
to the inverse depth (:func:`motion_inverse_depth`). A block's along-baseline shift is linear in its
inverse depth, so a robust line through (rho, shift) extrapolated to ``rho = 0`` is the shift at
infinity itself (:func:`far_shift` with ``flow``); when the line is not well determined (a car at
rest, one depth only) the far quantile is used as before.

The elimination is a linearisation: it takes a pixel's shift along the baseline out exactly only
while that shift stays within the features' linear range (about a pixel at the estimate's working
resolution). A near building a few working-level px off the plane is beyond it, and its residuals
then lean on roll and tilt too. :func:`block_shifts` gives every block its own located shift along
the baseline, so a refinement can sample the LWIR image where each block's parallax puts it and
eliminate only what is left (:func:`rig.registration.refine.refine_alignment`'s second pass).

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from rig.calibration.homography import parallax_displacement
from rig.camera_model import apply_h
from rig.registration.geometry import RegistrationGeometry, centre_and_corners, output_to_visible, visible_to_output
from rig.registration.robust import pairwise_slopes
from rig.registration.warps import WarpModel, n_params

__all__ = ["BaselineParallax", "BlockShifts", "FarStructure", "along_baseline_part", "along_baseline_shift",
           "along_baseline_warp", "baseline_parallax", "block_shifts", "eliminate_along", "far_shift",
           "motion_inverse_depth", "observable_basis"]


@dataclass(frozen=True)
class BaselineParallax:
    """How the baseline displaces objects off the working plane in the registered output (output px).

    Attributes:
        direction: unit ``(dx, dy)`` at the output centre: where the LWIR content of an object *nearer*
            than the working plane moves relative to the visible image.
        infinity_px: signed displacement along ``direction`` of content at infinity (negative for a
            homography at a finite plane: far content moves the other way).
        spread_deg: largest angle between the direction at the output centre and at its corners (the
            epipole's nearness; the refinement uses the centre's direction).
    """

    direction: tuple[float, float]
    infinity_px: float
    spread_deg: float

    def as_dict(self) -> dict:
        return {"direction": [round(float(v), 5) for v in self.direction], "infinity_px": round(self.infinity_px, 3),
                "spread_deg": round(self.spread_deg, 2)}


def baseline_parallax(geom: RegistrationGeometry, R: np.ndarray, t: np.ndarray) -> BaselineParallax | None:
    """The epipolar direction and the infinity parallax of a registration, at its output centre.

    Args:
        geom: the registration (cameras, homography at any plane or a fitted one, output crop).
        R, t: the calibration's extrinsics, ``X_v = R X_l + t`` (metres).

    Returns:
        :class:`BaselineParallax`, or ``None`` without a baseline (``|t| = 0``).

    Example:
        >>> p = baseline_parallax(geom, cal.extrinsics.R, cal.extrinsics.t)
        >>> p.direction, p.infinity_px   # e.g. (-0.92, -0.39), -7.6 on the simulated rig
    """
    t = np.ravel(np.asarray(t, np.float64))
    if not np.all(np.isfinite(t)) or np.linalg.norm(t) < 1e-9:
        return None

    R = np.asarray(R, np.float64)
    pts = centre_and_corners(geom.output_size)
    pv = output_to_visible(geom, pts)

    def displacement(z: float) -> np.ndarray:  # output px
        return visible_to_output(geom, pv + parallax_displacement(geom.K_v, geom.K_l, R, t, geom.H, pv, z)) - pts

    near, inf = displacement(2.0), displacement(math.inf)
    dirs = near - inf  # a nearer object minus the farthest: along the epipolar line, whatever the plane
    norms = np.linalg.norm(dirs, axis=1)
    if norms[0] < 1e-9:
        return None
    d = dirs[0] / norms[0]
    cos = np.clip(dirs[1:] @ d / np.maximum(norms[1:], 1e-12), -1.0, 1.0)
    return BaselineParallax((float(d[0]), float(d[1])), float(inf[0] @ d), float(np.degrees(np.arccos(cos)).max()))


def observable_basis(model: str, direction: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal bases ``(Q, Q_shift)`` of the warp parameters a pair can measure.

    Parameters are those of :func:`rig.registration.refine.refine_alignment`, in px at the corners:
    similarity and rigid ``tx, ty, a, b`` (rigid holds the scale ``a`` at zero), rotation ``tx, ty, b``
    (the camera turns that shift the centre, and the roll), affine ``tx, ty, a11, a12, a21, a22``.
    Without a direction every free parameter is measurable. With one, a displacement field that points
    along ``direction`` everywhere is indistinguishable from parallax: the shift along it (similarity,
    rigid, rotation), and also its gradient (affine: the whole along-baseline row).
    """
    n_p = {"affine": 6, "rotation": 3}.get(model, 4)
    fixed = [np.array([0, 0, 1.0, 0])] if model == "rigid" else []
    free = [k for k in range(n_p) if not (model == "rigid" and k == 2)]
    if direction is None:
        return np.eye(n_p)[:, free], np.eye(n_p)[:, :2]
    d0, d1 = direction
    hidden = fixed + [np.r_[d0, d1, np.zeros(n_p - 2)]]
    if n_p == 6:
        hidden += [np.array([0, 0, d0, 0, d1, 0.0]), np.array([0, 0, 0, d0, 0, d1])]
    U, _, _ = np.linalg.svd(np.array(hidden).T, full_matrices=True)
    Q = U[:, len(hidden):]
    Q_shift = np.r_[-d1, d0, np.zeros(n_p - 2)][:, None]  # the shift across the baseline
    return Q, Q_shift


def along_baseline_part(H: np.ndarray, size: tuple[int, int], model: str, direction: tuple[float, float],
                        camera: np.ndarray | None = None) -> np.ndarray:
    """The part of a correction that a single pair cannot tell from parallax: its shift along the baseline.

    ``H`` (``size = (w, h)`` px) is written in ``model``'s parameters (least squares on its centre and corner
    displacements); the result is the warp of the shift component along ``direction`` alone (for the rotation
    model, the camera turn that moves the centre along it), identity for a correction across the baseline.

    Args:
        H: ``(3, 3)`` correction, LWIR px -> visible px.
        size: ``(w, h)`` of the image it acts on.
        model: one of :data:`~rig.registration.warps.MODELS`.
        direction: unit ``(dx, dy)`` of the baseline's parallax (:class:`BaselineParallax`).
        camera: ``(3, 3)`` for the rotation model (see :func:`~rig.registration.refine.refine_alignment`).
    """
    return along_baseline_warp(along_baseline_shift(H, size, model, direction, camera), size, model, direction, camera)


def _warp_at(size: tuple[int, int], model: str, camera: np.ndarray | None) -> tuple[WarpModel, np.ndarray]:
    pts = centre_and_corners(size)
    c, R = (float(pts[0, 0]), float(pts[0, 1])), float(np.hypot(*pts[0]))
    return WarpModel.at(model, c, R, None if camera is None else np.asarray(camera, np.float64)), pts


def along_baseline_shift(H: np.ndarray, size: tuple[int, int], model: str, direction: tuple[float, float],
                         camera: np.ndarray | None = None) -> float:
    """How far (px, along ``direction``) a correction moves the image centre in ``model``'s parameters: the
    scalar of :func:`along_baseline_part` (same arguments)."""
    warp, pts = _warp_at(size, model, camera)
    Jx, Jy = warp.jacobian(pts[:, 0], pts[:, 1])
    d = apply_h(np.asarray(H, np.float64), pts) - pts
    theta = np.linalg.lstsq(np.r_[Jx, Jy].astype(np.float64), np.r_[d[:, 0], d[:, 1]], rcond=None)[0]
    return float(theta[:2] @ np.asarray(direction, np.float64))


def along_baseline_warp(shift: float, size: tuple[int, int], model: str, direction: tuple[float, float],
                        camera: np.ndarray | None = None) -> np.ndarray:
    """The warp of ``model`` that moves the image centre by ``shift`` px along ``direction`` and nothing else
    (for the rotation model, the camera turn that does)."""
    warp, _ = _warp_at(size, model, camera)
    return warp.matrix(np.r_[shift * np.asarray(direction, np.float64), np.zeros(n_params(model) - 2)])


def eliminate_along(r: np.ndarray, SD: np.ndarray, gx: np.ndarray, gy: np.ndarray,
                    direction: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Remove, per pixel, what a free shift along ``direction`` could explain (the parallax nuisance).

    For a two-channel feature residual ``r_i`` with spatial derivatives ``g_x, g_y`` (each ``(N, 2)``),
    a shift ``s_i`` along ``d`` changes the features by ``s_i v_i`` with ``v_i = d_x g_x + d_y g_y``.
    Eliminating ``s_i`` (its least-squares value) projects the residual and every column of the
    steepest-descent rows onto the complement of ``v_i``.

    Args:
        r: ``(N, 2)`` residuals; SD: ``(N, 2, P)`` steepest-descent images; gx, gy: ``(N, 2)``.
        direction: unit ``(dx, dy)`` at the working level.

    Returns:
        ``(r', SD')`` of the same shapes.
    """
    d0, d1 = np.float32(direction[0]), np.float32(direction[1])
    v = gx * d0 + gy * d1  # (N, 2)
    v0, v1 = v[:, 0], v[:, 1]
    vv = v0 * v0 + v1 * v1  # sums over the two channels written out: np.sum over a 2-long axis is ~10x slower
    eps = np.float32(1e-3) * max(float(np.median(vv)), 1e-12)
    k = v / (vv + eps)[:, None]  # (N, 2)
    kr = k[:, 0] * r[:, 0] + k[:, 1] * r[:, 1]
    r2 = r - v * kr[:, None]
    kSD = k[:, 0, None] * SD[:, 0, :] + k[:, 1, None] * SD[:, 1, :]  # (N, P)
    SD2 = SD - v[:, :, None] * kSD[:, None, :]
    return r2, SD2


@dataclass(frozen=True)
class FarStructure:
    """The along-baseline shift of the farthest structure (px of the level it was measured at)."""

    shift: float | None  # the shift at infinity (see far_shift); None with too few usable blocks
    blocks: int  # blocks with a clear along-baseline match
    median: float | None  # median per-block shift (the scene's typical parallax), for diagnostics
    agreement: float = 0.0  # energy-weighted mean of every block's best correlation: agreement up to parallax
    method: str = "quantile"  # "depth": extrapolated to infinity along the blocks' inverse depths; "quantile"


def block_flow(flow: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(centres (hb, wb, 2), mean flow (hb, wb, 2))`` of ``block``-px blocks of a dense ``(h, w, 2)`` flow."""
    h, w = flow.shape[:2]
    hb, wb = h // block, w // block
    f = cv2.resize(np.ascontiguousarray(flow[:hb * block, :wb * block], np.float32), (wb, hb),
                   interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:hb, 0:wb]
    return np.stack([(xx + 0.5) * block - 0.5, (yy + 0.5) * block - 0.5], axis=-1).astype(np.float64), f.astype(np.float64)


def motion_inverse_depth(x: np.ndarray, f: np.ndarray, *, iterations: int = 8, min_radius: float = 20.0,
                         k: float = 3.0, min_expansion_px: float = 0.5) -> np.ndarray:
    """Inverse depth, up to one scale, of points seen by a camera moving forward: ``rho`` of ``f = r + rho (x - e)``.

    A static scene's flow between two frames of a camera translating towards ``e`` (the focus of expansion)
    and turning slightly (a near-uniform shift ``r``) is ``r + rho (x - e)`` with ``rho = v dt / Z``. ``e`` and
    ``r`` are fitted by alternating least squares on the flow's component across the rays from ``e`` (which
    ``rho`` cannot explain), with blocks whose residual is beyond ``k`` robust sigma (moving objects, flow
    errors) left out; then ``rho`` is each point's flow along its ray.

    The expansion must stand out from the flow's noise: the median flow along the rays (``rho |x - e|``) at
    least ``min_expansion_px`` and ``k`` times the robust spread of the flow across them. A car at rest (or
    two frames that show the same instant) gives flow that is only noise, whose component along the rays of
    a fitted ``e`` is as often positive as not: ranking its "depths" would put a guess into the estimate.

    Args:
        x: ``(N, 2)`` points (px); f: ``(N, 2)`` their flow to the later frame (px).
        min_radius: points nearer ``e`` than this (px) get NaN (their ``rho`` is ill-determined).
        min_expansion_px: least median flow along the rays (px) that counts as forward motion.

    Returns:
        ``(N,)`` ``rho`` (positive for a camera moving forward), NaN where undetermined or an outlier; all NaN
        when the flow shows no forward motion.
    """
    x, f = np.asarray(x, np.float64).reshape(-1, 2), np.asarray(f, np.float64).reshape(-1, 2)
    n = len(x)
    out = np.full(n, np.nan)
    if n < 8:
        return out
    use = np.ones(n, bool)
    r = np.zeros(2)
    e = x.mean(axis=0)
    for _ in range(iterations):
        g = f - r
        # e: (x - e) x g = 0  ->  [g_y, -g_x] . e = x_x g_y - x_y g_x
        A = np.stack([g[:, 1], -g[:, 0]], axis=1)[use]
        b = (x[:, 0] * g[:, 1] - x[:, 1] * g[:, 0])[use]
        try:
            e = np.linalg.lstsq(A, b, rcond=None)[0]
        except np.linalg.LinAlgError:
            return out
        d = x - e
        nrm = np.linalg.norm(d, axis=1)
        nv = np.stack([-d[:, 1], d[:, 0]], axis=1) / np.maximum(nrm, 1e-9)[:, None]  # across the ray
        # r: minimise sum (n . (f - r))^2
        M = nv[use].T @ nv[use]
        if np.linalg.cond(M) > 1e6:
            return out
        r = np.linalg.solve(M, nv[use].T @ np.einsum("ij,ij->i", nv[use], f[use]))
        res = np.abs(np.einsum("ij,ij->i", nv, f - r))
        scale = 1.4826 * float(np.median(res[use])) + 1e-6
        use = res < k * max(scale, 0.05)
        if np.count_nonzero(use) < 8:
            return out
    d = x - e
    nrm2 = np.einsum("ij,ij->i", d, d)
    rho = np.einsum("ij,ij->i", f - r, d) / np.maximum(nrm2, 1e-9)
    expansion = float(np.median(rho[use] * np.sqrt(nrm2[use])))  # median flow along the rays (px)
    if not expansion > max(min_expansion_px, k * scale):  # no forward motion: at rest, reversing, or only noise
        return out
    ok = use & (nrm2 > min_radius * min_radius)
    out[ok] = rho[ok]
    return out


def far_shift(Fv: np.ndarray, Fw: np.ndarray, direction: tuple[float, float], max_shift: float,
              valid: np.ndarray | None = None, *, block: int = 16, step: float = 1.0, quantile: float = 0.1,
              cluster: float = 1.0, min_blocks: int = 12, min_peak: float = 0.5, min_contrast: float = 0.15,
              contrast_px: float = 2.0, flow: np.ndarray | None = None, max_extrapolation: float = 0.5,
              beyond_far: float = 0.1) -> FarStructure:
    """Per-block 1-D search of the shift along ``direction`` that best aligns ``Fw`` to ``Fv``; the shift at infinity.

    With ``flow`` (the visible image's optical flow to a later frame of a drive, ``(h, w, 2)`` px at this
    size), each block's inverse depth comes from :func:`motion_inverse_depth`, and the shift at infinity is
    the intercept at zero inverse depth of a Theil-Sen line through the blocks' (inverse depth, shift): used
    when at least ``min_blocks`` blocks have both, the line rises with nearness (parallax does), and the
    extrapolation from the farthest decile to zero is at most ``max_extrapolation`` of the inverse depths'
    10-90 % span, and the intercept is not above the far layer's shift by more than ``beyond_far`` px (nothing
    static lies beyond infinity; above it, blocks that are not the static scene tilted the line). Otherwise
    (and without ``flow``) the far layer's median shift is taken.

    Args:
        Fv: ``(h, w, C)`` visible feature field; Fw: the LWIR field already warped onto it.
        direction: unit ``(dx, dy)``; a block's shift ``s`` matches ``Fw(x + s d)`` to ``Fv(x)``.
        max_shift: search range ``[-max_shift, max_shift]`` (px).
        valid: optional ``(h, w)`` bool of pixels that hold data in both images.
        block: block side (px); step: search step (px), refined by a parabola through the peak (1 px: the
            feature fields are smooth on that scale; 0.5 px measured no better on the simulator's drives).
        quantile: the far end of the block shifts (far content has the smallest shift along ``direction``).
        cluster: the far layer is the blocks within this many px above that quantile; its median is the result
            (unbiased where the whole scene is far, where the quantile alone would sit in the noise's tail).
        min_blocks: fewer usable blocks give ``shift = None``.
        min_peak: least normalised correlation at a block's best shift.
        min_contrast: least drop of the correlation ``contrast_px`` either side (a block whose edges run along
            the baseline cannot locate itself along it).
        beyond_far: with ``flow``, how far (px) the shift at infinity may lie above the far layer's (its noise).

    Also returns the *agreement up to parallax*: the energy-weighted mean over blocks of each block's best
    correlation along the baseline, which, unlike a plain correlation of the two fields, does not change
    with the scene's depths.
    """
    h, w = Fv.shape[:2]
    bs = block_shifts(Fv, Fw, direction, max_shift, valid, block=block, step=step, min_peak=min_peak,
                      min_contrast=min_contrast, contrast_px=contrast_px)
    if bs is None:
        return FarStructure(None, 0, None, 0.0)
    agreement, ok = bs.agreement, bs.ok
    n = int(np.count_nonzero(ok))
    if n < min_blocks:
        return FarStructure(None, n, None, agreement)
    s_b = bs.shift[ok]
    k = int(quantile * (n - 1))
    low = float(np.partition(s_b, k)[k])
    far_layer = float(np.median(s_b[s_b <= low + cluster]))
    if flow is not None and flow.shape[:2] == (h, w):
        at_infinity = _shift_at_infinity(s_b, flow, block, ok, min_blocks, max_extrapolation)
        # Nothing static is farther than infinity: its shift is at most the far layer's. Above it, blocks that
        # are not the static scene (a car ahead moving with us: no flow, a near object's shift) tilted the line.
        if at_infinity is not None and at_infinity <= far_layer + beyond_far:
            return FarStructure(at_infinity, n, float(np.median(s_b)), agreement, "depth")
    return FarStructure(far_layer, n, float(np.median(s_b)), agreement)


@dataclass(frozen=True)
class BlockShifts:
    """Per-block shifts along the baseline (:func:`block_shifts`)."""

    shift: np.ndarray  # (hb, wb) best shift of each block (px), parabola-refined; meaningful where ok
    ok: np.ndarray  # (hb, wb) bool: the block located itself along the baseline
    agreement: float  # energy-weighted mean of the blocks' best correlations
    block: int

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The shift (float32 px) of the block each point ``(x, y)`` lies in; blocks that did not locate
        themselves (and points beyond the last whole block) take the located blocks' median."""
        fill = float(np.median(self.shift[self.ok])) if self.ok.any() else 0.0
        grid = np.where(self.ok, self.shift, fill).astype(np.float32)
        bx = np.clip((np.asarray(x) // self.block).astype(np.int64), 0, grid.shape[1] - 1)
        by = np.clip((np.asarray(y) // self.block).astype(np.int64), 0, grid.shape[0] - 1)
        return grid[by, bx]


def block_shifts(Fv: np.ndarray, Fw: np.ndarray, direction: tuple[float, float], max_shift: float,
                 valid: np.ndarray | None = None, *, block: int = 16, step: float = 1.0, min_peak: float = 0.5,
                 min_contrast: float = 0.15, contrast_px: float = 2.0) -> BlockShifts | None:
    """Per-block 1-D search of the shift ``s`` along ``direction`` that best matches ``Fw(x + s d)`` to ``Fv(x)``
    (normalised correlation of the feature fields over each ``block``-px block; see :func:`far_shift` for the
    arguments). ``None`` when the image holds no whole block."""
    Fv = np.ascontiguousarray(Fv, np.float32)
    Fw = np.ascontiguousarray(Fw, np.float32)
    h, w = Fv.shape[:2]
    hb, wb = h // block, w // block
    if hb < 1 or wb < 1:
        return None
    area = (wb, hb)
    crop = (slice(0, hb * block), slice(0, wb * block))

    def blocks_of(img: np.ndarray) -> np.ndarray:
        """Per-block means, summed over the channels (the reduction runs on the channels separately, then adds)."""
        b = cv2.resize(np.ascontiguousarray(img[crop]), area, interpolation=cv2.INTER_AREA)
        return b.sum(axis=2) if b.ndim == 3 else b

    e_v = blocks_of(cv2.multiply(Fv, Fv))
    shifts = np.arange(-max_shift, max_shift + 1e-9, step)
    d0, d1 = direction
    C = np.empty((len(shifts), hb, wb), np.float32)
    # Channel by channel (per-channel block means summed are what blocks_of computes), each shift rounded to 1/32 px:
    # the grid of the two-channel cv2.warpAffine this search was validated with (exact sampling moved the tested
    # drive's p95 from under 1.0 to 1.19 px: the along-baseline estimate of single frames is that sensitive). A
    # shift is a translation: _translated computes the warp's values as two passes over whole rows, 4x faster.
    planes_v, planes_w = ([np.ascontiguousarray(F[..., c]) for c in range(F.shape[2])] if F.ndim == 3 else [F]
                          for F in (Fv, Fw))
    planes_v = [p[crop] for p in planes_v]  # the shifted planes cover the blocks only
    pad = int(math.ceil(float(np.abs(shifts).max()))) + 2
    padded_w = [cv2.copyMakeBorder(p, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0) for p in planes_w]
    for j, s in enumerate(shifts):
        tx, ty = round(s * d0 * 32) / 32, round(s * d1 * 32) / 32
        Fs = [_translated(p, pad, tx, ty, (hb * block, wb * block)) for p in padded_w]
        cross = sum(blocks_of(cv2.multiply(a, b)) for a, b in zip(Fs, planes_v))
        energy = sum(blocks_of(cv2.multiply(a, a)) for a in Fs)
        C[j] = cross / np.sqrt(e_v * energy + 1e-12)
    best = np.argmax(C, axis=0)
    peak = np.take_along_axis(C, best[None], 0)[0]
    reach = max(1, int(round(contrast_px / step)))
    side = np.maximum(np.take_along_axis(C, np.clip(best - reach, 0, len(shifts) - 1)[None], 0)[0],
                      np.take_along_axis(C, np.clip(best + reach, 0, len(shifts) - 1)[None], 0)[0])
    inside = np.ones((hb, wb), bool) if valid is None else blocks_of(np.asarray(valid, np.float32)) > 0.999
    weight = e_v * inside
    agreement = float(np.sum(weight * peak) / np.sum(weight)) if float(np.sum(weight)) > 0 else 0.0
    ok = (peak > min_peak) & (peak - side > min_contrast) & (best > 0) & (best < len(shifts) - 1) & inside
    ok &= e_v > 0.02 * float(e_v.max())
    bi = np.clip(best, 1, len(shifts) - 2)
    c0, c1, c2 = (np.take_along_axis(C, (bi + o)[None], 0)[0] for o in (-1, 0, 1))
    den = c0 - 2.0 * c1 + c2
    off = np.where(den < -1e-9, 0.5 * (c0 - c2) / np.where(den < -1e-9, den, -1.0), 0.0)
    return BlockShifts(shifts[bi] + np.clip(off, -0.5, 0.5) * step, ok, agreement, block)


def _translated(padded: np.ndarray, pad: int, tx: float, ty: float, size_hw: tuple[int, int]) -> np.ndarray:
    """``img(x + tx, y + ty)`` (bilinear, 0 outside) over the top-left ``size_hw`` of ``img``, from ``img``
    zero-padded by ``pad`` px (``pad > max(|tx|, |ty|) + 1``).

    What ``cv2.warpAffine(img, [[1, 0, tx], [0, 1, ty]], WARP_INVERSE_MAP, BORDER_CONSTANT)`` computes for a
    shift on its 1/32 px grid, as two separable passes of whole rows (4x faster than the general warp)."""
    h, w = size_hw
    ix, iy = math.floor(tx), math.floor(ty)
    fx, fy = tx - ix, ty - iy
    y0, x0 = pad + iy, pad + ix
    rows = padded[y0:y0 + h + 1, x0:x0 + w]
    if fx > 0:
        rows = cv2.addWeighted(rows, 1.0 - fx, padded[y0:y0 + h + 1, x0 + 1:x0 + 1 + w], fx, 0.0)
    if fy > 0:
        return cv2.addWeighted(rows[:-1], 1.0 - fy, rows[1:], fy, 0.0)
    return np.ascontiguousarray(rows[:-1])


def _shift_at_infinity(s_b: np.ndarray, flow: np.ndarray, block: int, ok: np.ndarray, min_blocks: int,
                       max_extrapolation: float) -> float | None:
    """Intercept at zero inverse depth of the blocks' shifts (see :func:`far_shift`), or ``None``."""
    centres, fb = block_flow(flow, block)
    rho = motion_inverse_depth(centres.reshape(-1, 2), fb.reshape(-1, 2)).reshape(ok.shape)[ok]
    have = np.isfinite(rho)
    if np.count_nonzero(have) < min_blocks:
        return None
    q, s = rho[have], s_b[have]
    lo, hi = np.percentile(q, [10, 90])
    if not hi > lo or lo > max_extrapolation * (hi - lo):
        return None
    slopes = pairwise_slopes(s, q)
    slope = float(np.median(slopes)) if slopes.size else float("nan")  # Theil-Sen
    if not np.isfinite(slope) or slope <= 0:
        return None
    return float(np.median(s - slope * q))
