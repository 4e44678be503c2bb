"""Dilated residual dense block (DRDB), the feature extractor of the fusion streams.

From Yan et al., "Attention-guided network for ghost-free HDR imaging" (CVPR
2019), as used by SegMiF: ``num_layers`` dilated 3x3 convolutions, each seeing
the concatenation of the block input and every earlier layer's output (dense
connectivity), a 1x1 local feature fusion back to ``channels``, and a residual
connection around the block.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """Dilated 3x3 conv + ReLU whose output is concatenated to its input."""

    def __init__(self, in_channels: int, growth: int, dilation: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=dilation, dilation=dilation)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.act(self.conv(x))), dim=1)


class DRDB(nn.Module):
    """Dilated residual dense block: ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        channels: input and output channels (the paper's ``in_ch``).
        growth: channels each dense layer adds (the paper's ``growth_rate``).
        num_layers: dense layers (5 in the reference implementation).
        dilation: dilation of the 3x3 convolutions.
    """

    def __init__(self, channels: int, growth: int, num_layers: int = 5, dilation: int = 2):
        super().__init__()
        self.layers = nn.Sequential(
            *(DenseLayer(channels + i * growth, growth, dilation) for i in range(num_layers))
        )
        self.local_fusion = nn.Conv2d(channels + num_layers * growth, channels, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.local_fusion(self.layers(x)))
