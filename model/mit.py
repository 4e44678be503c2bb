"""Mix Transformer (MiT) encoder of SegFormer (Xie et al., NeurIPS 2021).

Four stages, each an overlapping patch embedding (strided convolution) followed
by transformer blocks with *efficient self-attention* (keys and values spatially
reduced by ``sr_ratio``) and a Mix-FFN (an MLP with a 3x3 depth-wise
convolution, which gives position information without position embeddings).
Stage outputs have strides 4, 8, 16 and 32.

Sizes ``b0`` ... ``b5`` follow the paper; :data:`MIT_CONFIGS` also holds two
small sizes used for the CPU-practical bundled model and for tests.

Parameter names differ from NVlabs' ``MixVisionTransformer`` (``stages.{i}.blocks.{j}``
here, ``block{i+1}.{j}`` there); :func:`segformer_key` gives theirs for ours, which is
how published SegFormer / SegMiF weights are imported (:mod:`rig.model.reference`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MiTConfig:
    """Size of a Mix Transformer encoder (one entry per stage).

    Attributes:
        norm_eps: epsilon of the transformer blocks' and the stage-final LayerNorms
            (SegFormer uses 1e-6; its patch-embedding and key/value-reduction norms
            keep PyTorch's default 1e-5, and so do ours).
        pad_reduction: pad a stage's token grid (replicate) up to a multiple of
            ``sr_ratio`` before the key/value reduction, so no border row or column
            is dropped and tiny inputs still give keys. ``False`` is SegFormer's
            strided convolution as is (it drops the remainder), needed to reproduce
            published weights exactly at sizes that are not multiples of 32.
    """

    embed_dims: tuple[int, int, int, int] = (32, 64, 160, 256)
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    in_channels: int = 3
    drop_path_rate: float = 0.1
    norm_eps: float = 1e-5
    pad_reduction: bool = True

    def __post_init__(self) -> None:
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if dim % heads:
                raise ValueError(f"MiT embed dim {dim} is not divisible by its head count {heads}")


_B1_5_DIMS = (64, 128, 320, 512)
MIT_CONFIGS: dict[str, MiTConfig] = {
    "tiny": MiTConfig(embed_dims=(8, 16, 24, 32), num_heads=(1, 1, 1, 2), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)),
    "cpu": MiTConfig(embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 2, 4), depths=(1, 1, 2, 1)),
    # SegFormer's sizes, with its LayerNorm epsilon so that ImageNet weights load as trained.
    "b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), norm_eps=1e-6),
    "b1": MiTConfig(embed_dims=_B1_5_DIMS, depths=(2, 2, 2, 2), norm_eps=1e-6),
    "b2": MiTConfig(embed_dims=_B1_5_DIMS, depths=(3, 4, 6, 3), norm_eps=1e-6),
    "b3": MiTConfig(embed_dims=_B1_5_DIMS, depths=(3, 4, 18, 3), norm_eps=1e-6),
    "b4": MiTConfig(embed_dims=_B1_5_DIMS, depths=(3, 8, 27, 3), norm_eps=1e-6),
    "b5": MiTConfig(embed_dims=_B1_5_DIMS, depths=(3, 6, 40, 3), norm_eps=1e-6),
}


def segformer_config(name: str) -> MiTConfig:
    """``b0`` ... ``b5`` exactly as SegFormer computes them (no key/value-reduction padding)."""
    return replace(MIT_CONFIGS[name], pad_reduction=False)


_SEGFORMER_NAMES = (
    (re.compile(r"stages\.(\d+)\.patch_embed\.(.+)"), "patch_embed{0}.{1}"),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.(.+)"), "block{0}.{1}.mlp.dwconv.dwconv.{2}"),
    (re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)"), "block{0}.{1}.{2}"),
    (re.compile(r"stages\.(\d+)\.norm\.(.+)"), "norm{0}.{1}"),
)


def segformer_key(key: str) -> str:
    """The name NVlabs SegFormer's ``MixVisionTransformer`` gives our encoder state-dict entry ``key``.

    ``stages.0.patch_embed.proj.weight`` -> ``patch_embed1.proj.weight``,
    ``stages.2.blocks.5.mlp.dwconv.bias`` -> ``block3.5.mlp.dwconv.dwconv.bias``,
    ``stages.3.norm.weight`` -> ``norm4.weight``. The tensors have the same shapes.
    """
    for pattern, template in _SEGFORMER_NAMES:
        m = pattern.fullmatch(key)
        if m:
            stage, *rest = m.groups()
            return template.format(int(stage) + 1, *rest)
    raise KeyError(f"not a Mix Transformer parameter: {key!r}")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Strided conv patch embedding with overlap: ``(B, C, H, W) -> (B, N, D), (h, w)``."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values are spatially reduced by ``sr_ratio``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, pad_reduction: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.pad_reduction = pad_reduction
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, *hw)
            # ceil_mode-like: pad so small inputs still give at least one key
            ph, pw = (-hw[0]) % self.sr_ratio, (-hw[1]) % self.sr_ratio
            if self.pad_reduction and (ph or pw):
                grid = F.pad(grid, (0, pw, 0, ph), mode="replicate")
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    """Linear -> 3x3 depth-wise conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(x))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: efficient self-attention then Mix-FFN, both residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float,
                 norm_eps: float = 1e-5, pad_reduction: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, pad_reduction)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), hw), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x), hw), self.drop_path, self.training)


class MiTStage(nn.Module):
    """Patch embedding, ``depth`` blocks, final LayerNorm; returns a ``(B, D, h, w)`` map."""

    def __init__(self, in_channels: int, dim: int, patch: int, stride: int, depth: int,
                 num_heads: int, mlp_ratio: int, sr_ratio: int, drop_paths: list[float],
                 norm_eps: float = 1e-5, pad_reduction: bool = True):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_channels, dim, patch, stride)
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, mlp_ratio, sr_ratio, dp, norm_eps, pad_reduction) for dp in drop_paths
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x, hw = self.patch_embed(x)
        for block in self.blocks:
            x = block(x, hw)
        return self.norm(x).transpose(1, 2).reshape(b, -1, *hw)


class MixTransformer(nn.Module):
    """MiT encoder: image ``(B, 3, H, W)`` -> four feature maps at strides 4, 8, 16, 32."""

    def __init__(self, config: MiTConfig):
        super().__init__()
        self.config = config
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages, start, in_ch = [], 0, config.in_channels
        for i in range(4):
            depth = config.depths[i]
            stages.append(MiTStage(
                in_ch, config.embed_dims[i], 7 if i == 0 else 3, 4 if i == 0 else 2, depth,
                config.num_heads[i], config.mlp_ratios[i], config.sr_ratios[i], rates[start:start + depth],
                config.norm_eps, config.pad_reduction,
            ))
            start += depth
            in_ch = config.embed_dims[i]
        self.stages = nn.ModuleList(stages)

    @property
    def embed_dims(self) -> tuple[int, int, int, int]:
        return self.config.embed_dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
