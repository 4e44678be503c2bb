"""``rig calibrate``: parse the arguments, call :func:`rig.calibration.workflow.calibrate`, print a summary."""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

from rig.errors import RigError


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="intrinsics, LWIR->visible extrinsics and homography, with a report",
        description="Calibrate the rig's cameras from views of a board. Without --session/--images the simulated "
                    "rig is calibrated (the board moves through a pose plan). Results accumulate in calibration.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--board", required=True, help="board YAML file or shipped board name (ir_board, vis_board)")
    p.add_argument("--rig", default=None, help="rig YAML file or shipped rig name (default: sim)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--session", type=Path, help="recorded session directory")
    src.add_argument("--images", action="append", metavar="CAMERA=DIR",
                     help="image folder per camera (visible=DIR, lwir=DIR); pairs matched by file name (without a "
                          "suffix or prefix every name of a folder has, such as _left / _thermal)")
    p.add_argument("--cameras", help="comma-separated cameras whose intrinsics to compute (default: all with views); "
                                     "the others are taken from the existing calibration ('none': all of them, "
                                     "the extrinsics only)")
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


def _plane(value: str) -> str | float:
    if value in ("rig", "data"):
        return value
    try:
        plane = float(value)
    except ValueError:
        raise RigError(f"--plane expects 'rig', 'data' or a distance in metres, got '{value}'") from None
    if not plane > 0:
        raise RigError(f"--plane distance must be > 0, got {plane:g}")
    return plane


