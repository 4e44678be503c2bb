"""Labels for human labellers: export the model's segmentation as a CVAT pre-annotation, import the corrections.

FMB's labels were made by people correcting machine proposals. ``rig labels
export-cvat`` writes a registered data set's ``Label/`` masks in CVAT's
"Segmentation mask 1.1" layout, which CVAT's *Upload annotations* accepts as is
for a task created from the same ``Visible/`` images::

    OUT/
      labelmap.txt                         # label:R,G,B:parts:actions, one line per class
      ImageSets/Segmentation/default.txt   # image names without extension, one per line
      SegmentationClass/NAME.png           # RGB masks in the labelmap's colours
    OUT.zip                                # the same, zipped (what CVAT uploads)

``rig labels import-cvat`` reads CVAT's export of the corrected task (the same
layout, as a folder or a zip), maps each mask colour back to a class *by label
name* (CVAT may have recoloured labels) and writes the class ids into the data
set's ``Label/`` (and the palette images into ``Color/``), so the folder is an
FMB-layout data set with human labels. Unknown label names or colours are a
one-line error naming the file; nothing is half-written (each mask is written
under a temporary name and renamed into place).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rig.errors import RigError

LABELMAP = "labelmap.txt"
IMAGE_SET = "ImageSets/Segmentation/default.txt"
MASKS = "SegmentationClass"


@dataclass(frozen=True)
class LabelMap:
    """CVAT's ``labelmap.txt``: label names and their mask colours (RGB), in file order."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def text(self) -> str:
        lines = ["# label:color_rgb:parts:actions"]
        lines += [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(self.names, self.colors)]
        return "\n".join(lines) + "\n"


def parse_labelmap(text: str, source: Path) -> LabelMap:
    """Parse ``labelmap.txt`` (``#`` comments; ``name:R,G,B:parts:actions`` per line)."""
    names, colors = [], []
    for i, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        try:
            rgb = tuple(int(v) for v in fields[1].split(","))
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (IndexError, ValueError):
            raise RigError(f"line {i}: expected 'label:R,G,B:parts:actions', got {line!r}", path=source) from None
        names.append(fields[0])
        colors.append(rgb)
    if len(set(colors)) != len(colors):
        raise RigError("two labels share a colour: masks would be ambiguous", path=source)
    return LabelMap(tuple(names), tuple(colors))


def class_labelmap(class_set: str = "fmb") -> LabelMap:
    """The labelmap of one of the model's class sets, in class-id order, with its palette."""
    from rig.model.classes import get_class_set

    cs = get_class_set(class_set)
    return LabelMap(tuple(cs.names), tuple(tuple(int(v) for v in c) for c in cs.palette))


