"""``rig demo``: the whole chain on the simulated rig, in one command.

1. ``rig calibrate --board ir_board`` on the sim (the board moves through a pose plan);
2. ``rig record --drive`` a short simulated drive;
3. attach that calibration to the recording (copied into the session, named in its manifest);
4. ``rig register-and-fuse`` the recording with the bundled model (it finds the calibration itself);
5. print where to look.

``--force`` replaces an earlier demo only: the demo marks its folder with a
``.rig-demo`` file and never removes a folder without it.

Each step runs the same code path as its own command, so the demo's folders are
exactly what a user gets from the individual commands.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import time
from pathlib import Path

MARKER = ".rig-demo"  # written into every demo folder; --force removes only folders that carry it
DESCRIPTION = (
    "Run the whole chain on the simulated rig, with no hardware: calibrate both cameras against a board, "
    "record a short drive, then register, fuse and segment it with the bundled model. Everything goes into "
    "--out (calibration/, session/, fmb/); the end of the run prints where to look."
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="calibrate, record and register-and-fuse on the simulated rig (a few minutes)",
                       description=DESCRIPTION)
    p.add_argument("--out", type=Path, default=Path("rig-demo"), help="folder for everything (default ./rig-demo)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of simulated drive (default 4)")
    p.add_argument("--views", type=int, default=30, help="calibration board views (default 30)")
    p.add_argument("--variant", choices=("day", "night", "fog"), default="night",
                   help="drive conditions (default night: where LWIR helps most)")
    p.add_argument("--every", type=int, default=3, help="fuse every K-th pair (default 3)")
    p.add_argument("--force", action="store_true",
                   help=f"replace an earlier demo in --out (only a folder holding the demo's {MARKER} marker)")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.rule import Rule
    from rich.text import Text

    from rig.cli import main
    from rig.session import attach_calibration

    console = Console(highlight=False)
    out: Path = args.out
    prepare_out(out, args.force)
    cal_dir, session, fmb = out / "calibration", out / "session", out / "fmb"
    steps = [
        ("calibrate the simulated rig", ["calibrate", "--board", "ir_board", "--views", str(args.views), "--out", str(cal_dir)]),
        (f"record a {args.duration:g} s {args.variant} drive", ["record", "--drive", "--duration", str(args.duration),
                                                               "--variant", args.variant, "--out", str(session)]),
        ("register, fuse and segment", ["register-and-fuse", str(session), "--out", str(fmb), "--every", str(args.every)]),
    ]
    t_all = time.perf_counter()
    for i, (title, argv) in enumerate(steps, 1):
        console.print(Rule(f"[bold]{i}/{len(steps)}  {title}[/]"))
        console.print(Text("$ rig " + shlex.join(argv), style="dim"), soft_wrap=True)  # never cut: it can be copied
        t0 = time.perf_counter()
        rc = main(argv)
        if rc != 0:
            console.print(f"[red]step {i} failed (exit {rc}); later steps skipped[/]")
            return rc
        if argv[0] == "record":
            copy = attach_calibration(session, cal_dir / "calibration.yaml")
            console.print(f"calibration attached to the session: {copy}", soft_wrap=True)
        console.print(f"[dim]step {i} took {time.perf_counter() - t0:.0f} s[/]")
    console.print(Rule("[bold green]done[/]"))
    console.print(f"finished in {time.perf_counter() - t_all:.0f} s. Where to look:")
    for what, path in (("calibration report", cal_dir / "report.html"), ("calibration", cal_dir / "calibration.yaml"),
                       ("recording", session), ("FMB-layout data set", fmb), ("contact sheet", fmb / "contact_sheet.html")):
        console.print(f"  {what:<20} {path}", soft_wrap=True)
    console.print(f"  {'inspect recording':<20} rig session info {session}", soft_wrap=True)
    console.print(f"  {'register again':<20} rig register {session} --out {out / 'registered'} --every {args.every}",
                  soft_wrap=True)
    console.print("  (the contact sheet shows visible | LWIR | overlay | fused | segmentation per frame)")
    return 0


def prepare_out(out: Path, force: bool) -> None:
    """Make ``out`` an empty demo folder carrying the marker; remove an earlier demo only with ``force``.

    A folder is removed only if it carries :data:`MARKER` (a previous demo wrote it) and does not
    contain the working directory; anything else is refused with one line.
    """
    from rig.errors import RigError

    if out.exists() and not out.is_dir():
        raise RigError("exists and is not a folder; choose another --out", path=out)
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RigError(f"is not empty and was not written by 'rig demo' (no {MARKER} marker): "
                           "choose another --out; it is never removed", path=out)
        if not force:
            raise RigError("already holds a demo; pass --force to replace it or choose another --out", path=out)
        if Path.cwd().resolve().is_relative_to(out.resolve()):
            raise RigError("holds the working directory; run the demo from elsewhere or choose another --out",
                           path=out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by 'rig demo'; 'rig demo --force' may replace this folder\n")
