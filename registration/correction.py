"""``rig register --refine``: per-pair targetless corrections, smoothed over the drive, composed into the remap.

Design (two passes, one interpolation per output pixel):

1. *Estimate* (cheap): ``rate_hz`` pairs per second of the drive (or every ``every``-th pair) are
   registered at low resolution (``work_size``,
   320x240 by default, same crop: a box-reduced grey visible image and the prefiltered LWIR,
   remapped through low-resolution tables), and :func:`~rig.registration.refine.refine_alignment`
   measures its residual correction. The correction is converted to output pixels.
2. *Smooth*: :func:`~rig.registration.refine.smooth_corrections` over the frame times (robust local
   linear fit, ``sigma_s`` seconds): a single frame cannot jump, refused and unestimated pairs take
   their neighbours' trend. :func:`~rig.registration.refine.detect_drift` judges whether the
   correction keeps growing ("calibration drift: recalibrate").
3. *Register*: the smoothed correction ``C`` (LWIR output px -> visible output px) is composed into
   the LWIR table: the corrected LWIR image is ``I(C^-1 u)``, i.e. the table ``T`` becomes
   ``T o C^-1``, evaluated by sampling ``T`` (computed once on a grid with a margin, so ``C^-1 u``
   may leave the output) at ``C^-1 u``. ``Infrared16/`` stays nearest-neighbour on that table.

The model (``model="rotation"``, the default): what moves a rig's cameras relative to each other is
rotation (a mount flexing, vibrating, warming, bumped; a millimetre of translation is nothing at
15 m), and a turn of the LWIR camera about its centre moves its registered image by exactly
``G dR G^-1``, ``G`` the LWIR camera as the output shows it
(:func:`~rig.registration.geometry.lwir_camera_in_output`). Three parameters, and the keystone of
tilt and pan comes with them: a similarity cannot express it (its best fit leaves 1.1 px at the
corners of the sim rig's output for a turn of 0.15 deg, -0.2 deg, 0.6 deg), and its free scale only adds
noise. ``"similarity"``, ``"rigid"`` or ``"affine"`` for rigs whose lens zooms or refocuses.

Why partly relative to the drive's start (``reference="along"``, the default): the two cameras are
a stereo pair (13 cm apart on the sim rig), and the homography is exact only on the working plane;
everything nearer or farther is displaced along the epipolar direction by its parallax (7.6 px at
infinity, 15 px at 5 m on the sim rig). Across that direction parallax moves nothing, so tilt, roll
and the shift across the baseline are measured absolutely (a calibration error there is corrected
too). Along it, a single pair cannot tell a displacement from a change of depth; the farthest
structure gives the shift (:mod:`rig.registration.parallax`), but where that structure lies (at
50 m or at 500 m) is the scene's, so its absolute value is not zero on a calibrated rig. What it
*can* tell is how that shift *changes*: drift moves every depth alike, while a street's depth
changes slowly. So the along-baseline part of the correction is taken relative to its trend at the
first accepted estimate (:func:`~rig.registration.parallax.along_baseline_part`; the local linear fit
there, so a drift already under way is not absorbed): along the baseline the calibration is trusted
at the drive's start. ``reference="start"`` takes all of the correction relative to the start (what
it was before: the start estimate's own scatter across the baseline then offsets the whole drive),
``"absolute"`` none of it (for rigs whose baseline is negligible at the scene's depths). Without
extrinsics every displacement is ambiguous and ``"along"`` means ``"start"``.

While the car moves, the shift along the baseline is *measured* instead (``flow_dt_s``, 0.2 s by
default): the visible frame that much later gives every block's inverse depth through its optical
flow (motion parallax), and the shift is extrapolated to infinity, where it is the calibration's
(:func:`~rig.registration.parallax.far_shift`). Then nothing is taken relative to the start. On the
simulator's drifting drives this brought the along-baseline error (the one left: across it was
0.05-0.08 px) from a 0.4-0.9 px bias to the estimates' scatter. Estimates of the same drive that could
only use the farthest blocks (no block far enough to extrapolate from, or flow without forward motion)
read the drift plus their far layer's own parallax along the baseline: that offset is measured against
the depth-extrapolated estimates and removed, and what they measured across the baseline is kept
(:func:`offset_far_layer`; refusing them instead, as before, left a drive whose streets are mostly near
with 4 of 18 estimates: 0.75 / 2.58 px median / p95, now 0.30 / 0.72).

Apply only if significant: the content's changing parallax and one-modality structure make single
estimates scatter about the trend (robust scatter ``s``, measured on the drive itself). A correction
smaller than ``significance * s`` (2 s by default, about a 95 % two-sided band of one estimate) cannot
be told from that scatter and is not applied; from ``2 x`` that on it is applied in full, and
continuously in between, so no frame jumps. A static rig is therefore left exactly as calibrated.
Once a stretch of the drive is certainly corrected (the trend reaches ``2 x`` the gate), the gate of
that whole stretch falls to ``hysteresis`` times the *trend's* own standard error (2 by default; the
trend averages many estimates, so that is several times less): a drift that grows from zero is then
applied from where the trend tells it from zero instead of where a single estimate could (the plain
gate left up to ``significance * s``, about 1.2 px, unapplied for the first second of a slow drift; on
the simulator's drifting drives 1-28 at 1 s, 15 met the targets with it, 27 with hysteresis; static
ones 20 of 20 at 0.00 px with either).

Everything here but :func:`estimate_track` (which reads the session) is a pure function.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from rig.errors import RigError
from rig.pixfmt import to_gray8
from rig.registration.geometry import (RegistrationGeometry, RemapTables, lwir_camera_in_output, output_to_raw_lwir,
                                       remap_tables)
from rig.registration.parallax import BaselineParallax, along_baseline_part, along_baseline_shift, along_baseline_warp
from rig.registration.refine import Correction, RefineResult, correction_px, refine_alignment
from rig.registration.robust import weighted_median
from rig.registration.temporal import (DriftReport, _from_displacements, _displacements, detect_drift,
                                       smooth_corrections)
from rig.registration.resample import Resampler, resample
from rig.registration.warps import MODELS


@dataclass(frozen=True)
class RefineSettings:
    """``--refine`` options."""

    # Estimates per second of drive. A single estimate scatters by ~0.6 px (its shift along the baseline), so the
    # trend needs several within +-sigma_s: on the simulator's drives (every frame rendered) 2.5 Hz with sigma_s 1 s
    # met the targets on 4 of 7 drifting and 6 of 8 static drives, 5 Hz with 0.5 s on 5 of 7 and 8 of 8
    # (benchmarks/bench_refine_drives.py); with refine_alignment's parallax compensation and the gate's hysteresis,
    # 5 Hz with 1.25 s on 35 of 35 and 24 of 24 (1.0 s: 34 of 35, one drive whose far layer is mostly out of
    # reach at 0.53 px median; 1.25-2 s all met on seeds 1-28; without hysteresis at 1 s: 15 of 28). A longer
    # kernel follows a slow drift as well (the fit is a local line) but smears a sudden bump over +-sigma_s.
    rate_hz: float = 5.0
    every: int = 0  # > 0: estimate every K-th registered pair instead (whatever the frame rate)
    work_size: tuple[int, int] = (320, 240)  # low-resolution registered pair the estimate is made on
    sigma_s: float = 1.25  # temporal smoothing kernel, seconds
    max_shift_px: float = 24.0  # bound of the correction, output px
    margin_px: int = 32  # extension of the LWIR table beyond the output (>= max_shift_px)
    reference: str = "along"  # "along": the along-baseline part relative to the drive's start unless measured along
    # depth (flow_dt_s: the car moved); "start": all of it relative to the start; "absolute": none
    significance: float = 2.0  # apply corrections from this many times a single estimate's scatter (0: always)
    hysteresis: float = 2.0  # a significant stretch is applied from this many times the trend's standard error (0: off)
    parallax: str = "baseline"  # "baseline": keep the baseline's parallax out of the estimate (needs extrinsics); "none"
    model: str = "rotation"  # the correction's warp (refine_alignment's model): a turn of the LWIR camera
    flow_dt_s: float = 0.2  # motion parallax: the visible frame this much later ranks the blocks by depth (0: off)

    def __post_init__(self) -> None:
        if self.reference not in ("start", "along", "absolute"):
            raise RigError(f"refine reference must be 'start', 'along' or 'absolute', got '{self.reference}'")
        if self.parallax not in ("baseline", "none"):
            raise RigError(f"refine parallax must be 'baseline' or 'none', got '{self.parallax}'")
        if self.model not in MODELS:
            raise RigError(f"refine model must be one of {', '.join(MODELS)}, got '{self.model}'")
        if not self.flow_dt_s >= 0:
            raise RigError(f"refine flow_dt_s must be >= 0 (seconds; 0: no motion parallax), got {self.flow_dt_s}")
        if not (self.significance >= 0 and self.hysteresis >= 0):
            raise RigError(f"refine significance and hysteresis must be >= 0 (multiples of a scatter), got "
                           f"{self.significance} and {self.hysteresis}")
        if self.every < 0 or self.sigma_s <= 0 or (self.every == 0 and not self.rate_hz > 0):
            raise RigError("refine: every must be >= 0, rate_hz > 0 (when every is 0) and sigma_s > 0")

    def identity(self) -> dict:
        return {"rate_hz": self.rate_hz, "every": self.every, "work_size": list(self.work_size), "sigma_s": self.sigma_s,
                "max_shift_px": self.max_shift_px, "reference": self.reference, "significance": self.significance,
                "hysteresis": self.hysteresis, "parallax": self.parallax, "model": self.model, "flow_dt_s": self.flow_dt_s}


@dataclass(frozen=True)
class CorrectionTrack:
    """Per registered pair: the smoothed correction to apply and what was measured.

    Attributes:
        H: ``(N, 3, 3)`` smoothed corrections, output px (LWIR -> visible), one per job.
        results: job position -> :class:`RefineResult` (output px) for the pairs estimated.
        drift: :class:`DriftReport` of the smoothed corrections over the drive.
    """

    H: np.ndarray
    results: dict
    drift: DriftReport
    scatter_px: float = 0.0  # a single estimate's robust scatter about the trend
    gate_px: float = 0.0  # corrections below this are not applied (significance x scatter_px; less inside a stretch
    # that is certainly corrected: hysteresis x the trend's standard error there)

    def frame_record(self, k: int, size: tuple[int, int]) -> dict:
        """The ``frames.jsonl`` ``refine`` entry of job position ``k``."""
        r = self.results.get(k)
        out = {"applied": {**correction_px(self.H[k], size).as_dict(), "H": [[float(v) for v in row] for row in self.H[k]]},
               "estimated": r is not None}
        if r is not None:
            out.update(accepted=bool(r.accepted), confidence=round(float(r.confidence), 4), reason=r.reason,
                       measured=r.correction.as_dict())
            if r.far_method:  # with a baseline: how the shift along it was found, and the value
                out["far"] = {"method": r.far_method, "shift_px": None if r.far_shift_px is None
                              else round(float(r.far_shift_px), 3)}
        return out

    def summary(self, size: tuple[int, int]) -> dict:
        """The manifest's ``refine`` summary."""
        mags = np.array([correction_px(h, size).max_px for h in self.H]) if len(self.H) else np.zeros(1)
        n_est = len(self.results)
        n_acc = sum(1 for r in self.results.values() if r.accepted)
        # Why estimates were refused, by kind (the reason up to its figures), most frequent first.
        refused = Counter(r.reason.split(" (")[0] for r in self.results.values() if not r.accepted)
        return {"estimated_pairs": n_est, "accepted_fraction": round(n_acc / n_est, 4) if n_est else 0.0,
                "refused": dict(refused.most_common()),
                "estimate_scatter_px": round(self.scatter_px, 3), "applied_from_px": round(self.gate_px, 3),
                "applied_px": {"median": round(float(np.median(mags)), 3), "max": round(float(mags.max()), 3)},
                "drift": {"drifting": self.drift.drifting, "message": self.drift.message,
                          "growth_px": round(self.drift.growth_px, 3), "level_px": round(self.drift.level_px, 3)}}


