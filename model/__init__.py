"""SegMiF fusion + segmentation for the rig (``rig.model``).

Public API::

    load_model(path=None, device="cpu") -> SegMiF        # bundled weights by default
    fuse_and_segment(visible, lwir, model=None) -> (fused_rgb uint8, labels uint8)
    fuse(visible, lwir, model=None) -> fused_rgb uint8   # the same fused images, no segmentation head
    FMB_CLASSES, FMB_PALETTE, MFNET_CLASSES, MFNET_PALETTE, MODEL_VERSION
    create_model(name) / get_config(name) / MODEL_CONFIGS  # "cpu", "paper", "segmif_b0".."segmif_b5", "tiny"

Heavy imports (torch) happen on first use of the model classes, so importing
this package for the class tables is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rig.model.api import MODEL_VERSION, bundled_weights_path, check_pair, fuse, fuse_and_segment, load_model
from rig.model.classes import FMB_CLASSES, FMB_PALETTE, IGNORE_INDEX, MFNET_CLASSES, MFNET_PALETTE, colorize

if TYPE_CHECKING:
    from rig.model.segmif import MODEL_CONFIGS, SegMiF, SegMiFConfig, create_model, get_config

_LAZY = {"SegMiF", "SegMiFConfig", "MODEL_CONFIGS", "create_model", "get_config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rig.model import segmif

        return getattr(segmif, name)
    raise AttributeError(f"module 'rig.model' has no attribute {name!r}")


__all__ = [
    "FMB_CLASSES", "FMB_PALETTE", "IGNORE_INDEX", "MFNET_CLASSES", "MFNET_PALETTE", "MODEL_VERSION",
    "MODEL_CONFIGS", "SegMiF", "SegMiFConfig", "bundled_weights_path", "check_pair", "colorize",
    "create_model", "fuse", "fuse_and_segment", "get_config", "load_model",
]
