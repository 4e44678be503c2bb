"""The calibration pipeline: detect -> intrinsics -> coverage -> joint -> homography -> crop.

Two entry points, both pure (no printing; progress through a callback):

* :func:`detect_views`: run the detector over a :class:`~rig.calibration.sources.ViewSource`,
  checking bad input (mixed sizes, no board anywhere) as it goes.
* :func:`solve`: everything after detection, from board points alone (the
  accuracy tests feed it ground-truth corners plus noise).

Bad input raises :class:`CalibrationError` (a :class:`~rig.errors.RigError`)
carrying the partial :class:`CalibrationRun`, so a partial report of what was
found can be written (:mod:`rig.calibration.workflow` does).

What a run finds is split into ``warnings`` (something the user can act on:
add views, check an image) and ``notes`` (expected behaviour worth knowing,
e.g. a few outlier corners left out, or near boards favouring the RANSAC
homography over the working-plane one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from rig import __version__
from rig.boards import Board
from rig.calibration import homography as hg
from rig.calibration.consistency import Consistency
from rig.calibration.joint import JointOptions, solve_joint
from rig.calibration.coverage import Coverage, analyse_coverage
from rig.calibration.detect import Detection, count_boards_hint, detect
from rig.calibration.intrinsics import (Dropped, IntrinsicsOptions, IntrinsicsResult, ViewPoints, calibrate_intrinsics,
                                        undistort_pixels)
from rig.calibration.results import Calibration, CameraCalibration, Extrinsics, Homography, Registration
from rig.calibration.sources import ViewSource
from rig.calibration.stereo import StereoResult
from rig.errors import RigError

Progress = Callable[[str, int, int], None]  # (task, done, total)

OUTLIER_WARN_FRACTION = 0.02  # more of a camera's corners rejected as outliers than this is worth a look
NEAR_BOARD_FACTOR = 0.5  # boards nearer than this fraction of the working plane: the plane H is expected to miss them


class CalibrationError(RigError):
    """A user-input problem found during calibration; ``partial`` holds what was found so far."""

    def __init__(self, message: str, partial: "CalibrationRun | None" = None, **kw):
        super().__init__(message, **kw)
        self.partial = partial
        self.report: Path | None = None  # the partial report, once written


@dataclass
class ViewRecord:
    """What happened to one image."""

    view: str
    camera: str
    status: str  # "ok" | "no board" | "missing" | "unreadable"
    reason: str = ""
    detection: Detection | None = None
    image_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class CalibrateOptions:
    """Pipeline settings.

    ``intrinsics_for``: cameras whose intrinsics are computed now (``None``: all
    with views); the others come from ``existing``. ``plane``: ``"rig"`` (the
    rig file's distance), ``"data"`` (open3d RANSAC plane through the boards),
    or a number (metres). ``homography``: which H is stored: ``"plane"``,
    ``"ransac"`` or ``"best"`` (the better on held-out boards).
    """

    intrinsics: IntrinsicsOptions = IntrinsicsOptions()
    intrinsics_for: tuple[str, ...] | None = None
    plane: str | float = "rig"
    rig_plane_distance_m: float = 15.0
    homography: str = "plane"
    output_size: tuple[int, int] = (800, 600)
    holdout_every: int = 5
    thermal_retries: bool = True
    bundle: bool = True  # joint bundle adjustment of both cameras after the stereo initialisation
    crop_to_support: bool = True  # keep the registration crop where observed corners back the distortion models
    detectors: tuple[str, ...] = ("sb", "classic")


@dataclass
class CalibrationRun:
    """Everything one run found and computed (the report is drawn from it)."""

    board: Board
    source: ViewSource | None = None
    records: dict[str, list[ViewRecord]] = field(default_factory=dict)
    points: dict[str, dict[str, ViewPoints]] = field(default_factory=dict)
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    intrinsics: dict[str, IntrinsicsResult] = field(default_factory=dict)
    cameras: dict[str, CameraCalibration] = field(default_factory=dict)
    coverage: dict[str, Coverage] = field(default_factory=dict)
    stereo: StereoResult | None = None
    homography: Homography | None = None
    homographies: dict[str, np.ndarray] = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)
    plane_fit: dict | None = None
    registration: Registration | None = None
    parallax: dict | None = None
    warnings: list[str] = field(default_factory=list)  # the user can act on these
    notes: list[str] = field(default_factory=list)  # expected behaviour, for information
    board_distances_m: dict[str, float] = field(default_factory=dict)  # joint view -> board centre distance (visible)
    timings: dict[str, float] = field(default_factory=dict)
    calibration: Calibration | None = None
    bundle: dict | None = None  # summary of the joint bundle adjustment
    own_fit: dict[str, IntrinsicsResult] = field(default_factory=dict)  # each camera alone, before the joint solve
    consistency: Consistency | None = None  # per-pair relative poses against the robust rig estimate
    half_turned: list[str] = field(default_factory=list)  # paired LWIR views renumbered to the visible's point order
    truth: dict = field(default_factory=dict)  # simulator ground truth (synthetic runs), for tests

    def detected(self, camera: str) -> int:
        return sum(r.status == "ok" for r in self.records.get(camera, []))


# --------------------------------------------------------------------------- detection
def detect_views(source: ViewSource, board: Board, options: CalibrateOptions = CalibrateOptions(),
                 progress: Progress | None = None, run: CalibrationRun | None = None) -> CalibrationRun:
    """Detect the board in every image of ``source``; fills ``records``, ``points``, ``image_sizes``."""
    run = run or CalibrationRun(board, source)
    t0 = time.perf_counter()
    obj_all = board.object_points()
    total = len(source.views) * len(source.cameras)
    done = 0
    for cam in source.cameras:
        run.records.setdefault(cam, [])
        run.points.setdefault(cam, {})
    run.notes.extend(n for n in source.notes if n not in run.notes)
    for view in source.views:
        for cam in source.cameras:
            done += 1
            try:
                img = source.load(view, cam)
            except RigError as exc:  # one bad file among good ones is skipped, named
                where = Path(exc.path) if exc.path else source.files.get((view, cam))
                run.records[cam].append(ViewRecord(view, cam, "unreadable", exc.message))
                run.warnings.append(f"{cam}: {where.name if where else view}: {exc.message}; skipped")
                continue
            if img is None:
                run.records[cam].append(ViewRecord(view, cam, "missing"))
                continue
            size = (int(img.shape[1]), int(img.shape[0]))
            if cam in run.image_sizes and run.image_sizes[cam] != size:
                first = next(r for r in run.records[cam] if r.image_size)
                where = source.files.get((view, cam))
                raise CalibrationError(
                    f"mixed image sizes for {cam}: '{view}' is {size[0]}x{size[1]} but '{first.view}' is "
                    f"{run.image_sizes[cam][0]}x{run.image_sizes[cam][1]}", run, path=where)
            run.image_sizes[cam] = size
            out = detect(img, board, thermal=(cam == "lwir"), detectors=options.detectors,
                         retries=options.thermal_retries)
            if out.detection is None:
                run.records[cam].append(ViewRecord(view, cam, "no board", out.reason, None, size))
            else:
                d = out.detection
                run.records[cam].append(ViewRecord(view, cam, "ok", "", d, size))
                run.points[cam][view] = ViewPoints(view, d.image_points, obj_all[d.ids], d.ids)
            if progress:
                progress("detect", done, total)
    run.timings["detect_s"] = time.perf_counter() - t0
    unreadable = [r for c in source.cameras for r in run.records[c] if r.status == "unreadable"]
    if unreadable and all(r.status in ("unreadable", "missing") for c in source.cameras for r in run.records[c]):
        first = unreadable[0]
        where = source.files.get((first.view, first.camera))
        raise CalibrationError(f"no readable image: {first.reason}" + (f" ({len(unreadable)} files)" if len(unreadable) > 1
                                                                      else ""), run, path=where)
    if all(run.detected(c) == 0 for c in source.cameras):
        hint = ""
        for cam in source.cameras:
            for view in source.views[:3]:
                try:
                    img = source.load(view, cam)
                except RigError:
                    continue
                if img is not None and (hint := count_boards_hint(img, board)):
                    break
            if hint:
                break
        what = f"{board.cols}x{board.rows} {board.type}" + (f" '{board.name}'" if board.name else "")
        msg = f"no board ({what}) found in any of {len(source.views)} views"
        raise CalibrationError(msg + (f": {hint}; does the board file match the images?" if hint else ""), run)
    return run


# --------------------------------------------------------------------------- solving
def solve(run: CalibrationRun, options: CalibrateOptions = CalibrateOptions(), existing: Calibration | None = None,
          progress: Progress | None = None) -> CalibrationRun:
    """Intrinsics, coverage, joint calibration, homographies and crop from ``run.points``."""
    t0 = time.perf_counter()
    cams = [c for c in ("visible", "lwir") if c in run.points] + [c for c in run.points if c not in ("visible", "lwir")]
    todo = [c for c in cams if options.intrinsics_for is None or c in options.intrinsics_for]
    steps = len(todo) + 2
    for i, cam in enumerate(todo):
        views = list(run.points[cam].values())
        try:
            res = calibrate_intrinsics(cam, views, run.image_sizes[cam], options.intrinsics)
        except RigError as exc:
            raise CalibrationError(exc.message, run) from None
        run.intrinsics[cam] = res
        run.cameras[cam] = CameraCalibration(cam, res.model, res.image_size, res.K, res.dist, res.rms_px, res.std,
                                             len(res.views), run.board.name or None, res.fixed)
        warn, note = summarise_dropped(cam, res.dropped, sum(len(v.ids) for v in views),
                                       options.intrinsics.corner_factor)
        run.warnings.extend(warn)
        run.notes.extend(note)
        if res.fixed:
            run.notes.append(res.observability_note())
        focal = res.focal_warning()
        if focal:
            run.warnings.append(focal)
        cov = analyse_coverage(cam, res.image_size, {v.name: v.image_points for v in res.views}, res.poses)
        run.coverage[cam] = cov
        # The coverage's "near fronto-parallel" warning says the same as the focal one, with less: one line each.
        run.warnings.extend(w for w in cov.warnings if not (focal and w in cov.tilt_warnings))
        if progress:
            progress("solve", i + 1, steps)
    for cam in cams:
        if cam in run.intrinsics or not run.points[cam]:
            continue
        if existing is None or cam not in existing.cameras:
            run.warnings.append(f"{cam}: views not used (intrinsics neither requested nor in the earlier calibration)")
            continue
        old = existing.cameras[cam]
        if old.image_size != run.image_sizes[cam]:
            raise CalibrationError(f"earlier calibration of '{cam}' is for {old.image_size[0]}x{old.image_size[1]} images, "
                                   f"these are {run.image_sizes[cam][0]}x{run.image_sizes[cam][1]}", run)
        run.intrinsics[cam] = _fixed_intrinsics(old, run.points[cam], options.intrinsics.model)
    run.timings["intrinsics_s"] = time.perf_counter() - t0
    if "visible" in run.intrinsics and "lwir" in run.intrinsics:
        t1 = time.perf_counter()
        _joint(run, options)
        run.timings["joint_s"] = time.perf_counter() - t1
    if progress:
        progress("solve", steps, steps)
    return run


def summarise_dropped(camera: str, dropped: list[Dropped], n_corners: int,
                      corner_factor: float) -> tuple[list[str], list[str]]:
    """``(warnings, notes)`` for what outlier rejection left out of one camera's views.

    A dropped view is a warning (that image deserves a look). Isolated outlier
    corners are what the rejection is for: one note per camera, stating the
    lowest limit any of them exceeded (each rejection round has its own); a
    warning only when more than :data:`OUTLIER_WARN_FRACTION` of the corners went.
    """
    warnings = [str(d) for d in dropped if d.what == "view"]
    corners = [d for d in dropped if d.what == "corners"]
    if not corners:
        return warnings, []
    n = sum(d.count for d in corners)
    views = sorted({d.view for d in corners})
    limits = [d.threshold_px for d in corners if d.threshold_px is not None]
    limit = f"residual > {min(limits):.2f} px, " if limits else ""
    where = ", ".join(views[:4]) + (", ..." if len(views) > 4 else "")
    msg = (f"{camera}: {n} outlier corner(s) of {n_corners} left out, in {len(views)} view(s) ({where}; "
           f"{limit}{corner_factor:g}x the median residual)")
    if n > OUTLIER_WARN_FRACTION * max(1, n_corners):
        return warnings + [msg + ": more than usual; check those views for blur, glare or a bent board"], []
    return warnings, [msg]


def _fixed_intrinsics(old: CameraCalibration, points: dict[str, ViewPoints], model: str) -> IntrinsicsResult:
    """Intrinsics taken from an earlier calibration, with board poses from PnP."""
    import cv2

    poses = {}
    views = []
    for name, v in points.items():
        und = undistort_pixels(v.image_points, old.K, old.dist, old.model)
        ok, rvec, tvec = cv2.solvePnP(v.object_points, und, old.K, None)
        if ok:
            poses[name] = (cv2.Rodrigues(rvec)[0], tvec.ravel())
            views.append(v)
    return IntrinsicsResult(old.name, old.model, old.image_size, old.K, old.dist, old.rms_px or float("nan"),
                            old.std or {}, {}, poses, views, {}, [])


def _joint(run: CalibrationRun, options: CalibrateOptions) -> None:
    vis, lw = run.intrinsics["visible"], run.intrinsics["lwir"]
    free = {c for c in ("visible", "lwir") if c in run.cameras}
    run.own_fit = {"visible": vis, "lwir": lw}
    try:
        jo = solve_joint(vis, lw, free, JointOptions(bundle=options.bundle,
                                                     min_views=max(3, min(options.intrinsics.min_views, 4))),
                         half_turn=run.board.half_turn())
    except RigError as exc:
        raise CalibrationError(exc.message, run) from None
    run.half_turned = list(jo.turned)
    if jo.turned:  # the LWIR views as the joint solve numbered them, whether or not its intrinsics are kept
        run.intrinsics["lwir"] = replace(run.intrinsics["lwir"], views=jo.intrinsics["lwir"].views,
                                         poses={**run.intrinsics["lwir"].poses, **jo.intrinsics["lwir"].poses})
    run.warnings.extend(jo.warnings)
    run.notes.extend(jo.notes)
    run.consistency = jo.consistency
    if jo.bundle is not None:
        run.bundle = {**jo.bundle, "checks": {c: ch.__dict__ for c, ch in jo.checks.items()}}
        for cam in free:
            new = jo.intrinsics[cam]
            run.intrinsics[cam] = new
            run.cameras[cam] = replace(run.cameras[cam], K=new.K, dist=new.dist, rms_px=new.rms_px, std=new.std)
    vis, lw, st = run.intrinsics["visible"], run.intrinsics["lwir"], jo.stereo
    run.stereo = st
    R, t = st.R, st.t
    # Correspondences in undistorted pixels, per view.
    corr = []
    for a, b in st.pairs:
        corr.append((a.name, undistort_pixels(b.image_points, lw.K, lw.dist, lw.model),
                     undistort_pixels(a.image_points, vis.K, vis.dist, vis.model), a))
    # Working plane distance.
    plane_src, n = "rig", np.array([0.0, 0.0, 1.0])
    if options.plane == "rig":
        d = float(options.rig_plane_distance_m)
    elif options.plane == "data":
        pts3 = []
        for a, _ in st.pairs:
            Rb, tb = vis.poses[a.name]
            pts3.append(a.object_points @ Rb.T + tb)
        d, n, frac = hg.fit_plane_distance(np.concatenate(pts3))
        plane_src = "data"
        run.plane_fit = {"distance_m": d, "normal": [float(x) for x in n], "inlier_fraction": frac}
    else:
        d, plane_src = float(options.plane), "user"
    H_plane = hg.plane_homography(vis.K, lw.K, R, t, d, n)
    # Held-out comparison: RANSAC fitted on the other views.
    k = max(2, options.holdout_every)
    held = [c for i, c in enumerate(corr) if i % k == k - 1] or corr[-1:]
    train = [c for c in corr if c not in held] or corr
    src = np.concatenate([c[1] for c in train])
    dst = np.concatenate([c[2] for c in train])
    H_r, inl = hg.ransac_homography(src, dst)
    H_all, _ = hg.ransac_homography(np.concatenate([c[1] for c in corr]), np.concatenate([c[2] for c in corr]))
    hs, hd = np.concatenate([c[1] for c in held]), np.concatenate([c[2] for c in held])
    # Crop first (with the plane H) to express errors at the output resolution. The crop stays where the
    # distortion models are backed by observed corners: beyond them they are extrapolations.
    support = _support(vis, lw) if options.crop_to_support else None
    crop = hg.registration_crop(vis.K, vis.dist, vis.image_size, lw.K, lw.dist, lw.image_size, H_plane,
                                options.output_size, vis.model, support=support and [support[0], hg.apply_h(H_plane, support[1])])
    if support:
        full = hg.registration_crop(vis.K, vis.dist, vis.image_size, lw.K, lw.dist, lw.image_size, H_plane,
                                    options.output_size, vis.model)
        if full[2] > 0 and crop[2] < 0.97 * full[2]:
            share = f"registration crop limited to the area the board views covered ({100 * (crop[2] / full[2]) ** 2:.0f} % " \
                    "of the area both images share)"
            if run.source is not None and run.source.kind == "sim":  # the simulator's pose plan places the boards
                run.notes.append(share)
            else:
                run.warnings.append(share + ": add views with the board near the LWIR image's corners to widen it")
    if crop[2] <= 0:
        raise CalibrationError("the LWIR image warped into the visible image leaves no valid output area", run)
    scale = options.output_size[0] / crop[2]
    e_plane = hg.registration_error(H_plane, hs, hd, scale)
    e_ransac = hg.registration_error(H_r, hs, hd, scale)
    better = "plane" if e_plane.mean_px <= e_ransac.mean_px else "ransac"
    run.held_out = {"views": [c[0] for c in held], "plane": e_plane.__dict__, "ransac": e_ransac.__dict__, "better": better,
                    "ransac_inlier_fraction": float(inl.mean())}
    method = better if options.homography == "best" else options.homography
    H = H_plane if method == "plane" else H_all
    if method != "plane":
        crop = hg.registration_crop(vis.K, vis.dist, vis.image_size, lw.K, lw.dist, lw.image_size, H,
                                    options.output_size, vis.model, support=support and [support[0], hg.apply_h(H, support[1])])
    run.homographies = {"plane": H_plane, "ransac": H_all}
    run.registration = Registration(tuple(options.output_size), crop)
    run.parallax = hg.parallax_table(vis.K, lw.K, R, t, H, crop, options.output_size)
    run.homography = Homography("lwir", "visible", H, d, method, plane_src, n,
                                {kk: (vv if not isinstance(vv, dict) else {a: float(b) for a, b in vv.items()})
                                 for kk, vv in run.held_out.items()},
                                run.parallax, {"ransac" if method == "plane" else "plane": H_all if method == "plane" else H_plane})
    run.board_distances_m = {a.name: float(np.linalg.norm(vis.poses[a.name][1] + vis.poses[a.name][0] @ run.board.center()))
                             for a, _ in st.pairs if a.name in vis.poses}
    if better != method:
        near = run.board_distances_m and np.median(list(run.board_distances_m.values())) < NEAR_BOARD_FACTOR * d
        e_b, e_m = (e_plane, e_ransac) if better == "plane" else (e_ransac, e_plane)
        if method == "plane" and better == "ransac" and near:  # parallax: the plane H is exact at d, not at the boards
            run.notes.append(f"held-out boards at ~{np.median(list(run.board_distances_m.values())):.1f} m fit the ransac "
                             f"homography better ({e_b.mean_px:.2f} px vs {e_m.mean_px:.2f} px), as expected: the stored "
                             f"plane homography is exact at the {d:g} m working plane")
        else:
            run.warnings.append(f"the {better} homography registered held-out boards better ({e_b.mean_px:.2f} px vs "
                                f"{e_m.mean_px:.2f} px); stored: {method} (working plane at {d:g} m)")


def _support(vis: IntrinsicsResult, lw: IntrinsicsResult) -> tuple[np.ndarray, np.ndarray] | None:
    """Hulls of the observed corners: visible (undistorted visible px) and LWIR (undistorted LWIR px)."""
    pv = [v.image_points for v in vis.views]
    pl = [v.image_points for v in lw.views]
    if not pv or not pl:
        return None
    hv = hg.support_hull(undistort_pixels(np.concatenate(pv), vis.K, vis.dist, vis.model))
    hl = hg.support_hull(undistort_pixels(np.concatenate(pl), lw.K, lw.dist, lw.model))
    return hv, hl


def build_calibration(run: CalibrationRun) -> Calibration:
    """The :class:`Calibration` of this run alone (see :func:`rig.calibration.results.merge`)."""
    ext = None
    if run.stereo is not None:
        s = run.stereo
        bad, summary = (), None
        if (c := run.consistency) is not None:
            bad = tuple({"view": p.view, "rotation_deg": p.rotation_deg, "translation_mm": p.translation_mm}
                        for p in c.inconsistent)
            summary = {"pairs_checked": len(c.pairs), "pairs_used": len(s.views), "k_mad": float(c.k),
                       "rotation_threshold_deg": float(c.rotation_threshold_deg),
                       "translation_threshold_mm": float(c.translation_threshold_mm),
                       "half_turned_views": list(run.half_turned)}
        ext = Extrinsics("lwir", "visible", s.R, s.t, s.std_rotation_deg, s.std_translation_m, s.rms_px, s.epipolar_px,
                         bad, summary)
    return Calibration(dict(run.cameras), ext, run.homography, run.registration, {})


def run_record(run: CalibrationRun, rig: str | None = None) -> dict:
    """The provenance entry of this run.

    ``rig``: the rig's name (checked by registration against a session's rig):
    recorded only where it is known: the source's own (a session's manifest,
    the simulator), else ``rig`` (given by the user); image folders with no
    rig named record none. ``source_kind`` names the real source.
    """
    import datetime as dt

    src = run.source
    rig = (src.rig if src is not None and src.rig else None) or rig
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "software": f"rig {__version__}",
            **({"rig": rig} if rig else {}),
            "source_kind": src.kind_label if src is not None else "board points",
            "board": run.board.name or str(run.board.source), "board_type": f"{run.board.cols}x{run.board.rows} {run.board.type}",
            "source": run.source.description if run.source else "points",
            "cameras_calibrated": sorted(run.cameras), "views_used": {c: len(r.views) for c, r in run.intrinsics.items()},
            "joint_views": len(run.stereo.views) if run.stereo else 0,
            "dropped": [str(x) for r in run.intrinsics.values() for x in r.dropped],
            **({"inconsistent_pairs": [p.view for p in run.consistency.inconsistent]} if run.consistency else {}),
            **({"bundle_adjustment": run.bundle} if run.bundle else {})}
