"""Session format: bit-exact round trips, crash safety under SIGKILL, torn tails, pairing, confinement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from rig.session import FrameFlags
from rig.errors import RigError
from rig.rigconfig import parse_rig
from simrigs import small_rig_dict
from rig.session import (HEADER_SIZE, INDEX_SIZE, DiskFullError, SessionReader, SessionWriter, pair_by_counter,
                         pair_by_timestamp)

SMALL_RIG = small_rig_dict(visible=(64, 48), lwir=(32, 24), visible_fx=50, lwir_fx=30, lwir_pose=None)


def frame_image(camera: str, seq: int, shape=None) -> np.ndarray:
    """Deterministic content so a reader can check every frame bit-exact."""
    rng = np.random.default_rng([zlib.crc32(camera.encode()), seq])
    if camera == "lwir":
        return rng.integers(0, 65536, shape or (24, 32), dtype=np.uint16)
    return rng.integers(0, 256, shape or (48, 64), dtype=np.uint8)


def record(path: Path, n_vis: int = 10, n_ir: int = 20) -> None:
    rig = parse_rig(SMALL_RIG)
    cal = path.parent / f"{path.name}-cal.yaml"
    cal.write_text("calibration: placeholder\n")
    with SessionWriter.create(path, rig, calibration=cal) as w:
        for i in range(n_ir):
            t = 1_000_000_000 + i * 16_666_667
            w.write_image("lwir", frame_image("lwir", i), i + 100, t, t + 5, device_ns=i * 1000,
                          flags=FrameFlags.FFC if i == 3 else 0)
            if i % 2 == 0 and i // 2 < n_vis:
                w.write_image("visible", frame_image("visible", i // 2), i // 2, t + 2_000_000, t + 7)
        w.log_event("ffc", camera="lwir", state="done")


def test_round_trip_bit_exact(tmp_path):
    record(tmp_path / "s")
    with SessionReader(tmp_path / "s") as r:
        # The calibration was copied in: the manifest's reference stays inside the session.
        assert r.status == "complete" and r.manifest["calibration"] == "calibration.yaml"
        assert r.calibration_path().read_text() == "calibration: placeholder\n"
        recs = r.records("lwir")
        assert len(recs) == 20 and len(r.records("visible")) == 10
        for rec, img in r.frames("lwir"):
            assert img.dtype == np.uint16 and np.array_equal(img, frame_image("lwir", rec.seq))
        for rec, img in r.frames("visible"):
            assert np.array_equal(img, frame_image("visible", rec.seq))
        assert recs[3].flags == FrameFlags.FFC and recs[4].flags == 0
        assert recs[5].frame_counter == 105 and recs[5].device_ns == 5000
        events, bad = r.events()
        assert bad == 0 and events[0]["kind"] == "ffc" and events[0]["camera"] == "lwir"
        s = r.summary()
        assert s["cameras"]["lwir"]["fps_measured"] == pytest.approx(60.0, rel=1e-3)
        assert s["cameras"]["lwir"]["torn_tail_bytes"] == 0 and s["cameras"]["lwir"]["ffc"] == 1


def test_pairs_by_timestamp_within_half_the_slower_period(tmp_path):
    record(tmp_path / "s")
    with SessionReader(tmp_path / "s") as r:
        pairs = r.pairs()
        assert len(pairs) == 10
        for p in pairs:
            assert p.a.camera == "visible" and p.b.camera == "lwir"
            assert abs(p.dt_ns) == 2_000_000  # the nearest LWIR frame, 2 ms before
        assert len(r.unpaired("lwir", pairs)) == 10 and r.unpaired("visible", pairs) == []


def test_pairing_functions_are_one_to_one():
    from rig.session import FrameRecord

    def rec(cam, seq, t, counter=None):
        return FrameRecord(cam, seq, seq if counter is None else counter, t, t, None, 1, 1, "Mono8", 0, 0, 1, 0)

    a = [rec("a", i, i * 100) for i in range(5)]
    b = [rec("b", 0, 10), rec("b", 1, 30), rec("b", 2, 290), rec("b", 3, 1000)]
    pairs = pair_by_timestamp(a, b, max_dt_ns=40)
    assert [(p.a.seq, p.b.seq) for p in pairs] == [(0, 0), (3, 2)]  # b1 is a's 0 second choice: not reused
    hw_a = [rec("a", i, 0, counter=7 + i) for i in range(4)]
    hw_b = [rec("b", i, 0, counter=100 + i) for i in (0, 1, 3)]
    assert [(p.a.seq, p.b.seq) for p in pair_by_counter(hw_a, hw_b)] == [(0, 0), (1, 1), (3, 3)]


def test_writer_rejects_wrong_frames_and_unknown_cameras(tmp_path):
    w = SessionWriter.create(tmp_path / "s", parse_rig(SMALL_RIG))
    with pytest.raises(ValueError, match="does not match Mono16 32x24"):
        w.write_image("lwir", np.zeros((24, 32), np.uint8), 0, 0, 0)
    with pytest.raises(ValueError, match="not part of this session"):
        w.write_image("thermal", np.zeros((24, 32), np.uint16), 0, 0, 0)
    w.close()
    with pytest.raises(RigError, match="already exists and is not empty"):
        SessionWriter.create(tmp_path / "s", parse_rig(SMALL_RIG))


def test_disk_reserve_stops_before_a_write_fails(tmp_path):
    w = SessionWriter.create(tmp_path / "s", parse_rig(SMALL_RIG), min_free_bytes=1 << 62)
    with pytest.raises(DiskFullError, match="stopped before a write could fail"):
        w.write_image("lwir", frame_image("lwir", 0), 0, 0, 0)
    w.close("aborted")
    with SessionReader(tmp_path / "s") as r:
        assert r.status == "aborted" and r.records("lwir") == [] and r.streams["lwir"].torn_tail_bytes == 0


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def test_torn_tail_is_reported_and_complete_frames_survive(tmp_path):
    record(tmp_path / "s", n_vis=0, n_ir=6)
    store = tmp_path / "s" / "cameras" / "lwir.frames"
    index = tmp_path / "s" / "cameras" / "lwir.index"
    rec_size = HEADER_SIZE + 24 * 32 * 2
    full = store.stat().st_size
    assert full == 6 * rec_size
    for cut in (full - 1, full - rec_size + HEADER_SIZE + 10, full - rec_size + 5):
        _truncate(store, cut)
        with SessionReader(tmp_path / "s") as r:
            assert len(r.records("lwir")) == 5
            assert r.streams["lwir"].torn_tail_bytes == cut - 5 * rec_size
            assert all(np.array_equal(img, frame_image("lwir", rec.seq)) for rec, img in r.frames("lwir"))
            assert r.summary()["cameras"]["lwir"]["torn_tail_bytes"] == cut - 5 * rec_size
    # The index lost its last two entries (killed between store and index writes): frames are recovered.
    _truncate(store, 5 * rec_size)
    _truncate(index, 3 * INDEX_SIZE + 7)
    with SessionReader(tmp_path / "s") as r:
        assert len(r.records("lwir")) == 5 and r.streams["lwir"].recovered == 2
    # No index at all.
    index.unlink()
    with SessionReader(tmp_path / "s") as r:
        assert [rec.seq for rec in r.records("lwir")] == list(range(5))


def test_corrupt_payload_is_detected_not_returned(tmp_path):
    record(tmp_path / "s", n_vis=0, n_ir=3)
    store = tmp_path / "s" / "cameras" / "lwir.frames"
    with open(store, "r+b") as f:
        f.seek(HEADER_SIZE + 100)
        f.write(b"\xff\xff")
    with SessionReader(tmp_path / "s") as r:
        rec = r.records("lwir")[0]
        with pytest.raises(RigError, match="frame 0 of camera 'lwir' is corrupt"):
            r.read(rec)


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from rig.rigconfig import parse_rig
    from rig.session import SessionWriter
    sys.path.insert(0, {tests!r})
    from test_session import SMALL_RIG, frame_image
    rig = dict(SMALL_RIG)
    rig["cameras"] = [dict(c) for c in SMALL_RIG["cameras"]]
    rig["cameras"][0]["resolution"] = [1920, 1200]
    w = SessionWriter.create(sys.argv[1], parse_rig(rig))
    i = 0
    while True:
        w.write_image("visible", frame_image("visible", i, (1200, 1920)), i, time.monotonic_ns(), time.time_ns())
        w.write_image("lwir", frame_image("lwir", i), i, time.monotonic_ns(), time.time_ns())
        w.log_event("tick", i=i)
        print(i, flush=True)
        i += 1
""")


