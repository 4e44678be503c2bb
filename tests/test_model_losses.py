"""Losses and dynamic weights against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from rig.model.losses import (
    DynamicWeightAverage, detail, dynamic_weights, fusion_loss, gaussian_kernel1d, gaussian_sigma, gradient_loss,
    saliency_mse_loss, saliency_weights, segmentation_loss, ssim, ssim_loss, vsm_saliency,
)
from rig.model.train import poly_lr, schedule

D = torch.float64


def full(v: float, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.full((1, 1, h, w), v, dtype=D)


def test_ssim_of_constant_images_hand_computed() -> None:
    # constant images: variances and covariance are 0, SSIM = (2ab + C1) / (a² + b² + C1)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)  # 0.800064
    assert float(ssim(full(0.5), full(0.25))) == pytest.approx(expected, abs=1e-12)
    assert float(ssim(full(0.5), full(0.5))) == pytest.approx(1.0, abs=1e-12)
    # L_SSIM(u=0.5, x=0.5, y=0.25) = 0 + (1 - 0.800064)/2
    assert float(ssim_loss(full(0.5), full(0.5), full(0.25))) == pytest.approx((1 - expected) / 2, abs=1e-12)
    assert expected == pytest.approx(0.800064, abs=1e-6)


@pytest.fixture(scope="module")
def sim_luminance_and_lwir():
    """Luminance and 8-bit LWIR (both in [0, 1], float64) of one registered simulator scene, 160x120."""
    import numpy as np

    from rig.model.color import rgb_to_ycrcb
    from rig.sim.scene import render_registered

    sample = render_registered(4, "day", size=(160, 120))
    rgb = torch.from_numpy(sample.visible).permute(2, 0, 1)[None].to(D) / 255
    return rgb_to_ycrcb(rgb)[0, 0].numpy(), sample.lwir8.astype(np.float64) / 255


def test_ssim_matches_scikit_image_on_real_looking_images(sim_luminance_and_lwir) -> None:
    """Our SSIM is Wang et al.'s with an 11-tap Gaussian window (sigma 1.5), population (co)variances and the
    mean over the valid region. scikit-image computes the same with ``gaussian_weights=True, sigma=1.5``
    (its window: 2 * round(3.5 sigma) + 1 = 11 taps), ``use_sample_covariance=False`` and
    ``data_range=1``: it filters with reflection and then drops (11 - 1) / 2 = 5 pixels per border, which is
    exactly the valid region. (Its defaults, a 7x7 uniform window with sample covariances, are another SSIM.)"""
    import cv2
    import numpy as np
    from skimage.metrics import structural_similarity

    lum, lwir = sim_luminance_and_lwir
    noisy = np.clip(lum + np.random.default_rng(0).normal(0.0, 0.05, lum.shape), 0.0, 1.0)
    blurred = cv2.GaussianBlur(lum, (0, 0), 2.0)
    pairs = {"visible vs lwir": (lum, lwir), "blurred": (lum, blurred), "noisy": (lum, noisy)}
    values = {}
    for name, (a, b) in pairs.items():
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0)
        ours = float(ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]))
        assert ours == pytest.approx(ref, abs=1e-12), name
        ours32 = float(ssim(torch.from_numpy(a).float()[None, None], torch.from_numpy(b).float()[None, None]))
        assert ours32 == pytest.approx(ref, abs=2e-5), name
        values[name] = ref
    # The pairs are far from the trivial cases: a cross-modal pair, a mild blur and mild noise.
    assert 0.1 < values["visible vs lwir"] < 0.6 and 0.6 < values["blurred"] < 0.95 and 0.3 < values["noisy"] < 0.9
    # Batched: one value per image, each matching its own pair.
    batch_a = torch.from_numpy(np.stack([lum, lum]))[:, None]
    batch_b = torch.from_numpy(np.stack([lwir, blurred]))[:, None]
    expected = torch.tensor([values["visible vs lwir"], values["blurred"]], dtype=D)
    torch.testing.assert_close(ssim(batch_a, batch_b), expected, atol=1e-12, rtol=0)


def test_ssim_of_an_image_with_itself_is_one_and_needs_window() -> None:
    img = torch.rand(2, 1, 20, 24, dtype=D)
    torch.testing.assert_close(ssim(img, img), torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_vsm_saliency_hand_computed() -> None:
    # three pixels at level 0, one at 255: V(0) = 1*255, V(255) = 3*255 -> normalised 1/3 and 1
    img = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]]]], dtype=D)
    torch.testing.assert_close(vsm_saliency(img), torch.tensor([[[[1 / 3, 1 / 3], [1 / 3, 1.0]]]], dtype=D))
    # weights: sigmoid of the saliency difference / 0.1; y constant has saliency 0 everywhere
    m1, m2 = saliency_weights(img, torch.full_like(img, 0.4))
    s = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    torch.testing.assert_close(m1, torch.tensor([[[[s(10 / 3), s(10 / 3)], [s(10 / 3), s(10.0)]]]], dtype=D))
    torch.testing.assert_close(m1 + m2, torch.ones_like(m1))
    # a constant image has no salient pixel; the weights fall back to 0.5 / 0.5
    m1, m2 = saliency_weights(full(0.3, 4, 4), full(0.7, 4, 4))
    torch.testing.assert_close(m1, full(0.5, 4, 4))
    torch.testing.assert_close(m1 + m2, full(1.0, 4, 4))


def test_saliency_mse_hand_computed_both_forms() -> None:
    u, x, y = full(0.5, 2, 2), full(0.2, 2, 2), full(0.9, 2, 2)
    m1, m2 = full(0.25, 2, 2), full(0.75, 2, 2)
    # weighted: 0.25 * 0.3² + 0.75 * 0.4² = 0.0225 + 0.12
    assert float(saliency_mse_loss(u, x, y, m1, m2)) == pytest.approx(0.1425, abs=1e-12)
    # as printed: (0.5 - 0.05)² + (0.5 - 0.675)² = 0.2025 + 0.030625
    assert float(saliency_mse_loss(u, x, y, m1, m2, form="paper")) == pytest.approx(0.233125, abs=1e-12)
    # the weighted form is minimised by the saliency-weighted average m1 x + m2 y
    best = m1 * x + m2 * y
    assert float(saliency_mse_loss(best, x, y, m1, m2)) < float(saliency_mse_loss(best + 0.01, x, y, m1, m2))
    with pytest.raises(ValueError, match="form"):
        saliency_mse_loss(u, x, y, m1, m2, form="l1")


def test_gaussian_kernels_follow_opencv_sigma() -> None:
    assert [gaussian_sigma(k) for k in (3, 5, 7)] == pytest.approx([0.8, 1.1, 1.4])
    g = gaussian_kernel1d(3, 0.8, D)
    e = math.exp(-1 / (2 * 0.64))
    torch.testing.assert_close(g, torch.tensor([e, 1, e], dtype=D) / (1 + 2 * e))


def test_gradient_loss_hand_computed_impulse() -> None:
    # x: unit impulse in the middle of a 9x9 image, u = y = 0, only k = 3.
    x = torch.zeros(1, 1, 9, 9, dtype=D)
    x[..., 4, 4] = 1.0
    zero = torch.zeros_like(x)
    e = math.exp(-1 / (2 * 0.8**2))
    g = [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)]  # 1-D kernel
    # ∇x = δ - G*δ ; sum of squares = 1 - 2 G(0,0) + sum G² with G = g gᵀ
    g00 = g[1] ** 2
    sum_g2 = sum(a * a for a in g) ** 2
    expected = (1 - 2 * g00 + sum_g2) / 81
    assert float(detail(x, 3)[0, 0, 4, 4]) == pytest.approx(1 - g00, abs=1e-12)
    assert float(gradient_loss(zero, x, zero, sizes=(3,))) == pytest.approx(expected, abs=1e-12)
    # symmetric in the sources, zero when u carries the stronger detail
    assert float(gradient_loss(zero, zero, x, sizes=(3,))) == pytest.approx(expected, abs=1e-12)
    assert float(gradient_loss(x, x, zero)) == pytest.approx(0.0, abs=1e-15)
    # sign is kept: a negative impulse is the stronger detail too
    assert float(gradient_loss(-x, zero, -x)) == pytest.approx(0.0, abs=1e-15)


def test_fusion_loss_is_the_documented_sum() -> None:
    torch.manual_seed(0)
    u, x, y = (torch.rand(2, 1, 24, 24, dtype=D) for _ in range(3))
    out = fusion_loss(u, x, y, grad_weight=7.0)
    torch.testing.assert_close(out.total, out.ssim + out.mse + 7.0 * out.grad)
    torch.testing.assert_close(out.ssim, ssim_loss(u, x, y))
    torch.testing.assert_close(out.grad, gradient_loss(u, x, y))


def test_segmentation_loss_hand_computed_and_ignore_index() -> None:
    logits = torch.zeros(1, 4, 2, 2)
    labels = torch.tensor([[[0, 1], [255, 3]]])
    # uniform logits: CE = ln(4) on each of the 3 labelled pixels
    assert float(segmentation_loss(logits, labels)) == pytest.approx(math.log(4), abs=1e-6)
    logits[0, 1, 0, 1] = 2.0  # pixel with label 1 gets logit 2 -> -log(e²/(e²+3))
    expected = (2 * math.log(4) + -math.log(math.exp(2) / (math.exp(2) + 3))) / 3
    assert float(segmentation_loss(logits, labels)) == pytest.approx(expected, abs=1e-6)
    # unlabelled batch: zero loss, still differentiable
    x = torch.zeros(1, 4, 2, 2, requires_grad=True)
    loss = segmentation_loss(x, torch.full((1, 2, 2), 255))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.count_nonzero(x.grad) == 0
    # low-resolution logits are upsampled to the label size
    assert segmentation_loss(torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 4, dtype=torch.long)).item() == \
        pytest.approx(math.log(4), abs=1e-6)


def test_dynamic_weights_hand_computed() -> None:
    # r_f = 0.5 / 1.0 = 0.5, r_s = 2/2 = 1, T = 2, η = (1, 1)
    lam = dynamic_weights([[1.0, 0.5], [2.0, 2.0]], (1.0, 1.0), temperature=2.0)
    e1, e2 = math.exp(0.25), math.exp(0.5)
    assert lam == pytest.approx([e1 / (e1 + e2), e2 / (e1 + e2)])
    assert lam == pytest.approx([0.437823, 0.562177], abs=1e-6)
    # task preference scales, a task whose loss stalls (r = 1) gets more weight than one still falling
    lam = dynamic_weights([[1.0, 0.5], [2.0, 2.0]], (3.0, 1.0), 2.0)
    assert lam == pytest.approx([3 * e1 / (e1 + e2), e2 / (e1 + e2)])
    # too little history: rates are 1 -> λ = η / K
    assert dynamic_weights([[1.0], []], (2.0, 2.0)) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        dynamic_weights([[1.0]], (1.0, 1.0))


def test_dynamic_weight_average_keeps_last_two() -> None:
    dwa = DynamicWeightAverage((2.0, 2.0), temperature=1.0)
    assert dwa.weights() == pytest.approx([1.0, 1.0])
    for losses in ([9.0, 9.0], [4.0, 1.0], [2.0, 1.0]):
        dwa.record(losses)
    assert dwa.history == [[4.0, 2.0], [1.0, 1.0]]
    e1, e2 = math.exp(0.5), math.exp(1.0)
    assert dwa.weights() == pytest.approx([2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])


def test_poly_lr_with_warmup_and_schedule() -> None:
    assert poly_lr(0, 100, 1e-4, 1e-8, 0.9) == pytest.approx(1e-4)
    assert poly_lr(100, 100, 1e-4, 1e-8, 0.9) == pytest.approx(1e-8)
    assert poly_lr(50, 100, 1.0, 0.0, 1.0) == pytest.approx(0.5)
    # warm-up: linear from warmup_lr to base over 10 steps, then poly over the remaining 90
    assert poly_lr(5, 100, 1.0, 0.0, 1.0, warmup_steps=10, warmup_lr=0.0) == pytest.approx(0.5)
    assert poly_lr(55, 100, 1.0, 0.0, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert schedule(2, 3, 1) == [(1, "seg", 3), (1, "fusion", 1), (2, "seg", 3), (2, "fusion", 1)]
    assert schedule(2, 0, 5) == [(1, "fusion", 5), (2, "fusion", 5)]
