"""`rig calibrate` end to end: image folders, sessions, the sim, accumulation, and bad input.

Folder images are made fast by warping the board texture with known
homographies (pinhole, no distortion); the sim path renders a few views.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from rig.boards import load_board
from rig.calibration.results import load_calibration
from rig.cli import main
from rig.rigconfig import rotation_from_vector_deg

K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])


def _views(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    board = load_board("ir_board")
    tex, x0, y0 = board.texture(1000)
    ppm = tex.shape[1] / (board.extent()[2] - board.extent()[0])
    poses = []
    for i in range(n):
        R = rotation_from_vector_deg([*rng.uniform(-35, 35, 2), rng.uniform(-10, 10)])
        t = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1), rng.uniform(1.0, 1.3)]) - R @ board.center()
        poses.append((R, t))
    return board, tex, x0, y0, ppm, poses


def _render(tex, x0, y0, ppm, R, t, K, size, lwir: bool, rng):
    # texel (u, v) -> board (x0 + u/ppm, y0 + v/ppm) -> image: H = K [r1 r2 t] A
    A = np.array([[1 / ppm, 0, x0 - 0.5 / ppm], [0, 1 / ppm, y0 - 0.5 / ppm], [0, 0, 1]])
    H = K @ np.c_[R[:, 0], R[:, 1], t] @ A
    refl = cv2.warpPerspective(tex.astype(np.float32) / 255, H, size, flags=cv2.INTER_AREA, borderValue=0.45)
    if lwir:
        img = 8000 + 60 * refl + rng.normal(0, 2, refl.shape)
        return np.clip(img, 0, 65535).astype(np.uint16)
    return np.clip(30 + 190 * refl + rng.normal(0, 1.5, refl.shape), 0, 255).astype(np.uint8)


def make_folders(root: Path, n: int = 8, cams=("visible", "lwir"), size=(640, 480)) -> dict[str, Path]:
    board, tex, x0, y0, ppm, poses = _views(n)
    rng = np.random.default_rng(5)
    R_vl = rotation_from_vector_deg([0.5, -0.4, 0.2])
    t_vl = np.array([-0.1, 0.0, 0.0])  # X_lwir = R_vl X_vis + t_vl
    out = {}
    for cam in cams:
        d = root / cam
        d.mkdir(parents=True)
        for i, (R, t) in enumerate(poses):
            Rc, tc = (R_vl @ R, R_vl @ t + t_vl) if cam == "lwir" else (R, t)
            img = _render(tex, x0, y0, ppm, Rc, tc, K, size, cam == "lwir", rng)
            cv2.imwrite(str(d / f"view{i:02d}.png"), img)
        out[cam] = d
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_folders_two_cameras(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in")
    before = _digest(tmp_path / "in")
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}",
                      "--images", f"lwir={dirs['lwir']}", "--out", str(out)], capsys)
    assert code == 0, err
    assert _digest(tmp_path / "in") == before  # nothing the user gave is modified
    cal = load_calibration(out / "calibration.yaml")
    assert cal.cameras["visible"].image_size == (640, 480)  # sizes from the images, not the rig file
    assert cal.cameras["lwir"].K[0, 0] == pytest.approx(600, rel=0.01)
    assert np.linalg.norm(cal.extrinsics.t) == pytest.approx(0.1, abs=0.005)
    assert cal.homography.from_camera == "lwir" and cal.registration.output_size == (800, 600)
    for name in ("camchain.yaml", "calibration_opencv.yml", "report.html", "rig.ply",
                 "report_files/detections_lwir.png", "report_files/coverage_visible.png",
                 "report_files/residuals_visible.png", "report_files/checker_blend.png"):
        assert (out / name).is_file(), name
    fs = cv2.FileStorage(str(out / "calibration_opencv.yml"), cv2.FILE_STORAGE_READ)
    assert np.allclose(fs.getNode("lwir_camera_matrix").mat(), cal.cameras["lwir"].K)
    assert "board found in 8/8" in err


def test_one_camera_then_accumulate(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in")
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--out", str(out)], capsys)
    assert code == 0, err
    cal = load_calibration(out / "calibration.yaml")
    assert set(cal.cameras) == {"visible"} and cal.extrinsics is None
    fx_vis = cal.cameras["visible"].K[0, 0]
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}",
                      "--images", f"lwir={dirs['lwir']}", "--cameras", "lwir", "--out", str(out)], capsys)
    assert code == 0, err
    cal = load_calibration(out / "calibration.yaml")
    assert set(cal.cameras) == {"visible", "lwir"} and cal.extrinsics is not None
    assert cal.cameras["visible"].K[0, 0] == fx_vis  # kept from the first run
    assert len(cal.provenance["runs"]) == 2


def test_extrinsics_only_with_every_camera_from_the_existing_calibration(tmp_path, capsys):
    """--cameras none: intrinsics from an earlier calibration (views that determine them), the extrinsics from
    these views: the way out for views that leave the focal length undetermined (e.g. a board on a bench)."""
    dirs = make_folders(tmp_path / "in")
    out = tmp_path / "out"
    args = ["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--images",
            f"lwir={dirs['lwir']}", "--out", str(out)]
    assert _run(args, capsys)[0] == 0
    first = load_calibration(out / "calibration.yaml")
    code, err = _run(args + ["--cameras", "none"], capsys)
    assert code == 0, err
    cal = load_calibration(out / "calibration.yaml")
    for cam in ("visible", "lwir"):
        assert np.array_equal(cal.cameras[cam].K, first.cameras[cam].K)  # kept from the first run
    assert cal.extrinsics is not None and np.linalg.norm(cal.extrinsics.t - first.extrinsics.t) < 0.002
    assert len(cal.provenance["runs"]) == 2


def test_keeping_intrinsics_that_are_not_there_is_one_line_before_any_detection(tmp_path, capsys):
    """--cameras none (or naming one camera) into an --out without those cameras: a one-line error naming the
    calibration file, nothing written (it used to detect every view, then write a calibration with no cameras)."""
    dirs = make_folders(tmp_path / "in", n=4)
    out = _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}", "--images", f"lwir={dirs['lwir']}",
                                  "--cameras", "none", "--no-report"],
               "calibration.yaml: --cameras keeps the intrinsics of visible and lwir from the earlier calibration, "
               "which does not exist yet: calibrate them into this --out first, or name them in --cameras")
    assert not (out / "calibration.yaml").exists()
    code, _ = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--out", str(out),
                    "--no-report"], capsys)
    assert code == 0
    _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}", "--images", f"lwir={dirs['lwir']}",
                            "--cameras", "visible", "--no-report"],
         "keeps the intrinsics of lwir from the earlier calibration, which has no lwir: calibrate it into this --out")


def test_pairs_match_without_what_each_folder_adds_to_its_names(tmp_path, capsys):
    """<time>_left.png pairs with <time>_thermal.png (a real rig's naming), with a note; shared timestamp digits stay."""
    dirs = make_folders(tmp_path / "in")
    for cam, tag in (("visible", "left"), ("lwir", "thermal")):
        for i, p in enumerate(sorted(dirs[cam].iterdir())):
            p.rename(p.with_name(f"2019_10_24_15_01_{i:02d}_{tag}.png"))
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--images",
                      f"lwir={dirs['lwir']}", "--out", str(out)], capsys)
    assert code == 0, err
    assert "pairs matched by file name without what each folder adds to all its names (visible '*_left', lwir " \
           "'*_thermal')" in " ".join(err.split())
    cal = load_calibration(out / "calibration.yaml")
    assert cal.extrinsics is not None
    run = cal.provenance["runs"][-1]
    assert run["joint_views"] + len(run["inconsistent_pairs"]) == 8


