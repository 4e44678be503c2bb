"""Losses of SegMiF (Sec. 3.3-3.4 of the paper) as pure functions.

Notation follows the paper: ``u`` fused luminance, ``x`` visible luminance,
``y`` infrared, all ``(B, 1, H, W)`` in [0, 1]. Squared norms are averaged over
pixels (and the batch), so loss values do not depend on the image size.

- :func:`ssim_loss`:       L_SSIM = (1 - SSIM(u, x))/2 + (1 - SSIM(u, y))/2
- :func:`saliency_mse_loss`: L_MSE with VSM saliency weights (see its note)
- :func:`gradient_loss`:   L_grad = sum_k ||∇_k u - max(∇_k x, ∇_k y)||², ∇_k u = u - G_k(u)
- :func:`fusion_loss`:     L_f = L_SSIM + L_MSE + η L_grad
- :func:`segmentation_loss`: cross-entropy with ignore index 255
- :func:`dynamic_weights`: λ_i(n) = η_i exp(r_i(n-1)/T) / Σ_k exp(r_k(n-1)/T)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from rig.model.classes import IGNORE_INDEX

SSIM_C1 = 0.01**2  # (K1 * L)^2 with L = 1
SSIM_C2 = 0.03**2


def gaussian_sigma(size: int) -> float:
    """OpenCV's default sigma for a Gaussian kernel of ``size`` taps: 0.3((size-1)/2 - 1) + 0.8."""
    return 0.3 * ((size - 1) * 0.5 - 1) + 0.8


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def gaussian_blur(img: torch.Tensor, size: int, sigma: float | None = None, padding: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)``.

    ``padding="reflect"`` keeps the size; ``"valid"`` returns ``(H - size + 1, W - size + 1)``.
    """
    sigma = gaussian_sigma(size) if sigma is None else sigma
    c = img.shape[1]
    g = gaussian_kernel1d(size, sigma, img.dtype).to(img.device)
    if padding == "reflect":
        r = size // 2
        img = F.pad(img, (r, r, r, r), mode="reflect")
    elif padding != "valid":
        raise ValueError(f"padding must be 'reflect' or 'valid', got {padding!r}")
    img = F.conv2d(img, g.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(img, g.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004), Gaussian window, valid region, data range 1: shape ``(B,)``."""
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {tuple(a.shape[-2:])}")
    blur = lambda t: gaussian_blur(t, window, sigma, padding="valid")  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (num / den).flatten(1).mean(dim=1)


def ssim_loss(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_SSIM = (1 - SSIM(u, x))/2 + (1 - SSIM(u, y))/2, averaged over the batch."""
    return ((1 - ssim(u, x)) / 2 + (1 - ssim(u, y)) / 2).mean()


def vsm_saliency(img: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Visual saliency map (Ma et al., Infrared Phys. Technol. 2017), ``(B, 1, H, W)`` -> same, in [0, 1].

    With ``h`` the histogram of the image quantised to ``levels`` grey levels,
    a pixel of level ``i`` has saliency ``V(i) = sum_j h(j) |i - j|``: how much it
    differs from all other pixels. Normalised by the image's maximum.
    """
    b = img.shape[0]
    q = (img.detach().clamp(0, 1) * (levels - 1)).round().long().flatten(1)  # (B, N)
    hist = torch.zeros(b, levels, dtype=torch.float64, device=img.device)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float64))
    grid = torch.arange(levels, dtype=torch.float64, device=img.device)
    v = hist @ (grid[:, None] - grid[None, :]).abs()  # (B, levels): V(i) for every level
    v = v / v.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.gather(v, 1, q).view_as(img).to(img.dtype)


