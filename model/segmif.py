"""SegMiF: joint infrared-visible fusion and segmentation (Liu et al., ICCV 2023).

Inference is self-contained and takes two passes:

1. **Initial pass.** A parameter-free initial fusion (mean of the visible
   luminance and the LWIR, visible chroma) goes through the segmentation
   *encoder*; its stride-4 and stride-8 features are the semantic input of
   the HIA blocks. (The reference code instead feeds the segmentation encoder a
   fused image precomputed by an earlier model, so it cannot run from a raw
   pair; this pass replaces that and is used identically in training.)
2. **Interactive pass.** The fusion network, guided by those features through
   HIA, produces the fused luminance; colour comes back from the visible
   chroma (YCrCb). The full SegFormer then segments the fused RGB image.

The segmentation sub-network may run at a reduced resolution
(``SegMiFConfig.seg_scale``), which is what makes the bundled CPU model fast;
logits are upsampled back to the input size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rig.model.classes import get_class_set
from rig.model.color import guarded_colour, replace_luminance, rgb_to_ycrcb
from rig.model.fusion import FusionConfig, build_fusion_network, fusion_prior
from rig.model.mit import MIT_CONFIGS, MiTConfig, segformer_config
from rig.model.segformer import SegFormer


@dataclass(frozen=True)
class SegMiFConfig:
    """Everything that defines a SegMiF network's shape (stored in checkpoints).

    Attributes:
        name: registry name, informational.
        fusion: fusion sub-network size.
        encoder: Mix Transformer size.
        decoder_dim: SegFormer all-MLP decoder width.
        classes: class set, ``"fmb"`` (15) or ``"mfnet"`` (9).
        seg_scale: the segmentation sub-network sees the image resized by this factor.
        guidance_normalize: the initial pass normalises its image with the ImageNet
            statistics, as segmentation does. ``False`` feeds the encoder the [0, 1]
            image as is, which is what the SegMiF reference code trained its fusion
            network with (``reference_*`` configs).
        chroma_guard: colour of the fused image: the visible chroma fades to neutral as the
            fused luminance departs from the visible one, fully at a difference of
            ``chroma_guard`` (:func:`rig.model.color.guarded_colour`); 0 pastes the visible
            chroma unchanged (the paper's YCrCb recombination).
    """

    name: str = "custom"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    encoder: MiTConfig = field(default_factory=MiTConfig)
    decoder_dim: int = 256
    classes: str = "fmb"
    seg_scale: float = 1.0
    guidance_normalize: bool = True
    chroma_guard: float = 0.0

    def __post_init__(self) -> None:
        get_class_set(self.classes)
        if not 0.0 < self.seg_scale <= 1.0:
            raise ValueError(f"seg_scale must be in (0, 1], got {self.seg_scale}")

    @property
    def num_classes(self) -> int:
        return get_class_set(self.classes).num_classes

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, numbers, strings) for checkpoints and JSON."""
        d = asdict(self)
        d["encoder"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["encoder"].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SegMiFConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        d = dict(d)
        enc = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("encoder").items()}
        return cls(fusion=FusionConfig(**d.pop("fusion")), encoder=MiTConfig(**enc), **d)


def _paper_fusion() -> FusionConfig:
    return FusionConfig(width=32, growth=32, dense_layers=5, num_heads=8)


# The SegFormer decoder width is 256 for b0/b1 and 768 for b2-b5, as in SegFormer.
MODEL_CONFIGS: dict[str, SegMiFConfig] = {
    **{
        f"segmif_{b}": SegMiFConfig(name=f"segmif_{b}", fusion=_paper_fusion(), encoder=MIT_CONFIGS[b],
                                    decoder_dim=256 if b in ("b0", "b1") else 768)
        for b in ("b0", "b1", "b2", "b3", "b4", "b5")
    },
    # The bundled CPU-practical model: narrow 3-layer DRDBs at full resolution,
    # a small MiT at half resolution.
    "segmif_cpu": SegMiFConfig(
        name="segmif_cpu",
        fusion=FusionConfig(width=8, growth=8, dense_layers=3, num_heads=2, prior="pyramid"),
        encoder=MIT_CONFIGS["cpu"],
        decoder_dim=64,
        seg_scale=0.5,
        chroma_guard=0.5,
    ),
    # For tests only.
    "segmif_tiny": SegMiFConfig(
        name="segmif_tiny",
        fusion=FusionConfig(width=4, growth=4, dense_layers=2, num_heads=2),
        encoder=MIT_CONFIGS["tiny"],
        decoder_dim=16,
    ),
}
# The SegMiF reference code's published architecture (Fusion_Network3_ac + Network3('mit_b3')):
# 64-channel streams, its HIA and reconstruction, a 256-wide decoder, un-normalised guidance
# (see model/README.md, "Reference checkpoints"). rig.model.reference imports its weights.
REFERENCE_FUSION = FusionConfig(width=64, growth=32, dense_layers=5, num_heads=8, residual=False,
                                variant="reference")
MODEL_CONFIGS["reference_b3"] = SegMiFConfig(
    name="reference_b3", fusion=REFERENCE_FUSION, encoder=segformer_config("b3"), decoder_dim=256,
    guidance_normalize=False,
)
MODEL_CONFIGS["paper"] = replace(MODEL_CONFIGS["segmif_b3"], name="paper")
MODEL_CONFIGS["cpu"] = MODEL_CONFIGS["segmif_cpu"]
MODEL_CONFIGS["tiny"] = MODEL_CONFIGS["segmif_tiny"]


def get_config(name: str, **overrides: Any) -> SegMiFConfig:
    """A registered config by name (``paper``, ``cpu``, ``tiny``, ``segmif_b0`` ... ``segmif_b5``, ``reference_b3``).

    ``overrides`` replace top-level fields, e.g. ``get_config("cpu", classes="mfnet")``.
    """
    try:
        config = MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(MODEL_CONFIGS)}") from None
    return replace(config, **overrides) if overrides else config


