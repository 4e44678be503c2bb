"""``rig record`` and ``rig emulate ...``: capture-stage sub-commands (thin: the work is in the recorder modules)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from rig.errors import RigError


def register(subparsers) -> None:
    _register_record(subparsers)
    emulate = subparsers.add_parser(
        "emulate",
        help="run a device emulator (for dry runs without hardware)",
        description="Run a device emulator on a pseudo-terminal and print its port.",
    )
    devices = emulate.add_subparsers(dest="device", metavar="DEVICE", required=True)
    boson = devices.add_parser(
        "boson",
        help="FLIR Boson serial-protocol emulator",
        description=(
            "Emulate a FLIR Boson's serial control port on a pseudo-terminal. Point a rig file's "
            "boson.serial_port at the printed path and leave video_device out: the driver then "
            "delivers emulated 16-bit frames, so 'rig record' can dry-run. Stop with Ctrl-C."
        ),
    )
    boson.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="reply faults: rates per reply, e.g. 'garbage=0.05,drop=0.02,bad-crc=0.05,stale=0.02', "
        "and 'ffc-stall' (same as --stall-during-ffc)",
    )
    boson.add_argument("--stall-during-ffc", action="store_true", help="hold replies back while an FFC runs")
    boson.add_argument("--fps", type=float, default=60.0, help="frame counter rate (default 60)")
    boson.add_argument("--ffc-period", type=float, default=180.0, metavar="S", help="seconds between automatic FFCs")
    boson.add_argument("--seed", type=int, default=0, help="random seed for faults")
    boson.add_argument("--duration", type=float, default=None, metavar="S", help="exit after S seconds")
    boson.set_defaults(handler=_emulate_boson)


def _emulate_boson(args: argparse.Namespace) -> int:
    from rig.capture.boson_emulator import BosonEmulator, FaultPlan

    try:
        plan = FaultPlan.parse(args.faults)
    except ValueError as exc:
        raise RigError(f"--faults: {exc}") from None
    emu = BosonEmulator(
        fps=args.fps,
        auto_ffc_period_s=args.ffc_period,
        stall_during_ffc=args.stall_during_ffc,
        faults=plan,
        seed=args.seed,
    )
    with emu:
        print(emu.port, flush=True)
        faults = ", ".join(f"{f.value}={p:g}" for f, p in plan.rates.items()) or "none"
        print(f"Boson emulator running (faults: {faults}); Ctrl-C to stop", file=sys.stderr, flush=True)
        end = None if args.duration is None else time.monotonic() + args.duration
        try:
            while end is None or time.monotonic() < end:
                time.sleep(0.1)
        except KeyboardInterrupt:
            pass
        s = emu.stats
        print(f"requests {s.requests}, replies {s.replies}, faults {s.faults or 'none'}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- rig record
def _register_record(subparsers) -> None:
    rec = subparsers.add_parser(
        "record",
        help="record a drive or calibration views into a session",
        description=(
            "Record every camera of the rig into a session directory (see 'rig session info'). "
            "--drive records everything until Ctrl-C or --duration; --calibration keeps only still board "
            "views that add coverage, until coverage is sufficient. Without --rig the simulated rig is used."
        ),
        epilog=(
            "Exit status (--drive): 0 complete; 1 stopped because the disk reserve was reached; 2 an error "
            "(one line on stderr); 3 degraded: the session was recorded but a camera was down for part of "
            "the run or the GPS failed (manifest status 'degraded'; the outages are printed and kept in the "
            "manifest's stats)."
        ),
    )
    mode = rec.add_mutually_exclusive_group(required=True)
    mode.add_argument("--drive", action="store_true", help="record a drive (all frames)")
    mode.add_argument("--calibration", action="store_true", help="record calibration views of a board")
    rec.add_argument("--rig", default="sim", help="rig YAML file or shipped rig name (default: sim)")
    rec.add_argument("--out", type=Path, default=None, help="session directory (default: drive-/calib-TIMESTAMP)")
    rec.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    rec.add_argument("--reserve-mb", type=float, default=1024.0, metavar="MB",
                     help="stop cleanly when free disk space would fall below this (default 1024)")
    rec.add_argument("--plain", action="store_true", help="plain status lines instead of the live dashboard")
    rec.add_argument("--variant", default="day", choices=("day", "night", "fog"), help="sim rig: scene conditions")
    rec.add_argument("--seed", type=int, default=0, help="sim rig: scene / board plan seed")
    drive = rec.add_argument_group("drive")
    drive.add_argument("--gps", default=None, metavar="PORT", help="NMEA GPS serial port (RMC/GGA logged as events)")
    drive.add_argument("--gps-baud", type=int, default=9600, help="GPS baud rate (default 9600)")
    drive.add_argument("--ffc-interval", type=float, default=None, metavar="S",
                       help="run a flat-field correction on the LWIR camera every S seconds")
    drive.add_argument("--ffc-when-stopped", action="store_true",
                       help="run an FFC when GPS says the vehicle stands still (needs --gps)")
    drive.add_argument("--queue", type=int, default=32, metavar="N", help="frames buffered per camera (default 32)")
    cal = rec.add_argument_group("calibration")
    cal.add_argument("--board", default="ir_board", help="board YAML file or shipped board name (default ir_board)")
    cal.add_argument("--max-views", type=int, default=None,
                     help=f"stop after keeping this many views (default {DEFAULT_MAX_VIEWS})")
    cal.add_argument("--min-views", type=int, default=None,
                     help=f"views needed before coverage can be sufficient (default {DEFAULT_MIN_VIEWS})")
    rec.set_defaults(handler=_record)


DEFAULT_MIN_VIEWS = 15
DEFAULT_MAX_VIEWS = 40


def view_limits(min_views: int | None, max_views: int | None) -> tuple[int, int]:
    """``--min-views`` / ``--max-views`` with their defaults, checked (a one-line RigError naming the defaults used)."""
    lo = DEFAULT_MIN_VIEWS if min_views is None else min_views
    hi = DEFAULT_MAX_VIEWS if max_views is None else max_views
    if lo < 1:
        raise RigError(f"--min-views must be at least 1, got {lo}")
    if hi < lo:
        why = [f"--min-views defaults to {DEFAULT_MIN_VIEWS}"] if min_views is None else []
        why += [f"--max-views defaults to {DEFAULT_MAX_VIEWS}"] if max_views is None else []
        note = f" ({'; '.join(why)})" if why else ""
        raise RigError(f"--max-views {hi} is below --min-views {lo}{note}: give --min-views {hi} or less, "
                       f"or a larger --max-views")
    return lo, hi


def _check_record_args(args: argparse.Namespace) -> None:
    """Every check that needs no device and no rendering, so a typo fails before minutes of work."""
    if args.duration is not None and args.duration <= 0:
        raise RigError(f"--duration must be positive, got {args.duration:g}")
    if args.reserve_mb < 0:
        raise RigError(f"--reserve-mb must not be negative, got {args.reserve_mb:g}")
    if args.calibration:
        args.min_views, args.max_views = view_limits(args.min_views, args.max_views)
        return
    if args.ffc_when_stopped and not args.gps:
        raise RigError("--ffc-when-stopped needs --gps (the vehicle's speed comes from GPS)")
    if args.ffc_interval is not None and args.ffc_interval <= 0:
        raise RigError(f"--ffc-interval must be positive, got {args.ffc_interval:g}")
    if args.queue < 1:
        raise RigError(f"--queue must be at least 1 frame, got {args.queue}")
    if args.gps_baud <= 0:
        raise RigError(f"--gps-baud must be positive, got {args.gps_baud}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RigError("already exists and is not empty; choose another --out or remove it", path=out)


def _record(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rig.rigconfig import load_rig

    _check_record_args(args)
    rig = load_rig(args.rig)
    if any(c.driver == "sim" for c in rig.cameras) and not all(c.driver == "sim" for c in rig.cameras):
        raise RigError("a rig cannot mix simulated and real cameras", path=rig.source)
    board = None
    if args.calibration:
        from rig.boards import load_board

        board = load_board(args.board)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(f"{'calib' if args.calibration else 'drive'}-{stamp}")
    _check_out(out)
    console = Console(stderr=False)
    if args.calibration:
        return _record_calibration(args, rig, board, out, console)
    return _record_drive(args, rig, out, console)


def _prepare_progress(console, what: str):
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from rig.terminal import progress as progress_bar

    progress = progress_bar(TextColumn(what), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=console)
    return progress


def _sim_drive_cameras(args, rig, console):
    from rig.capture.sim_camera import sim_cameras_for_drive

    if not all(c.driver == "sim" for c in rig.cameras):
        return None  # real cameras: the recorder builds them from the rig
    progress = _prepare_progress(console, "rendering the simulated drive")
    with progress:
        task = progress.add_task("render", total=None)
        cams = sim_cameras_for_drive(rig, seed=args.seed, variant=args.variant, ffc_interval_s=args.ffc_interval,
                                     progress=lambda done, total: progress.update(task, completed=done, total=total))
    if not console.is_terminal:
        print("simulated drive rendered", flush=True)
    return cams


def _install_sigterm(stop) -> None:
    try:
        signal.signal(signal.SIGTERM, lambda *_: stop())
    except ValueError:  # not the main thread (embedded use)
        pass


EXIT_DISK_FULL = 1
EXIT_DEGRADED = 3


def camera_lines(result) -> list[str]:
    """Per camera, short lines (they fit 80 columns): frames and rate, loss (as ``rig session info``), flags, outage."""
    lines = []
    for name, c in result.cameras.items():
        lines.append(f"{name}: {c.frames} frames, {c.fps_measured:.2f} fps (target {c.fps_target:g}), "
                     f"{c.bytes / 1e6:.0f} MB")
        queue = f" ({c.dropped_in_queue} in our queue)" if c.dropped_in_queue else ""
        lines.append(f"  lost {c.lost}{queue}, {c.gaps} timing gaps, {c.ffc_frames} in FFC, {c.unpaired} unpaired")
        if c.disconnects:
            tail = ", still down at the end" if c.down_at_end else ""
            lines.append(f"  down {c.down_s:.1f} s: {c.disconnects} disconnects, {c.reconnects} reconnects{tail}")
    return lines


def pairing_line(pairing: dict, frames: dict[str, int]) -> str:
    """``pairs: 300 (timestamp, window 16.7 ms); unpaired: visible 0 of 300, lwir 300 of 600``."""
    unpaired = ", ".join(f"{name} {n} of {frames.get(name, 0)}" for name, n in pairing["unpaired"].items())
    window = f", window {pairing['window_ns'] / 1e6:.1f} ms" if pairing["mode"] == "timestamp" else ""
    return f"pairs: {pairing['pairs']} ({pairing['mode']}{window}); unpaired: {unpaired}"


def _record_drive(args, rig, out: Path, console) -> int:
    from rig.capture.dashboard import Dashboard
    from rig.capture.recorder import Recorder

    cams = _sim_drive_cameras(args, rig, console)
    recorder = Recorder(rig, out, cams, queue_frames=args.queue, min_free_bytes=int(args.reserve_mb * (1 << 20)),
                        ffc_interval_s=args.ffc_interval if cams is None else None,
                        ffc_when_stopped=args.ffc_when_stopped, gps_port=args.gps, gps_baudrate=args.gps_baud)
    with recorder:
        _install_sigterm(lambda: recorder.request_stop("terminated", "stopped by SIGTERM"))
        print(f"recording to {out} ({'Ctrl-C to stop' if args.duration is None else f'{args.duration:g} s'})",
              flush=True)
        with Dashboard(console, live=False if args.plain else None) as dash:
            result = recorder.run(args.duration, on_status=dash.update)
    for line in camera_lines(result):
        print(line)
    if result.pairing:
        print(pairing_line(result.pairing, result.frames))
    if result.gps is not None:
        g = result.gps
        down = f", down {g['down_s']:.1f} s ({g['outages']} outages, {g['reopens']} reopens)" if g["outages"] else ""
        print(f"GPS: {g['fixes']} fixes, {g['bad']} bad sentences{down}")
    print(f"session {result.path}: {result.status} ({result.stop_reason})", flush=True)
    if result.stop_reason == "disk-full":
        console.print(f"[bold yellow]stopped: {result.message}[/]", highlight=False)
        return EXIT_DISK_FULL
    if result.stop_reason == "error":
        raise RigError(f"recording stopped: {result.message}")
    if result.status == "degraded":
        console.print(f"[bold yellow]degraded: {'; '.join(result.degraded)}[/]", highlight=False)
        return EXIT_DEGRADED
    return 0


def calibrate_command(session: Path, board: str, rig: str) -> str:
    """The ``rig calibrate`` command line for a recorded calibration session (runs as printed)."""
    import shlex

    argv = ["rig", "calibrate", "--session", str(session), "--board", board]
    if rig != "sim":
        argv += ["--rig", rig]
    return shlex.join(argv)


def _record_calibration(args, rig, board, out: Path, console) -> int:
    from rig.calibration.record import CalibrationRecorder, CoverageGoal
    from rig.capture.sim_camera import sim_cameras_for_board

    goal = CoverageGoal(min_views=args.min_views, max_views=args.max_views)
    cams = None
    if all(c.driver == "sim" for c in rig.cameras):
        progress = _prepare_progress(console, "rendering the simulated board plan")
        with progress:
            task = progress.add_task("render", total=None)
            cams = sim_cameras_for_board(rig, board, seed=args.seed,
                                         progress=lambda d, t: progress.update(task, completed=d, total=t))
    recorder = CalibrationRecorder(rig, board, out, cams, goal=goal,
                                   min_free_bytes=int(args.reserve_mb * (1 << 20)))
    with recorder:
        _install_sigterm(lambda: recorder.request_stop("terminated"))
        print(f"recording calibration views of {board.type} {board.cols}x{board.rows} to {out}", flush=True)
        result = recorder.run(args.duration, on_status=_calib_printer(console, args.plain))
    rejected = ", ".join(f"{k} {v}" for k, v in result.rejected.items())
    print(f"kept {result.kept} views of {result.analysed} analysed (rejected: {rejected})")
    print("coverage: " + ", ".join(f"{k} {v:.0%} of cells, {result.area.get(k, 0):.0%} of area"
                                   for k, v in result.coverage.items()))
    print(f"{result.tilted} tilted views; {'sufficient' if result.sufficient else 'NOT sufficient'} "
          f"({result.stop_reason})")
    print(f"session {result.path}; calibrate it with:", flush=True)
    print(f"  {calibrate_command(result.path, args.board, args.rig)}", flush=True)
    return 0 if result.sufficient else 1


def _calib_printer(console, plain: bool):
    from rig.calibration.record import status_line

    last = [0.0]

    def show(status) -> None:
        now = time.monotonic()
        if status.changed or now - last[0] > 5.0:
            last[0] = now
            print(status_line(status), flush=True)

    return show