def test_common_affixes():
    from rig.calibration.sources import common_affixes

    assert common_affixes(["2019_10_24_15_01_02_left", "2019_10_24_15_01_12_left"]) == ("2019_", "_left")
    assert common_affixes(["040_11_05_left", "300_11_05_left"]) == ("", "_left")  # one part: "_11_05" stays
    assert common_affixes(["thermal-0001", "thermal-0002"]) == ("thermal-", "")
    assert common_affixes(["view1", "view2"]) == ("", "") and common_affixes(["x_left"]) == ("", "")
    assert common_affixes(["a_left", "b_left", "_left"]) == ("", "")  # nothing may be stripped to an empty name


def test_fix_aspect(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in", cams=("visible",))
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--fix-aspect",
                      "--out", str(out)], capsys)
    assert code == 0, err
    Kc = load_calibration(out / "calibration.yaml").cameras["visible"].K
    assert Kc[0, 0] == Kc[1, 1]  # CALIB_FIX_ASPECT_RATIO with the initial fx/fy = 1
    assert abs(Kc[0, 0] / K[0, 0] - 1) < 0.005


def test_fix_aspect_needs_pinhole(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in", n=1, cams=("visible",))
    _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}", "--model", "fisheye", "--fix-aspect"],
         "--fix-aspect applies to the pinhole model only")


