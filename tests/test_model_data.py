"""Dataset loaders on small fixtures written in each supported layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rig.errors import RigError
from rig.model.data import Augment, PairDataset, find_pairs, random_crop, read_sample, write_pair


def _pair(seed: int, h: int = 30, w: int = 40):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w), dtype=np.uint8),
            rng.integers(0, 15, (h, w), dtype=np.uint8))


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def test_fmb_layout_with_splits(tmp_path: Path) -> None:
    vis, ir, lab = _pair(0)
    for split in ("train", "test"):
        for i in range(2):
            write_pair(tmp_path / split, f"{split}{i:05d}", vis, ir, lab)
    layout, records = find_pairs(tmp_path, "test")
    assert layout == "fmb" and [r.name for r in records] == ["test00000", "test00001"]
    s = read_sample(records[0], 15)
    assert np.array_equal(s.visible, vis) and np.array_equal(s.lwir, ir) and np.array_equal(s.labels, lab)


def test_rig_registered_output_without_labels(tmp_path: Path) -> None:
    vis, ir, _ = _pair(1)
    write_pair(tmp_path, "000000", vis, ir, None)
    layout, records = find_pairs(tmp_path, "train")  # no split folder: the root itself
    assert layout == "fmb" and records[0].label is None
    assert read_sample(records[0], 15).labels is None


def test_msrs_layout(tmp_path: Path) -> None:
    vis, ir, lab = _pair(2)
    lab = lab % 9
    _write(tmp_path / "train" / "vi" / "00001D.png", vis[..., ::-1])
    _write(tmp_path / "train" / "ir" / "00001D.png", cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR))  # 3-channel grey
    _write(tmp_path / "train" / "Segmentation_labels" / "00001D.png", lab)
    layout, records = find_pairs(tmp_path, "train")
    assert layout == "msrs"
    s = read_sample(records[0], 9)
    assert np.array_equal(s.visible, vis) and np.array_equal(s.lwir, ir) and np.array_equal(s.labels, lab)


def test_mfnet_layout_four_channel(tmp_path: Path) -> None:
    vis, ir, lab = _pair(3)
    lab = lab % 9
    _write(tmp_path / "images" / "00042D.png", np.dstack([vis[..., ::-1], ir]))
    _write(tmp_path / "labels" / "00042D.png", lab)
    (tmp_path / "test.txt").write_text("00042D\n")
    layout, records = find_pairs(tmp_path, "test")
    assert layout == "mfnet"
    s = read_sample(records[0], 9)
    assert np.array_equal(s.visible, vis) and np.array_equal(s.lwir, ir) and np.array_equal(s.labels, lab)


def test_roadscene_layout_unlabelled(tmp_path: Path) -> None:
    vis, ir, _ = _pair(4)
    _write(tmp_path / "visible" / "FLIR_1.png", vis[..., ::-1])
    _write(tmp_path / "infrared" / "FLIR_1.png", ir)
    layout, records = find_pairs(tmp_path)
    assert layout == "roadscene" and records[0].label is None


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    vis, ir, lab = _pair(5)
    write_pair(tmp_path / "a", "x", vis, ir, lab)
    _write(tmp_path / "a" / "Infrared" / "x.png", ir.astype(np.uint16) * 256)  # 16-bit thermal
    rec = find_pairs(tmp_path / "a")[1][0]
    with pytest.raises(RigError, match=r"expected an 8-bit image, got uint16 \(16-bit\)") as e:
        read_sample(rec, 15)
    assert e.value.path == str(rec.infrared)

    write_pair(tmp_path / "b", "x", vis, ir[:, :30], lab)
    with pytest.raises(RigError, match="pair sizes differ: visible 40x30 vs infrared 30x30"):
        read_sample(find_pairs(tmp_path / "b")[1][0], 15)

    bad = lab.copy()
    bad[0, 0] = 20
    write_pair(tmp_path / "c", "x", vis, ir, bad)
    with pytest.raises(RigError, match=r"label ids \[20\] outside 0..14"):
        read_sample(find_pairs(tmp_path / "c")[1][0], 15)

    write_pair(tmp_path / "d", "x", vis, ir, lab)
    (tmp_path / "d" / "Infrared" / "x.png").unlink()
    with pytest.raises(RigError, match="without a partner"):
        find_pairs(tmp_path / "d")
    with pytest.raises(RigError, match="no known dataset layout"):
        find_pairs(tmp_path / "d" / "Visible")
    with pytest.raises(RigError, match="no such dataset directory"):
        find_pairs(tmp_path / "missing")


def test_augmentation_is_reproducible_and_pads_with_ignore(tmp_path: Path) -> None:
    vis, ir, lab = _pair(6)
    write_pair(tmp_path, "x", vis, ir, lab)
    records = find_pairs(tmp_path)[1]
    ds = PairDataset(records, 15, Augment(crop=64, scale=(0.5, 0.5)), seed=3)
    a, b = ds[0], ds[0]
    assert a["visible"].shape == (3, 64, 64) and a["lwir"].shape == (1, 64, 64) and a["labels"].shape == (64, 64)
    assert a["visible"].dtype == torch.float32 and a["labels"].dtype == torch.int64 and a["labelled"]
    assert torch.equal(a["visible"], b["visible"]) and torch.equal(a["labels"], b["labels"])
    # a 20x15 image in a 64 crop: the padding is ignore-labelled
    assert (a["labels"] == 255).sum() == 64 * 64 - 20 * 15
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["visible"], a["visible"]) or not torch.equal(ds[0]["labels"], a["labels"])


def test_random_crop_keeps_alignment() -> None:
    rng = np.random.default_rng(0)
    ramp = np.arange(100 * 80).reshape(80, 100)
    vis = np.dstack([ramp % 256] * 3).astype(np.uint8)
    grey = (ramp % 256).astype(np.uint8)
    v, i, l = random_crop(vis, grey, grey % 15, 32, rng)
    assert v.shape == (32, 32, 3) and np.array_equal(v[..., 0], i)
    assert np.array_equal(l, i % 15)  # the label window is the image window