def level_transform(scale: float) -> np.ndarray:
    """Output px -> px of the same image at ``scale`` times the resolution (``x' = (x + 0.5) s - 0.5``)."""
    return np.array([[scale, 0, 0.5 * scale - 0.5], [0, scale, 0.5 * scale - 0.5], [0, 0, 1.0]])


def to_output_px(H_low: np.ndarray, scale: float) -> np.ndarray:
    """A correction measured on a ``scale``-times reduced pair, expressed in output px."""
    S = level_transform(scale)
    H = np.linalg.inv(S) @ H_low @ S
    return H / H[2, 2]


@dataclass(frozen=True)
class LowResPair:
    """Low-resolution registration of a pair: tables into a box-reduced visible image and the raw LWIR."""

    tables: RemapTables  # visible tables address the box-reduced visible image
    reduce: int  # box reduction of the visible image before the remap
    sigma_visible: float
    sigma_lwir: float
    scale: float  # low-res px per output px

    @classmethod
    def from_geometry(cls, geom: RegistrationGeometry, work_size: tuple[int, int]) -> "LowResPair":
        if abs(work_size[0] / work_size[1] - geom.output_size[0] / geom.output_size[1]) > 0.01:
            raise RigError(f"refine work size {work_size} differs in aspect from the output {geom.output_size}")
        t = remap_tables(dataclasses.replace(geom, output_size=tuple(work_size)))
        fp = Resampler.from_tables(t)
        q = max(1, 2 ** int(math.floor(math.log2(max(fp.footprint_visible, 1.0)))))  # box-reduce by a power of 2
        vx, vy = (t.visible_x + 0.5) / q - 0.5, (t.visible_y + 0.5) / q - 0.5
        tables = RemapTables(vx.astype(np.float32), vy.astype(np.float32), t.lwir_x, t.lwir_y)
        fl = Resampler.from_tables(tables)
        return cls(tables, q, fl.sigma_visible, fl.sigma_lwir, work_size[0] / geom.output_size[0])

    def visible(self, raw_v: np.ndarray, fmt_v: str) -> np.ndarray:
        """The visible grey image at the work size."""
        g = to_gray8(raw_v, fmt_v)
        if self.reduce > 1:
            h, w = g.shape
            g = cv2.resize(g[:h - h % self.reduce, :w - w % self.reduce], (w // self.reduce, h // self.reduce),
                           interpolation=cv2.INTER_AREA)
        return resample(g, self.tables.visible_x, self.tables.visible_y, self.sigma_visible)

    def lwir(self, raw_l: np.ndarray, lo: int, hi: int) -> np.ndarray:
        """The LWIR image at the work size (uncorrected), 8-bit over the counts ``lo..hi``."""
        t = self.tables
        irf = resample(raw_l.astype(np.float32), t.lwir_x, t.lwir_y, self.sigma_lwir)
        return np.clip((irf - lo) * (255.0 / max(hi - lo, 1)) + 0.5, 0, 255).astype(np.uint8)


class SharedFrames:
    """Each frame's low-resolution visible image computed once for every estimate that needs it (its own, and
    the earlier pick's flow target), and dropped after its last use: memory stays a few frames, however long
    the drive. Thread-safe: the first request makes it, one racing it waits for that result (at two workers
    the two uses of a frame often come at once); a frame that cannot be made raises for each of its uses.
    ``uses[k]`` is how many times frame ``k`` will be asked for."""

    def __init__(self, make, uses: dict[int, int]):
        self._make, self._left, self._cache = make, dict(uses), {}
        self._lock = threading.Lock()

    def get(self, k: int) -> np.ndarray:
        with self._lock:
            fut = self._cache.get(k)
            first = fut is None
            if first:
                fut = self._cache[k] = Future()
        if first:
            try:
                fut.set_result(self._make(k))
            except Exception as exc:  # a corrupt frame: every use of it raises the same
                fut.set_exception(exc)
        try:
            return fut.result()
        finally:
            with self._lock:
                self._left[k] = self._left.get(k, 1) - 1
                if self._left[k] <= 0:
                    self._cache.pop(k, None)


def estimate_track(reader, jobs: list, geom: RegistrationGeometry, ir_range: tuple[int, int],
                   settings: RefineSettings, workers: int = 2, clock=None,
                   parallax: BaselineParallax | None = None) -> CorrectionTrack:
    """Pass 1 and 2: estimate ``settings.rate_hz`` pairs per second (or every ``settings.every``-th) at low
    resolution, smooth, judge drift.

    ``parallax`` (the registration's :func:`~rig.registration.parallax.baseline_parallax`) keeps the
    baseline's parallax out of every estimate; ``None`` treats every displacement as misalignment."""
    import time

    n = len(jobs)
    low = LowResPair.from_geometry(geom, settings.work_size)
    times = np.array([j.pair.a.host_ns for j in jobs], np.float64) * 1e-9
    if n >= 2 and not np.all(np.diff(times) >= 0):
        times = np.maximum.accumulate(times)
    picks = pick_estimates(times, settings)
    lo, hi = ir_range
    camera_out = lwir_camera_in_output(geom) if settings.model == "rotation" else None  # the rotation model's G
    camera = None if camera_out is None else level_transform(low.scale) @ camera_out

    def flow_target(k: int) -> tuple[int, float] | None:
        """The frame ``flow_dt_s`` after ``k`` (or, at the end, the one as much earlier, with sign -1)."""
        if parallax is None or settings.flow_dt_s <= 0 or n < 2:
            return None
        j = int(np.searchsorted(times, times[k] + settings.flow_dt_s))
        if j < n:
            return j, 1.0
        j = int(np.searchsorted(times, times[k] - settings.flow_dt_s, "right")) - 1
        return (j, -1.0) if j >= 0 else None

    targets = {k: flow_target(k) for k in picks}
    uses = {k: 1 for k in picks}
    for tg in targets.values():
        if tg is not None:
            uses[tg[0]] = uses.get(tg[0], 0) + 1
    frames = SharedFrames(lambda k: low.visible(reader.read(jobs[k].pair.a), jobs[k].pair.a.pixel_format), uses)

    def flow_of(k: int, vis: np.ndarray) -> np.ndarray | None:
        """The visible image's optical flow to the frame ``flow_dt_s`` later (or, at the end, from the one as much
        earlier, negated): what ranks the blocks by depth while the car moves. At ``rate_hz * flow_dt_s = 1``
        (the defaults) that frame is the next pick: its low-resolution image is shared."""
        tg = targets.get(k)
        if tg is None:
            return None
        try:
            other = frames.get(tg[0])
        except RigError:
            return None
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return tg[1] * dis.calc(vis, other, None)

    def one(k: int) -> tuple[int, RefineResult | None]:
        t0 = time.perf_counter()
        job = jobs[k]
        try:
            vis, raw_l = frames.get(k), reader.read(job.pair.b)
        except RigError:
            return k, None
        ir8 = low.lwir(raw_l, lo, hi)
        r = refine_alignment(vis, ir8, max_shift_px=settings.max_shift_px * low.scale, model=settings.model,
                             parallax_dir=None if parallax is None else parallax.direction,
                             far_px=0.0 if parallax is None else parallax.infinity_px * low.scale, camera=camera,
                             flow=flow_of(k, vis))
        r = dataclasses.replace(r, H=to_output_px(r.H, low.scale), estimate=to_output_px(r.estimate, low.scale),
                                correction=correction_px(to_output_px(r.estimate, low.scale), geom.output_size))
        if clock is not None:
            clock.add("refine", time.perf_counter() - t0)
        return k, r

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="refine") as pool:
        results = {k: r for k, r in pool.map(one, picks) if r is not None}
    return track_from_estimates(results, times, geom.output_size, settings,
                                None if parallax is None else parallax.direction, camera_out)


