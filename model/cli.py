"""``rig train`` and ``rig eval``: train SegMiF, evaluate a model.

Torch is imported inside the handlers so that ``rig --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rig.errors import RigError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return w, h


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help once, and only where the default says something.

    Left out: positionals, ``None``/``False``/empty defaults (flags, required
    or repeatable options) and help texts that already describe their default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "(default" in text or "%(default)" in text or default is argparse.SUPPRESS
                or default is None or default is False or default == []):
            return text
        return f"{text} (default: %(default)s)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train SegMiF (interactive fusion + segmentation training)",
        description="Train SegMiF with the paper's alternating scheme: per round, segmentation iterations on the "
                    "fused images, then fusion iterations with dynamically weighted fusion + segmentation losses. "
                    "Multi-GPU: torchrun --nproc_per_node=N -m rig.cli train ...",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, logs, simulator cache)")
    p.add_argument("--model", default="cpu", help="model config: cpu, paper, segmif_b0..segmif_b5, tiny")
    p.add_argument("--classes", default="fmb", choices=("fmb", "mfnet"), help="class set: fmb (15) or mfnet (9)")
    p.add_argument("--data", action="append", default=[], metavar="ROOT",
                   help="labelled dataset (FMB, MSRS, MFNet layout or the rig's registered output); repeatable")
    p.add_argument("--unlabelled", action="append", default=[], metavar="ROOT",
                   help="unlabelled pairs, used in fusion iterations only (e.g. RoadScene); repeatable")
    p.add_argument("--split", default="train", help="split sub-folder of the datasets")
    p.add_argument("--sim", type=int, default=0, metavar="N", help="add N labelled simulator scenes")
    p.add_argument("--sim-size", type=_size, default="400x300", metavar="WxH", help="simulator render size")
    p.add_argument("--rounds", type=int, default=8, metavar="N",
                   help="interactive rounds (each: segmentation, then fusion iterations)")
    p.add_argument("--seg-iters", type=int, default=10_000, metavar="N", help="segmentation iterations per round")
    p.add_argument("--fusion-iters", type=int, default=5_000, metavar="N", help="fusion iterations per round")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="pairs per batch (per process)")
    p.add_argument("--crop", type=int, default=360, metavar="PX", help="random square crop size")
    p.add_argument("--seg-lr", type=float, default=8e-5, metavar="LR",
                   help="segmentation learning rate (Adam, poly decay after the warm-up)")
    p.add_argument("--seg-warmup-iters", type=int, default=3_000, metavar="N",
                   help="segmentation iterations of linear learning-rate warmup")
    p.add_argument("--fusion-lr", type=float, default=1e-4, metavar="LR",
                   help="fusion learning rate (Adam, poly decay)")
    p.add_argument("--grad-weight", type=float, default=100.0, metavar="ETA", help="η of the gradient term in L_f")
    p.add_argument("--dwa-window", type=int, default=50, metavar="N",
                   help="fusion iterations per dynamic-weight update")
    p.add_argument("--seed", type=int, default=0, help="random seed (initial weights, data order, crops)")
    p.add_argument("--workers", type=int, default=0, metavar="N", help="data loader worker processes")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads; 0 lets torch choose")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="iterations between OUT/last.pt saves")
    p.add_argument("--log-every", type=int, default=10, metavar="N", help="iterations between log lines")
    p.add_argument("--init", default=None, metavar="CKPT", help="start from these weights")
    p.add_argument("--pretrained-encoder", default=None, metavar="FILE",
                   help="initialise the encoder from NVlabs SegFormer ImageNet weights (mit_b0.pth ... mit_b5.pth, "
                        "matching the --model size), as the SegFormer and SegMiF authors train")
    p.add_argument("--class-weights", default="none", choices=("none", "sqrt"),
                   help="segmentation loss class weights: none, or sqrt(median frequency / frequency) of the "
                        "labelled pixels (rare classes such as poles, signs, people count more)")
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                   help="random resize range of the augmentation")
    p.add_argument("--unlabelled-part", default="all", choices=("all", "train", "held-back"),
                   help="which part of each --unlabelled set to use: all pairs, or the train / held-back part "
                        "of the deterministic split (sorted names; every third pair, from the third, is held back)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="also write the final weights (no training state) here")
    p.set_defaults(handler=run_train)

    e = subparsers.add_parser(
        "eval", help="evaluate SegMiF: segmentation mAcc/mIoU and fusion EN/SD/SF/SCD/MI/Qabf",
        description="Evaluate a model on a dataset. Segmentation metrics need labels; fusion metrics are compared, "
                    "on the same pairs and in one run, with the classical baselines (average, max-selection, "
                    "Laplacian pyramid), each raw and min-max stretched, so that no method wins by post-processing.",
        formatter_class=DefaultsHelpFormatter)
    e.add_argument("--weights", default=None, metavar="CKPT",
                   help="checkpoint to evaluate (default: the bundled weights)")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="ROOT", help="dataset root (FMB, MSRS, MFNet, rig output or visible/+infrared/)")
    src.add_argument("--sim", type=int, metavar="N", help="evaluate on N held-out simulator scenes")
    e.add_argument("--split", default="test", help="split sub-folder")
    e.add_argument("--layout", default="auto", help="dataset layout: auto, fmb, msrs, mfnet, roadscene")
    e.add_argument("--sim-size", type=_size, default="800x600", metavar="WxH", help="simulator render size")
    e.add_argument("--sim-seed", type=int, default=1_000_000, metavar="SEED",
                   help="first seed of the held-out simulator scenes")
    e.add_argument("--sim-cache", default=None, metavar="DIR",
                   help="where to render simulator scenes (default: a temporary folder)")
    e.add_argument("--part", default="all", choices=("all", "train", "held-back"),
                   help="evaluate all pairs, or the train / held-back part of the deterministic split "
                        "(sorted names; every third pair, from the third, is held back: RoadScene 100 / 50)")
    e.add_argument("--limit", type=int, default=0, metavar="N", help="evaluate at most N pairs; 0: all")
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    e.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast")
    e.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads; 0 lets torch choose")
    e.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    e.add_argument("--no-baselines", action="store_true", help="evaluate the model only")
    e.set_defaults(handler=run_eval)

    m = subparsers.add_parser(
        "model", help="model files: import the SegMiF reference checkpoints",
        description="Manage model files.", formatter_class=DefaultsHelpFormatter)
    msub = m.add_subparsers(dest="model_command", metavar="ACTION")
    imp = msub.add_parser(
        "import-reference", help="convert the published SegMiF checkpoints into a rig checkpoint",
        description="Convert the two state dicts that the SegMiF reference code publishes (Fusion_Network3_ac and "
                    "Network3/WeTr) into one rig checkpoint that every --model / --weights option accepts. The "
                    "class set (15 FMB or 9 MFNet) and the MiT size are read from the weights.",
        formatter_class=DefaultsHelpFormatter)
    imp.add_argument("--fusion", required=True, metavar="FUSION.pth", help="the reference fusion network state dict")
    imp.add_argument("--segmentation", required=True, metavar="SEG.pth",
                     help="the reference segmentation network state dict")
    imp.add_argument("--out", required=True, metavar="OUT.pt", help="the rig checkpoint to write")
    imp.set_defaults(handler=run_import_reference)
    m.set_defaults(handler=lambda args: m.print_help() or 2)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rig.model.api import MODEL_VERSION
    from rig.model.train import TrainConfig, export_weights, train

    cfg = TrainConfig(
        out=args.out, model=args.model, classes=args.classes, labelled=args.data, unlabelled=args.unlabelled,
        split=args.split, sim_scenes=args.sim, sim_size=args.sim_size, rounds=args.rounds,
        seg_iters=args.seg_iters, fusion_iters=args.fusion_iters, batch_size=args.batch_size, crop=args.crop,
        seg_lr=args.seg_lr, seg_warmup_iters=args.seg_warmup_iters, fusion_lr=args.fusion_lr,
        grad_weight=args.grad_weight, dwa_window=args.dwa_window, seed=args.seed, workers=args.workers,
        threads=args.threads, device=args.device, checkpoint_every=args.checkpoint_every,
        log_every=args.log_every, init=args.init, pretrained_encoder=args.pretrained_encoder,
        class_weighting=args.class_weights, scale_range=tuple(args.scale_range), unlabelled_part=args.unlabelled_part,
    )
    try:
        from rig.model.segmif import get_config

        get_config(cfg.model)
    except ValueError as exc:
        raise RigError(str(exc), key="--model") from None
    console = Console(stderr=True, highlight=False)
    with _progress() as progress:
        final = train(cfg, resume=args.resume, progress=progress, log=lambda s: progress.console.print(s, markup=False))
    if args.export:
        dest = export_weights(final, args.export, MODEL_VERSION)
        console.print(f"exported weights: {dest} ({dest.stat().st_size / 1e6:.1f} MB)", markup=False)
    return 0


def _fmt(v: float, scale: float = 1.0) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * scale:.2f}"


def print_results(result: dict, console) -> None:
    """Tables of :func:`rig.model.evaluate.evaluate` results."""
    from rich.table import Table

    seg = result.get("segmentation")
    if seg:
        t = Table(title=f"Segmentation ({seg['pairs']} labelled pairs)")
        for col in ("class", "Acc %", "IoU %"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for name, acc, iou in zip(seg["classes"], seg["acc"], seg["iou"]):
            t.add_row(name, _fmt(acc, 100), _fmt(iou, 100))
        t.add_section()
        t.add_row("mean (mAcc / mIoU)", _fmt(seg["macc"], 100), _fmt(seg["miou"], 100))
        console.print(t)
    t = Table(title=f"Fusion ({result['pairs']} pairs, higher is better)")
    t.add_column("method")
    metrics = list(next(iter(result["fusion"].values())))
    for m in metrics:
        t.add_column(m, justify="right")
    for method, scores in result["fusion"].items():
        t.add_row(method, *(f"{scores[m]:.3f}" for m in metrics))
    console.print(t)
    comparison = result.get("comparison") or {}
    if comparison:
        console.print("segmif (stretched, the default output) against each baseline credited with its better "
                      "variant (raw or +stretch) per metric:", markup=False)
        for b, rows in comparison.items():
            won = [m for m in metrics if rows[m]["ours_higher"]]
            console.print(f"  vs {b}: higher on {rows['metrics_won']} of {len(metrics)} "
                          f"({', '.join(won) or 'none'}); images won: "
                          + ", ".join(f"{m} {rows[m]['images_won']}/{rows[m]['images']}" for m in metrics), markup=False)


def run_eval(args: argparse.Namespace) -> int:
    import tempfile

    import torch
    from rich.console import Console

    from rig.model.api import load_model
    from rig.model.data import find_pairs, render_sim_dataset, split_part
    from rig.model.evaluate import BASELINES, evaluate

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.weights, device=args.device)
    console = Console(highlight=False)
    with tempfile.TemporaryDirectory() as tmp, _progress() as progress:
        if args.sim:
            cache = Path(args.sim_cache or tmp)
            task = progress.add_task("rendering scenes", total=args.sim)
            render_sim_dataset(cache, args.sim, args.sim_size, seed=args.sim_seed,
                               progress=lambda k: progress.update(task, completed=k))
            records = find_pairs(cache, None, "fmb")[1][: args.sim]
        else:
            records = split_part(find_pairs(args.data, args.split, args.layout)[1], args.part)
        if args.limit:
            records = records[: args.limit]
        task = progress.add_task("evaluating", total=len(records))
        result = evaluate(model, records, device=args.device, precision=args.precision,
                          baselines=() if args.no_baselines else BASELINES,
                          on_sample=lambda k: progress.update(task, completed=k))
    result["weights"] = str(args.weights or "bundled")
    print_results(result, console)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}", markup=False)
    return 0


def run_import_reference(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rig.model.api import load_model
    from rig.model.reference import import_reference

    out = import_reference(args.fusion, args.segmentation, args.out)
    model = load_model(out)
    Console(highlight=False).print(f"wrote {out}: {model.config.name}, {model.config.classes} classes, "
                                   f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", markup=False)
    return 0
