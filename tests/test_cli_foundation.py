"""The foundation's CLI commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2

from rig.boards import load_board


def rig(*args: str, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}  # what a user's default terminal gives
    return subprocess.run([sys.executable, "-m", "rig.cli", *args], capture_output=True, text=True, env=env)


def words(text: str) -> str:
    """Table text with box drawing and line breaks removed, for checking that nothing was cut."""
    return " ".join("".join(" " if ch in "│┃┏┓┗┛┡┩└┘━─┳┻╇┴┬┼" else ch for ch in text).split())


def assert_fits(text: str, columns: int = 80) -> None:
    for line in text.splitlines():
        assert len(line) <= columns and "…" not in line, line


def test_board_render_writes_a_printable_png(tmp_path):
    out = tmp_path / "ir.png"
    proc = rig("board", "render", "ir_board.yaml", str(out), "--dpi", "72")
    assert proc.returncode == 0, proc.stderr
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    w_m, _ = load_board("ir_board").size_m()
    assert abs(img.shape[1] - w_m / 0.0254 * 72) < 0.02 * img.shape[1]
    assert "680 x 500 mm" in proc.stdout


def test_board_render_bad_input(tmp_path):
    proc = rig("board", "render", str(tmp_path / "none.yaml"), str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "none.yaml: no such file" in proc.stderr and "Traceback" not in proc.stderr
    proc = rig("board", "render", "ir_board", str(tmp_path / "no" / "dir" / "x.png"))
    assert proc.returncode == 2 and "cannot write" in proc.stderr


def test_check_lists_reachable_sim_cameras():
    proc = rig("check")
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    # Cells wrap between words at 80 columns, never cut ("came…", "form…").
    cells = [c.strip() for line in proc.stdout.splitlines() for c in line.split("│") if c.strip()]
    assert {"camera", "format", "status", "visible", "lwir", "BayerRG8", "1920x1200", "SIM-visible",
            "SIM-lwir", "microbolometer"} <= set(" ".join(cells).split() + [h.strip() for h in proc.stdout.split("┃")])
    wide = rig("check", columns=250)
    assert "ok rig simulated visible camera s/n SIM-visible" in wide.stdout and "s/n SIM-lwir" in wide.stdout


def test_check_reports_unreachable_hardware():
    proc = rig("check", "--rig", "fmb_roof")
    assert proc.returncode == 1 and "unreachable" in proc.stdout


def test_session_info(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_session import record

    record(tmp_path / "s")
    proc = rig("session", "info", str(tmp_path / "s"), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["status"] == "complete" and info["cameras"]["lwir"]["frames"] == 20
    table = rig("session", "info", str(tmp_path / "s"))
    assert table.returncode == 0 and "complete" in table.stdout
    assert_fits(table.stdout)
    text = words(table.stdout)
    for figure in ("format", "frames", "fps measured (nominal)", "lost (by counter)", "of which in our queues", "timing gaps",
                   "torn tail"):
        assert figure in text, figure
    assert f"frames {info['cameras']['visible']['frames']} {info['cameras']['lwir']['frames']}" in text
    missing = rig("session", "info", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such session directory" in missing.stderr


def test_errors_are_one_line_with_nothing_before_them(tmp_path):
    # A progress bar torn down on a pipe used to leave a blank line on stderr before "error:".
    proc = rig("register", str(tmp_path / "nope"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, repr(proc.stderr)


def test_a_stage_that_fails_to_import_says_so(monkeypatch, capsys):
    """A packaging error must not surface as argparse's "invalid choice"."""
    import importlib

    from rig import cli

    real = importlib.import_module

    def broken(name, *a, **k):
        if name == "rig.model.cli":
            raise ImportError("libtorch_cpu.so: cannot open shared object file")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", broken)
    assert cli.main(["train", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "'train' is unavailable: importing rig.model.cli failed (ImportError: libtorch_cpu.so" in err
    assert "invalid choice" not in err
    help_text = cli.build_parser().format_help()
    assert "train" in help_text and "unavailable" in help_text
    assert cli.main(["check", "--no-connect"]) == 0  # other stages still work


def test_command_table_matches_what_each_stage_registers():
    import argparse
    import importlib

    from rig.cli import COMMAND_MODULES

    for module, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert tuple(sub.choices) == commands, module