def track_from_estimates(results: dict[int, RefineResult], times: np.ndarray, size: tuple[int, int],
                         settings: RefineSettings, direction: np.ndarray | None = None,
                         camera_out: np.ndarray | None = None) -> CorrectionTrack:
    """Pass 2: the per-pair estimates (``results``: pair index -> output-px :class:`RefineResult`) of a drive
    whose ``n = len(times)`` registered pairs were taken at ``times`` (s) become the correction applied to each
    pair: far layers offset, smoothed, taken relative to the start where they must be, gated by significance,
    judged for drift.

    ``direction``: the baseline's epipolar direction in the output (``None``: no baseline); ``camera_out``: the
    rotation model's LWIR camera as the output shows it."""
    n = len(times)
    if direction is not None:
        results = offset_far_layer(results, times, size, settings, direction, camera_out)
    H = np.repeat(np.eye(3)[None], n, axis=0)
    acc = np.zeros(n, bool)
    conf = np.zeros(n)
    for k, r in results.items():
        H[k], acc[k], conf[k] = r.estimate, r.accepted, r.confidence
    if n:
        smoothed, spread = smooth_corrections(H, acc, size=size, times=times, confidence=conf, sigma=settings.sigma_s,
                                              return_spread=True)
    else:
        smoothed, spread = H, np.zeros(0)
    noise_px = estimate_scatter(H, smoothed, acc, size)
    # The along-baseline shift of the farthest blocks is that of a far layer at an unknown depth: only its changes
    # count, relative to the drive's start. Extrapolated to infinity along the blocks' depths, it is measured.
    relative = settings.reference == "start" or (settings.reference == "along" and not along_measured(results))
    if relative and acc.any():
        # The trend's value at the first accepted estimate is the calibrated state (see the module docstring).
        ref = smoothed[int(np.flatnonzero(acc)[0])]
        if settings.reference == "along" and direction is not None:
            ref = along_baseline_part(ref, size, settings.model, direction, camera_out)
        smoothed = smoothed @ np.linalg.inv(ref)
        smoothed /= smoothed[:, 2:3, 2:3]
    tau = settings.significance * noise_px
    # Where the trend is less certain than in the middle of the drive (extrapolated at its ends, across gaps),
    # the threshold grows with the trend's standard error: a last estimate or two cannot tilt the end of a drive.
    finite = spread[np.isfinite(spread)]
    typical = float(np.median(finite)) if finite.size else 0.0
    support = np.maximum(1.0, spread / typical) if typical > 0 else np.ones(n)
    # The trend's standard error (inf where no estimate supports it); nothing to gate when nothing scatters.
    low = settings.hysteresis * noise_px * spread if settings.hysteresis > 0 and noise_px > 0 else None
    smoothed = significance_gate(smoothed, size, tau * support, low)
    # Drift is judged on what is applied (relative to the start, gated): the raw estimates also carry the
    # content's changing parallax, which on a static rig can trend by more than the 2 px threshold.
    drift = detect_drift(smoothed, acc, size=size, times=times)
    return CorrectionTrack(smoothed, results, drift, noise_px, tau)


