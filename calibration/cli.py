"""``rig calibrate``: thin CLI over :mod:`rig.calibration.pipeline`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="intrinsics, LWIR->visible extrinsics and homography, with a report",
        description="Calibrate the rig's cameras from views of a board. Without --session/--images the simulated "
                    "rig is calibrated (the board moves through a pose plan). Results accumulate in calibration.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--board", required=True, help="board YAML file or shipped board name (ir_board, vis_board)")
    p.add_argument("--rig", default="sim", help="rig YAML file or shipped rig name (default: sim)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--session", type=Path, help="recorded session directory")
    src.add_argument("--images", action="append", metavar="CAMERA=DIR",
                     help="image folder per camera (visible=DIR, lwir=DIR); pairs matched by file name")
    p.add_argument("--cameras", help="comma-separated cameras whose intrinsics to compute (default: all with views); "
                                     "the others are taken from the existing calibration")
    p.add_argument("--views", type=int, default=40, help="simulated rig: number of board views (default 40)")
    p.add_argument("--seed", type=int, default=0, help="simulated rig: pose plan and noise seed")
    p.add_argument("--max-views", type=int, default=60, help="session: use at most this many views (default 60)")
    p.add_argument("--model", choices=("pinhole", "fisheye"), default="pinhole", help="camera model (default pinhole)")
    p.add_argument("--rational", action="store_true", help="pinhole: rational distortion model (k4..k6)")
    p.add_argument("--fix-aspect", action="store_true",
                   help="pinhole: keep fx/fy fixed (square pixels: fx = fy), as OpenCV's CALIB_FIX_ASPECT_RATIO; "
                        "for cameras known to have square pixels, or to reproduce results published that way")
    p.add_argument("--render-workers", type=int, default=None,
                   help="simulated rig: processes rendering views (default: one per CPU core, at most 4)")
    p.add_argument("--plane", default="rig", help="working plane distance: 'rig' (rig file), 'data' (plane fit to the "
                                                   "boards) or metres (default: rig)")
    p.add_argument("--homography", choices=("plane", "ransac", "best"), default="plane",
                   help="which homography to store (default: plane-induced at the working plane)")
    p.add_argument("--out", type=Path, help="output folder (default: the rig's calibration path)")
    p.add_argument("--no-report", action="store_true", help="skip report.html and images")
    p.set_defaults(handler=run_calibrate)


def _outputs(args, rig) -> tuple[Path, Path]:
    """(calibration.yaml path, folder for report and exports)."""
    if args.out is not None:
        return args.out / "calibration.yaml", args.out
    yaml_path = Path(rig.calibration) if rig.calibration is not None else Path("calibration.yaml")
    return yaml_path, yaml_path.parent / f"{yaml_path.stem}_report"


def run_calibrate(args) -> int:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rig.boards import load_board
    from rig.calibration import pipeline as pl
    from rig.calibration import results, sources
    from rig.calibration.intrinsics import IntrinsicsOptions
    from rig.calibration.report import write_report
    from rig.errors import RigError
    from rig.rigconfig import load_rig

    console = Console(stderr=True, highlight=False)
    board = load_board(args.board)
    rig = load_rig(args.rig)
    if args.views < 1:
        raise RigError(f"--views must be >= 1, got {args.views}")
    plane: str | float = args.plane
    if plane not in ("rig", "data"):
        try:
            plane = float(plane)
        except ValueError:
            raise RigError(f"--plane expects 'rig', 'data' or a distance in metres, got '{args.plane}'") from None
        if not plane > 0:
            raise RigError(f"--plane distance must be > 0, got {plane:g}")
    cams = tuple(c.strip() for c in args.cameras.split(",")) if args.cameras else None
    for c in cams or ():
        if c not in ("visible", "lwir"):
            raise RigError(f"--cameras: unknown camera '{c}' (cameras are named by role: visible, lwir)")
    if args.fix_aspect and args.model != "pinhole":
        raise RigError("--fix-aspect applies to the pinhole model only (cv2.fisheye has no fixed aspect ratio)")
    if args.render_workers is not None and args.render_workers < 1:
        raise RigError(f"--render-workers must be >= 1, got {args.render_workers}")
    options = pl.CalibrateOptions(intrinsics=IntrinsicsOptions(model=args.model, rational=args.rational,
                                                               fix_aspect_ratio=args.fix_aspect),
                                  intrinsics_for=cams, plane=plane, rig_plane_distance_m=rig.plane_distance_m,
                                  homography=args.homography, output_size=tuple(rig.output_size))
    yaml_path, folder = _outputs(args, rig)
    for src_dir in ([args.session] if args.session else []) + [Path(v.split("=", 1)[-1]) for v in args.images or []]:
        try:
            if folder.resolve() == src_dir.resolve() or folder.resolve().is_relative_to(src_dir.resolve()):
                raise RigError("output folder is inside an input folder; inputs are never modified: choose another --out",
                               path=folder)
        except OSError:
            pass
    existing = results.load_calibration(yaml_path) if yaml_path.is_file() else None

    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        if args.session:
            source = sources.session_source(args.session, args.max_views)
        elif args.images:
            source = sources.folder_source(sources.parse_images_args(args.images))
        else:
            task = prog.add_task(f"rendering {args.views} sim views", total=args.views)
            render_stats: dict = {}
            source = sources.sim_source(rig, board, args.views, args.seed, workers=args.render_workers,
                                        progress=lambda k: prog.advance(task, k), stats=render_stats)
        det_task = prog.add_task("detecting boards", total=len(source.views) * len(source.cameras))
        run = pl.CalibrationRun(board, source)
        if not (args.session or args.images):  # the simulator's cost, reported apart from calibration's
            run.timings["render_s"] = render_stats["render_s"]
            run.timings["render_cpu_s"] = render_stats["render_cpu_s"]
        try:
            pl.detect_views(source, board, options, lambda _t, d, n: prog.update(det_task, completed=d), run)
            solve_task = prog.add_task("calibrating", total=None)
            pl.solve(run, options, existing, lambda _t, d, n: prog.update(solve_task, completed=d, total=n))
        except pl.CalibrationError as exc:
            if not args.no_report:
                try:
                    path = write_report(exc.partial or run, None, folder, error=str(exc))
                    console.print(f"partial report: {path}")
                except Exception:  # the one-line error matters more than the partial report
                    pass
            raise
    run.timings["total_s"] = time.perf_counter() - t_start
    if "render_s" in run.timings:  # what calibrating costs on recorded images: everything but the simulator
        run.timings["total_without_render_s"] = run.timings["total_s"] - run.timings["render_s"]
    cal = results.merge(existing, pl.build_calibration(run), pl.run_record(run, rig.name))
    results.save_calibration(cal, yaml_path)
    exports = results.write_exports(cal, folder)
    report = None if args.no_report else write_report(run, cal, folder)
    _summary(console, run, cal, yaml_path, exports, report)
    return 0


def _summary(console, run, cal, yaml_path, exports, report) -> None:
    for cam, recs in run.records.items():
        console.print(f"{cam}: board found in {run.detected(cam)}/{sum(r.status != 'missing' for r in recs)} images")
    for cam, r in run.intrinsics.items():
        if r.residuals:
            console.print(f"{cam}: fx {r.K[0, 0]:.2f} fy {r.K[1, 1]:.2f} cx {r.K[0, 2]:.2f} cy {r.K[1, 2]:.2f} "
                          f"RMS {r.rms_px:.3f} px, {len(r.views)} views")
    if run.stereo is not None:
        s = run.stereo
        console.print(f"extrinsics lwir->visible: baseline {s.baseline_m * 1000:.1f} mm, RMS {s.rms_px:.3f} px, "
                      f"epipolar {s.epipolar_px['visible']['mean']:.3f} px")
    if run.homography is not None:
        ho = run.held_out
        console.print(f"homography: stored {run.homography.method} at {run.homography.plane_distance_m:g} m; held-out boards: "
                      f"plane {ho['plane']['mean_px']:.2f} px, ransac {ho['ransac']['mean_px']:.2f} px -> {ho['better']} better")
    for w in run.warnings:
        console.print(f"[yellow]warning:[/] {w}", markup=True)
    console.print(f"wrote {yaml_path}, {exports['kalibr']}, {exports['opencv']}" + (f", {report}" if report else ""))
    console.print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items()))
