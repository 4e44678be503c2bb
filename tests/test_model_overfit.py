"""A tiny SegMiF overfits a few simulator pairs: losses fall, mIoU rises.

Kept cheap on purpose (three 64x48 scenes, two interactive rounds of 25
segmentation + 10 fusion steps: 70 optimiser steps, a few seconds on one idle
core) while asserting what training must achieve on its own training scenes:
the segmentation loss falls below 0.6x its start, the fusion loss falls, and
mIoU rises by more than 0.15.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rig.model.color import rgb_to_ycrcb
from rig.model.losses import fusion_loss
from rig.model.metrics import confusion_matrix, segmentation_scores
from rig.model.segmif import create_model
from rig.model.train import InteractiveStep
from rig.sim.scene import render_registered

SIZE = (64, 48)
ROUNDS, SEG_STEPS, FUSION_STEPS = 2, 25, 10


@pytest.fixture()
def one_thread():
    """One torch thread for this test, restored afterwards (no process-wide side effect).

    The model is tiny: a second thread gains little on an idle machine and, on a
    loaded one, spinning OpenMP threads made this test 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sim_batch():
    samples = [render_registered(seed, variant, size=SIZE) for seed, variant in ((1, "day"), (2, "night"), (3, "fog"))]
    vis = torch.from_numpy(np.stack([s.visible for s in samples])).permute(0, 3, 1, 2).float() / 255
    ir = torch.from_numpy(np.stack([s.lwir8 for s in samples]))[:, None].float() / 255
    labels = torch.from_numpy(np.stack([s.labels for s in samples]).astype(np.int64))
    return vis, ir, labels


def _miou(model, vis, ir, labels) -> float:
    with torch.no_grad():
        model.eval()
        pred = model(vis, ir).logits.argmax(1)
    return segmentation_scores(confusion_matrix(pred.numpy(), labels.numpy(), 15))["miou"]


def test_tiny_model_overfits_sim_pairs(sim_batch, one_thread) -> None:
    vis, ir, labels = sim_batch
    torch.manual_seed(0)
    model = create_model("tiny")
    step = InteractiveStep(model, grad_weight=100.0)
    seg_opt = torch.optim.Adam(model.segmenter.parameters(), lr=1e-2)
    fusion_opt = torch.optim.Adam(model.fusion.parameters(), lr=3e-3)
    miou_before = _miou(model, vis, ir, labels)
    with torch.no_grad():
        out = model.eval()(vis, ir)
        lf_before = float(fusion_loss(out.fused_y, rgb_to_ycrcb(vis)[:, :1], ir).total)

    seg_losses, fusion_losses = [], []
    for _ in range(ROUNDS):  # interactive rounds: segmentation steps, then fusion steps
        for _ in range(SEG_STEPS):
            loss = step(vis, ir, labels, "seg")["loss"]
            seg_opt.zero_grad()
            loss.backward(inputs=list(model.segmenter.parameters()))
            seg_opt.step()
            seg_losses.append(float(loss.detach()))
        for _ in range(FUSION_STEPS):
            losses = step(vis, ir, labels, "fusion", (1.0, 1.0))
            fusion_opt.zero_grad()
            losses["loss"].backward(inputs=list(model.fusion.parameters()))
            fusion_opt.step()
            fusion_losses.append(float(losses["fusion"]))

    miou_after = _miou(model, vis, ir, labels)
    assert len(seg_losses) == ROUNDS * SEG_STEPS and len(fusion_losses) == ROUNDS * FUSION_STEPS
    assert np.mean(seg_losses[-5:]) < 0.6 * np.mean(seg_losses[:5]), (seg_losses[:5], seg_losses[-5:])
    assert fusion_losses[-1] < fusion_losses[0] and fusion_losses[-1] < lf_before, (lf_before, fusion_losses)
    assert miou_after > miou_before + 0.15, (miou_before, miou_after)
