"""``rig train`` and ``rig eval`` end to end on tiny fixtures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from rig.cli import build_parser, main
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
    # Every method raw and min-max stretched (the same post-processing for all), in one run.
    assert list(result["fusion"]) == ["segmif", "segmif_raw", "average", "average+stretch", "max", "max+stretch",
                                      "laplacian", "laplacian+stretch"]
    assert set(result["fusion"]["max"]) == {"EN", "SD", "SF", "SCD", "MI", "Qabf"}
    comp = result["comparison"]["laplacian"]
    for m in ("EN", "SD", "SF", "SCD", "MI", "Qabf"):  # credited with its better variant per metric
        best = max(result["fusion"]["laplacian"][m], result["fusion"]["laplacian+stretch"][m])
        assert comp[m]["baseline"] == pytest.approx(best) and comp[m]["images"] == 3
    assert "vs laplacian: higher on" in printed


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


def _option_entries(help_text: str) -> list[tuple[str, str]]:
    """``(invocation, help)`` of every option in an argparse help screen (help may start on the next line)."""
    entries: list[list[str]] = []
    in_options = False
    for line in help_text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            in_options = line == "options:"
            continue
        if not in_options or not line.strip():
            continue
        if line.startswith("  -"):
            invocation, _, help_part = line.strip().partition("  ")
            entries.append([invocation, help_part.strip()])
        else:
            assert entries and line.startswith(" " * 6), line
            entries[-1][1] = (entries[-1][1] + " " + line.strip()).strip()
    return [(a, b) for a, b in entries]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_documents_every_option_with_meaningful_defaults(command: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: [])" not in text and "(default: False)" not in text
    entries = _option_entries(text)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    assert len(entries) == len([a for a in sub._actions if a.option_strings])  # every option was parsed
    for invocation, help_text in entries:
        assert help_text, f"{invocation} has no help text"
        # Said once: not "(0: default) (default: 0)".
        assert help_text.count("default") <= 1, f"{invocation}: {help_text}"
    helps = dict(entries)
    if command == "train":
        assert helps["--sim-size WxH"] == "simulator render size (default: 400x300)"
        assert helps["--rounds N"].endswith("(default: 8)") and helps["--seed SEED"].endswith("(default: 0)")
        assert helps["--resume"] == "continue from OUT/last.pt"  # a flag: no "(default: False)"
        assert "(default" not in helps["--out DIR"]  # required: no default to show
    else:
        assert helps["--weights CKPT"] == "checkpoint to evaluate (default: the bundled weights)"
        assert helps["--threads N"] == "torch CPU threads; 0 lets torch choose (default: 0)"
    for line in text.splitlines():
        assert len(line) <= 80, line


def test_eval_checks_the_device_and_weights_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    import rig.model.data

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(rig.model.data, "render_sim_dataset", lambda *a, **k: pytest.fail("rendered before checking"))
    monkeypatch.setattr("rig.model.checkpoint.model_from_checkpoint",
                        lambda *a, **k: pytest.fail("weights loaded before the device was checked"))
    assert main(["eval", "--sim", "2", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device: 'cuda' was requested but no CUDA device is available")
    assert err.count("\n") == 1
    monkeypatch.undo()
    monkeypatch.setattr(rig.model.data, "render_sim_dataset", lambda *a, **k: pytest.fail("rendered before checking"))
    readme = tmp_path / "README.md"
    readme.write_text("# not weights\n")
    assert main(["eval", "--sim", "2", "--weights", str(readme)]) == 2
    assert capsys.readouterr().err == (f"error: {readme}: not a PyTorch checkpoint: expected a file written by "
                                       "torch.save, such as rig train's OUT/final.pt or its --export file\n")


def test_import_reference_command_writes_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    import torch

    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import segmif_reference as ref  # the test fixture restating the reference networks

    fusion_sd = ref.fusion_state_dict(width=16, growth=8, seg_dims=(32, 64))
    seg_sd = ref.segmentation_state_dict(9)
    torch.save(fusion_sd, tmp_path / "fusion.pth")
    torch.save(seg_sd, tmp_path / "seg.pth")
    out = tmp_path / "ref.pt"
    assert main(["model", "import-reference", "--fusion", str(tmp_path / "fusion.pth"), "--segmentation",
                 str(tmp_path / "seg.pth"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    from rig.model import load_model

    assert load_model(out).config.classes == "mfnet"
    assert main(["model", "import-reference", "--fusion", str(tmp_path / "seg.pth"), "--segmentation",
                 str(tmp_path / "seg.pth"), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "seg.pth: does not match" in capsys.readouterr().err
