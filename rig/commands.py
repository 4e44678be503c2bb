"""Foundation sub-commands: ``rig board render``, ``rig check``, ``rig session info``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    board = sub.add_parser("board", help="calibration boards: render printable images")
    board_sub = board.add_subparsers(dest="board_command", metavar="ACTION")
    render = board_sub.add_parser("render", help="render a board at true scale for printing")
    render.add_argument("board", help="board YAML file, or the name of a shipped board (ir_board, vis_board)")
    render.add_argument("out", type=Path, help="output PNG")
    render.add_argument("--dpi", type=float, default=300.0, help="printer resolution (default 300)")
    render.set_defaults(handler=board_render)
    board.set_defaults(handler=lambda args: board.print_help() or 2)

    check = sub.add_parser("check", help="validate a rig file and list the cameras it can reach")
    check.add_argument("--rig", default="sim", help="rig YAML file or shipped rig name (default: sim)")
    check.add_argument("--no-connect", action="store_true", help="only validate the file, do not open cameras")
    check.set_defaults(handler=rig_check)

    session = sub.add_parser("session", help="inspect recorded sessions")
    session_sub = session.add_subparsers(dest="session_command", metavar="ACTION")
    info = session_sub.add_parser("info", help="frames per camera, duration, rates, loss, gaps and damage")
    info.add_argument("session", type=Path)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument("--verify", action="store_true",
                      help="CRC-check every frame; exit 1 and name the corrupt ones (reads the whole session)")
    info.set_defaults(handler=session_info)
    session.set_defaults(handler=lambda args: session.print_help() or 2)


def board_render(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rig.boards import load_board, write_png_with_dpi
    from rig.errors import RigError

    if args.dpi <= 0:
        raise RigError(f"--dpi must be positive, got {args.dpi:g}")
    board = load_board(args.board)
    img = board.render_printable(args.dpi)
    write_png_with_dpi(args.out, img, args.dpi)
    w_m, h_m = board.size_m()
    Console().print(f"wrote {args.out}: {board.type} {board.cols}x{board.rows}, {img.shape[1]}x{img.shape[0]} px, "
                    f"{w_m * 1000:.0f} x {h_m * 1000:.0f} mm at {args.dpi:g} dpi (print at 100 % scale)")
    return 0


def rig_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rig.capture.camera import make_camera
    from rig.rigconfig import load_rig
    from rig.terminal import table as make_table

    rig = load_rig(args.rig)
    console = Console()
    console.print(f"[bold]{rig.name}[/]: {rig.description or ''} ({rig.source})", highlight=False)
    rows = []
    failures = 0
    for spec in rig.cameras:
        status = "not checked"
        if not args.no_connect:
            try:
                with make_camera(spec) as cam:
                    info = cam.info()
                    status = f"[green]ok[/] {info.vendor} {info.model} s/n {info.serial}"
            except Exception as exc:  # noqa: BLE001 - any driver failure is reported per camera
                failures += 1
                status = f"[red]unreachable[/]: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        sync = spec.sync.mode + (f" (master {spec.sync.master})" if spec.sync.master else "")
        rows.append((spec.name, spec.role, spec.driver, f"{spec.pixel_format} {spec.width}x{spec.height}",
                     f"{spec.fps:g}", sync, status))
    table = make_table(("camera", "role", "driver", "format", "fps", "sync", "status"), rows, width=console.width)
    console.print(table)
    console.print(f"output {rig.output_size[0]}x{rig.output_size[1]}, working plane {rig.plane_distance_m:g} m, "
                  f"calibration {rig.calibration or '(none)'}", highlight=False)
    return 1 if failures else 0


def session_info(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from rig.session import SessionReader
    from rig.terminal import table as make_table

    with SessionReader(args.session) as reader:
        summary = reader.summary()
        corrupt = reader.verify() if args.verify else []
    if args.verify:
        summary["verified"] = {"frames": sum(c["frames"] for c in summary["cameras"].values()),
                               "corrupt": [str(c) for c in corrupt]}
    damaged = bool(corrupt) or any(c["corrupt"] for c in summary["cameras"].values())
    if args.json:
        print(json.dumps(summary, indent=2))
        return 1 if args.verify and damaged else 0
    console = Console()
    status = summary["status"]
    note = {"complete": "[green]complete[/]", "recording": "[yellow]not finalised (recorder killed or crashed)[/]",
            "aborted": "[red]aborted[/]", "degraded": "[yellow]degraded (an outage: see stats.outages)[/]"}.get(
                status, status)
    console.print(f"[bold]{summary['path']}[/]  rig {summary['rig']}  {summary['software']}  status {note}", highlight=False)
    # One column per camera, one row per figure: fits 80 columns for any number of figures.
    cams = summary["cameras"]
    figures = {
        "format": lambda n, c: c["format"],
        "frames": lambda n, c: str(c["frames"]),
        "duration": lambda n, c: f"{c['duration_s']:.2f} s",
        "fps measured (nominal)": lambda n, c: f"{c['fps_measured']:.2f} ({c['fps_nominal']:g})",
        "lost (by counter)": lambda n, c: str(c["lost"]),
        "  of which in our queues": lambda n, c: str(c["dropped_in_queue"]),
        "timing gaps": lambda n, c: str(c["gaps"]),
        "FFC frames": lambda n, c: str(c["ffc"]),
        "unpaired": lambda n, c: str(c["unpaired"]),
        "reconnects": lambda n, c: str(c["reconnects"]),
        "torn tail": lambda n, c: (f"{c['torn_tail_bytes']} B" if c["torn_tail_bytes"] else "-")
        + (f" ({c['recovered']} recovered)" if c["recovered"] else ""),
    }
    table = make_table(("", *cams), [(label, *(f(n, c) for n, c in cams.items())) for label, f in figures.items()],
                       width=console.width)
    console.print(table)
    for name, c in summary["cameras"].items():
        for problem in c["corrupt"]:
            console.print(f"[red]{name}: {problem}[/]")
    if summary["bad_event_lines"]:
        console.print(f"[yellow]events.jsonl: {summary['bad_event_lines']} unreadable line(s)[/]")
    if args.verify:
        for c in corrupt:
            console.print(f"[red]corrupt: {c}[/]", highlight=False)
        n = summary["verified"]["frames"]
        console.print(f"[red]verify: {len(corrupt)} of {n} frames corrupt[/]" if damaged
                      else f"[green]verify: all {n} frames intact (CRC-checked)[/]", highlight=False)
        return 1 if damaged else 0
    return 0
