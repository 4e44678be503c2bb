"""Evaluation of a SegMiF model: segmentation (per-class Acc/IoU, mAcc, mIoU) and
fusion quality (EN, SD, SF, SCD, MI, Qabf) against the classical baselines of
:mod:`rig.model.baselines` (average, max-selection, Laplacian pyramid), computed on
the same pairs in one run.

Every method gets the same post-processing: its raw output and its min-max
stretched output (:func:`stretch_output`) are both scored. The model is reported by
its default (stretched) output; :func:`credited_comparison` credits each baseline
with the better of its two variants per metric, so a lead that only the stretch
gives does not count.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from rig.model.classes import get_class_set
from rig.model.data import PairRecord, read_sample
from rig.model.metrics import confusion_matrix, fusion_scores, segmentation_scores

BASELINES = ("average", "max", "laplacian")
STRETCH = "+stretch"  # suffix of a method's min-max-stretched variant


def baseline_fusion(visible: np.ndarray, lwir: np.ndarray, kind: str) -> np.ndarray:
    """Classical baseline fusion (:mod:`rig.model.baselines`), colour from the visible chroma."""
    from rig.model.baselines import fuse_baseline

    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    return fuse_baseline(visible, lwir, kind)


def stretch_output(rgb: np.ndarray) -> np.ndarray:
    """The same post-processing for every method: min-max stretch the output's luminance, keep its chroma."""
    import torch

    from rig.model.baselines import stretch_minmax
    from rig.model.color import replace_luminance, rgb_to_ycrcb

    v = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].double() / 255.0
    y = stretch_minmax(rgb_to_ycrcb(v)[:, :1])
    return (replace_luminance(v, y) * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


def credited_comparison(per_image: dict[str, dict[str, list[float]]], ours: str = "segmif",
                        baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """Ours against each baseline, the baseline credited with its better variant (raw or stretched) per metric.

    Returns, per baseline and metric, the credited baseline mean, our mean, whether ours is higher,
    and on how many images ours is higher than the credited variant (higher is better for every metric).
    """
    out: dict[str, Any] = {}
    for b in baselines:
        if b not in per_image:
            continue
        rows = {}
        for metric, mine in per_image[ours].items():
            variants = [v for v in (b, b + STRETCH) if v in per_image]
            best = max(variants, key=lambda v: float(np.mean(per_image[v][metric])))
            theirs = np.asarray(per_image[best][metric])
            mine_a = np.asarray(mine)
            rows[metric] = {"ours": float(mine_a.mean()), "baseline": float(theirs.mean()), "credited_variant": best,
                            "ours_higher": bool(mine_a.mean() > theirs.mean()),
                            "images_won": int((mine_a > theirs).sum()), "images": int(len(mine_a))}
        rows["metrics_won"] = sum(r["ours_higher"] for r in rows.values() if isinstance(r, dict))
        out[b] = rows
    return out


def evaluate(model: Any, records: Sequence[PairRecord], *, device: str | None = None,
             baselines: Sequence[str] = BASELINES, precision: str = "fp32",
             on_sample: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``records``; returns a JSON-ready dict.

    ``segmentation`` is present when any pair has labels; ``fusion`` holds the
    mean metrics of the model (key ``"segmif"``) and of each baseline.
    """
    from rig.model.api import fuse_and_segment

    class_set = get_class_set(model.config.classes)
    n = class_set.num_classes
    cm = np.zeros((n, n), dtype=np.int64)
    labelled = 0
    per_image: dict[str, dict[str, list[float]]] = {}

    def score(method: str, img: np.ndarray, sample) -> None:
        for k, v in fusion_scores(img, sample.visible, sample.lwir).items():
            per_image.setdefault(method, {}).setdefault(k, []).append(v)

    for i, record in enumerate(records):
        sample = read_sample(record, n)
        fused, labels = fuse_and_segment(sample.visible, sample.lwir, model, device=device, precision=precision,
                                         normalize="none")
        if sample.labels is not None:
            cm += confusion_matrix(labels, sample.labels, n)
            labelled += 1
        raw = {"segmif": fused, **{b: baseline_fusion(sample.visible, sample.lwir, b) for b in baselines}}
        for method, img in raw.items():
            score(method + STRETCH, stretch_output(img), sample)  # the model's default output is the stretched one
            if method != "segmif":
                score(method, img, sample)
            else:
                score("segmif_raw", img, sample)
        if on_sample is not None:
            on_sample(i + 1)
    # "segmif" is the model's default output (stretched); every baseline appears raw and stretched.
    if "segmif" + STRETCH in per_image:
        per_image["segmif"] = per_image.pop("segmif" + STRETCH)
    result: dict[str, Any] = {"pairs": len(records), "model": model.config.name}
    order = ["segmif", "segmif_raw", *(v for b in baselines for v in (b, b + STRETCH))]
    result["fusion"] = {m: {k: float(np.mean(v)) for k, v in per_image[m].items()} for m in order if m in per_image}
    result["comparison"] = credited_comparison(per_image, "segmif", baselines)
    if labelled:
        scores = segmentation_scores(cm)
        result["segmentation"] = {
            "pairs": labelled,
            "classes": list(class_set.names),
            **scores,
            "confusion_matrix": cm.tolist(),
        }
    return result