@pytest.mark.parametrize("trial", range(6))
def test_sigkill_at_random_points_leaves_a_readable_session(tmp_path, trial):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    session = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, str(script), str(session)], stdout=subprocess.PIPE, text=True)
    rng = np.random.default_rng(trial)
    acknowledged = -1
    target = int(rng.integers(2, 12))
    while acknowledged < target:
        line = proc.stdout.readline()
        assert line, "writer died early"
        acknowledged = int(line)
    time.sleep(float(rng.uniform(0.0, 0.02)))  # land anywhere inside the next writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with SessionReader(session) as r:
        assert r.status == "recording"  # never finalised: the reader says so
        vis = r.records("visible")
        assert len(vis) >= acknowledged + 1
        for cam in ("visible", "lwir"):
            shape = (1200, 1920) if cam == "visible" else None
            for rec, img in r.frames(cam):
                assert np.array_equal(img, frame_image(cam, rec.seq, shape)), f"{cam} frame {rec.seq}"
            assert [rec.seq for rec in r.records(cam)] == list(range(len(r.records(cam))))
        events, bad = r.events()
        assert bad <= 1 and len(events) >= acknowledged + 1
        summary = r.summary()
        assert summary["cameras"]["visible"]["torn_tail_bytes"] >= 0


def _manifest(session: Path) -> dict:
    return yaml.safe_load((session / "manifest.yaml").read_text())


