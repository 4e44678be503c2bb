"""``rig train`` and ``rig eval`` end to end on tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rig.cli import main
from rig.model.data import write_pair
from rig.model.checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def fmb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmb")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(3):
            lab = np.zeros((48, 64), np.uint8)
            lab[24:] = 1  # road below, background above
            lab[:4, :4] = 255
            vis = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            write_pair(root / split, f"{i:06d}", vis, rng.integers(0, 256, (48, 64), dtype=np.uint8), lab)
    return root


TRAIN = ["train", "--model", "tiny", "--rounds", "1", "--seg-iters", "3", "--fusion-iters", "2",
         "--batch-size", "2", "--crop", "32", "--seg-warmup-iters", "1", "--dwa-window", "1", "--log-every", "1",
         "--threads", "2"]


def test_train_resume_and_eval(fmb_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out), "--data", str(fmb_root), "--export", str(tmp_path / "w.pt")]) == 0
    log = (out / "train_log.txt").read_text()
    assert "round 1 seg    it     3/3" in log and "round 1 fusion it     2/2" in log and "λ=(" in log
    assert (out / "final.pt").is_file() and (out / "last.pt").is_file()
    last = read_checkpoint(out / "last.pt")
    assert last["train_state"] == {"phase_index": 2, "phase_step": 0, "seg_step": 3, "fusion_step": 2}
    exported = read_checkpoint(tmp_path / "w.pt")
    assert "seg_optimizer" not in exported and exported["config"]["name"] == "segmif_tiny"

    # resume with one more round: continues at round 2 from the saved state
    assert main([*TRAIN, "--rounds", "2", "--out", str(out), "--data", str(fmb_root), "--resume"]) == 0
    log = (out / "train_log.txt").read_text()
    assert f"resumed from {out / 'last.pt'} at phase 2 step 0" in log and "round 2 fusion it     2/2" in log
    assert read_checkpoint(out / "last.pt")["train_state"]["seg_step"] == 6

    capsys.readouterr()
    js = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(out / "final.pt"), "--data", str(fmb_root), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "Segmentation (3 labelled pairs)" in printed and "Fusion (3 pairs" in printed
    result = json.loads(js.read_text())
    seg = result["segmentation"]
    assert result["pairs"] == 3 and seg["pairs"] == 3 and len(seg["iou"]) == 15
    assert np.array(seg["confusion_matrix"]).sum() == 3 * (48 * 64 - 16)  # ignored corner left out
    assert set(result["fusion"]) == {"segmif", "average", "max"}
    assert set(result["fusion"]["max"]) == {"EN", "SD", "SF", "SCD", "MI", "Qabf"}


def test_cli_errors_are_one_line(tmp_path: Path, fmb_root: Path, capsys) -> None:
    assert main(["eval", "--weights", str(tmp_path / "none.pt"), "--data", str(fmb_root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'none.pt'}: no such checkpoint file"
    assert main(["train", "--out", str(tmp_path / "r"), "--model", "b9", "--data", str(fmb_root)]) == 2
    assert "--model: unknown model config 'b9'" in capsys.readouterr().err
    assert main([*TRAIN, "--out", str(tmp_path / "r2")]) == 2
    assert "no training data" in capsys.readouterr().err
    unlabelled = tmp_path / "unl"
    write_pair(unlabelled, "a", np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8), None)
    assert main([*TRAIN, "--out", str(tmp_path / "r3"), "--data", str(unlabelled)]) == 2
    assert "have no label (pass unlabelled data with --unlabelled)" in capsys.readouterr().err