def along_measured(results: dict) -> bool:
    """Whether some accepted estimate extrapolated the shift along the baseline to infinity (the car moved)."""
    return any(r.accepted and r.far_method == "depth" for r in results.values())


def offset_far_layer(results: dict, times: np.ndarray, size: tuple[int, int], settings: RefineSettings,
                     direction: tuple[float, float], camera: np.ndarray | None = None, *, min_pairs: int = 3,
                     window_s: float | None = None) -> dict:
    """Where a drive has both kinds of estimate, the far layer's ones keep what they measured across the
    baseline, and their shift along it is taken relative to the depth-extrapolated ones.

    An estimate whose blocks could not be extrapolated to infinity along their depths (``far_method``
    ``"quantile"``: no block far enough, or flow without forward motion) measured its shift along the baseline
    on the scene's farthest layer, at some finite depth: that reads the drift *plus an offset*, the far layer's
    own parallax (2-3 px on the simulator's streets), which changes only as slowly as the scene does. Everything
    else it measured (tilt, roll, the shift across the baseline) parallax cannot touch. So where the same drive
    has depth-extrapolated estimates (``"depth"``), the offset is measured: each far-layer estimate's along
    shift less the depth estimates' trend at its time (:func:`~rig.registration.temporal.smooth_corrections` of
    those alone), over the far-layer estimates within ``sigma_s`` of the depth ones' span; each far-layer
    estimate is moved along the baseline by the time-weighted median of those offsets (Gaussian weights of
    ``window_s``, default ``4 sigma_s``) and marked ``far_method = "offset"``. With fewer than ``min_pairs``
    offsets to go on they are refused instead (:func:`consistent_far_method`): a single offset is as noisy as
    one estimate; so is a far-layer estimate more than ``3 window_s`` from every measured offset (the scene,
    and with it the far layer's depth, has changed since). Without depth estimates nothing changes (the along
    part is then taken relative to the start).
    """
    depth = sorted(k for k, r in results.items() if r.accepted and r.far_method == "depth")
    layer = sorted(k for k, r in results.items() if r.accepted and r.far_method == "quantile")
    if not depth or not layer:
        return consistent_far_method(results)
    times = np.asarray(times, np.float64)
    n = len(times)
    H, acc, conf = np.repeat(np.eye(3)[None], n, axis=0), np.zeros(n, bool), np.zeros(n)
    for k in depth:
        H[k], acc[k], conf[k] = results[k].estimate, True, results[k].confidence
    trend = smooth_corrections(H, acc, size=size, times=times, confidence=conf, sigma=settings.sigma_s)
    model = settings.model

    def along(M: np.ndarray) -> float:
        return along_baseline_shift(M, size, model, direction, camera)

    lo, hi = times[depth[0]] - settings.sigma_s, times[depth[-1]] + settings.sigma_s
    inside = [k for k in layer if lo <= times[k] <= hi]
    if len(inside) < min_pairs:
        return consistent_far_method(results)
    offsets = np.array([along(results[k].estimate) - along(trend[k]) for k in inside])
    t_in = times[inside]
    window = 4.0 * settings.sigma_s if window_s is None else float(window_s)
    out = consistent_far_method(results)  # the far-layer estimates refused, unless an offset is found below
    for k in layer:
        dt = np.abs(t_in - times[k])
        if dt.min() > 3.0 * window:
            continue  # no offset measured on this stretch of the drive: refused
        b = weighted_median(offsets, np.exp(-0.5 * ((dt * dt - dt.min() ** 2) / window ** 2)))  # nearest: weight 1
        r = results[k]
        M = along_baseline_warp(-b, size, model, direction, camera) @ r.estimate
        M /= M[2, 2]
        out[k] = dataclasses.replace(r, H=M, estimate=M, correction=correction_px(M, size), far_method="offset",
                                     far_shift_px=None if r.far_shift_px is None else r.far_shift_px + b)
    return out


