"""``rig emulate ...`` (and, later, ``rig record``): capture-stage sub-commands."""

from __future__ import annotations

import argparse
import sys
import time

from rig.errors import RigError


def register(subparsers) -> None:
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