def saliency_weights(x: torch.Tensor, y: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """VSM weight maps ``m1 = sigmoid((S_x - S_y) / temperature)``, ``m2 = 1 - m1``.

    Per pixel, the source that is more salient gets most of the weight (0.5
    each where they are equally salient); ``temperature -> 0`` is a hard choice.
    A plain ratio ``S_x / (S_x + S_y)`` stays near 0.5 almost everywhere, which
    makes the pixel loss a plain average and the fused image flat.
    """
    s_x, s_y = vsm_saliency(x), vsm_saliency(y)
    m1 = torch.sigmoid((s_x - s_y) / temperature)
    return m1, 1 - m1


def saliency_mse_loss(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                      m1: torch.Tensor | None = None, m2: torch.Tensor | None = None,
                      form: str = "weighted") -> torch.Tensor:
    """Saliency-weighted pixel loss.

    ``form="weighted"`` (default): ``mean(m1 (u - x)²) + mean(m2 (u - y)²)``, minimised by
    the saliency-weighted average ``u* = m1 x + m2 y``.

    ``form="paper"``: the formula as printed, ``mean((u - m1 x)²) + mean((u - m2 y)²)``.
    Its minimiser is ``(m1 x + m2 y) / 2``: with ``m1 + m2 = 1`` it halves the
    brightness of the fused image, which is why it is not the default.
    """
    if m1 is None or m2 is None:
        m1, m2 = saliency_weights(x, y)
    if form == "weighted":
        return (m1 * (u - x) ** 2).mean() + (m2 * (u - y) ** 2).mean()
    if form == "paper":
        return ((u - m1 * x) ** 2).mean() + ((u - m2 * y) ** 2).mean()
    raise ValueError(f"form must be 'weighted' or 'paper', got {form!r}")


def detail(img: torch.Tensor, size: int) -> torch.Tensor:
    """Gradient operator of Eq. 5: ``∇_k img = img - G_k(img)`` (difference of the image and its blur)."""
    return img - gaussian_blur(img, size)


def stronger(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise the one of ``a``, ``b`` with the larger magnitude, sign kept."""
    return torch.where(a.abs() >= b.abs(), a, b)


def gradient_loss(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sizes: Sequence[int] = (3, 5, 7)) -> torch.Tensor:
    """L_grad = sum over k of mean((∇_k u - max(∇_k x, ∇_k y))²).

    ``max`` is taken by magnitude with the sign kept (:func:`stronger`): ``∇_k``
    is signed, and a plain maximum would prefer any positive response over a
    strong negative edge.
    """
    return sum(((detail(u, k) - stronger(detail(x, k), detail(y, k))) ** 2).mean() for k in sizes)


class FusionLoss(NamedTuple):
    total: torch.Tensor
    ssim: torch.Tensor
    mse: torch.Tensor
    grad: torch.Tensor


def fusion_loss(u: torch.Tensor, x: torch.Tensor, y: torch.Tensor, grad_weight: float = 100.0,
                mse_form: str = "weighted") -> FusionLoss:
    """L_f = L_SSIM + L_MSE + η L_grad, with η = ``grad_weight``; returns the terms too.

    The paper does not give η. With pixel-mean norms the gradient term of real
    pairs is about 1e-3, two orders below the others (e.g. for the plain average
    of a RoadScene pair: SSIM 0.23, MSE 0.04, grad 5e-4), so η = 100 makes it
    count; with a small η the plain average is already near the optimum.
    """
    l_ssim = ssim_loss(u, x, y)
    l_mse = saliency_mse_loss(u, x, y, form=mse_form)
    l_grad = gradient_loss(u, x, y)
    return FusionLoss(l_ssim + l_mse + grad_weight * l_grad, l_ssim, l_mse, l_grad)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels; 0 (with gradient) when no pixel is labelled.

    ``weight`` (per class) weights each pixel's term by its true class (class-balanced
    training); the sum is still divided by the number of labelled pixels.

    ``logits`` ``(B, C, h, w)`` are upsampled bilinearly to the label size ``(B, H, W)`` first.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    labels = labels.long()
    w = None if weight is None else weight.to(logits.device, logits.dtype)
    total = F.cross_entropy(logits, labels, weight=w, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum()
    return total / count.clamp_min(1)


def dynamic_weights(history: Sequence[Sequence[float]], task_preference: Sequence[float],
                    temperature: float = 2.0) -> list[float]:
    """Dynamic weight factors of Eq. 8-9.

    Args:
        history: per task, its loss history ``[..., L_i(n-2), L_i(n-1)]``.
        task_preference: ``η_i`` per task.
        temperature: ``T``.

    Returns ``λ_i(n) = η_i exp(r_i/T) / Σ_k exp(r_k/T)`` with ``r_i = L_i(n-1) / L_i(n-2)``.
    Until a task has two entries its rate is taken as 1 (so ``λ_i = η_i / K`` at the start).
    """
    if len(history) != len(task_preference):
        raise ValueError("history and task_preference need one entry per task")
    rates = [h[-1] / h[-2] if len(h) >= 2 and h[-2] > 0 else 1.0 for h in history]
    exps = [math.exp(r / temperature) for r in rates]
    total = sum(exps)
    return [eta * e / total for eta, e in zip(task_preference, exps)]


@dataclass
class DynamicWeightAverage:
    """Loss history and dynamic weights for the fusion phase (λ_1 for L_f, λ_2 for L_s).

    Call :meth:`record` with each window's mean losses; :meth:`weights` gives λ for the next window.
    """

    task_preference: tuple[float, ...] = (2.0, 2.0)
    temperature: float = 2.0
    history: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if self.history is None:
            self.history = [[] for _ in self.task_preference]

    def record(self, losses: Sequence[float]) -> None:
        for h, value in zip(self.history, losses):
            h.append(float(value))
            del h[:-2]  # only the last two are needed

    def weights(self) -> list[float]:
        return dynamic_weights(self.history, self.task_preference, self.temperature)