def ids_to_rgb(labels: np.ndarray, labelmap: LabelMap) -> np.ndarray:
    """Class ids (H, W) -> RGB mask in the labelmap's colours; ids outside it become background."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(labelmap.colors)] = np.asarray(labelmap.colors, np.uint8)
    return lut[labels]


def rgb_to_ids(mask_rgb: np.ndarray, labelmap: LabelMap, to_class: dict[str, int], source: Path) -> np.ndarray:
    """RGB mask in ``labelmap``'s colours -> class ids via label names (``to_class``: name -> id)."""
    key = (mask_rgb[..., 0].astype(np.int64) << 16) | (mask_rgb[..., 1].astype(np.int64) << 8) | mask_rgb[..., 2]
    out = np.zeros(mask_rgb.shape[:2], np.uint8)
    known = np.zeros(mask_rgb.shape[:2], bool)
    for name, (r, g, b) in zip(labelmap.names, labelmap.colors):
        if name not in to_class:
            continue
        hit = key == ((r << 16) | (g << 8) | b)
        out[hit] = to_class[name]
        known |= hit
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise RigError(f"pixel ({x}, {y}) has colour {tuple(int(v) for v in mask_rgb[y, x])}, which no label of "
                       f"labelmap.txt has", path=source)
    return out


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RigError("cannot encode PNG", path=path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def export_cvat(dataset: str | Path, out: str | Path, class_set: str = "fmb", make_zip: bool = True) -> Path:
    """Write ``dataset``'s ``Label/`` masks as a CVAT "Segmentation mask 1.1" pre-annotation in ``out``.

    Returns the zip's path (``out`` + ``.zip``) when ``make_zip``, else ``out``.
    """
    dataset, out = Path(dataset), Path(out)
    label_dir = dataset / "Label"
    files = sorted(label_dir.glob("*.png")) if label_dir.is_dir() else []
    if not files:
        raise RigError("has no Label/*.png to export: run 'rig register-and-fuse' first", path=dataset)
    labelmap = class_labelmap(class_set)
    (out / MASKS).mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (out / LABELMAP).write_text(labelmap.text())
    names = []
    for f in files:
        labels = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if labels is None or labels.ndim != 2:
            raise RigError("not a single-channel label image", path=f)
        if labels.max() >= len(labelmap.names):
            raise RigError(f"class id {int(labels.max())} is outside the {class_set} classes "
                           f"(0..{len(labelmap.names) - 1}); pass the data set's class set", path=f)
        _write_png(out / MASKS / f.name, cv2.cvtColor(ids_to_rgb(labels, labelmap), cv2.COLOR_RGB2BGR))
        names.append(f.stem)
    (out / IMAGE_SET).write_text("\n".join(names) + "\n")
    if not make_zip:
        return out
    archive = out.with_name(out.name + ".zip")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for p in (out / LABELMAP, out / IMAGE_SET, *(out / MASKS / f"{n}.png" for n in names)):
            z.write(p, p.relative_to(out).as_posix())
    return archive


class _Source:
    """A CVAT export as a folder or a zip archive."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        if self.zip is None and not path.is_dir():
            raise RigError("no such CVAT export (a folder or a .zip)", path=path)

    def read(self, name: str) -> bytes | None:
        if self.zip is not None:
            try:
                return self.zip.read(name)
            except KeyError:
                return None
        p = self.path / name
        return p.read_bytes() if p.is_file() else None

    def masks(self) -> list[str]:
        if self.zip is not None:
            return sorted(n for n in self.zip.namelist() if n.startswith(MASKS + "/") and n.endswith(".png"))
        return sorted(f"{MASKS}/{p.name}" for p in (self.path / MASKS).glob("*.png"))


def import_cvat(export: str | Path, dataset: str | Path, class_set: str = "fmb") -> list[str]:
    """Write a CVAT "Segmentation mask 1.1" export's masks into ``dataset``'s ``Label/`` and ``Color/``.

    Masks are matched to the data set's frames by file name; returns the names written.
    """
    from rig.model.classes import colorize, get_class_set

    export, dataset = Path(export), Path(dataset)
    src = _Source(export)
    text = src.read(LABELMAP)
    if text is None:
        raise RigError(f"has no {LABELMAP}: export the task as 'Segmentation mask 1.1'", path=export)
    labelmap = parse_labelmap(text.decode("utf-8", "replace"), export / LABELMAP)
    cs = get_class_set(class_set)
    to_class = {n: i for i, n in enumerate(cs.names)}
    unknown = [n for n in labelmap.names if n not in to_class]
    if unknown:
        raise RigError(f"labels {', '.join(unknown)} are not {class_set} classes ({', '.join(cs.names)})",
                       path=export / LABELMAP)
    masks = src.masks()
    if not masks:
        raise RigError(f"has no {MASKS}/*.png masks", path=export)
    label_dir, color_dir = dataset / "Label", dataset / "Color"
    label_dir.mkdir(parents=True, exist_ok=True)
    color_dir.mkdir(parents=True, exist_ok=True)
    visible = dataset / "Visible"
    written = []
    for name in masks:
        where = export / name
        img = cv2.imdecode(np.frombuffer(src.read(name), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise RigError("not a readable PNG mask", path=where)
        stem = Path(name).name
        if visible.is_dir() and not (visible / stem).is_file():
            raise RigError(f"no frame {stem} in the data set's Visible/ (masks are matched by file name)", path=where)
        ids = rgb_to_ids(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), labelmap, to_class, where)
        _write_png(label_dir / stem, ids)
        _write_png(color_dir / stem, cv2.cvtColor(colorize(ids, cs.palette), cv2.COLOR_RGB2BGR))
        written.append(stem)
    return written


def register(sub) -> None:
    """``rig labels export-cvat`` / ``rig labels import-cvat``."""
    p = sub.add_parser("labels", help="pre-annotations for human labellers (CVAT) and their corrections",
                       description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="labels_command", metavar="ACTION")
    ex = actions.add_parser("export-cvat", help="Label/ masks -> CVAT 'Segmentation mask 1.1' (folder + zip)",
                            description="Write a registered data set's Label/ masks as a CVAT pre-annotation. "
                                        "Create a CVAT task from the data set's Visible/ images, then upload "
                                        "OUT.zip with Actions > Upload annotations > Segmentation mask 1.1.")
    ex.add_argument("dataset", type=Path, help="registered data set (rig register-and-fuse output)")
    ex.add_argument("out", type=Path, help="folder to write (OUT.zip is written beside it)")
    ex.add_argument("--classes", default="fmb", choices=("fmb", "mfnet"), help="class set of the labels (default fmb)")
    ex.add_argument("--no-zip", action="store_true", help="write the folder only")
    ex.set_defaults(handler=_run_export)
    im = actions.add_parser("import-cvat", help="CVAT 'Segmentation mask 1.1' export -> Label/ and Color/",
                            description="Write the corrected masks of a CVAT task (exported as Segmentation mask "
                                        "1.1, folder or zip) into the data set's Label/ and Color/, by file name.")
    im.add_argument("export", type=Path, help="CVAT export: folder or .zip")
    im.add_argument("dataset", type=Path, help="registered data set to write the labels into")
    im.add_argument("--classes", default="fmb", choices=("fmb", "mfnet"), help="class set of the labels (default fmb)")
    im.set_defaults(handler=_run_import)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _run_export(args) -> int:
    path = export_cvat(args.dataset, args.out, args.classes, make_zip=not args.no_zip)
    n = len((args.out / IMAGE_SET).read_text().split())
    print(f"wrote {n} masks to {path} (CVAT: Upload annotations > Segmentation mask 1.1)")
    return 0


def _run_import(args) -> int:
    names = import_cvat(args.export, args.dataset, args.classes)
    print(f"wrote {len(names)} corrected masks into {args.dataset / 'Label'} and {args.dataset / 'Color'}")
    return 0


__all__ = ["LabelMap", "class_labelmap", "export_cvat", "import_cvat", "parse_labelmap"]
