"""``rig register`` and ``rig register-and-fuse``."""

from __future__ import annotations

import argparse
from pathlib import Path


# rig.registration.warps.MODELS, spelt out so that building the parser imports no numpy (tested equal).
REFINE_MODELS = ("similarity", "rigid", "rotation", "affine")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("session", type=Path, help="recorded session directory")
    p.add_argument("--calibration", type=Path, help="calibration.yaml (default: the session's, then the rig's)")
    p.add_argument("--out", type=Path, help="output folder (default: SESSION-fmb next to the session)")
    p.add_argument("--workers", type=int, default=2, help="threads for decode, warp and encode (default 2)")
    p.add_argument("--every", type=int, default=1, metavar="K", help="register every K-th pair")
    p.add_argument("--force", action="store_true", help="overwrite another run's outputs in --out")
    p.add_argument("--contact-sheet", type=int, default=8, metavar="N", help="frames on the contact sheet (0: none)")
    p.add_argument("--refine", action="store_true",
                   help="measure the residual LWIR misalignment per pair (targetless), smooth it over the drive and "
                        "correct it inside the same remap; frames.jsonl and manifest.yaml record it")
    p.add_argument("--refine-rate", type=float, default=None, metavar="HZ",
                   help="with --refine: estimates per second of drive, the others take the smoothed trend "
                        "(default 5; fewer are faster and follow a drift less closely)")
    p.add_argument("--refine-every", type=int, default=0, metavar="K",
                   help="with --refine: estimate every K-th registered pair instead of --refine-rate (default 0: "
                        "use the rate)")
    p.add_argument("--refine-model", choices=REFINE_MODELS, default="rotation",
                   help="with --refine: the correction's warp; rotation (default): a turn of the LWIR camera about its "
                        "centre (flex, vibration, a bumped mount; keystone included); similarity or affine also for a "
                        "lens that zooms or refocuses; rigid: shift and roll")


def register(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("register", help="session -> registered 800x600 visible/LWIR pairs (FMB layout)")
    _common(reg)
    reg.set_defaults(handler=lambda a: run(a, fuse=False))
    fuse = sub.add_parser("register-and-fuse", help="register, then SegMiF fuse + segment every pair")
    _common(fuse)
    fuse.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    fuse.add_argument("--model", type=Path, help="SegMiF checkpoint (default: the bundled CPU weights); "
                                                 "manifest.yaml records its sha256")
    fuse.add_argument("--batch", type=int, default=2, help="pairs per model batch (default 2)")
    fuse.add_argument("--fusion", default="segmif", choices=("segmif", "average", "max", "laplacian"),
                      help="segmif: fuse and segment with the model (default); average, max, laplacian: a classical "
                           "fusion only (no model, no Label/ or Color/), for users without the weights or the time")
    fuse.add_argument("--no-segmentation", dest="segmentation", action="store_false",
                      help="with --fusion segmif: fuse with the model but skip its segmentation head (Fusion/ only, "
                           "no Label/ or Color/; faster)")
    fuse.set_defaults(handler=lambda a: run(a, fuse=True))


def run(args: argparse.Namespace, fuse: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from rig.errors import RigError
    from rig.registration.correction import RefineSettings
    from rig.registration.pipeline import RegisterOptions, register_session
    from rig.terminal import progress as progress_bar

    if args.refine_every < 0:
        raise RigError(f"--refine-every must be >= 0 (0: use --refine-rate), got {args.refine_every}")
    rate = RefineSettings.rate_hz if args.refine_rate is None else args.refine_rate
    if not rate > 0:
        raise RigError(f"--refine-rate must be > 0 (estimates per second of drive), got {rate:g}")
    refine = RefineSettings(every=args.refine_every, rate_hz=rate, model=args.refine_model) if args.refine else None
    options = RegisterOptions(refine=refine,
                              out=args.out, calibration=args.calibration, workers=args.workers, every=args.every,
                              force=args.force, fuse=fuse, device=getattr(args, "device", "cpu"),
                              model_path=getattr(args, "model", None), batch_size=getattr(args, "batch", 2),
                              contact_sheet_frames=args.contact_sheet, fusion=getattr(args, "fusion", "segmif"),
                              segmentation=getattr(args, "segmentation", True))
    console = Console(stderr=True)
    with progress_bar(TextColumn("[bold]register" + ("+fuse" if fuse else "")), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("pairs", total=None)

        def progress(advance: int, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, advance)

        result = register_session(args.session, options, progress=progress)
    report(result, Console())
    return 0


def report(result, console) -> None:
    console.print(f"[bold green]{result.written}[/] pairs written to [bold]{result.out}[/] "
                  f"({result.already_done} already done, {result.skipped_ffc} skipped during FFC, unpaired frames: "
                  + ", ".join(f"{k} {v}" for k, v in result.unpaired.items()) + f") in {result.seconds:.1f} s "
                  f"({result.pairs_per_second:.1f} pairs/s)", highlight=False)
    for c in result.corrupt:
        console.print(f"[yellow]skipped corrupt pair {c['index']}: {c['problem']}[/]", highlight=False)
    if result.refine:
        r = result.refine
        style = "bold red" if r["drift"]["drifting"] else "green"
        console.print(f"refine: correction median {r['applied_px']['median']:.2f} px, max {r['applied_px']['max']:.2f} px, "
                      f"{100 * r['accepted_fraction']:.0f} % of {r['estimated_pairs']} estimates accepted"
                      + "".join(f", {n} refused: {why}" for why, n in list(r.get("refused", {}).items())[:2])
                      + f"; [{style}]{r['drift']['message']}[/]", highlight=False)
    if result.labels_note:
        console.print(f"[yellow]note: {result.labels_note}[/]", highlight=False)
    if result.contact_sheet:
        console.print(f"contact sheet: {result.contact_sheet}", highlight=False)