@pytest.mark.parametrize(
    "store,problem",
    [
        ("/etc/passwd", "absolute path '/etc/passwd' not allowed"),
        ("../../outside.frames", "leaves the session directory"),
        ("cameras/../../x.frames", "leaves the session directory"),
    ],
)
def test_manifest_paths_are_confined(tmp_path, store, problem):
    record(tmp_path / "s", n_vis=1, n_ir=2)
    m = _manifest(tmp_path / "s")
    m["cameras"]["lwir"]["store"] = store
    (tmp_path / "s" / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(RigError) as err:
        SessionReader(tmp_path / "s")
    assert "manifest.yaml: cameras.lwir.store: " in str(err.value) and problem in str(err.value)


def test_symlink_escaping_the_session_is_refused(tmp_path):
    record(tmp_path / "s", n_vis=1, n_ir=2)
    outside = tmp_path / "outside.frames"
    outside.write_bytes(b"")
    os.symlink(outside, tmp_path / "s" / "cameras" / "evil.frames")
    m = _manifest(tmp_path / "s")
    m["cameras"]["lwir"]["store"] = "cameras/evil.frames"
    (tmp_path / "s" / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(RigError, match="leaves the session directory"):
        SessionReader(tmp_path / "s")


@pytest.mark.parametrize(
    "mutate,problem",
    [
        (lambda m: m.update(format="other"), "format: not a rig-session manifest"),
        (lambda m: m.update(version=99), "version: session format version 99 is newer"),
        (lambda m: m.update(status="weird"), "status: 'weird' is not one of"),
        (lambda m: m["cameras"]["lwir"].update(pixel_format="RGB48"), "pixel_format: unknown pixel format"),
        (lambda m: m["cameras"]["lwir"].pop("index"), "cameras.lwir.index: missing required key"),
    ],
)
def test_invalid_manifests(tmp_path, mutate, problem):
    record(tmp_path / "s", n_vis=1, n_ir=2)
    m = _manifest(tmp_path / "s")
    mutate(m)
    (tmp_path / "s" / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(RigError, match=problem):
        SessionReader(tmp_path / "s")


def test_manifest_is_safe_loaded(tmp_path):
    record(tmp_path / "s", n_vis=1, n_ir=2)
    (tmp_path / "s" / "manifest.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RigError, match="not valid YAML"):
        SessionReader(tmp_path / "s")


def test_not_a_session(tmp_path):
    with pytest.raises(RigError, match="no such session directory"):
        SessionReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RigError, match="manifest.yaml is missing"):
        SessionReader(tmp_path / "empty")


def test_concurrent_writers_never_spend_the_reserve(tmp_path, monkeypatch):
    """Two camera threads racing for the last free bytes: together they stop before the reserve."""
    import shutil
    import threading

    session = tmp_path / "s"
    real = shutil.disk_usage
    budget = 3 << 20

    def small_disk(path):
        used = sum(f.stat().st_size for f in session.rglob("*") if f.is_file()) if session.exists() else 0
        u = real(path)
        return type(u)(u.total, u.used, budget + (1 << 20) - used)

    monkeypatch.setattr(shutil, "disk_usage", small_disk)
    w = SessionWriter.create(session, parse_rig(SMALL_RIG), min_free_bytes=1 << 20)
    stops = []

    def run(camera: str) -> None:
        i = 0
        try:
            while True:
                w.write_image(camera, frame_image(camera, i), i, i, i)
                w.log_event("tick", camera=camera, i=i)
                i += 1
        except DiskFullError:
            stops.append(camera)

    threads = [threading.Thread(target=run, args=(c,)) for c in ("visible", "lwir")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close("complete")
    written = sum(f.stat().st_size for f in session.rglob("*") if f.is_file())
    assert sorted(stops) == ["lwir", "visible"]
    assert budget - (64 << 10) < written <= budget + (8 << 10)  # only the final manifest rewrite is unaccounted


# --------------------------------------------------------------------------- damage, untrusted files, pairing
def _flip(path: Path, offset: int, n: int = 64) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_verify_finds_a_flipped_payload(tmp_path):
    record(tmp_path / "s", n_vis=0, n_ir=6)
    rec_size = HEADER_SIZE + 24 * 32 * 2
    _flip(tmp_path / "s" / "cameras" / "lwir.frames", 2 * rec_size + HEADER_SIZE + 500)
    with SessionReader(tmp_path / "s") as r:
        bad = r.verify()
    assert [(c.camera, c.seq) for c in bad] == [("lwir", 2)]
    from rig.cli import main

    assert main(["session", "info", str(tmp_path / "s")]) == 0  # without --verify the index is trusted
    assert main(["session", "info", str(tmp_path / "s"), "--verify"]) == 1
    proc = subprocess.run([sys.executable, "-m", "rig.cli", "session", "info", str(tmp_path / "s"), "--verify"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 1 and "lwir frame 2 (counter 102" in proc.stdout and "1 of 6 frames corrupt" in proc.stdout


def test_recovery_without_index_resyncs_past_corrupt_records(tmp_path):
    record(tmp_path / "s", n_vis=0, n_ir=12)
    store = tmp_path / "s" / "cameras" / "lwir.frames"
    rec_size = HEADER_SIZE + 24 * 32 * 2
    (tmp_path / "s" / "cameras" / "lwir.index").unlink()
    _flip(store, 3 * rec_size + HEADER_SIZE + 200)  # payload of frame 3
    _flip(store, 7 * rec_size + 10, 8)  # header of frame 7
    with SessionReader(tmp_path / "s") as r:
        st = r.streams["lwir"]
        assert [rec.seq for rec in st.records] == [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]
        assert st.torn_tail_bytes == 0 and st.skipped_bytes == 2 * rec_size
        assert "payload CRC mismatch in frame 3" in st.corrupt[0] and "unreadable record header" in st.corrupt[1]
        assert all(np.array_equal(img, frame_image("lwir", rec.seq)) for rec, img in r.frames("lwir"))
    # A torn tail after damage is still a torn tail.
    _truncate(store, 12 * rec_size - 100)
    with SessionReader(tmp_path / "s") as r:
        assert [rec.seq for rec in r.records("lwir")][-1] == 10 and r.streams["lwir"].torn_tail_bytes == rec_size - 100


@pytest.mark.parametrize("victim", ["events.jsonl", "cameras/lwir.index", "cameras/lwir.frames"])
def test_a_fifo_in_a_session_is_refused_not_read(tmp_path, victim):
    record(tmp_path / "s", n_vis=2, n_ir=4)
    path = tmp_path / "s" / victim
    path.unlink()
    os.mkfifo(path)
    # In a child process with a timeout: opening a FIFO for reading would block forever.
    code = "import sys\nfrom rig.cli import main\nsys.exit(main(['session', 'info', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "is a FIFO, not a regular file; refusing to read it" in proc.stderr and victim.split("/")[-1] in proc.stderr


def test_event_log_pointing_at_a_device_is_refused(tmp_path):
    record(tmp_path / "s", n_vis=2, n_ir=4)
    events = tmp_path / "s" / "events.jsonl"
    events.unlink()
    events.symlink_to("/dev/zero")
    with SessionReader(tmp_path / "s") as r, pytest.raises(RigError, match="leaves the session directory"):
        r.events()


def test_overlong_event_lines_are_counted_not_loaded(tmp_path):
    record(tmp_path / "s", n_vis=2, n_ir=4)
    with open(tmp_path / "s" / "events.jsonl", "ab") as f:
        f.write(b"x" * (3 << 20) + b"\n" + b'{"kind": "after"}\n')
    with SessionReader(tmp_path / "s") as r:
        events, bad = r.events()
    assert bad == 1 and [e["kind"] for e in events] == ["ffc", "after"]


@pytest.mark.parametrize("ref, ok", [("calibration.yaml", True), ("../../x.yaml", False), ("/etc/passwd", False)])
def test_calibration_reference_is_confined(tmp_path, ref, ok):
    record(tmp_path / "s")
    manifest = _manifest(tmp_path / "s")
    manifest["calibration"] = ref
    (tmp_path / "s" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with SessionReader(tmp_path / "s") as r:
        if ok:
            assert r.calibration_path() == (tmp_path / "s" / "calibration.yaml").resolve()
        else:
            with pytest.raises(RigError, match="calibration: (absolute path|path '../../x.yaml' leaves)"):
                r.calibration_path()


def _triggered(n: int, period: int, jitter: int, missed: set[int], restart_at: int | None, seed: int, camera: str):
    """Frames of a hardware-triggered camera: one per trigger seen, its counter counting the triggers it saw."""
    from rig.session import FrameRecord

    rng = np.random.default_rng(seed)
    out, counter = [], 1000
    for trigger in range(n):
        if trigger in missed:
            continue  # the camera never saw this trigger: its counter does not advance
        if trigger == restart_at:
            counter = 0  # reconnected: the counter restarts
        t = trigger * period + int(rng.integers(-jitter, jitter + 1))
        out.append(FrameRecord(camera, trigger, counter, t, t, None, 1, 1, "Mono8", 0, 0, 1, 0))  # seq = trigger
        counter += 1
    return out


def test_a_missed_trigger_does_not_shift_later_pairs():
    period = 33_333_333
    a = _triggered(120, period, 3_000_000, set(), None, 1, "a")
    b = _triggered(120, period, 3_000_000, {10, 57}, 80, 2, "b")  # misses two triggers, reconnects at 80
    pairs = pair_by_counter(a, b, max_dt_ns=period // 2)
    assert all(p.a.seq == p.b.seq for p in pairs)  # seq holds the true trigger here
    assert {p.a.seq for p in pairs} == set(range(120)) - {10, 57}
    # Counters alone (the old behaviour) shift every pair after the first missed trigger.
    assert sum(p.a.seq != p.b.seq for p in pair_by_counter(a, b)) > 50


def test_session_info_shows_a_degraded_session(tmp_path, capsys):
    from rig.cli import main

    record(tmp_path / "s")
    manifest = _manifest(tmp_path / "s")
    manifest["status"] = "degraded"
    (tmp_path / "s" / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["session", "info", str(tmp_path / "s")]) == 0
    assert "degraded (an outage: see stats.outages)" in capsys.readouterr().out
