"""Class sets and colour palettes for the segmentation head.

FMB (Liu et al., ICCV 2023) has 15 classes (14 labelled + background), MFNet
(Ha et al., IROS 2017) has 9. Pixels labelled :data:`IGNORE_INDEX` are left out
of the loss and of the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255

FMB_CLASSES: tuple[str, ...] = (
    "background",
    "road",
    "sidewalk",
    "building",
    "traffic lamp",
    "traffic sign",
    "vegetation",
    "sky",
    "person",
    "car",
    "truck",
    "bus",
    "motorcycle",
    "bicycle",
    "pole",
)

# Cityscapes-like colours so the rig's Color/ output reads like familiar driving data.
FMB_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (70, 130, 180),
    (220, 20, 60),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 0, 230),
    (119, 11, 32),
    (153, 153, 153),
)

MFNET_CLASSES: tuple[str, ...] = (
    "unlabelled",
    "car",
    "person",
    "bike",
    "curve",
    "car stop",
    "guardrail",
    "color cone",
    "bump",
)

MFNET_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
    (0, 0, 192),
    (128, 128, 0),
    (64, 64, 128),
    (192, 128, 128),
    (192, 64, 0),
)


@dataclass(frozen=True)
class ClassSet:
    """A named list of classes with their display colours."""

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)


CLASS_SETS: dict[str, ClassSet] = {
    "fmb": ClassSet("fmb", FMB_CLASSES, FMB_PALETTE),
    "mfnet": ClassSet("mfnet", MFNET_CLASSES, MFNET_PALETTE),
}


def get_class_set(name: str) -> ClassSet:
    """Look up a class set by name (``"fmb"`` or ``"mfnet"``)."""
    try:
        return CLASS_SETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown class set {name!r}; known: {', '.join(CLASS_SETS)}") from None


def colorize(labels, palette=FMB_PALETTE):
    """Map an integer label image (H, W) or (B, H, W) to RGB uint8 with ``palette``.

    Labels outside the palette (e.g. :data:`IGNORE_INDEX`) become white.
    """
    import numpy as np

    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[np.asarray(labels, dtype=np.uint8)]