def consistent_far_method(results: dict) -> dict:
    """One way of finding the shift along the baseline per drive: where some accepted estimates extrapolated it to
    infinity along the blocks' depths (the car moved), those that could only take the farthest blocks are refused
    (their far layer is nearer than infinity: a bias of up to a pixel or more that would jump in and out of the
    trend); the smoothing fills them in from their neighbours."""
    if not along_measured(results):
        return results
    out = {}
    for k, r in results.items():
        if r.accepted and r.far_method == "quantile":
            r = dataclasses.replace(r, H=np.eye(3), accepted=False,
                                    reason="shift along the baseline not measured along depth (the drive's other "
                                           "estimates were)")
        out[k] = r
    return out


def pick_estimates(times: np.ndarray, settings: RefineSettings) -> list[int]:
    """Which registered pairs to estimate: every ``settings.every``-th, else the first pair at least
    ``1 / rate_hz`` s after the previous pick (the estimate density follows time, not the frame rate or
    ``--every``); the last pair always."""
    n = len(times)
    if n == 0:
        return []
    if settings.every > 0:
        picks = set(range(0, n, settings.every))
    else:
        picks, last, gap = set(), -math.inf, 1.0 / settings.rate_hz
        for k, t in enumerate(times):
            if t - last >= gap - 1e-9:
                picks.add(k)
                last = t
    return sorted(picks | {n - 1})


