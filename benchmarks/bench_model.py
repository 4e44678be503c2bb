"""Benchmark the bundled SegMiF model on CPU, all in one run:

    python benchmarks/bench_model.py [--threads 2] [--repeats 3] [--json out.json]

Speed: milliseconds per registered 800x600 pair (``fuse_and_segment`` end to end,
uint8 in, uint8 out, median of ``--repeats`` calls after one warm-up) and the peak
resident memory of a process that does only that, each in its own child process
so that peak RSS figures do not mix:

- ``bundled`` — the bundled weights as ``load_model()`` gives them (the shipped path: eager PyTorch with
  channels-last convolution weights).
- ``bundled-eager`` — the same weights in PyTorch's default layout (``load_model(channels_last=False)``);
  fused images identical, labels identical up to float ties (``tests/test_model_io.py``).
- ``bundled-prior-only`` — the same model with its fusion network switched off
  (zero residual, i.e. the parameter-free pyramid prior; the guidance pass is then
  skipped); outputs differ from ``bundled``, shown for what the fusion network costs.
- ``reference_b3`` — the SegMiF reference architecture (``rig.model.reference``,
  64-channel fusion streams, MiT-b3) from random weights, at **400x300**: at 800x600
  its full-resolution fusion needs several GB and minutes on 2 cores; its time
  does not depend on the weights.

Fusion: on the **held-back part** of RoadScene (``rig.model.data.split_part``:
sorted names, every third pair from the third; 50 of 150 pairs; the fusion
fine-tuning only saw the other 100), EN, SD, SF, SCD, MI and Qabf of our model
(default output = min-max stretched, and raw) and of the three baselines (raw and
stretched), plus the credited comparison of :func:`rig.model.evaluate.credited_comparison`
(each baseline credited with its better variant per metric) and the win counts
against the targets: average and Laplacian on >= 5 of 6 metrics, max-selection on >= 4.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROADSCENE = REPO.parent / "shared" / "data" / "roadscene_train"
SPEED_MODELS = ("bundled", "bundled-eager", "bundled-prior-only", "reference_b3")
SIZES = {"bundled": (800, 600), "bundled-eager": (800, 600), "bundled-prior-only": (800, 600),
         "reference_b3": (400, 300)}
TARGET_WINS = {"average": 5, "laplacian": 5, "max": 4}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_speed(which: str, threads: int, repeats: int) -> dict:
    """Run in a child process: time ``fuse_and_segment`` on one random pair."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from rig.model import create_model, fuse_and_segment, load_model

    if which.startswith("bundled"):
        model = load_model(channels_last=which != "bundled-eager")
        if which == "bundled-prior-only":
            with torch.no_grad():
                model.fusion.reconstruct[-1].weight.zero_()
                model.fusion.reconstruct[-1].bias.zero_()
    else:
        torch.manual_seed(0)
        model = create_model(which).eval()
    w, h = SIZES[which]
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (h, w), dtype=np.uint8)
    fuse_and_segment(vis, ir, model)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fuse_and_segment(vis, ir, model)
        times.append((time.perf_counter() - t) * 1000)
    return {"model": which, "config": model.config.name, "size": f"{w}x{h}",
            "params": sum(p.numel() for p in model.parameters()),
            "ms_per_pair": float(np.median(times)), "ms_all": times, "peak_rss_mb": _peak_rss_mb()}


def _child(which: str, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def fusion_quality(root: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from rich.progress import Progress

    from rig.model import load_model
    from rig.model.data import find_pairs, split_part
    from rig.model.evaluate import evaluate

    records = split_part(find_pairs(root, None)[1], "held-back")
    model = load_model()
    with Progress(transient=True) as progress:
        task = progress.add_task("RoadScene held-back fusion", total=len(records))
        return evaluate(model, records, on_sample=lambda k: progress.update(task, completed=k))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (median reported)")
    ap.add_argument("--data", type=Path, default=ROADSCENE)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--skip-speed", action="store_true", help="fusion metrics only")
    ap.add_argument("--child", choices=SPEED_MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_speed(args.child, args.threads, args.repeats)))
        return 0

    from rich.console import Console
    from rich.table import Table

    from rig.model import MODEL_VERSION

    console = Console(highlight=False)
    console.print(f"rig.model {MODEL_VERSION}; {args.threads} CPU threads", markup=False)
    speed = {}
    if not args.skip_speed:
        speed = {m: _child(m, args.threads, args.repeats) for m in SPEED_MODELS}
        t = Table(title="Speed: fuse_and_segment, one pair (eager PyTorch, CPU)")
        for col in ("configuration", "size", "params", "ms / pair", "peak RSS MB"):
            t.add_column(col, justify="left" if col == "configuration" else "right")
        for m in SPEED_MODELS:
            s = speed[m]
            t.add_row(f"{m} ({s['config']})", s["size"], f"{s['params']:,}", f"{s['ms_per_pair']:.0f}",
                      f"{s['peak_rss_mb']:.0f}")
        console.print(t)
        ms = speed["bundled"]["ms_per_pair"]
        console.print(f"bundled: {ms:.0f} ms per 800x600 pair (target <= 500): {'PASS' if ms <= 500 else 'FAIL'}; "
                      f"{speed['bundled-eager']['ms_per_pair'] / ms:.2f}x faster than the default layout",
                      markup=False)

    result = fusion_quality(args.data, args.threads)
    f = result["fusion"]
    t = Table(title=f"Fusion on the RoadScene held-back part ({result['pairs']} pairs, mean; higher is better)")
    t.add_column("method")
    for metric in f["segmif"]:
        t.add_column(metric, justify="right")
    for method, scores in f.items():
        label = {"segmif": "segmif (bundled, default = stretched)", "segmif_raw": "segmif raw"}.get(method, method)
        t.add_row(label, *(f"{v:.3f}" for v in scores.values()))
    console.print(t)
    ok = True
    for b, need in TARGET_WINS.items():
        rows = result["comparison"][b]
        won = [m for m, r in rows.items() if isinstance(r, dict) and r["ours_higher"]]
        lost = [m for m, r in rows.items() if isinstance(r, dict) and not r["ours_higher"]]
        passed = rows["metrics_won"] >= need
        ok &= passed
        console.print(f"vs {b} (credited with its better of raw/stretched per metric): wins {rows['metrics_won']}/6 "
                      f"(need {need}) {'PASS' if passed else 'FAIL'}; won {', '.join(won) or '-'}; "
                      f"lost {', '.join(lost) or '-'}; images won per metric: "
                      + ", ".join(f"{m} {r['images_won']}/{r['images']}" for m, r in rows.items()
                                  if isinstance(r, dict)), markup=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model_version": MODEL_VERSION, "threads": args.threads, "speed": speed,
                                         "fusion": result}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
