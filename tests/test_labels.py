"""CVAT "Segmentation mask 1.1" export of the model's labels and import of the corrected masks."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from rig.cli import main
from rig.errors import RigError
from rig.model.classes import FMB_CLASSES, FMB_PALETTE
from rig.registration.labels import export_cvat, import_cvat, parse_labelmap


def _dataset(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for d in ("Visible", "Label", "Color"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        name = f"{i:06d}.png"
        cv2.imwrite(str(root / "Visible" / name), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "Label" / name), rng.integers(0, 15, (12, 16), dtype=np.uint8))
    return root


def test_export_follows_cvats_documented_layout(tmp_path):
    ds = _dataset(tmp_path / "fmb")
    archive = export_cvat(ds, tmp_path / "cvat")
    # CVAT docs (Segmentation Mask format): labelmap.txt, ImageSets/Segmentation/default.txt with image names
    # without extension, SegmentationClass/<name>.png colour masks; the zip holds them at its root.
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        assert names == {"labelmap.txt", "ImageSets/Segmentation/default.txt",
                         *(f"SegmentationClass/{i:06d}.png" for i in range(3))}
        assert z.read("ImageSets/Segmentation/default.txt").decode().split() == ["000000", "000001", "000002"]
        lines = [ln for ln in z.read("labelmap.txt").decode().splitlines() if not ln.startswith("#")]
    # label:R,G,B:parts:actions, background first in (0, 0, 0) as CVAT expects.
    assert lines[0] == "background:0,0,0::" and len(lines) == 15
    assert lines[4] == f"traffic lamp:{','.join(map(str, FMB_PALETTE[4]))}::"
    mask = cv2.cvtColor(cv2.imread(str(tmp_path / "cvat" / "SegmentationClass" / "000001.png")), cv2.COLOR_BGR2RGB)
    labels = cv2.imread(str(ds / "Label" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (12, 16, 3)
    assert all(tuple(mask[y, x]) == FMB_PALETTE[labels[y, x]] for y in range(12) for x in range(16))


def test_corrected_masks_come_back_by_label_name_even_when_recoloured(tmp_path):
    ds = _dataset(tmp_path / "fmb")
    export_cvat(ds, tmp_path / "cvat", make_zip=False)
    # A labeller paints a car over frame 2's top-left corner; CVAT re-exports with its own colours.
    cvat = tmp_path / "cvat"
    new_colors = {n: ((37 * i) % 256, (91 * i + 7) % 256, (53 * i + 200) % 256) for i, n in enumerate(FMB_CLASSES)}
    (cvat / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{n}:{r},{g},{b}::\n" for n, (r, g, b) in reversed(list(new_colors.items()))))
    truth = {}
    for i in range(3):
        labels = cv2.imread(str(ds / "Label" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        if i == 2:
            labels[:4, :4] = FMB_CLASSES.index("car")
        truth[i] = labels
        rgb = np.array([new_colors[FMB_CLASSES[c]] for c in labels.ravel()], np.uint8).reshape(12, 16, 3)
        cv2.imwrite(str(cvat / "SegmentationClass" / f"{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert main(["labels", "import-cvat", str(cvat), str(ds)]) == 0
    for i, labels in truth.items():
        assert np.array_equal(cv2.imread(str(ds / "Label" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED), labels)
    color = cv2.cvtColor(cv2.imread(str(ds / "Color" / "000002.png")), cv2.COLOR_BGR2RGB)
    assert tuple(color[0, 0]) == FMB_PALETTE[FMB_CLASSES.index("car")]


def test_cli_round_trip_through_the_zip(tmp_path, capsys):
    ds = _dataset(tmp_path / "fmb")
    before = {p.name: p.read_bytes() for p in (ds / "Label").iterdir()}
    assert main(["labels", "export-cvat", str(ds), str(tmp_path / "cvat")]) == 0
    assert "wrote 3 masks" in capsys.readouterr().out
    for p in (ds / "Label").iterdir():
        p.unlink()
    assert main(["labels", "import-cvat", str(tmp_path / "cvat.zip"), str(ds)]) == 0
    after = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in (ds / "Label").iterdir()}
    assert set(after) == set(before)
    for name, data in before.items():
        assert np.array_equal(after[name], cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))


def test_bad_exports_are_one_line(tmp_path):
    ds = _dataset(tmp_path / "fmb")
    export_cvat(ds, tmp_path / "cvat", make_zip=False)
    lm = tmp_path / "cvat" / "labelmap.txt"
    lm.write_text(lm.read_text() + "unicorn:1,2,3::\n")
    with pytest.raises(RigError, match="labels unicorn are not fmb classes"):
        import_cvat(tmp_path / "cvat", ds)
    with pytest.raises(RigError, match="line 2: expected 'label:R,G,B:parts:actions'"):
        parse_labelmap("# header\nroad:1,2::\n", lm)
    export_cvat(ds, tmp_path / "cvat2", make_zip=False)
    mask = tmp_path / "cvat2" / "SegmentationClass" / "000000.png"
    img = cv2.imread(str(mask))
    img[3, 5] = (1, 2, 3)
    cv2.imwrite(str(mask), img)
    with pytest.raises(RigError, match=r"000000.png: pixel \(5, 3\) has colour \(3, 2, 1\)"):
        import_cvat(tmp_path / "cvat2", ds)
    with pytest.raises(RigError, match="has no Label"):
        export_cvat(tmp_path / "empty", tmp_path / "x")
