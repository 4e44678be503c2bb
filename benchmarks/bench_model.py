"""Benchmark SegMiF on CPU: speed of the paper and bundled configurations, and
fusion quality of the bundled model against plain averaging and max-selection
on the real RoadScene pairs, all in one run.

    python benchmarks/bench_model.py [--threads 2] [--pairs 150] [--json out.json]

Speed: milliseconds per registered 800x600 pair (``fuse_and_segment``
end to end, uint8 in, uint8 out, after one warm-up call) and the peak resident
memory of a process that does only that; each configuration runs in its own
child process so their peak RSS figures do not mix. The paper configuration is
randomly initialised (its speed does not depend on the weights).

Fusion: EN, SD, SF, SCD (the paper's Fig. 8) plus MI and Qabf of the fused
images, means over the RoadScene pairs, next to the two baselines computed on
the same pairs in the same run.
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
SPEED_MODELS = ("paper", "bundled")
MUST_BEAT = ("EN", "SD", "SF", "SCD")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_speed(which: str, threads: int, repeats: int) -> dict:
    """Run in a child process: time ``fuse_and_segment`` on 800x600 pairs."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from rig.model import create_model, fuse_and_segment, load_model

    if which == "bundled":
        model = load_model()
    else:
        torch.manual_seed(0)
        model = create_model("paper").eval()
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (600, 800), dtype=np.uint8)
    fuse_and_segment(vis, ir, model)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fuse_and_segment(vis, ir, model)
        times.append((time.perf_counter() - t) * 1000)
    return {
        "model": which, "config": model.config.name, "params": sum(p.numel() for p in model.parameters()),
        "ms_per_pair": float(np.median(times)), "ms_all": times, "peak_rss_mb": _peak_rss_mb(),
    }


def measure_drdb(threads: int) -> float:
    """One paper-size DRDB (in_ch 32, growth 32, 5 layers) at 800x600, ms."""
    import torch

    torch.set_num_threads(threads)
    from rig.model.drdb import DRDB

    block = DRDB(32, 32, 5).eval()
    x = torch.rand(1, 32, 600, 800)
    with torch.inference_mode():
        block(x)
        t = time.perf_counter()
        block(x)
    return (time.perf_counter() - t) * 1000


def _child(which: str, threads: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--threads", str(threads), "--repeats", str(repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def fusion_quality(root: Path, threads: int, limit: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from rich.progress import Progress

    from rig.model import load_model
    from rig.model.data import find_pairs
    from rig.model.evaluate import evaluate

    records = find_pairs(root, None)[1]
    if limit:
        records = records[:limit]
    model = load_model()
    with Progress(transient=True) as progress:
        task = progress.add_task("RoadScene fusion", total=len(records))
        result = evaluate(model, records, on_sample=lambda k: progress.update(task, completed=k))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (median reported)")
    ap.add_argument("--pairs", type=int, default=0, help="RoadScene pairs for fusion metrics (0: all)")
    ap.add_argument("--data", type=Path, default=ROADSCENE)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", choices=SPEED_MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_speed(args.child, args.threads, args.repeats)))
        return 0

    from rich.console import Console
    from rich.table import Table

    from rig.model import MODEL_VERSION

    console = Console(highlight=False)
    console.print(f"rig.model {MODEL_VERSION}; {args.threads} CPU threads; 800x600 pairs", markup=False)
    speed = {m: _child(m, args.threads, args.repeats) for m in SPEED_MODELS}
    drdb_ms = measure_drdb(args.threads)
    ratio = speed["paper"]["ms_per_pair"] / speed["bundled"]["ms_per_pair"]
    t = Table(title="Speed: fuse_and_segment, one 800x600 pair")
    for col in ("configuration", "params", "ms / pair", "peak RSS MB"):
        t.add_column(col, justify="left" if col == "configuration" else "right")
    for m in SPEED_MODELS:
        s = speed[m]
        t.add_row(f"{m} ({s['config']})", f"{s['params']:,}", f"{s['ms_per_pair']:.0f}", f"{s['peak_rss_mb']:.0f}")
    console.print(t)
    console.print(f"one paper DRDB (32/32, 5 layers) alone: {drdb_ms:.0f} ms", markup=False)
    console.print(f"bundled is {ratio:.1f}x faster than paper (target >= 10x): {'PASS' if ratio >= 10 else 'FAIL'}",
                  markup=False)

    result = fusion_quality(args.data, args.threads, args.pairs)
    f = result["fusion"]
    t = Table(title=f"Fusion on RoadScene ({result['pairs']} pairs, mean; higher is better)")
    t.add_column("method")
    for metric in f["segmif"]:
        t.add_column(metric, justify="right")
    for method, scores in f.items():
        t.add_row("segmif (bundled)" if method == "segmif" else method, *(f"{v:.3f}" for v in scores.values()))
    console.print(t)
    wins = {m: all(f["segmif"][m] > f[b][m] for b in ("average", "max")) for m in MUST_BEAT}
    for m in MUST_BEAT:
        console.print(f"{m}: segmif {f['segmif'][m]:.3f} vs average {f['average'][m]:.3f} "
                      f"({f['segmif'][m] / f['average'][m]:.2f}x), max {f['max'][m]:.3f} "
                      f"({f['segmif'][m] / f['max'][m]:.2f}x): {'PASS' if wins[m] else 'FAIL'}", markup=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"model_version": MODEL_VERSION, "threads": args.threads, "speed": speed,
                                         "paper_drdb_ms": drdb_ms, "speed_ratio": ratio, "fusion": result,
                                         "beats_baselines": wins}, indent=2) + "\n")
    return 0 if ratio >= 10 and all(wins.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