def _bad(tmp_path, capsys, args, expect):
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", *args, "--out", str(out)], capsys)
    assert code == 2
    line = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and expect in line[0], err
    return out


def test_no_board_in_any_view(tmp_path, capsys):
    d = tmp_path / "in" / "visible"
    d.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), np.full((480, 640), 128, np.uint8))
    out = _bad(tmp_path, capsys, ["--images", f"visible={d}"], "no board (9x6 chessboard 'ir_board') found in any of 3 views")
    assert "Calibration stopped" in (out / "report.html").read_text()


def test_too_few_views(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in", n=2, cams=("visible",))
    out = _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}"], "too few views")
    assert "board found" in (out / "report.html").read_text()


def test_mixed_sizes(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in", n=5, cams=("visible",))
    cv2.imwrite(str(dirs["visible"] / "view03.png"), np.zeros((240, 320), np.uint8))
    _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}"], "mixed image sizes for visible: 'view03' is 320x240")


def test_unpartnered_views_count(tmp_path, capsys):
    """Issue 10: names without a partner are a note, and those views go into that camera's intrinsics."""
    dirs = make_folders(tmp_path / "in", n=8)
    (dirs["lwir"] / "view01.png").rename(dirs["lwir"] / "other.png")
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--images",
                      f"lwir={dirs['lwir']}", "--out", str(out)], capsys)
    assert code == 0, err
    text = " ".join(err.split())
    assert "note: 1 visible image(s) without a lwir partner (view01): used for the visible intrinsics only" in text
    assert "1 lwir image(s) without a visible partner (other)" in text
    cal = load_calibration(out / "calibration.yaml")
    assert cal.cameras["visible"].views_used == 8 and cal.cameras["lwir"].views_used == 8  # every view counts
    assert cal.extrinsics is not None
    run = cal.provenance["runs"][-1]
    assert run["joint_views"] + len(run["inconsistent_pairs"]) == 7  # the 7 names in both folders are the pairs
    assert "without a lwir partner" in (out / "report.html").read_text()


def test_wrong_board_file(tmp_path, capsys, write_yaml):
    dirs = make_folders(tmp_path / "in", n=3, cams=("visible",))
    wrong = write_yaml("type: chessboard\ncols: 10\nrows: 6\nsquare_size: 0.06\n", "wrong.yaml")
    code, err = _run(["calibrate", "--board", str(wrong), "--images", f"visible={dirs['visible']}",
                      "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "a 9x6 chessboard is visible, but the board file says 10x6" in err


def test_unreadable_image_is_skipped(tmp_path, capsys):
    """One unreadable image among good ones: skipped with a warning naming it, not an abort."""
    dirs = make_folders(tmp_path / "in", n=6, cams=("visible",))
    (dirs["visible"] / "view01.png").write_bytes(b"not a png")
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}",
                      "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "warning: visible: view01.png: unreadable image" in " ".join(err.split())
    assert load_calibration(tmp_path / "out" / "calibration.yaml").cameras["visible"].views_used == 5


def test_all_images_unreadable(tmp_path, capsys):
    dirs = make_folders(tmp_path / "in", n=2, cams=("visible",))
    for p in dirs["visible"].iterdir():
        p.write_bytes(b"not a png")
    _bad(tmp_path, capsys, ["--images", f"visible={dirs['visible']}"], "no readable image: unreadable image")


def test_provenance_names_the_real_source(tmp_path, capsys):
    """Issue 10 bug: an image-folder calibration recorded 'rig: sim' (the default rig, never named)."""
    dirs = make_folders(tmp_path / "in", n=5, cams=("visible",))
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}",
                      "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    run = load_calibration(tmp_path / "out" / "calibration.yaml").provenance["runs"][-1]
    assert "rig" not in run and run["source_kind"] == "image folders"
    assert run["source"].startswith("image folders: visible=")
    assert "Source (image folders)" in (tmp_path / "out" / "report.html").read_text()


