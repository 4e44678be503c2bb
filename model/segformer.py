"""SegFormer: Mix Transformer encoder + all-MLP decoder (Xie et al., NeurIPS 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rig.model.mit import MiTConfig, MixTransformer

# ImageNet statistics, the normalisation SegFormer encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AllMLPDecoder(nn.Module):
    """SegFormer head: per-stage linear projection to ``dim``, upsample to stride 4,
    concatenate, fuse with 1x1 conv + BN + ReLU, classify with a 1x1 conv."""

    def __init__(self, in_dims: tuple[int, ...], dim: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_dims)  # 1x1 conv == per-pixel linear
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_dims), dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [
            F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
            for i, (p, f) in enumerate(zip(self.proj, features))
        ]
        return self.classifier(self.dropout(self.fuse(torch.cat(maps[::-1], dim=1))))


class SegFormer(nn.Module):
    """Segmentation sub-network: RGB in [0, 1] -> logits at stride 4.

    The ImageNet normalisation is done inside (:meth:`normalize`), so callers pass
    plain [0, 1] images.
    """

    def __init__(self, encoder: MiTConfig, decoder_dim: int, num_classes: int):
        super().__init__()
        self.encoder = MixTransformer(encoder)
        self.decoder = AllMLPDecoder(encoder.embed_dims, decoder_dim, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        return (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)

    def encode(self, rgb: torch.Tensor, normalize: bool = True) -> list[torch.Tensor]:
        """The four encoder feature maps (strides 4, 8, 16, 32).

        ``normalize=False`` feeds the [0, 1] image to the encoder as is (what the SegMiF
        reference code does in its fusion-guidance pass).
        """
        return self.encoder(self.normalize(rgb) if normalize else rgb)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(rgb))
