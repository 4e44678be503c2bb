"""report.html with PNGs, and rig.ply (open3d): what a calibration found and how good it is.

Images are drawn with OpenCV (no plotting dependency; plots with axes, ticks and
colour bars come from :mod:`rig.calibration.plots`): detections per view,
reprojection-error scatter and per-view bars, coverage heat maps, an
LWIR-over-visible checker blend (at the board's own plane and at the working
plane, with the parallax between them stated), and a 3D scene of camera frusta
and board poses.
A partial report (bad input) shows only what was found.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rig.calibration import homography as hg
from rig.calibration import plots
from rig.calibration import thermal as th
from rig.calibration.intrinsics import undistort_pixels


def _bgr(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = th.to8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[..., ::-1])


def _thumb(img: np.ndarray, width: int = 320) -> np.ndarray:
    s = width / img.shape[1]
    return cv2.resize(img, (width, max(1, int(round(img.shape[0] * s)))), interpolation=cv2.INTER_AREA)


def detection_sheet(run, camera: str, max_views: int = 24, width: int = 320) -> np.ndarray | None:
    """Contact sheet: each view with its corners (green: used, red X: no board)."""
    src = run.source
    if src is None:
        return None
    tiles = []
    for rec in [r for r in run.records.get(camera, []) if r.status != "unreadable"][:max_views]:
        img = src.load(rec.view, camera)
        if img is None:
            continue
        b = _bgr(img)
        s = width / b.shape[1]
        t = _thumb(b, width)
        if rec.detection is not None:
            for p in rec.detection.image_points * s:
                cv2.circle(t, (int(round(p[0])), int(round(p[1]))), 2, (0, 220, 0), -1)
        else:
            cv2.line(t, (0, 0), (t.shape[1] - 1, t.shape[0] - 1), (0, 0, 255), 2)
            cv2.line(t, (0, t.shape[0] - 1), (t.shape[1] - 1, 0), (0, 0, 255), 2)
        cv2.putText(t, f"{rec.view} {rec.status}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    if not tiles:
        return None
    h = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    return np.vstack(rows)


def checker_blend(vis_img: np.ndarray, lwir_img: np.ndarray, cal, H: np.ndarray | None = None,
                  cells: int = 8) -> np.ndarray | None:
    """Output-size checkerboard of undistorted visible and LWIR warped by ``H`` (default: the stored homography)."""
    if cal.homography is None or cal.registration is None:
        return None
    cv_, cl = cal.cameras["visible"], cal.cameras["lwir"]
    if cv_.model != "pinhole" or cl.model != "pinhole":
        return None
    H = cal.homography.H if H is None else H
    x, y, w, h = cal.registration.crop
    ow, oh = cal.registration.output_size
    s = ow / w
    A = np.array([[s, 0, -s * x], [0, s, -s * y], [0, 0, 1]])  # visible undistorted px -> output px
    v = cv2.undistort(_bgr(vis_img), cv_.K, cv_.dist)
    l_und = cv2.undistort(_bgr(lwir_img), cl.K, cl.dist)
    v_out = cv2.warpPerspective(v, A, (ow, oh))
    l_out = cv2.warpPerspective(l_und, A @ H, (ow, oh))
    yy, xx = np.mgrid[0:oh, 0:ow]
    mask = ((xx * cells // ow + yy * cells // oh) % 2).astype(bool)
    out = v_out.copy()
    out[mask] = l_out[mask]
    return out


@dataclass(frozen=True)
class PlaneCheck:
    """One joint view registered two ways: with its board's own plane and with the stored working plane.

    Misregistration: mean over the board's corners seen by both cameras of the
    distance (output px) between the LWIR corner mapped by the homography and
    the visible corner (both undistorted).
    """

    view: str
    board_distance_m: float  # camera (visible) to board centre
    working_plane_m: float
    H_board: np.ndarray  # plane-induced homography of the board's plane
    board_plane_px: float  # misregistration with H_board
    working_plane_px: float  # misregistration with the stored homography


def plane_check(run, cal, view: str) -> PlaneCheck | None:
    """:class:`PlaneCheck` of ``view`` (``None`` without a joint calibration or the view's board pose)."""
    if cal is None or cal.extrinsics is None or cal.homography is None or cal.registration is None or run.stereo is None:
        return None
    pose = run.intrinsics["visible"].poses.get(view) if "visible" in run.intrinsics else None
    pair = next(((a, b) for a, b in run.stereo.pairs if a.name == view), None)
    if pose is None or pair is None:
        return None
    cv_, cl = cal.cameras["visible"], cal.cameras["lwir"]
    R_b, t_b = pose
    n, d = hg.board_plane(R_b, t_b)
    H_board = hg.plane_homography(cv_.K, cl.K, cal.extrinsics.R, np.ravel(cal.extrinsics.t), d, n)
    a, b = pair
    pv = undistort_pixels(a.image_points, cv_.K, cv_.dist, cv_.model)
    pl = undistort_pixels(b.image_points, cl.K, cl.dist, cl.model)
    scale = cal.registration.scale

    def err(H: np.ndarray) -> float:
        return float(np.linalg.norm(hg.apply_h(H, pl) - pv, axis=1).mean() * scale)

    dist = float(np.linalg.norm(R_b @ run.board.center() + np.ravel(t_b)))
    return PlaneCheck(view, dist, float(cal.homography.plane_distance_m), H_board, err(H_board), err(cal.homography.H))


def blend_captions(pc: PlaneCheck) -> tuple[str, str]:
    """Captions of the board-plane blend and of the working-plane blend, with their numbers."""
    board = (f"LWIR over visible, checker blend at the output ({pc.view}): LWIR warped with the homography of this "
             f"board's own plane (board {pc.board_distance_m:.2f} m away), so the board lines up: "
             f"{pc.board_plane_px:.2f} px mean misregistration at its corners.")
    work = (f"The same view warped with the stored homography of the {pc.working_plane_m:g} m working plane: the board, "
            f"{pc.board_distance_m:.2f} m away, shows {pc.working_plane_px:.1f} px of parallax (mean at its corners, output "
            f"px), as expected for an object much nearer than the working plane; objects near {pc.working_plane_m:g} m "
            "register (see the parallax table).")
    return board, work


def write_ply(run, cal, path: Path) -> Path | None:
    """rig.ply: camera frusta (lines) and board corner points per view, rig frame (open3d)."""
    import open3d as o3d

    pts, lines, colors = [], [], []

    def frustum(K, size, R, t, scale, color):
        # camera -> rig: X_rig = R X_cam + t
        w, h = size
        corners = [np.array([0, 0]), np.array([w, 0]), np.array([w, h]), np.array([0, h])]
        base = len(pts)
        pts.append(t)
        for c in corners:
            ray = np.linalg.inv(K) @ np.array([c[0], c[1], 1.0]) * scale
            pts.append(R @ ray + t)
        for a, b in ((0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1)):
            lines.append([base + a, base + b])
            colors.append(color)

    ref = "visible" if "visible" in run.intrinsics else next(iter(run.intrinsics), None)
    # The frame: the visible camera's (the rig's); with one camera calibrated alone, that camera's.
    if "visible" in cal.cameras:
        c = cal.cameras["visible"]
        frustum(c.K, c.image_size, np.eye(3), np.zeros(3), 0.3, [0.1, 0.6, 0.1])
    if "lwir" in cal.cameras and cal.extrinsics is not None and "visible" in cal.cameras:
        c = cal.cameras["lwir"]
        frustum(c.K, c.image_size, cal.extrinsics.R, np.ravel(cal.extrinsics.t), 0.3, [0.8, 0.2, 0.1])
    elif "lwir" in cal.cameras and "visible" not in cal.cameras:
        c = cal.cameras["lwir"]
        frustum(c.K, c.image_size, np.eye(3), np.zeros(3), 0.3, [0.8, 0.2, 0.1])
    board_pts = []
    if ref is not None:
        res = run.intrinsics[ref]
        obj = run.board.object_points()
        for name, (R, t) in res.poses.items():
            P = obj @ R.T + t
            if ref == "lwir" and cal.extrinsics is not None and "visible" in cal.cameras:
                P = P @ cal.extrinsics.R.T + np.ravel(cal.extrinsics.t)
            board_pts.append(P)
    pc = o3d.geometry.PointCloud()
    allp = np.concatenate([np.array(pts)] + board_pts) if board_pts else np.array(pts)
    pc.points = o3d.utility.Vector3dVector(allp)
    pc.colors = o3d.utility.Vector3dVector(np.vstack([np.tile([0.2, 0.2, 0.2], (len(pts), 1))] +
                                                     [np.tile([0.1, 0.3, 0.9], (len(b), 1)) for b in board_pts]))
    # PLY holds one geometry: write the points (frusta apexes/corners + board corners), and the line set beside it.
    o3d.io.write_point_cloud(str(path), pc, write_ascii=True)
    if lines:  # open3d raises an empty RuntimeError on an empty line set
        ls = o3d.geometry.LineSet(o3d.utility.Vector3dVector(np.array(pts)), o3d.utility.Vector2iVector(np.array(lines)))
        ls.colors = o3d.utility.Vector3dVector(np.array(colors))
        o3d.io.write_line_set(str(path.with_name(path.stem + "_frusta.ply")), ls, write_ascii=True)
    return path


def _pm(value: float, sigma, nd: int = 2) -> str:
    """``value +/- sigma``; a sigma of 0 means the term was held fixed."""
    if sigma is None or (isinstance(sigma, float) and not math.isfinite(sigma)):
        return f"{value:.{nd}f}"
    if sigma == 0:
        return f"{value:.{nd}f} (fixed)"
    return f"{value:.{nd}f} &plusmn; {sigma:.{nd}f}"


def intrinsics_table(run) -> str:
    """Per camera: parameters with their sigma, and the own-fit and joint RMS side by side (one number, one meaning)."""
    rows = ["<h2>Intrinsics</h2><p>RMS on each camera's own views: <i>own fit</i> is the camera calibrated alone, "
            "<i>joint</i> the joint solve of both cameras (stored unless the guard kept the own fit, and held-out pairs "
            "did not overrule it).</p>"
            "<table><tr><th>camera</th><th>model</th><th>fx</th><th>fy</th><th>cx</th><th>cy</th><th>distortion "
            "(&plusmn; &sigma;)</th><th>RMS own fit px</th><th>RMS joint px</th><th>kept</th><th>views</th></tr>"]
    checks = (run.bundle or {}).get("checks") or {}
    names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
    for cam, r in run.intrinsics.items():
        s = r.std or {}
        own = run.own_fit.get(cam, r)
        chk = checks.get(cam)
        sd = list(s.get("dist") or []) + [None] * len(r.dist)
        dist = ", ".join(f"{n} {_pm(float(v), sd[i], 4)}" for i, (n, v) in enumerate(zip(names, r.dist)))
        joint = _fmt(chk["joint_rms_px"]) if chk else ("-" if cam not in run.own_fit else _fmt(r.rms_px))
        kept = html.escape(chk["kept"] + (f": {chk['reason']}" if chk["reason"] else "")) if chk else "own fit"
        rows.append(f"<tr><td>{cam}</td><td>{r.model}</td>" + "".join(
            f"<td>{_pm(float(r.K[i, j]), s.get(k))}</td>" for (i, j), k in (((0, 0), 'fx'), ((1, 1), 'fy'), ((0, 2), 'cx'), ((1, 2), 'cy')))
            + f"<td>{dist}</td><td>{_fmt(own.rms_px)}</td><td>{joint}</td><td>{kept}</td><td>{len(r.views)}</td></tr>")
    rows.append("</table>")
    ho = (run.bundle or {}).get("held_out")
    if ho:
        rows.append(f"<p class='note'>Guard and held-out pairs: the joint solve went beyond a camera's own-fit limits; "
                    f"fitted again without each of {ho['folds']} folds of pairs, it registers the held-out pairs at "
                    f"{ho['joint_px']:.2f} px, the own fit at {ho['guarded_px']:.2f} px (mean, {ho['pairs']} pairs). "
                    f"Kept: <b>{html.escape(ho['kept'])}</b> (the joint solve only if at least "
                    f"{100 * ho['margin']:.0f} % lower).</p>")
    for cam, r in run.own_fit.items() or run.intrinsics.items():
        if r.fixed:
            rows.append(f"<p class='note'>{html.escape(r.observability_note())}</p>")
    return "".join(rows)


def consistency_section(run) -> str:
    """Which pairs agree with the rig's one relative pose, and the ones left out (deviation in deg and mm)."""
    c = run.consistency
    used = len(run.stereo.views) if run.stereo is not None else 0
    if c.mahalanobis_threshold is not None:
        rule = (f"Mahalanobis distance (each pair's deviation weighed by its pose uncertainty) above "
                f"{c.mahalanobis_threshold:.2f} (median + {c.k:g} MAD) and beyond {c.rotation_threshold_deg:g} deg or "
                f"{c.translation_threshold_mm:g} mm")
    elif c.checked:
        rule = f"beyond {c.rotation_threshold_deg:.3f} deg or {c.translation_threshold_mm:.2f} mm (median + {c.k:g} MAD, floored)"
    else:
        rule = "not checked (too few pairs)"
    out = [f"<h2>Pair consistency</h2><p>{len(c.pairs)} pairs; {used} used for the extrinsics. A pair is left out when "
           f"its relative pose (from its two board poses) deviates from the robust rig estimate: {html.escape(rule)}.</p>"]
    if c.inconsistent:
        out.append("<table><tr><th>pair left out</th><th>rotation deg</th><th>translation mm</th><th>Mahalanobis</th></tr>"
                   + "".join(f"<tr><td>{html.escape(p.view)}</td><td>{p.rotation_deg:.3f}</td><td>{p.translation_mm:.2f}</td>"
                             f"<td>{_fmt(p.mahalanobis, 1)}</td></tr>" for p in c.inconsistent) + "</table>")
    return "".join(out)


def _fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else html.escape(str(x))


def write_report(run, cal, folder: str | Path, error: str | None = None) -> Path:
    """Write ``report.html`` (+ ``report_files/*.png``, ``rig.ply``) into ``folder``; return the HTML path."""
    folder = Path(folder)
    files = folder / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    parts = ["<html><head><meta charset='utf-8'><title>rig calibration report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:right}.warn{color:#a60}.err{color:#c00;font-weight:bold}</style></head><body>",
             "<h1>rig calibration report</h1>"]
    if error:
        parts.append(f"<p class='err'>Calibration stopped: {html.escape(error)}</p><p>Partial report: what was found before it stopped.</p>")
    b = run.board
    parts.append(f"<p>Board: {html.escape(b.name or str(b.source))} ({b.cols}x{b.rows} {b.type}, {b.spacing * 1000:g} mm). "
                 f"Source ({html.escape(run.source.kind_label if run.source else 'board points')}): "
                 f"{html.escape(run.source.description if run.source else 'board points given directly')}</p>")

    def img(name, image, caption, alt=None):
        if image is None:
            return
        cv2.imwrite(str(files / name), image)
        parts.append(f"<figure><img src='report_files/{name}' alt='{html.escape(alt or caption, quote=True)}' "
                     f"style='max-width:100%'><figcaption>{html.escape(caption)}</figcaption></figure>")

    def fig(name, f: plots.Figure, caption):
        img(name, f.image, caption, f.describe())

    # Detection summary.
    parts.append("<h2>Detections</h2><table><tr><th>camera</th><th>images</th><th>board found</th><th>no board</th><th>image size</th></tr>")
    for cam, recs in run.records.items():
        size = run.image_sizes.get(cam)
        parts.append(f"<tr><td>{cam}</td><td>{sum(r.status != 'missing' for r in recs)}</td><td>{run.detected(cam)}</td>"
                     f"<td>{sum(r.status == 'no board' for r in recs)}</td><td>{'x'.join(map(str, size)) if size else '-'}</td></tr>")
    parts.append("</table>")
    fails = [r for recs in run.records.values() for r in recs if r.status == "no board"]
    if fails:
        parts.append("<details><summary>views without a board</summary><ul>" +
                     "".join(f"<li>{r.camera} {html.escape(r.view)}: {html.escape(r.reason)}</li>" for r in fails[:200]) + "</ul></details>")
    for cam in run.records:
        img(f"detections_{cam}.png", detection_sheet(run, cam), f"{cam}: detections (first views)")
    # Intrinsics.
    if run.intrinsics:
        parts.append(intrinsics_table(run))
        for cam, r in run.intrinsics.items():
            own = run.own_fit.get(cam)
            if r.residuals:
                allr = np.concatenate(list(r.residuals.values()))
                what = "joint solution" if own is not None else "own fit"
                fig(f"residuals_{cam}.png", plots.residual_scatter(allr, r.rms_px, cam),
                    f"{cam}: reprojection residuals of {len(allr)} corners, {what} (observed - projected); rings at the "
                    f"RMS ({r.rms_px:.3f} px) and 3xRMS ({3 * r.rms_px:.3f} px)")
            if own is not None and own.per_view_rms:
                fig(f"per_view_{cam}_own.png", plots.per_view_bars(own.per_view_rms, cam, own.rms_px,
                                                                    title=f"{cam}: per-view RMS, own fit"),
                    f"{cam}: per-view reprojection RMS (px) of its own fit (this camera alone); line: {own.rms_px:.3f} px")
            if r.per_view_rms:
                label = "joint solution" if own is not None else "own fit"
                fig(f"per_view_{cam}.png", plots.per_view_bars(r.per_view_rms, cam, r.rms_px,
                                                                title=f"{cam}: per-view RMS, {label}"),
                    f"{cam}: per-view reprojection RMS (px), {label}, the one stored; line: all views, {r.rms_px:.3f} px")
            if cam in run.coverage:
                cov = run.coverage[cam]
                fig(f"coverage_{cam}.png", plots.coverage_map(cov.heat, cov.image_size, cam),
                    f"{cam}: corner coverage ({cov.area_fraction:.0%} of the image; "
                    f"max tilt {max(cov.tilts_deg.values(), default=0):.0f} deg); lines: the image's thirds")
    if run.warnings or run.notes:
        parts.append("<h2>Warnings and notes</h2><ul>"
                     + "".join(f"<li class='warn'>warning: {html.escape(w)}</li>" for w in run.warnings)
                     + "".join(f"<li class='note'>note: {html.escape(n)}</li>" for n in run.notes) + "</ul>")
    # Joint.
    if run.stereo is not None:
        s = run.stereo
        rv, _ = cv2.Rodrigues(s.R)
        parts.append("<h2>Extrinsics (X_visible = R X_lwir + t)</h2>"
                     f"<p>rotation vector {np.degrees(rv.ravel()).round(4).tolist()} deg &plusmn; {s.std_rotation_deg.round(4).tolist()}; "
                     f"t {(s.t * 1000).round(2).tolist()} mm &plusmn; {(s.std_translation_m * 1000).round(2).tolist()} mm; "
                     f"baseline {s.baseline_m * 1000:.1f} mm; stereo RMS {s.rms_px:.3f} px; {len(s.views)} joint views</p>"
                     f"<p>epipolar error: visible {s.epipolar_px['visible']['mean']:.3f} px mean, lwir {s.epipolar_px['lwir']['mean']:.3f} px mean</p>")
    if run.consistency is not None:
        parts.append(consistency_section(run))
        c = run.consistency
        stat = {p.view: (p.mahalanobis if c.mahalanobis_threshold is not None else p.rotation_deg) for p in c.pairs}
        thr = c.mahalanobis_threshold if c.mahalanobis_threshold is not None else c.rotation_threshold_deg
        unit = "Mahalanobis distance" if c.mahalanobis_threshold is not None else "rotation deviation (deg)"
        fig("pair_consistency.png",
            plots.per_view_bars(stat, "pairs", thr if np.isfinite(thr) else None, title="pair consistency",
                                y_label=unit, highlight={p.view for p in c.inconsistent},
                                line_label=f"line: limit {thr:.2f}" if np.isfinite(thr) else None),
            f"Per pair: its relative pose's deviation from the robust rig estimate ({unit}); red: left out of the "
            "extrinsics.")
    if run.homography is not None:
        h = run.homography
        ho = run.held_out
        where = ("fitted to the board corners (RANSAC): no plane distance" if h.method == "ransac"
                 else f"working plane {h.plane_distance_m:g} m ({h.plane_source})")
        parts.append(f"<h2>Homography LWIR &rarr; visible (undistorted pixels)</h2><p>stored: <b>{h.method}</b>, {where}</p><table><tr><th>held-out boards</th><th>mean px</th><th>RMS px</th>"
                     f"<th>mean px at output</th></tr>")
        for k in ("plane", "ransac"):
            parts.append(f"<tr><td>{k}</td><td>{ho[k]['mean_px']:.2f}</td><td>{ho[k]['rms_px']:.2f}</td><td>{ho[k]['mean_out_px']:.2f}</td></tr>")
        parts.append(f"</table><p>better on held-out boards: <b>{ho['better']}</b> (boards are near; the plane homography is "
                     f"exact only at the working plane, {run.homography.plane_distance_m:g} m)</p>")
        parts.append("<h3>Parallax: misregistration at the output for objects at distance</h3><table><tr><th>distance</th><th>mean px</th><th>max px</th></tr>")
        for z, e in (run.parallax or {}).items():
            parts.append(f"<tr><td>{'infinity' if math.isinf(z) else f'{z:g} m'}</td><td>{e['mean']:.2f}</td><td>{e['max']:.2f}</td></tr>")
        parts.append("</table>")
        if run.registration is not None:
            x, y, w, hh = run.registration.crop
            parts.append(f"<p>registration crop (visible undistorted px): x {x:.0f}, y {y:.0f}, {w:.0f}x{hh:.0f} &rarr; "
                         f"{run.registration.output_size[0]}x{run.registration.output_size[1]}</p>")
        if run.source is not None and run.stereo is not None:
            name = run.stereo.views[len(run.stereo.views) // 2]
            vi, li = run.source.load(name, "visible"), run.source.load(name, "lwir")
            pc = plane_check(run, cal, name)
            if vi is not None and li is not None and pc is not None:
                board_caption, work_caption = blend_captions(pc)
                img("checker_blend.png", checker_blend(vi, li, cal, pc.H_board), board_caption)
                img("checker_blend_working_plane.png", checker_blend(vi, li, cal), work_caption)
    if cal is not None and cal.cameras and not error:
        try:
            write_ply(run, cal, folder / "rig.ply")
            parts.append("<p>3D: <code>rig.ply</code> (board corners and frustum corners) and <code>rig_frusta.ply</code> (frusta lines).</p>")
        except Exception as exc:  # open3d I/O problems must not lose the report
            parts.append(f"<p class='warn'>rig.ply not written: {html.escape(str(exc) or type(exc).__name__)}</p>")
    if run.timings:
        parts.append("<p>time: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items()) + "</p>")
    parts.append("</body></html>")
    path = folder / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