def test_ransac_homography_has_no_plane_distance(tmp_path, capsys):
    """Issue 10 bug: '--homography best' printed 'stored ransac at 15 m'."""
    dirs = make_folders(tmp_path / "in")
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}", "--images",
                      f"lwir={dirs['lwir']}", "--homography", "ransac", "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    text = " ".join(err.split())
    assert "stored ransac (fitted to the board corners: no plane distance)" in text
    assert "ransac at" not in text
    html = (tmp_path / "out" / "report.html").read_text()
    assert "fitted to the board corners (RANSAC): no plane distance" in html


def test_lwir_only_report_writes_rig_ply(tmp_path, capsys):
    """Issue 10 bug: an LWIR-only run printed 'rig.ply not written: ' (open3d's empty RuntimeError)."""
    dirs = make_folders(tmp_path / "in", n=5, cams=("lwir",))
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"lwir={dirs['lwir']}",
                      "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "rig.ply not written" not in (tmp_path / "out" / "report.html").read_text()
    assert (tmp_path / "out" / "rig.ply").is_file() and (tmp_path / "out" / "rig_frusta.ply").is_file()


def test_session_input(tmp_path, capsys, sim_rig):
    from rig.session import SessionWriter

    dirs = make_folders(tmp_path / "in", n=6, size=(640, 512))
    rig = sim_rig
    import dataclasses

    vis = dataclasses.replace(rig.camera("visible"), resolution=(640, 512), pixel_format="Mono8")
    rig = dataclasses.replace(rig, cameras=(vis, rig.camera("lwir")), source=None)
    with SessionWriter.create(tmp_path / "sess", rig) as w:
        for i in range(6):
            for cam in ("visible", "lwir"):
                img = cv2.imread(str(dirs[cam] / f"view{i:02d}.png"), cv2.IMREAD_UNCHANGED)
                w.write_image(cam, img, i, 1_000_000_000 + i * 100_000_000, 0)
    code, err = _run(["calibrate", "--board", "ir_board", "--session", str(tmp_path / "sess"),
                      "--out", str(tmp_path / "out"), "--no-report"], capsys)
    assert code == 0, err
    assert load_calibration(tmp_path / "out" / "calibration.yaml").extrinsics is not None


def test_sim_default(tmp_path, capsys):
    code, err = _run(["calibrate", "--board", "ir_board", "--views", "8", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    cal = load_calibration(tmp_path / "calibration.yaml")
    assert cal.cameras["visible"].image_size == (1920, 1200) and cal.cameras["lwir"].image_size == (640, 512)
    assert cal.homography.plane_distance_m == 15.0 and (tmp_path / "rig.ply").is_file()
    assert "render_s" in err and "render_cpu_s" in err and "total_without_render_s" in err


def test_output_fits_80_columns(tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.setenv("COLUMNS", "80")
    dirs = make_folders(tmp_path / "in")
    out = tmp_path / "out"
    code, err = _run(["calibrate", "--board", "ir_board", "--images", f"visible={dirs['visible']}",
                      "--images", f"lwir={dirs['lwir']}", "--out", str(out)], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "visible: board found in 8/8 images"  # no blank line before the summary
    for line in lines:
        assert len(line) <= 80 or " " not in line.strip(), repr(line)  # only a path longer than 80 may be
        assert line == line.rstrip(), repr(line)
        assert not re.match(r"\s*(px|mm|s)\b", line), repr(line)  # a number is never parted from its unit
    # Folded messages continue indented, after a label that starts the message.
    for prev, line in zip(lines, lines[1:]):
        if line.startswith(" "):
            assert line.startswith("  ") and not line.startswith("   "), repr(line)
    text = " ".join(l.strip() for l in lines)
    assert (f"wrote to {out}: calibration.yaml, camchain.yaml, calibration_opencv.yml, visible_camera_info.yaml, "
            "lwir_camera_info.yaml, report.html") in text
    assert re.search(r"time: detect_s \d+\.\d s, intrinsics_s \d+\.\d s, joint_s \d+\.\d s, total_s \d+\.\d s$", text)
    # Expected behaviour is a note, not a warning; the user can act on what stays a warning.
    assert "note: held-out boards at ~1.2 m fit the ransac homography better" in text
    assert "warning: registration crop limited to the area the board views covered" in text
    assert not re.search(r"warning: the (ransac|plane) homography", text)
