"""Choose the fusion prior's three settings on the RoadScene **train** part only:

    python benchmarks/select_fusion_prior.py [--data ../shared/data/roadscene_train] [--limit N]

The bundled fusion network sits at its zero residual, so its output is exactly the pyramid prior
(``rig.model.fusion.pyramid_prior``: ``levels``, ``fine_gain``, ``additive``). Settings chosen on
the pairs that ``benchmarks/bench_model.py`` scores would make that benchmark a fit, not a test.
This script scores a grid of settings on the **train** part (``split_part(..., "train")``, the 100
pairs the held-back 50 are not) under the benchmark's own rule (the model's stretched output
against average, max-selection and Laplacian fusion, each credited with its better variant, raw
or stretched, per metric) and prints the ranking; the best one (most metrics won in total, then
most images won) is the setting to ship. Baselines are scored once; each setting costs one
fusion and one scoring per pair.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROADSCENE = REPO.parent / "shared" / "data" / "roadscene_train"
GRID = {"levels": (4, 5), "fine_gain": (1.0, 1.1, 1.2, 1.3), "additive": (0.25, 0.5, 0.75)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROADSCENE)
    ap.add_argument("--limit", type=int, default=0, help="use the first N train pairs only (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"error: {args.data}: no such folder (the RoadScene pairs of ../shared/data)", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from rig.model import load_model
    from rig.model.color import rgb_to_ycrcb
    from rig.model.data import find_pairs, read_sample, split_part
    from rig.model.evaluate import BASELINES, STRETCH, baseline_fusion, credited_comparison, stretch_output
    from rig.model.fusion import pyramid_prior
    from rig.model.metrics import fusion_scores

    torch.set_num_threads(args.threads)
    records = split_part(find_pairs(args.data, None)[1], "train")
    if args.limit:
        records = records[:args.limit]
    model = load_model()
    settings = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    per_image: dict[str, dict[str, list[float]]] = {}

    def score(method: str, img: np.ndarray, sample) -> None:
        for k, v in fusion_scores(img, sample.visible, sample.lwir).items():
            per_image.setdefault(method, {}).setdefault(k, []).append(v)

    with Progress(transient=True) as progress, torch.inference_mode():
        task = progress.add_task("train-part pairs", total=len(records))
        for record in records:
            sample = read_sample(record, model.config.num_classes)
            for b in BASELINES:
                img = baseline_fusion(sample.visible, sample.lwir, b)
                score(b, img, sample)
                score(b + STRETCH, stretch_output(img), sample)
            v = torch.from_numpy(sample.visible).permute(2, 0, 1)[None].float() / 255.0
            t = torch.from_numpy(sample.lwir)[None, None].float() / 255.0
            y = rgb_to_ycrcb(v)[:, :1]
            for i, s in enumerate(settings):
                fused_y = torch.sigmoid(torch.logit(pyramid_prior(y, t, **s), eps=1e-3))  # as SegMiF.fuse
                rgb = (model.colour(v, fused_y).clamp(0, 1) * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
                score(f"s{i}", stretch_output(rgb), sample)
            progress.advance(task)

    rows = []
    for i, s in enumerate(settings):
        comp = credited_comparison(per_image, f"s{i}", BASELINES)
        won = {b: comp[b]["metrics_won"] for b in BASELINES}
        images = sum(r["images_won"] for b in BASELINES for r in comp[b].values() if isinstance(r, dict))
        rows.append((sum(won.values()), images, s, won))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
    console = Console(highlight=False)
    t = Table(title=f"Pyramid-prior settings on the RoadScene train part ({len(records)} pairs), best first")
    for col in ("levels", "fine_gain", "additive", "metrics won (avg / max / lap)", "total", "images won"):
        t.add_column(col, justify="right")
    for total, images, s, won in rows:
        t.add_row(str(s["levels"]), f"{s['fine_gain']:g}", f"{s['additive']:g}",
                  f"{won['average']} / {won['max']} / {won['laplacian']}", str(total), str(images))
    console.print(t)
    best = rows[0][2]
    console.print(f"chosen on the train part: levels {best['levels']}, fine_gain {best['fine_gain']:g}, "
                  f"additive {best['additive']:g}", markup=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
