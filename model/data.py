"""Datasets: the layouts SegMiF is trained and evaluated on, plus the rig's simulator.

Supported layouts (detected by :func:`find_pairs`):

``fmb``
    FMB and the rig's registered output: ``ROOT/[train|test/]{Visible,Infrared[,Label]}/NAME.png``;
    Visible 8-bit RGB, Infrared 8-bit grey, Label 8-bit class ids (15 classes).
``msrs``
    MSRS (MFNet re-registered): ``ROOT/{train,test}/{vi,ir,Segmentation_labels|Label}/NAME.png`` (9 classes).
``mfnet``
    original MFNet: ``ROOT/images/NAME.png`` 4-channel (RGB + thermal), ``ROOT/labels/NAME.png``,
    split lists ``ROOT/{train,val,test}.txt`` (9 classes).
``roadscene``
    unlabelled pairs ``ROOT/{visible,infrared}/NAME.*`` (e.g. RoadScene); fusion only.

Simulated labelled scenes (:func:`render_sim_dataset`) are written to a cache in
the ``fmb`` layout, so they load like any other dataset.

Loaders check what they read: 8-bit images, equal pair sizes, label ids within
the class set. Problems are :class:`~rig.errors.RigError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from rig.errors import RigError
from rig.model.classes import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS = ("fmb", "msrs", "mfnet", "roadscene")
_LABEL_DIRS = ("Label", "Segmentation_labels", "labels", "label")


@dataclass(frozen=True)
class PairRecord:
    """One registered pair on disk. ``visible`` may be a 4-channel MFNet image (then ``infrared`` is the same file)."""

    name: str
    visible: Path
    infrared: Path
    label: Path | None = None


@dataclass(frozen=True)
class Sample:
    """A loaded pair: visible ``(H, W, 3)`` RGB uint8, lwir ``(H, W)`` uint8, labels ``(H, W)`` uint8 or None."""

    name: str
    visible: np.ndarray
    lwir: np.ndarray
    labels: np.ndarray | None


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _child(folder: Path, *names: str) -> Path | None:
    """First existing child directory among ``names`` (case-insensitive)."""
    if not folder.is_dir():
        return None
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for name in names:
        if name.lower() in children:
            return children[name.lower()]
    return None


def _paired(root: Path, vis_dir: Path, ir_dir: Path, label_dir: Path | None) -> list[PairRecord]:
    vis, ir = _images(vis_dir), _images(ir_dir)
    labels = _images(label_dir) if label_dir is not None else {}
    missing = sorted(set(vis) ^ set(ir))
    if missing:
        raise RigError(f"{len(missing)} image(s) without a partner in {vis_dir.name}/ and {ir_dir.name}/, "
                       f"e.g. {missing[0]}", path=root)
    if label_dir is not None and set(labels) != set(vis):
        gap = sorted(set(vis) ^ set(labels))
        raise RigError(f"{len(gap)} pair(s) without a label in {label_dir.name}/ (or labels without a pair), "
                       f"e.g. {gap[0]}", path=root)
    return [PairRecord(n, vis[n], ir[n], labels.get(n)) for n in sorted(vis)]


def find_pairs(root: str | Path, split: str | None = "train", layout: str = "auto") -> tuple[str, list[PairRecord]]:
    """Find the pairs of a dataset; returns ``(layout, records)``.

    ``split`` selects ``train``/``test``/... where the layout has splits (ignored
    for a split-less folder such as the rig's output or RoadScene).
    """
    root = Path(root)
    if not root.is_dir():
        raise RigError("no such dataset directory", path=root)
    if layout not in ("auto", *LAYOUTS):
        raise RigError(f"unknown layout {layout!r}; known: auto, {', '.join(LAYOUTS)}", key="layout")
    base = root / split if split and (root / split).is_dir() else root

    def want(name: str) -> bool:
        return layout in ("auto", name)

    if want("fmb") and _child(base, "Visible") and _child(base, "Infrared") and \
            (_child(base, "Visible").name, _child(base, "Infrared").name) == ("Visible", "Infrared"):
        return "fmb", _paired(root, base / "Visible", base / "Infrared", _child(base, *_LABEL_DIRS))
    if want("msrs") and _child(base, "vi") and _child(base, "ir"):
        return "msrs", _paired(root, _child(base, "vi"), _child(base, "ir"), _child(base, *_LABEL_DIRS))
    if want("mfnet") and (root / "images").is_dir() and (root / f"{split}.txt").is_file():
        names = [n.strip() for n in (root / f"{split}.txt").read_text().split() if n.strip()]
        records = []
        for n in names:
            img = root / "images" / f"{n}.png"
            if not img.is_file():
                raise RigError(f"listed in {split}.txt but missing", path=img)
            lab = root / "labels" / f"{n}.png"
            records.append(PairRecord(n, img, img, lab if lab.is_file() else None))
        return "mfnet", records
    if want("roadscene") and _child(root, "visible", "vis") and _child(root, "infrared", "ir"):
        return "roadscene", _paired(root, _child(root, "visible", "vis"), _child(root, "infrared", "ir"), None)
    raise RigError("no known dataset layout here (expected FMB train|test/{Visible,Infrared,Label}, "
                   "MSRS {train,test}/{vi,ir}, MFNet images/+labels/+SPLIT.txt, or visible/+infrared/)", path=root)


SPLIT_PARTS = ("all", "train", "held-back")


def split_part(records: Sequence[PairRecord], part: str = "all") -> list[PairRecord]:
    """A deterministic train / held-back split of a dataset without one (e.g. RoadScene).

    Records are sorted by name; every third one, starting with the third (index 2, 5, 8, ...),
    is held back, the others are the train part (150 RoadScene pairs: 100 train, 50 held back).
    """
    if part not in SPLIT_PARTS:
        raise RigError(f"unknown split part {part!r}; known: {', '.join(SPLIT_PARTS)}", key="part")
    ordered = sorted(records, key=lambda r: r.name)
    if part == "all":
        return ordered
    held = part == "held-back"
    return [r for i, r in enumerate(ordered) if (i % 3 == 2) == held]


def _read(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise RigError("cannot read image (missing, unreadable or not an image)", path=path)
    if img.dtype != np.uint8:
        raise RigError(f"expected an 8-bit image, got {img.dtype} ({img.dtype.itemsize * 8}-bit)", path=path)
    return img


def read_sample(record: PairRecord, num_classes: int) -> Sample:
    """Load and check one pair (see the module doc)."""
    if record.visible == record.infrared:  # MFNet: B, G, R, thermal in one PNG
        img = _read(record.visible)
        if img.ndim != 3 or img.shape[2] != 4:
            raise RigError(f"expected a 4-channel RGB+thermal MFNet image, got shape {img.shape}", path=record.visible)
        vis, ir = np.ascontiguousarray(img[..., 2::-1]), np.ascontiguousarray(img[..., 3])
    else:
        vis = _read(record.visible)
        vis = cv2.cvtColor(vis, cv2.COLOR_GRAY2RGB) if vis.ndim == 2 else np.ascontiguousarray(vis[..., 2::-1][..., -3:])
        if vis.shape[2] != 3:
            raise RigError(f"expected an RGB image, got shape {vis.shape}", path=record.visible)
        ir = _read(record.infrared)
        ir = ir if ir.ndim == 2 else ir[..., 0]
    if ir.shape != vis.shape[:2]:
        raise RigError(f"pair sizes differ: visible {vis.shape[1]}x{vis.shape[0]} vs infrared "
                       f"{ir.shape[1]}x{ir.shape[0]}", path=record.infrared)
    labels = None
    if record.label is not None:
        labels = _read(record.label)
        labels = labels if labels.ndim == 2 else labels[..., 0]
        if labels.shape != ir.shape:
            raise RigError(f"label size {labels.shape[1]}x{labels.shape[0]} differs from the pair's "
                           f"{ir.shape[1]}x{ir.shape[0]}", path=record.label)
        bad = np.unique(labels[(labels >= num_classes) & (labels != IGNORE_INDEX)])
        if bad.size:
            raise RigError(f"label ids {bad[:5].tolist()} outside 0..{num_classes - 1} (and {IGNORE_INDEX} = ignore)",
                           path=record.label)
    return Sample(record.name, vis, np.ascontiguousarray(ir), labels)


# ---------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class Augment:
    """Training augmentation of the paper: random resize, random crop, brightness (plus horizontal flip)."""

    crop: int = 256
    scale: tuple[float, float] = (0.5, 2.0)
    brightness: float = 0.3  # visible gain in [1 - b, 1 + b]
    hflip: bool = True

    def __call__(self, sample: Sample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vis, ir = sample.visible, sample.lwir
        labels = sample.labels if sample.labels is not None else np.full(ir.shape, IGNORE_INDEX, np.uint8)
        s = rng.uniform(*self.scale)
        h, w = ir.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))
        vis = cv2.resize(vis, size, interpolation=cv2.INTER_LINEAR)
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        vis, ir, labels = random_crop(vis, ir, labels, self.crop, rng)
        if self.hflip and rng.random() < 0.5:
            vis, ir, labels = vis[:, ::-1], ir[:, ::-1], labels[:, ::-1]
        if self.brightness:
            gain = rng.uniform(1 - self.brightness, 1 + self.brightness)
            vis = np.clip(vis.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(vis), np.ascontiguousarray(ir), np.ascontiguousarray(labels)


def random_crop(vis: np.ndarray, ir: np.ndarray, labels: np.ndarray, crop: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``crop x crop`` window; smaller images are padded (images with 0, labels with the ignore index)."""
    h, w = ir.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        vis = np.pad(vis, ((0, ph), (0, pw), (0, 0)))
        ir = np.pad(ir, ((0, ph), (0, pw)))
        labels = np.pad(labels, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = ir.shape
    y = int(rng.integers(0, h - crop + 1))
    x = int(rng.integers(0, w - crop + 1))
    return vis[y:y + crop, x:x + crop], ir[y:y + crop, x:x + crop], labels[y:y + crop, x:x + crop]


class PairDataset:
    """A map-style dataset of pairs for PyTorch's ``DataLoader``.

    Items are dicts of tensors: ``visible`` (3, H, W) and ``lwir`` (1, H, W) float in [0, 1],
    ``labels`` (H, W) int64 (all ``IGNORE_INDEX`` for unlabelled data), ``labelled`` bool.
    With ``augment`` each item is a random crop, reproducible from ``(seed, epoch, index)``;
    call :meth:`set_epoch` each epoch.
    """

    def __init__(self, records: Sequence[PairRecord], num_classes: int, augment: Augment | None = None, seed: int = 0):
        self.records = list(records)
        self.num_classes = num_classes
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        import torch

        sample = read_sample(self.records[index], self.num_classes)
        labelled = sample.labels is not None
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            vis, ir, labels = self.augment(sample, rng)
        else:
            vis, ir = sample.visible, sample.lwir
            labels = sample.labels if labelled else np.full(ir.shape, IGNORE_INDEX, np.uint8)
        return {
            "visible": torch.from_numpy(vis).permute(2, 0, 1).float() / 255.0,
            "lwir": torch.from_numpy(ir)[None].float() / 255.0,
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "labelled": labelled,
        }


# ---------------------------------------------------------------- simulator

SIM_VARIANTS = ("day", "night", "fog")


def write_pair(root: Path, name: str, visible: np.ndarray, lwir: np.ndarray, labels: np.ndarray | None) -> None:
    """Write one pair in the ``fmb`` layout under ``root``."""
    for sub, img in (("Visible", visible[..., ::-1]), ("Infrared", lwir), ("Label", labels)):
        if img is None:
            continue
        (root / sub).mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(root / sub / f"{name}.png"), np.ascontiguousarray(img)):
            raise RigError("cannot write image", path=root / sub / f"{name}.png")


def render_sim_dataset(root: str | Path, count: int, size: tuple[int, int] = (400, 300), seed: int = 0,
                       variants: Sequence[str] = SIM_VARIANTS,
                       progress: Callable[[int], None] | None = None) -> Path:
    """Render ``count`` labelled simulator scenes into ``root`` (``fmb`` layout), reusing existing files.

    Scene ``i`` uses seed ``seed + i`` and variant ``variants[i % len(variants)]``;
    size is ``(width, height)``.
    """
    from rig.sim import render_registered

    root = Path(root)
    for i in range(count):
        name = f"{i:06d}"
        if not (root / "Label" / f"{name}.png").is_file():
            s = render_registered(seed + i, variants[i % len(variants)], size=size)
            write_pair(root, name, s.visible, s.lwir8, s.labels)
        if progress is not None:
            progress(i + 1)
    return root
