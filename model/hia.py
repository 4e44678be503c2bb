"""Hierarchical interactive attention (HIA): semantic <-> modality feature exchange.

Inputs are the two modality feature maps ``F_ir``, ``F_vis`` of the fusion
network and a segmentation feature map ``F_seg`` (already projected to the same
width and resolution), each ``(B, C, H, W)`` and read as ``N = H*W`` tokens.

1. *Channel embedding* splits every input into two tokens: one for the
   semantic-oriented branch and one for the modality-oriented branch (the
   paper's ``F^s`` and ``F^m``).
2. *SoAM* (semantic-oriented attention): the query ``Q_s`` comes from the
   segmentation token; the modality tokens give global contexts
   ``G_ir = K_irᵀ V_ir`` and ``G_vis = K_visᵀ V_vis`` (``d x d`` per head, so
   the cost is linear in ``N``); ``S_ir = Q_s G_ir``, ``S_vis = Q_s G_vis``.
3. *MoAM* (modality-oriented attention): modality queries ``Q_ir``, ``Q_vis``
   attend to the segmentation context ``G_s = K_sᵀ V_s``:
   ``M_ir = Q_ir G_s``, ``M_vis = Q_vis G_s``.
4. ``[S_x, M_x]`` goes through one MLP per modality (two parallel MLPs), is
   added to ``F_x`` (residual) and layer-normalised over channels.

Where the paper is loose: the contexts are normalised as in *efficient
attention* (Shen et al., WACV 2021): keys are soft-maxed over the pixels and
queries over each head's channels, so ``G`` is a weighted *mean* rather than a
sum over pixels and the output scale does not depend on the image size (the
reference code softmaxes an unnormalised sum, which saturates at large ``N``).

``attention="reference"`` is instead what the SegMiF reference code computes
(its ``CrossPath`` / ``CrossAttention`` / ``CrossAttention2``), needed to run its
published weights: queries are the branch tokens themselves (no projection),
keys and values come from bias-free projections, each head's context is
``softmax_i(d^-1/2 Σ_n K[n, i] V[n, j])`` (an unnormalised sum over pixels, soft-maxed
over the key channel ``i``), outputs are ``Q G`` without a query softmax, and
``[S_x, M_x]`` is folded back by a single linear layer before the LayerNorm.
The sum over pixels grows with the image, so at 600x800 these contexts are
nearly one-hot; that is how the published weights were trained, so it is kept.

Tokens are token-major ``(B, N, C)``; with the fusion network's channels-last
feature maps this is a view, not a copy. Heads are handled with
block-diagonal ``C x C`` contexts so that every step is one batched matrix
product (per-head ``d x d`` matrices are the diagonal blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def head_mask(dim: int, num_heads: int, device: torch.device | None = None) -> torch.Tensor:
    """``(C, C)`` block-diagonal 0/1 mask: channel ``i`` and ``j`` are in the same head."""
    head = torch.arange(dim, device=device) // (dim // num_heads)
    return (head[:, None] == head[None, :]).float()


def global_context(keys: torch.Tensor, values: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per-head ``G = softmax_N(K)ᵀ V``: ``(B, N, C) x2 -> (B, C, C)`` block-diagonal, linear in ``N``.

    Block ``h`` is head ``h``'s ``d x d`` context:
    ``G[b, i, j] = sum_n softmax_n(K[b, :, i])[n] * V[b, n, j]`` for ``i, j`` in the same head, else 0.
    """
    g = keys.transpose(1, 2).softmax(dim=-1) @ values  # softmax over N, laid out (B, C, N): fast on CPU
    return g * head_mask(keys.shape[-1], num_heads, keys.device).to(g.dtype)