def estimate_scatter(H: np.ndarray, smoothed: np.ndarray, accepted: np.ndarray, size: tuple[int, int]) -> float:
    """Robust scatter (px) of the accepted per-pair estimates about the smoothed trend: a single estimate's
    repeatability (1.4826 x the median of each estimate's largest centre/corner residual; 0 with < 3 estimates)."""
    if np.count_nonzero(accepted) < 3:
        return 0.0
    d = _displacements(H[accepted], size) - _displacements(smoothed[accepted], size)
    return 1.4826 * float(np.median(np.hypot(d[..., 0], d[..., 1]).max(axis=1)))


def significance_gate(H: np.ndarray, size: tuple[int, int], tau, tau_low=None) -> np.ndarray:
    """Apply a correction only where it is significant: displacements scaled by ``clip(m / tau - 1, 0, 1)``,
    ``m`` the correction's largest displacement. Below ``tau`` (what a single estimate scatters by; a scalar or
    one per frame) nothing is applied, from ``2 tau`` on all of it, continuously in between (no frame jumps).

    ``tau_low`` (scalar or per frame, ``<= tau``): hysteresis over time. A run of consecutive frames whose
    correction exceeds ``tau_low`` and that somewhere reaches ``2 tau`` (so it is certainly real) is gated at
    ``tau_low`` instead, over the whole run: a drift that grows from zero is applied from where the trend
    itself tells it from zero, not only from where a single estimate could."""
    n = len(H)
    tau = np.broadcast_to(np.asarray(tau, np.float64), (n,))
    if n == 0 or not np.any(tau > 0):
        return H
    d = _displacements(H, size)
    m = np.hypot(d[..., 0], d[..., 1]).max(axis=1)
    if tau_low is not None:
        low = np.minimum(np.broadcast_to(np.asarray(tau_low, np.float64), (n,)), tau)
        above = m > low
        edges = np.flatnonzero(np.diff(np.r_[0, above.astype(np.int8), 0]))
        tau = tau.copy()
        for a, b in zip(edges[::2], edges[1::2]):
            if np.any(m[a:b] >= 2.0 * tau[a:b]):
                tau[a:b] = low[a:b]
    gain = np.where(tau > 0, np.clip(m / np.where(tau > 0, tau, 1.0) - 1.0, 0.0, 1.0), 1.0)
    return _from_displacements(d * gain[:, None, None], size)