def _cameras(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    if value.strip().lower() == "none":
        return ()
    cams = tuple(c.strip() for c in value.split(","))
    for c in cams:
        if c not in ("visible", "lwir"):
            raise RigError(f"--cameras: unknown camera '{c}' (cameras are named by role: visible, lwir)")
    return cams


def _request(args):
    """The :class:`~rig.calibration.workflow.CalibrateRequest` the arguments describe (validated)."""
    from rig.boards import load_board
    from rig.calibration import sources
    from rig.calibration.intrinsics import IntrinsicsOptions
    from rig.calibration.pipeline import CalibrateOptions
    from rig.calibration.workflow import CalibrateRequest
    from rig.rigconfig import load_rig

    board = load_board(args.board)
    rig = load_rig(args.rig or "sim")
    if args.views < 1:
        raise RigError(f"--views must be >= 1, got {args.views}")
    plane = _plane(args.plane)
    cams = _cameras(args.cameras)
    if args.fix_aspect and args.model != "pinhole":
        raise RigError("--fix-aspect applies to the pinhole model only (cv2.fisheye has no fixed aspect ratio)")
    if args.render_workers is not None and args.render_workers < 1:
        raise RigError(f"--render-workers must be >= 1, got {args.render_workers}")
    options = CalibrateOptions(intrinsics=IntrinsicsOptions(model=args.model, rational=args.rational,
                                                            fix_aspect_ratio=args.fix_aspect),
                               intrinsics_for=cams, plane=plane, rig_plane_distance_m=rig.plane_distance_m,
                               homography=args.homography, output_size=tuple(rig.output_size))
    images = sources.parse_images_args(args.images) if args.images else None
    return CalibrateRequest(board, rig, options, session=args.session, images=images, views=args.views, seed=args.seed,
                            max_views=args.max_views, render_workers=args.render_workers, out=args.out,
                            report=not args.no_report, rig_given=args.rig is not None)


def run_calibrate(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rig.calibration.pipeline import CalibrationError
    from rig.calibration.workflow import calibrate

    console = Console(stderr=True, highlight=False)
    req = _request(args)
    labels = {"render": f"rendering {req.views} sim views", "detect": "detecting boards", "solve": "calibrating"}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as prog:
        tasks: dict[str, int] = {}

        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = prog.add_task(labels.get(task, task), total=total or None)
            prog.update(tasks[task], completed=done, total=total or None)

        try:
            outcome = calibrate(req, progress)
        except CalibrationError as exc:
            if exc.report is not None:
                console.print(f"partial report: {exc.report}", soft_wrap=True)
            raise
    _summary(console, outcome)
    return 0


# --------------------------------------------------------------------------- printing
_NBSP = "\u00a0"
_NUMBER_UNIT = re.compile(r"(\d) (px|mm|m|s|%|deg)\b")


def _wrap(text: str, width: int, indent: int = 2) -> str:
    """``text`` folded at word boundaries to ``width``, continuation lines indented.

    Words (paths) are never split, nor a number from its unit.
    """
    glued = _NUMBER_UNIT.sub(lambda m: m.group(1) + _NBSP + m.group(2), text)
    return textwrap.fill(glued, width=max(20, width), subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False).replace(_NBSP, " ")


def _pack(prefix: str, items: list[str], width: int, indent: int = 2) -> str:
    """``prefix item, item, ...`` folded between items to ``width`` (an item, or the prefix, is never split)."""
    lines, line = [], prefix
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line.strip() and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = " " * indent + piece
        else:
            line = f"{line} {piece}" if line else piece
    lines.append(line)
    return "\n".join(lines)


def _say(console, text: str, label: str | None = None, style: str = "") -> None:
    """Print one message folded to the console width (``label`` styled, e.g. ``warning:``)."""
    from rich.text import Text

    head = f"{label} " if label else ""
    out = Text(_wrap(head + text, console.width))
    if label and style:
        out.stylize(style, 0, len(label))
    console.print(out, soft_wrap=True)


def _written(paths: list[Path]) -> list[tuple[Path, list[str]]]:
    """``(folder, file names)``: the files grouped by folder, so each folder is named once."""
    groups: dict[Path, list[str]] = {}
    for p in paths:
        groups.setdefault(p.parent, []).append(p.name)
    return list(groups.items())


def describe_homography(h) -> str:
    """What the stored homography is: a plane-induced one has a plane distance, a RANSAC one does not."""
    if h.method == "ransac":
        return "ransac (fitted to the board corners: no plane distance)"
    return f"plane at {h.plane_distance_m:g} m ({h.plane_source})"


def _summary(console, outcome) -> None:
    run = outcome.run
    width = console.width
    for cam, recs in run.records.items():
        console.print(f"{cam}: board found in {run.detected(cam)}/{sum(r.status != 'missing' for r in recs)} images")
    for cam, r in run.intrinsics.items():
        if r.residuals:
            _say(console, f"{cam}: fx {r.K[0, 0]:.2f} fy {r.K[1, 1]:.2f} cx {r.K[0, 2]:.2f} cy {r.K[1, 2]:.2f} "
                          f"RMS {r.rms_px:.3f} px, {len(r.views)} views")
    if run.stereo is not None:
        s = run.stereo
        _say(console, f"extrinsics lwir->visible: baseline {s.baseline_m * 1000:.1f} mm, RMS {s.rms_px:.3f} px, "
                      f"epipolar {s.epipolar_px['visible']['mean']:.3f} px")
    if run.homography is not None:
        ho = run.held_out
        _say(console, f"homography: stored {describe_homography(run.homography)}; held-out "
                      f"boards: plane {ho['plane']['mean_px']:.2f} px, ransac {ho['ransac']['mean_px']:.2f} px")
    for cam, chk in ((run.bundle or {}).get("checks") or {}).items():
        _say(console, f"{cam}: RMS own fit {chk['own_rms_px']:.3f} px, joint {chk['joint_rms_px']:.3f} px; kept: {chk['kept']}")
    if run.consistency is not None and run.stereo is not None:
        bad = run.consistency.inconsistent
        _say(console, f"pairs: {len(run.stereo.views)} of {len(run.consistency.pairs)} consistent, used for the extrinsics"
                      + (f"; left out: {', '.join(p.view for p in bad)}" if bad else ""))
    for n in run.notes:
        _say(console, n, "note:", "cyan")
    for w in run.warnings:
        _say(console, w, "warning:", "yellow")
    files = [outcome.paths.calibration, *outcome.exports.paths()] + ([outcome.report] if outcome.report else [])
    for folder, names in _written(files):
        console.print(_pack(f"wrote to {folder}:", names, width), soft_wrap=True)
    console.print(_pack("time:", [f"{k} {v:.1f} s" for k, v in run.timings.items()], width), soft_wrap=True)
