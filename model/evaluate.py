"""Evaluation of a SegMiF model: segmentation (per-class Acc/IoU, mAcc, mIoU) and
fusion quality (EN, SD, SF, SCD, MI, Qabf) against the plain averaging and
max-selection baselines, computed on the same pairs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from rig.model.classes import get_class_set
from rig.model.data import PairRecord, read_sample
from rig.model.metrics import FUSION_METRICS, confusion_matrix, fusion_scores, segmentation_scores

BASELINES = ("average", "max")


def baseline_fusion(visible: np.ndarray, lwir: np.ndarray, kind: str) -> np.ndarray:
    """Pixel-level baseline fusion of the visible luminance and the LWIR, colour from the visible chroma.

    ``kind``: ``"average"`` (mean) or ``"max"`` (max-selection).
    """
    import torch

    from rig.model.color import replace_luminance, rgb_to_ycrcb

    v = torch.from_numpy(visible).permute(2, 0, 1)[None].double() / 255.0
    t = torch.from_numpy(lwir)[None, None].double() / 255.0
    y = rgb_to_ycrcb(v)[:, :1]
    if kind == "average":
        fused = 0.5 * (y + t)
    elif kind == "max":
        fused = torch.maximum(y, t)
    else:
        raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")
    out = (replace_luminance(v, fused) * 255.0).round().to(torch.uint8)
    return out[0].permute(1, 2, 0).numpy()


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
    sums: dict[str, dict[str, float]] = {m: dict.fromkeys(FUSION_METRICS, 0.0) for m in ("segmif", *baselines)}
    for i, record in enumerate(records):
        sample = read_sample(record, n)
        fused, labels = fuse_and_segment(sample.visible, sample.lwir, model, device=device, precision=precision)
        if sample.labels is not None:
            cm += confusion_matrix(labels, sample.labels, n)
            labelled += 1
        outputs = {"segmif": fused, **{b: baseline_fusion(sample.visible, sample.lwir, b) for b in baselines}}
        for method, img in outputs.items():
            for k, v in fusion_scores(img, sample.visible, sample.lwir).items():
                sums[method][k] += v
        if on_sample is not None:
            on_sample(i + 1)
    result: dict[str, Any] = {"pairs": len(records), "model": model.config.name}
    result["fusion"] = {m: {k: v / max(1, len(records)) for k, v in s.items()} for m, s in sums.items()}
    if labelled:
        scores = segmentation_scores(cm)
        result["segmentation"] = {
            "pairs": labelled,
            "classes": list(class_set.names),
            **scores,
            "confusion_matrix": cm.tolist(),
        }
    return result
