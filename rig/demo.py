"""``rig demo``: the whole chain on the simulated rig, in one command.

1. ``rig calibrate --board ir_board`` on the sim (the board moves through a pose plan);
2. ``rig record --drive`` a short simulated drive;
3. ``rig register-and-fuse`` the recording with that calibration and the bundled model;
4. print where to look.

Each step runs the same code path as its own command, so the demo's folders are
exactly what a user gets from the individual commands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="calibrate, record and register-and-fuse on the simulated rig (a few minutes)")
    p.add_argument("--out", type=Path, default=Path("rig-demo"), help="folder for everything (default ./rig-demo)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of simulated drive (default 4)")
    p.add_argument("--views", type=int, default=30, help="calibration board views (default 30)")
    p.add_argument("--variant", choices=("day", "night", "fog"), default="night",
                   help="drive conditions (default night: where LWIR helps most)")
    p.add_argument("--every", type=int, default=3, help="fuse every K-th pair (default 3)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo in --out")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.rule import Rule

    from rig.cli import main
    from rig.errors import RigError

    console = Console(highlight=False)
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not args.force:
            raise RigError("already holds a demo; pass --force to replace it or choose another --out", path=out)
        import shutil

        shutil.rmtree(out)
    cal_dir, session, fmb = out / "calibration", out / "session", out / "fmb"
    steps = [
        ("calibrate the simulated rig", ["calibrate", "--board", "ir_board", "--views", str(args.views), "--out", str(cal_dir)]),
        (f"record a {args.duration:g} s {args.variant} drive", ["record", "--drive", "--duration", str(args.duration),
                                                               "--variant", args.variant, "--out", str(session)]),
        ("register, fuse and segment", ["register-and-fuse", str(session), "--calibration", str(cal_dir / "calibration.yaml"),
                                        "--out", str(fmb), "--every", str(args.every)]),
    ]
    t_all = time.perf_counter()
    for i, (title, argv) in enumerate(steps, 1):
        console.print(Rule(f"[bold]{i}/{len(steps)}  {title}[/]   rig {' '.join(argv)}"))
        t0 = time.perf_counter()
        rc = main(argv)
        if rc != 0:
            console.print(f"[red]step {i} failed (exit {rc}); later steps skipped[/]")
            return rc
        console.print(f"[dim]step {i} took {time.perf_counter() - t0:.0f} s[/]")
    console.print(Rule("[bold green]done[/]"))
    console.print(f"finished in {time.perf_counter() - t_all:.0f} s. Where to look:")
    for what, path in (("calibration report", cal_dir / "report.html"), ("calibration", cal_dir / "calibration.yaml"),
                       ("recording", session), ("FMB-layout data set", fmb), ("contact sheet", fmb / "contact_sheet.html")):
        console.print(f"  {what:<20} {path}")
    console.print(f"  {'inspect recording':<20} rig session info {session}")
    console.print("  (the contact sheet shows visible | LWIR | overlay | fused | segmentation per frame)")
    return 0
