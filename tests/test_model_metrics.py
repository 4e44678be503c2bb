"""Segmentation and fusion metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rig.model.evaluate import baseline_fusion
from rig.model.metrics import (
    confusion_matrix, entropy, fusion_scores, mutual_information, qabf, scd, segmentation_scores,
    spatial_frequency, standard_deviation,
)


def test_confusion_matrix_and_scores_hand_computed() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    # rows = truth: class 0 -> (0, 1); class 1 -> (1, 1, 0 as 0); class 2 -> (2, 0); 255 ignored
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    s = segmentation_scores(cm)
    assert s["acc"] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    # IoU = TP / (TP + FP + FN): class0 1/(2+3-1), class1 2/(3+3-2), class2 1/(2+1-1)
    assert s["iou"] == pytest.approx([1 / 4, 2 / 4, 1 / 2])
    assert s["macc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert s["miou"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 7)


def test_classes_absent_from_ground_truth_are_left_out_of_the_means() -> None:
    cm = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 2]])  # class 1 never in the truth, once predicted
    s = segmentation_scores(cm)
    assert math.isnan(s["acc"][1]) and math.isnan(s["iou"][1])
    assert s["miou"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert s["macc"] == pytest.approx((3 / 4 + 1.0) / 2)


def test_entropy_sd_sf_hand_computed() -> None:
    half = np.zeros((4, 4), np.uint8)
    half[:, 2:] = 255
    assert entropy(half) == pytest.approx(1.0)
    four = np.array([[0, 64], [128, 255]], np.uint8)
    assert entropy(four) == pytest.approx(2.0)
    assert entropy(np.full((3, 3), 7, np.uint8)) == 0.0
    assert standard_deviation(half) == pytest.approx(127.5)
    # rows [0, 4]: horizontal differences 4 -> RF = 4; no vertical change -> CF = 0
    assert spatial_frequency(np.array([[0, 4], [0, 4]], np.uint8)) == pytest.approx(4.0)
    # 3x3 ramp along both axes: RF² = CF² = 1 -> SF = sqrt(2)
    ramp = np.add.outer(np.arange(3), np.arange(3)).astype(np.uint8)
    assert spatial_frequency(ramp) == pytest.approx(math.sqrt(2))


def test_scd_mi_qabf_hand_computed() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, (16, 16)).astype(np.uint8)
    b = rng.integers(0, 100, (16, 16)).astype(np.uint8)
    # F = A + B: F - B = A and F - A = B, so both correlations are 1
    assert scd((a.astype(int) + b).astype(np.uint8), a, b) == pytest.approx(2.0)
    # two equiprobable levels copied from A, B constant: MI(F, A) = 1 bit, MI(F, B) = 0
    two = np.zeros((4, 4), np.uint8)
    two[:2] = 200
    assert mutual_information(two, two, np.full((4, 4), 9, np.uint8)) == pytest.approx(1.0)
    # F = A = B: every edge is preserved: Qabf = Qg(1) Qa(1)
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    img = (np.add.outer(np.arange(12), 2 * np.arange(12)) * 5).astype(np.uint8)
    assert qabf(img, img, img) == pytest.approx(expected, rel=1e-9)
    assert qabf(np.full((8, 8), 3, np.uint8), np.full((8, 8), 3, np.uint8), np.full((8, 8), 3, np.uint8)) == 0.0


def test_fusion_scores_keys_and_rgb_input() -> None:
    rng = np.random.default_rng(1)
    vis = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
    ir = rng.integers(0, 256, (20, 24)).astype(np.uint8)
    s = fusion_scores(vis, vis, ir)
    assert list(s) == ["EN", "SD", "SF", "SCD", "MI", "Qabf"]
    assert all(np.isfinite(v) for v in s.values())


def test_baselines_average_and_max_of_grey_inputs() -> None:
    vis = np.full((4, 4, 3), 100, np.uint8)  # grey: Y = 100, neutral chroma
    ir = np.full((4, 4), 200, np.uint8)
    assert (baseline_fusion(vis, ir, "average") == 150).all()
    assert (baseline_fusion(vis, ir, "max") == 200).all()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_fusion(vis, ir, "median")