def attend(queries: torch.Tensor, context: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``softmax_d(Q) G`` per head: ``(B, N, C), (B, C, K) -> (B, N, K)``.

    The softmax runs over each head's channels; ``K`` may hold several contexts side by side.
    """
    c = queries.shape[-1]
    # Per-head softmax without a size-d softmax kernel (slow for small d on CPU):
    # any per-token shift is valid for every head; head sums come from one product with the mask.
    e = torch.exp(queries - queries.amax(dim=-1, keepdim=True))
    q = e / (e @ head_mask(c, num_heads, queries.device).to(e.dtype))
    return q @ context


def channel_softmax_context(keys: torch.Tensor, values: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The reference code's per-head context ``softmax_i(d^-1/2 KᵀV)``: ``(B, N, C) x2 -> (B, C, C)`` block-diagonal.

    Block ``h``: ``G[b, i, j] = softmax over i of (sum_n K[b, n, i] V[b, n, j]) / sqrt(d)``, ``i, j`` in
    head ``h`` (``d = C / num_heads``); entries across heads are 0.
    """
    c = keys.shape[-1]
    logits = (keys.transpose(1, 2) @ values) * (c // num_heads) ** -0.5
    same_head = head_mask(c, num_heads, keys.device).bool()
    return logits.masked_fill(~same_head, float("-inf")).softmax(dim=-2)


class ChannelEmbedding(nn.Module):
    """Linear + ReLU to ``2 * dim`` channels, split into (semantic-branch, modality-branch) tokens."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        so, mo = F.relu(self.proj(x)).chunk(2, dim=-1)
        return so, mo


class SemanticOrientedAttention(nn.Module):
    """SoAM: ``S_ir = Q_s G_ir``, ``S_vis = Q_s G_vis`` with ``G_x = K_xᵀ V_x`` from modality tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_seg = nn.Linear(dim, dim)
        self.kv_ir = nn.Linear(dim, 2 * dim)
        self.kv_vis = nn.Linear(dim, 2 * dim)

    def forward(self, t_ir: torch.Tensor, t_vis: torch.Tensor, t_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.num_heads
        g_ir = global_context(*self.kv_ir(t_ir).chunk(2, dim=-1), h)
        g_vis = global_context(*self.kv_vis(t_vis).chunk(2, dim=-1), h)
        # One product for both: [S_ir | S_vis] = Q_s [G_ir | G_vis], with one query softmax.
        s = attend(self.q_seg(t_seg), torch.cat((g_ir, g_vis), dim=-1), h)
        return s.chunk(2, dim=-1)


class ModalityOrientedAttention(nn.Module):
    """MoAM: ``M_ir = Q_ir G_s``, ``M_vis = Q_vis G_s`` with ``G_s = K_sᵀ V_s`` from the segmentation token."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_ir = nn.Linear(dim, dim)
        self.q_vis = nn.Linear(dim, dim)
        self.kv_seg = nn.Linear(dim, 2 * dim)

    def forward(self, t_ir: torch.Tensor, t_vis: torch.Tensor, t_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.num_heads
        g_s = global_context(*self.kv_seg(t_seg).chunk(2, dim=-1), h)
        return attend(self.q_ir(t_ir), g_s, h), attend(self.q_vis(t_vis), g_s, h)


class ReferenceSemanticAttention(nn.Module):
    """SoAM as the reference code computes it: ``S_x = T_s G_x`` with ``G_x`` from bias-free ``K_x``, ``V_x``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.kv_ir = nn.Linear(dim, 2 * dim, bias=False)
        self.kv_vis = nn.Linear(dim, 2 * dim, bias=False)

    def forward(self, t_ir: torch.Tensor, t_vis: torch.Tensor, t_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.num_heads
        g_ir = channel_softmax_context(*self.kv_ir(t_ir).chunk(2, dim=-1), h)
        g_vis = channel_softmax_context(*self.kv_vis(t_vis).chunk(2, dim=-1), h)
        return (t_seg @ torch.cat((g_ir, g_vis), dim=-1)).chunk(2, dim=-1)


class ReferenceModalityAttention(nn.Module):
    """MoAM as the reference code computes it: ``M_x = T_x G_s`` with ``G_s`` from bias-free ``K_s``, ``V_s``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.kv_seg = nn.Linear(dim, 2 * dim, bias=False)

    def forward(self, t_ir: torch.Tensor, t_vis: torch.Tensor, t_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_s = channel_softmax_context(*self.kv_seg(t_seg).chunk(2, dim=-1), self.num_heads)
        return t_ir @ g_s, t_vis @ g_s


class ResidualLinear(nn.Module):
    """``LayerNorm(x + Linear(y))``: the reference code's fold-back (its ``end_proj`` + ``norm``)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.proj(y))


class ResidualMLP(nn.Module):
    """``LayerNorm(x + MLP(y))``: fold the attention output ``y`` back into feature ``x``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(y))


HIA_ATTENTIONS = ("efficient", "reference")


class HierarchicalInteractiveAttention(nn.Module):
    """HIA on ``(B, C, H, W)`` maps: ``(F_ir, F_vis, F_seg) -> (F_ir', F_vis')``.

    Args:
        dim: channels of all three inputs and of the tokens.
        num_heads: attention heads (``dim`` must be divisible by it).
        soam, moam: switch either branch off (the paper's Table 3 ablations);
            at least one must be on.
        attention: ``"efficient"`` (ours, see the module doc) or ``"reference"``
            (the SegMiF reference code's computation, for its published weights).
    """

    def __init__(self, dim: int, num_heads: int, soam: bool = True, moam: bool = True,
                 attention: str = "efficient"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"HIA dim {dim} is not divisible by num_heads {num_heads}")
        if not (soam or moam):
            raise ValueError("HIA needs at least one of SoAM and MoAM")
        if attention not in HIA_ATTENTIONS:
            raise ValueError(f"HIA attention must be one of {', '.join(HIA_ATTENTIONS)}, got {attention!r}")
        reference = attention == "reference"
        self.embed_ir = ChannelEmbedding(dim, dim)
        self.embed_vis = ChannelEmbedding(dim, dim)
        self.embed_seg = ChannelEmbedding(dim, dim)
        soam_cls = ReferenceSemanticAttention if reference else SemanticOrientedAttention
        moam_cls = ReferenceModalityAttention if reference else ModalityOrientedAttention
        self.soam = soam_cls(dim, num_heads) if soam else None
        self.moam = moam_cls(dim, num_heads) if moam else None
        branches = int(soam) + int(moam)
        fold = ResidualLinear if reference else ResidualMLP
        self.mlp_ir = fold(branches * dim, dim)
        self.mlp_vis = fold(branches * dim, dim)

    def forward(self, f_ir: torch.Tensor, f_vis: torch.Tensor, f_seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = f_ir.shape
        # (B, C, H, W) -> (B, N, C); a view for channels-last inputs.
        x_ir, x_vis, x_seg = (f.permute(0, 2, 3, 1).reshape(b, h * w, c) for f in (f_ir, f_vis, f_seg))
        so_ir, mo_ir = self.embed_ir(x_ir)
        so_vis, mo_vis = self.embed_vis(x_vis)
        so_seg, mo_seg = self.embed_seg(x_seg)
        parts_ir, parts_vis = [], []
        if self.soam is not None:
            s_ir, s_vis = self.soam(so_ir, so_vis, so_seg)
            parts_ir.append(s_ir)
            parts_vis.append(s_vis)
        if self.moam is not None:
            m_ir, m_vis = self.moam(mo_ir, mo_vis, mo_seg)
            parts_ir.append(m_ir)
            parts_vis.append(m_vis)
        y_ir = self.mlp_ir(x_ir, torch.cat(parts_ir, dim=-1))
        y_vis = self.mlp_vis(x_vis, torch.cat(parts_vis, dim=-1))
        # back to (B, C, H, W), channels-last memory
        return y_ir.reshape(b, h, w, c).permute(0, 3, 1, 2), y_vis.reshape(b, h, w, c).permute(0, 3, 1, 2)
