"""``rig record`` as a new user meets it: arguments checked before any work, output that fits 80 columns,
and a suggested next command that runs as printed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from rig.capture import cli as capture_cli
from rig.capture import sim_camera
from rig.capture.dashboard import CameraStatus, RecorderStatus, render_status, status_line
from rig.cli import main
from simrigs import small_rig_dict

SMALL_RIG = small_rig_dict()


@pytest.fixture(autouse=True)
def _columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture
def rig_file(tmp_path) -> Path:
    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump(SMALL_RIG))
    return p


@pytest.fixture
def no_rendering(monkeypatch):
    """Fail the test if the simulator is asked to render anything."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("rendered before the arguments were checked")

    monkeypatch.setattr(sim_camera, "sim_cameras_for_board", refuse)
    monkeypatch.setattr(sim_camera, "sim_cameras_for_drive", refuse)
    return calls


def _fits_80(text: str) -> None:
    for line in text.splitlines():
        assert len(line) <= 80, f"{len(line)} columns: {line!r}"
    assert "…" not in text


def test_view_limits_fail_before_any_rendering_and_name_the_default(tmp_path, capsys, no_rendering):
    out = tmp_path / "calsess"
    rc = main(["record", "--calibration", "--board", "ir_board", "--max-views", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and no_rendering == [] and not out.exists()
    assert "--max-views 2 is below --min-views 15 (--min-views defaults to 15)" in " ".join(err.split())
    assert len(err.strip().splitlines()) == 1  # one line
    rc = main(["record", "--calibration", "--min-views", "50", "--out", str(out)])
    assert rc == 2 and "(--max-views defaults to 40)" in " ".join(capsys.readouterr().err.split())
    rc = main(["record", "--calibration", "--min-views", "0", "--out", str(out)])
    assert rc == 2 and "--min-views must be at least 1, got 0" in capsys.readouterr().err
    assert no_rendering == [] and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--drive", "--queue", "0"], "--queue must be at least 1 frame, got 0"),
    (["--drive", "--ffc-interval", "-1"], "--ffc-interval must be positive, got -1"),
    (["--drive", "--ffc-when-stopped"], "--ffc-when-stopped needs --gps"),
    (["--drive", "--duration", "0"], "--duration must be positive, got 0"),
    (["--calibration", "--board", "no_such_board"], "no_such_board"),
])
def test_bad_record_arguments_fail_before_any_rendering(tmp_path, capsys, no_rendering, argv, message):
    out = tmp_path / "s"
    assert main(["record", *argv, "--out", str(out)]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert no_rendering == [] and not out.exists()


def test_an_existing_out_folder_fails_before_any_rendering(tmp_path, capsys, no_rendering):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["record", "--drive", "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert no_rendering == [] and sorted(p.name for p in out.iterdir()) == ["x"]


def test_pairing_line_is_for_humans():
    pairing = {"mode": "timestamp", "window_ns": 16_666_667, "pairs": 300, "unpaired": {"visible": 0, "lwir": 120}}
    line = capture_cli.pairing_line(pairing, {"visible": 300, "lwir": 600})
    assert line == "pairs: 300 (timestamp, window 16.7 ms); unpaired: visible 0 of 300, lwir 120 of 600"
    counter = {"mode": "counter", "window_ns": 0, "pairs": 10, "unpaired": {"visible": 1, "lwir": 0}}
    assert capture_cli.pairing_line(counter, {"visible": 11, "lwir": 10}) == \
        "pairs: 10 (counter); unpaired: visible 1 of 11, lwir 0 of 10"


def test_drive_summary_is_formatted_and_fits_80_columns(rig_file, tmp_path, capsys, monkeypatch):
    real = sim_camera.sim_cameras_for_drive
    monkeypatch.setattr(sim_camera, "sim_cameras_for_drive", lambda rig, **kw: real(rig, world_duration_s=2.0, **kw))
    monkeypatch.chdir(tmp_path)  # short paths: the lines that name a path are as long as the path
    out = Path("drive")
    assert main(["record", "--drive", "--rig", "small.yaml", "--duration", "1", "--plain", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    _fits_80(text)
    assert "{" not in text and "'" not in text  # no raw Python dicts
    m = re.search(r"^pairs: (\d+) \(timestamp, window 16\.7 ms\); unpaired: visible (\d+) of (\d+), lwir (\d+) of (\d+)$",
                  text, re.M)
    assert m, text
    pairs, vis_un, vis_n, lwir_un, lwir_n = map(int, m.groups())
    assert vis_n - vis_un == pairs == lwir_n - lwir_un  # one-to-one: the counts add up
    assert lwir_n == pytest.approx(2 * vis_n, abs=2)
    assert re.search(r"^visible: \d+ frames, [\d.]+ fps \(target 30\), \d+ MB$", text, re.M)
    assert re.search(r"^  lost 0, \d+ timing gaps, \d+ in FFC, \d+ unpaired$", text, re.M)
    assert "down" not in text and "dropped" not in text  # nothing to say: nothing said
    assert f"session {out}: complete (duration)" in text


def test_camera_lines_report_loss_as_the_reader_counts_it_and_outages(tmp_path):
    from rig.capture.recorder import CameraResult, RecordingResult

    cams = {"lwir": CameraResult("lwir", "lwir", 60, 600, 108, 13, 195, 24, 0, 1, 0, 4.2, True, 1 << 28, 59.9)}
    result = RecordingResult(tmp_path, "degraded", "duration", "", 12.0, cams, {}, None, 1, ("lwir down 4.2 s",))
    lines = capture_cli.camera_lines(result)
    assert lines[1:] == ["  lost 108 (13 in our queue), 195 timing gaps, 24 in FFC, 0 unpaired",
                         "  down 4.2 s: 1 disconnects, 0 reconnects, still down at the end"]
    _fits_80("\n".join(lines))


def test_record_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["record", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "3 degraded" in text and "1 stopped because the disk reserve was reached" in text


def test_status_displays_fit_80_columns():
    from rich.console import Console

    from rig.calibration.record import CalibrationStatus
    from rig.calibration.record import status_line as calib_status_line

    cams = [CameraStatus("visible", "visible", 30, 29.9, 369, 0, 0, 1, 32, 52.3, "streaming", ""),
            CameraStatus("lwir", "lwir", 60, 59.8, 738, 12, 3, 3, 32, 7.4, "reconnecting", "in FFC", 1.5)]
    s = RecorderStatus(Path("rig-demo/session-20261125-120000"), 12.3, 30.0, cams, 20_100_000_000, 1 << 30,
                       "52.12345 N 4.56789 E 12.3 m/s 9 sats", 3, 2)
    console = Console(width=80, record=True, force_terminal=False)
    console.print(render_status(s))
    table = console.export_text()
    _fits_80(table)
    for value in ("29.9/30", "59.8/60", "reconnecting, in FFC", "down 1.5 s", "3/32", "(3 bad sentences)", "9 sats"):
        assert value in table
    plain = status_line(s)
    _fits_80(plain)
    assert plain.splitlines()[2] == "  visible 29.9/30 fps, 369 frames, 0 lost, q 1, 52.3 MB/s"
    assert any("lost" in line and "queue" in line for line in table.splitlines()) and "drops" not in table
    cal = CalibrationStatus(123.4, 412, 17, {"not-detected": 120, "moving": 250, "not-new": 25},
                            {"visible": 0.889, "lwir": 1.0}, {"visible": 0.45, "lwir": 0.61}, 3, True,
                            "kept view 17 (new pose 0.08)", True)
    text = calib_status_line(cal)
    _fits_80(text)
    assert text.splitlines()[1] == "  visible: cells 89%, area 45%; lwir: cells 100%, area 61%; tilted 3; SUFFICIENT"


def test_suggested_calibrate_command_runs_as_printed(rig_file, tmp_path, capsys, monkeypatch):
    real = sim_camera.sim_cameras_for_board
    # A short board plan (the CLI's default holds each pose 2.5 s): 8 poses, 0.7 s each.
    monkeypatch.setattr(sim_camera, "sim_cameras_for_board",
                        lambda rig, board, **kw: real(rig, board, n_views=8, dwell_s=0.7, **kw))
    monkeypatch.chdir(tmp_path)
    rc = main(["record", "--calibration", "--rig", "small.yaml", "--board", "ir_board", "--min-views", "5",
               "--max-views", "5", "--duration", "20", "--plain", "--out", "calsess"])
    text = capsys.readouterr().out
    _fits_80(text)
    assert rc in (0, 1), text  # 1: stopped at --max-views before coverage was sufficient
    assert re.search(r"^kept 5 views of \d+ analysed \(rejected: not-detected \d+, moving \d+, not-new \d+\)$",
                     text, re.M), text
    lines = text.splitlines()
    i = lines.index("session calsess; calibrate it with:")
    argv = shlex.split(lines[i + 1])
    assert argv[:2] == ["rig", "calibrate"] and "--board" in argv and "--rig" in argv
    assert main(argv[1:]) == 0, capsys.readouterr().err  # runs as printed
    assert (tmp_path / "calibration.yaml").is_file()
