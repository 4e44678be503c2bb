"""Fusion sub-network of SegMiF.

Two parallel streams (LWIR, visible luminance), each ``stem -> DRDB -> HIA ->
DRDB -> HIA``, where the two HIA blocks receive segmentation features from two
encoder stages (strides 4 and 8) projected to the fusion width and
interpolated to the fusion resolution. The two streams are concatenated and a
small convolutional head reconstructs the fused luminance in [0, 1].

:class:`ReferenceFusionNetwork` (``FusionConfig(variant="reference")``) is the
same pipeline laid out as the SegMiF reference code's ``Fusion_Network3_ac``, so
that its published weights run unchanged (see :mod:`rig.model.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rig.model.drdb import DRDB
from rig.model.hia import HierarchicalInteractiveAttention


@dataclass(frozen=True)
class FusionConfig:
    """Size of the fusion sub-network.

    Attributes:
        width: channels of each stream (the paper's DRDB ``in_ch``).
        growth: DRDB growth rate.
        dense_layers: dense layers per DRDB.
        num_heads: HIA attention heads.
        soam, moam: HIA branches (Table 3 ablations).
        residual: predict the fused luminance as a correction of the initial
            fusion ``(x + y) / 2`` in logit space, with the last layer zero-initialised,
            so an untrained network starts at the averaging baseline and training
            only has to learn what to add (much faster to train, especially on CPU).
            ``False``: the network outputs the luminance directly, as in the paper.
        variant: ``"rig"`` (:class:`FusionNetwork`) or ``"reference"``
            (:class:`ReferenceFusionNetwork`, the layout of the SegMiF code's
            published weights; needs ``residual=False``).
    """

    width: int = 32
    growth: int = 32
    dense_layers: int = 5
    num_heads: int = 8
    soam: bool = True
    moam: bool = True
    residual: bool = True
    variant: str = "rig"

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"fusion width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.variant not in FUSION_VARIANTS:
            raise ValueError(f"fusion variant must be one of {', '.join(FUSION_VARIANTS)}, got {self.variant!r}")
        if self.variant == "reference" and self.residual:
            raise ValueError("the reference fusion variant outputs the luminance directly; set residual=False")


FUSION_VARIANTS = ("rig", "reference")


def _stem(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.PReLU(width))


class FusionNetwork(nn.Module):
    """``(lwir, y_vis, seg_feat_s4, seg_feat_s8) -> fused luminance``, all ``(B, 1, H, W)`` in [0, 1].

    Args:
        config: sizes.
        seg_dims: channels of the two segmentation feature maps (encoder stages 1 and 2).
    """

    def __init__(self, config: FusionConfig, seg_dims: tuple[int, int]):
        super().__init__()
        c = config.width
        self.config = config
        self.stem_ir, self.stem_vis = _stem(c), _stem(c)
        self.drdb_ir1 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_vis1 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_ir2 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_vis2 = DRDB(c, config.growth, config.dense_layers)
        self.seg_proj1 = nn.Conv2d(seg_dims[0], c, 1)
        self.seg_proj2 = nn.Conv2d(seg_dims[1], c, 1)
        self.hia1 = HierarchicalInteractiveAttention(c, config.num_heads, config.soam, config.moam)
        self.hia2 = HierarchicalInteractiveAttention(c, config.num_heads, config.soam, config.moam)
        self.reconstruct = nn.Sequential(
            nn.Conv2d(2 * c, c, 3, padding=1), nn.PReLU(c), nn.Conv2d(c, 1, 3, padding=1)
        )
        if config.residual:
            nn.init.zeros_(self.reconstruct[-1].weight)
            nn.init.zeros_(self.reconstruct[-1].bias)

    def forward(self, lwir: torch.Tensor, y_vis: torch.Tensor, seg1: torch.Tensor, seg2: torch.Tensor) -> torch.Tensor:
        # Channels-last memory: ~3x faster small-channel convolutions on CPU, and
        # the HIA token view (B, N, C) without copies.
        cl = torch.channels_last
        size = lwir.shape[-2:]
        s1 = F.interpolate(self.seg_proj1(seg1), size=size, mode="bilinear", align_corners=False).contiguous(memory_format=cl)
        s2 = F.interpolate(self.seg_proj2(seg2), size=size, mode="bilinear", align_corners=False).contiguous(memory_format=cl)
        f_ir = self.drdb_ir1(self.stem_ir(lwir.contiguous(memory_format=cl)).contiguous(memory_format=cl))
        f_vis = self.drdb_vis1(self.stem_vis(y_vis.contiguous(memory_format=cl)).contiguous(memory_format=cl))
        f_ir, f_vis = self.hia1(f_ir, f_vis, s1)
        f_ir, f_vis = self.drdb_ir2(f_ir), self.drdb_vis2(f_vis)
        f_ir, f_vis = self.hia2(f_ir, f_vis, s2)
        out = self.reconstruct(torch.cat((f_ir, f_vis), dim=1))
        if self.config.residual:
            out = out + torch.logit(0.5 * (lwir + y_vis), eps=1e-3)
        return torch.sigmoid(out)


class ReferenceFusionNetwork(nn.Module):
    """The SegMiF reference code's fusion network (``Fusion_Network3_ac``), in our module names.

    Differences from :class:`FusionNetwork`, all reproduced from that code:

    * one scalar PReLU (:attr:`act`) is shared by both stems and all three reconstruction layers;
    * HIA uses the reference attention (``attention="reference"`` in :mod:`rig.model.hia`);
    * the reconstruction is ``2c -> c -> c/2 -> 1`` (3x3 convolutions, each followed by
      the shared PReLU); its output is not bounded (the caller clamps to [0, 1]);
    * there is no residual to the average.

    The reference code also has one HIA (``ffm``) that it applies at both depths
    (``ffm2`` is built but never used); here :attr:`hia1` and :attr:`hia2` are separate
    modules, loaded with the same weights by the importer, so fine-tuning may split them.
    """

    def __init__(self, config: FusionConfig, seg_dims: tuple[int, int]):
        super().__init__()
        if config.width % 2:
            raise ValueError(f"reference fusion width must be even, got {config.width}")
        c = config.width
        self.config = config
        self.act = nn.PReLU()  # one parameter, shared
        self.stem_ir = nn.Conv2d(1, c, 3, padding=1)
        self.stem_vis = nn.Conv2d(1, c, 3, padding=1)
        self.drdb_ir1 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_vis1 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_ir2 = DRDB(c, config.growth, config.dense_layers)
        self.drdb_vis2 = DRDB(c, config.growth, config.dense_layers)
        self.seg_proj1 = nn.Conv2d(seg_dims[0], c, 1)
        self.seg_proj2 = nn.Conv2d(seg_dims[1], c, 1)
        self.hia1 = HierarchicalInteractiveAttention(c, config.num_heads, config.soam, config.moam, "reference")
        self.hia2 = HierarchicalInteractiveAttention(c, config.num_heads, config.soam, config.moam, "reference")
        self.reconstruct = nn.ModuleList((
            nn.Conv2d(2 * c, c, 3, padding=1), nn.Conv2d(c, c // 2, 3, padding=1), nn.Conv2d(c // 2, 1, 3, padding=1)
        ))

    def forward(self, lwir: torch.Tensor, y_vis: torch.Tensor, seg1: torch.Tensor, seg2: torch.Tensor) -> torch.Tensor:
        """``(lwir, y_vis (B,1,H,W), seg1, seg2 (stride 4 and 8, any resolution)) -> (B, 1, H, W)``, unbounded.

        The segmentation features are projected, then resized to ``(H, W)`` (the
        reference resizes first; bilinear resizing and 1x1 convolutions commute).
        """
        size = lwir.shape[-2:]
        s1 = F.interpolate(self.seg_proj1(seg1), size=size, mode="bilinear", align_corners=False)
        s2 = F.interpolate(self.seg_proj2(seg2), size=size, mode="bilinear", align_corners=False)
        f_ir = self.drdb_ir1(self.act(self.stem_ir(lwir)))
        f_vis = self.drdb_vis1(self.act(self.stem_vis(y_vis)))
        f_ir, f_vis = self.hia1(f_ir, f_vis, s1)
        f_ir, f_vis = self.drdb_ir2(f_ir), self.drdb_vis2(f_vis)
        f_ir, f_vis = self.hia2(f_ir, f_vis, s2)
        out = torch.cat((f_ir, f_vis), dim=1)
        for conv in self.reconstruct:
            out = self.act(conv(out))
        return out


def build_fusion_network(config: FusionConfig, seg_dims: tuple[int, int]) -> nn.Module:
    """The fusion sub-network that ``config.variant`` names."""
    cls = ReferenceFusionNetwork if config.variant == "reference" else FusionNetwork
    return cls(config, seg_dims)