@dataclass(frozen=True)
class ExtendedLwirTable:
    """The LWIR remap table on the output grid extended by ``margin`` px on every side: ``xy[..., 0]`` and
    ``xy[..., 1]`` are the raw LWIR x and y each extended output pixel reads."""

    xy: np.ndarray  # (H + 2 margin, W + 2 margin, 2) float32
    margin: int

    @classmethod
    def from_geometry(cls, geom: RegistrationGeometry, margin: int) -> "ExtendedLwirTable":
        W, Hh = geom.output_size
        u, v = np.meshgrid(np.arange(-margin, W + margin, dtype=np.float64),
                           np.arange(-margin, Hh + margin, dtype=np.float64))
        return cls(np.ascontiguousarray(output_to_raw_lwir(geom, np.stack([u, v], axis=-1)), np.float32), margin)

    def corrected(self, C: np.ndarray, size: tuple[int, int], step: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """LWIR tables ``T o C^-1`` for a correction ``C`` (output px): where each output pixel reads the raw LWIR.

        ``T o C^-1`` is smooth (a lens's distortion and a small homography), so it is evaluated every ``step``
        output px, one node beyond the image on each side, by one perspective warp of both tables, and
        brought to every pixel by a bilinear resize (float weights; exact for any locally linear map).
        Within 0.02 raw px of evaluating ``T`` at ``C^-1`` exactly (the warp places its samples to 1/32 px), for
        a sixth of the cost of a per-pixel composition."""
        W, Hh = size
        m, f = self.margin, max(1, int(step))
        nw, nh = -(-W // f) + 2, -(-Hh // f) + 2  # nodes, one beyond the image on each side
        # Node (i, j) is output pixel (f (i - 1) + (f - 1) / 2, ...): where cv2.resize puts a node's value.
        o = (f - 1) / 2.0 - f
        S = np.array([[f, 0.0, o], [0.0, f, o], [0.0, 0.0, 1.0]])
        M = np.array([[1.0, 0.0, m], [0.0, 1.0, m], [0.0, 0.0, 1.0]]) @ np.linalg.inv(C) @ S
        nodes = cv2.warpPerspective(self.xy, M, (nw, nh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_REPLICATE)
        full = cv2.resize(nodes, (nw * f, nh * f), interpolation=cv2.INTER_LINEAR)[f:f + Hh, f:f + W]
        return np.ascontiguousarray(full[..., 0]), np.ascontiguousarray(full[..., 1])


def is_identity(C: np.ndarray, size: tuple[int, int], tol_px: float = 1e-3) -> bool:
    return correction_px(C, size).max_px < tol_px


__all__ = ["Correction", "CorrectionTrack", "ExtendedLwirTable", "LowResPair", "RefineSettings", "estimate_track",
           "is_identity", "level_transform", "to_output_px", "track_from_estimates"]
