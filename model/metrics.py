"""Evaluation metrics, NumPy, pure functions.

Segmentation (the paper's Tables 1-2): per-class accuracy (recall) and IoU,
mAcc, mIoU, from a confusion matrix accumulated over a dataset.

Fusion (the paper's Fig. 8 plus two common extras), on 8-bit grey images:
EN (entropy), SD (standard deviation), SF (spatial frequency), SCD (sum of the
correlations of differences), MI (mutual information with both sources) and
Qabf (Xydeas-Petrović edge preservation).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve

from rig.model.classes import IGNORE_INDEX


# ---------------------------------------------------------------- segmentation

def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(C, C)`` int64 counts, rows = ground truth, columns = prediction; ignored pixels skipped."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_scores(cm: np.ndarray) -> dict[str, object]:
    """Per-class ``acc`` = TP/(TP+FN) and ``iou`` = TP/(TP+FP+FN), their means over classes
    present in the ground truth (``macc``, ``miou``; NaN entries skipped) and pixel accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(gt > 0, tp / (gt + pred - tp), np.nan)
    present = gt > 0
    return {
        "acc": acc.tolist(),
        "iou": iou.tolist(),
        "macc": float(np.mean(acc[present])) if present.any() else float("nan"),
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / cm.sum()) if cm.sum() else float("nan"),
    }


# ---------------------------------------------------------------- fusion

def _grey(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 3:  # RGB -> BT.601 luminance
        img = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
    return img.astype(np.float64)


def entropy(img: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin grey histogram."""
    hist = np.bincount(np.clip(np.round(_grey(img)), 0, 255).astype(np.int64).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def standard_deviation(img: np.ndarray) -> float:
    """SD: population standard deviation of the grey values."""
    return float(_grey(img).std())


def spatial_frequency(img: np.ndarray) -> float:
    """SF = sqrt(RF² + CF²), RF/CF the RMS of horizontal/vertical first differences."""
    g = _grey(img)
    rf2 = np.mean(np.diff(g, axis=1) ** 2)
    cf2 = np.mean(np.diff(g, axis=0) ** 2)
    return float(np.sqrt(rf2 + cf2))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def scd(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD (Aslantas & Bendes 2015) = corr(F - B, A) + corr(F - A, B)."""
    f, a, b = _grey(fused), _grey(a), _grey(b)
    return _corr(f - b, a) + _corr(f - a, b)


def _mi(a: np.ndarray, b: np.ndarray) -> float:
    qa = np.clip(np.round(a), 0, 255).astype(np.int64).ravel()
    qb = np.clip(np.round(b), 0, 255).astype(np.int64).ravel()
    joint = np.bincount(qa * 256 + qb, minlength=256 * 256).reshape(256, 256).astype(np.float64)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (pa[:, None] * pb[None, :])[nz])).sum())


def mutual_information(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI = MI(F, A) + MI(F, B), bits, 256-bin joint histograms."""
    f = _grey(fused)
    return _mi(f, _grey(a)) + _mi(f, _grey(b))


_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
# Xydeas-Petrović constants
_GAMMA_G, _KAPPA_G, _SIGMA_G = 0.9994, -15.0, 0.5
_GAMMA_A, _KAPPA_A, _SIGMA_A = 0.9879, -22.0, 0.8


def _edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = convolve(img, _SOBEL_X, mode="nearest")
    gy = convolve(img, _SOBEL_X.T, mode="nearest")
    strength = np.hypot(gx, gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1, gx)))
    return strength, angle


def _edge_preservation(ga, aa, gf, af) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(ga > gf, gf / ga, np.where(gf > 0, ga / gf, 1.0))
    a = 1 - np.abs(aa - af) / (np.pi / 2)
    qg = _GAMMA_G / (1 + np.exp(_KAPPA_G * (g - _SIGMA_G)))
    qa = _GAMMA_A / (1 + np.exp(_KAPPA_A * (a - _SIGMA_A)))
    return qg * qa


def qabf(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf (Xydeas & Petrović 2000): edge information transferred from A and B to F, in [0, 1]."""
    gf, af = _edges(_grey(fused))
    ga, aa = _edges(_grey(a))
    gb, ab = _edges(_grey(b))
    qa = _edge_preservation(ga, aa, gf, af)
    qb = _edge_preservation(gb, ab, gf, af)
    den = (ga + gb).sum()
    return float((qa * ga + qb * gb).sum() / den) if den > 0 else 0.0


FUSION_METRICS = ("EN", "SD", "SF", "SCD", "MI", "Qabf")


def fusion_scores(fused: np.ndarray, visible: np.ndarray, infrared: np.ndarray) -> dict[str, float]:
    """All fusion metrics of one fused image against its sources (RGB images are reduced to luminance)."""
    return {
        "EN": entropy(fused),
        "SD": standard_deviation(fused),
        "SF": spatial_frequency(fused),
        "SCD": scd(fused, visible, infrared),
        "MI": mutual_information(fused, visible, infrared),
        "Qabf": qabf(fused, visible, infrared),
    }