class SegMiFOutput(NamedTuple):
    """Outputs of :meth:`SegMiF.forward`; images ``(B, C, H, W)`` in [0, 1]."""

    fused_y: torch.Tensor  # (B, 1, H, W) fused luminance
    fused_rgb: torch.Tensor  # (B, 3, H, W) fused colour image
    logits: torch.Tensor  # (B, classes, H, W) segmentation logits at input resolution


def minmax_normalize(y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Stretch each image of ``(B, 1, H, W)`` to span [0, 1] (the reference implementation's output step)."""
    lo = y.amin(dim=(1, 2, 3), keepdim=True)
    hi = y.amax(dim=(1, 2, 3), keepdim=True)
    return (y - lo) / (hi - lo).clamp_min(eps)


def initial_fusion(y_vis: torch.Tensor, lwir: torch.Tensor) -> torch.Tensor:
    """Parameter-free initial luminance for the first pass: the pixel mean."""
    return 0.5 * (y_vis + lwir)


class SegMiF(nn.Module):
    """SegMiF network. Inputs: visible RGB ``(B, 3, H, W)`` and LWIR ``(B, 1, H, W)``, float in [0, 1]."""

    def __init__(self, config: SegMiFConfig):
        super().__init__()
        self.config = config
        self.segmenter = SegFormer(config.encoder, config.decoder_dim, config.num_classes)
        self.fusion = build_fusion_network(config.fusion, (config.encoder.embed_dims[0], config.encoder.embed_dims[1]))

    def _seg_input(self, rgb: torch.Tensor) -> torch.Tensor:
        if self.config.seg_scale == 1.0:
            return rgb
        return F.interpolate(rgb, scale_factor=self.config.seg_scale, mode="bilinear", align_corners=False,
                             antialias=True)

    def semantic_features(self, visible: torch.Tensor, lwir: torch.Tensor) -> list[torch.Tensor]:
        """Initial pass: encoder features (strides 4, 8) of the initial fusion."""
        y_vis = rgb_to_ycrcb(visible)[:, :1]
        rgb0 = replace_luminance(visible, initial_fusion(y_vis, lwir))
        return self.segmenter.encode(self._seg_input(rgb0), normalize=self.config.guidance_normalize)[:2]

    def fuse(self, visible: torch.Tensor, lwir: torch.Tensor,
             features: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Interactive fusion pass: ``(fused_y (B,1,H,W), fused_rgb (B,3,H,W))``, both in [0, 1].

        The fusion network sees the visible *luminance* (Y of YCrCb), as the reference
        code trains it (its test script passes the red channel instead).
        """
        y_vis = rgb_to_ycrcb(visible)[:, :1]
        is_identity = getattr(self.fusion, "is_identity", None)
        if is_identity is not None and not torch.is_grad_enabled() and is_identity():
            # an untrained residual outputs sigmoid(logit(prior)): same numbers, no guidance pass needed
            # (only without autograd: training the fusion network needs the full graph)
            prior = fusion_prior(self.config.fusion.prior, y_vis, lwir)
            fused_y = torch.sigmoid(torch.logit(prior, eps=1e-3))
        else:
            if features is None:
                features = self.semantic_features(visible, lwir)
            # the rig variant ends in a sigmoid (clamping is a no-op); the reference one is unbounded
            fused_y = self.fusion(lwir, y_vis, features[0], features[1]).clamp(0.0, 1.0)
        return fused_y, self.colour(visible, fused_y)

    def colour(self, visible: torch.Tensor, fused_y: torch.Tensor) -> torch.Tensor:
        """The fused RGB image: ``fused_y`` under the visible chroma (guarded, see ``chroma_guard``)."""
        return guarded_colour(visible, fused_y, self.config.chroma_guard)

    def segment(self, rgb: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Segmentation logits of an RGB image, upsampled to ``size`` (default: the input size)."""
        logits = self.segmenter(self._seg_input(rgb))
        return F.interpolate(logits, size=size or rgb.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, visible: torch.Tensor, lwir: torch.Tensor) -> SegMiFOutput:
        fused_y, fused_rgb = self.fuse(visible, lwir)
        return SegMiFOutput(fused_y, fused_rgb, self.segment(fused_rgb))


def create_model(name_or_config: str | SegMiFConfig = "cpu", **overrides: Any) -> SegMiF:
    """A randomly initialised SegMiF from a registered name or a config."""
    config = get_config(name_or_config, **overrides) if isinstance(name_or_config, str) else name_or_config
    return SegMiF(config)
