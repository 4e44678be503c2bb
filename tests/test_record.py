"""Drive recorder: counts and pairing of a 10 s sim recording, SIGKILL/SIGINT, disk reserve,
camera disconnects, GPS over a pty, FFC observation and scheduling."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from rig.capture.camera import CameraError, FrameFlags
from rig.capture.gps import checksum
from rig.capture.recorder import Recorder, RecordingResult
from rig.capture.sim_camera import sim_cameras_for_drive
from rig.errors import RigError
from rig.rigconfig import parse_rig
from rig.session import SessionReader

SMALL_RIG = {
    "rig": "small",
    "cameras": [
        {"name": "visible", "role": "visible", "driver": "sim", "resolution": [320, 200], "pixel_format": "BayerRG8",
         "fps": 30, "sim": {"intrinsics": {"fx": 280, "fy": 280, "cx": 160, "cy": 100}}},
        {"name": "lwir", "role": "lwir", "driver": "sim", "resolution": [160, 128], "pixel_format": "Mono16",
         "fps": 60, "sim": {"intrinsics": {"fx": 180, "fy": 180, "cx": 80, "cy": 64},
                            "pose": {"rotation_deg": [0.5, -0.5, 0.2], "position_m": [0.12, 0.05, 0.0]}}},
    ],
}


@pytest.fixture(scope="module")
def small_rig():
    return parse_rig(SMALL_RIG)


def cameras(rig, **kw):
    return sim_cameras_for_drive(rig, world_duration_s=2.0, **kw)


def test_10s_recording_counts_pairing_and_no_drops(small_rig, tmp_path):
    rec = Recorder(small_rig, tmp_path / "s", cameras(small_rig))
    assert not rec.path.exists()  # no I/O before open()
    statuses = []
    with rec:
        result = rec.run(10.0, on_status=statuses.append, status_interval_s=1.0)
    assert isinstance(result, RecordingResult) and result.status == "complete" and result.stop_reason == "duration"
    assert result.frames["visible"] == pytest.approx(300, abs=1)
    assert result.frames["lwir"] == pytest.approx(600, abs=1)
    assert result.drops == {"visible": 0, "lwir": 0}
    # The dashboard saw both cameras near their target rates.
    # (Rates over the dashboard's 2 s window: how close to 1.0 depends on how loaded the machine is.)
    mid = statuses[len(statuses) // 2]
    assert all(0.5 < c.fps_actual / c.fps_target < 1.5 for c in mid.cameras)
    assert [c.lost for c in statuses[-1].cameras] == [0, 0] and {c.name for c in mid.cameras} == {"visible", "lwir"}
    with SessionReader(result.path) as r:
        s = r.summary()
        assert r.status == "complete" and s["drops"] == {}
        for name, n in (("visible", 300), ("lwir", 600)):
            cam = s["cameras"][name]
            assert cam["frames"] == result.frames[name] and cam["missing_by_counter"] == 0
            assert cam["fps_measured"] == pytest.approx(SMALL_RIG["cameras"][name == "lwir"]["fps"], rel=0.02)
            counters = [x.frame_counter for x in r.records(name)]
            assert counters == list(range(counters[0], counters[0] + len(counters)))
        pairs = r.pairs()
        # Every visible frame has an LWIR partner within half the slower period; half the LWIR frames are extra.
        assert len(pairs) == result.frames["visible"]
        assert max(abs(p.dt_ns) for p in pairs) <= 16_666_666
        assert len(r.unpaired("lwir", pairs)) == result.frames["lwir"] - len(pairs)
        stats = r.manifest["stats"]
        assert stats["pairing"]["pairs"] == len(pairs) and stats["pairing"]["mode"] == "timestamp"
        assert stats["dropped_in_queue"] == {"visible": 0, "lwir": 0} and stats["stop_reason"] == "duration"
        assert stats["lost"] == result.lost == {n: c["lost"] for n, c in s["cameras"].items()}
        # UNPAIRED flags: only frames the reader cannot pair either (no partner candidate in the window).
        paired_vis = {p.a.seq for p in pairs}
        flagged = [x for x in r.records("visible") if x.flags & FrameFlags.UNPAIRED]
        assert not any(x.seq in paired_vis for x in flagged)
        lwir_flagged = [x for x in r.records("lwir") if x.flags & FrameFlags.UNPAIRED]
        vis_t = np.array([x.host_ns for x in r.records("visible")])
        for x in lwir_flagged:
            assert np.abs(vis_t - x.host_ns).min() > 16_666_666


def _write_rig(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL_RIG))
    return path


def _start_cli(rig_path, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "rig.cli", "record", "--drive", "--rig", str(rig_path),
                             "--out", str(out), "--plain", "--reserve-mb", "10", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_recording(proc, out, timeout=60.0):
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        line = proc.stdout.readline()
        if line.startswith("recording to"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"recorder exited: {proc.stderr.read()}")
    raise AssertionError("recorder did not start")


def test_cli_sigkill_leaves_readable_session_and_sigint_completes(tmp_path):
    rig_path = _write_rig(tmp_path)
    killed, interrupted = tmp_path / "killed", tmp_path / "interrupted"
    procs = [_start_cli(rig_path, killed), _start_cli(rig_path, interrupted)]
    try:
        for proc, out in zip(procs, (killed, interrupted)):
            _wait_recording(proc, out)
        time.sleep(2.0)
        procs[0].send_signal(signal.SIGKILL)
        procs[1].send_signal(signal.SIGINT)
        assert procs[0].wait(20) == -signal.SIGKILL
        assert procs[1].wait(20) == 0, procs[1].stderr.read()
        tail = procs[1].stdout.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    with SessionReader(killed) as r:
        assert r.status == "recording"  # not finalised, but readable
        for name in ("visible", "lwir"):
            recs = r.records(name)
            assert len(recs) > 20 and r.streams[name].corrupt == []
            for rec in recs[-3:]:
                r.read(rec)  # CRC-checked
        assert r.pairs()
    with SessionReader(interrupted) as r:
        assert r.status == "complete"
        stats = r.manifest["stats"]
        assert stats["stop_reason"] == "interrupted" and stats["dropped_in_queue"] == {"visible": 0, "lwir": 0}
        assert stats["frames"]["visible"] > 30
        # Ctrl-C cuts the cameras at slightly different instants: at most the last frame lacks a partner.
        assert stats["pairing"]["pairs"] >= stats["frames"]["visible"] - 1
        kinds = [e["kind"] for e in r.events()[0]]
        assert kinds[0] == "recording_start" and kinds[-1] == "recording_stop"
    assert f"session {interrupted}: complete (interrupted)" in tail


def test_disk_reserve_stops_cleanly(small_rig, tmp_path, monkeypatch):
    # A small disk: 12 MiB free before recording, shrinking by what the session writes
    # (the real disk is shared with other jobs, so its free space is not ours to measure).
    session = tmp_path / "s"
    real = shutil.disk_usage

    def small_disk(path):
        used = sum(f.stat().st_size for f in session.rglob("*") if f.is_file()) if session.exists() else 0
        u = real(path)
        return type(u)(u.total, u.used, (12 << 20) - used)

    monkeypatch.setattr(shutil, "disk_usage", small_disk)
    rec = Recorder(small_rig, session, cameras(small_rig), min_free_bytes=4 << 20)
    t = time.monotonic()
    with rec:
        result = rec.run(30.0)
    assert time.monotonic() - t < 10
    assert result.stop_reason == "disk-full" and "MiB free" in result.message
    written = sum(f.stat().st_size for f in session.rglob("*") if f.is_file())
    assert 6 << 20 < written <= 8 << 20  # stopped before the reserve was touched
    with SessionReader(result.path) as r:
        assert r.status == "complete" and r.manifest["stats"]["stop_reason"] == "disk-full"
        events = r.events()[0]
        assert [e for e in events if e["kind"] == "disk_full"]
        assert sum(len(r.records(n)) for n in r.cameras) == sum(result.frames.values()) > 50
        assert all(r.streams[n].torn_tail_bytes == 0 for n in r.cameras)


def test_disk_reserve_larger_than_the_disk_stops_before_the_first_write(small_rig, tmp_path):
    with Recorder(small_rig, tmp_path / "s", cameras(small_rig), min_free_bytes=1 << 60) as rec:
        result = rec.run(30.0)
    assert result.stop_reason == "disk-full" and sum(result.frames.values()) == 0
    assert SessionReader(result.path).status == "complete"


class FlakyCamera:
    """Wraps a camera: its grab raises after ``fail_after`` frames; the first ``bad_reopens`` reopens fail."""

    def __init__(self, inner, fail_after: int, bad_reopens: int = 1):
        self._inner, self.fail_after, self.bad_reopens = inner, fail_after, bad_reopens
        self.grabs = 0
        self.opens = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def open(self):
        self.opens += 1
        if self.opens > 1 and self.bad_reopens > 0:
            self.bad_reopens -= 1
            raise CameraError(f"{self.name}: cannot open (unplugged)")
        self._inner.open()

    def grab(self, timeout_s=1.0):
        self.grabs += 1
        if self.grabs == self.fail_after:
            raise CameraError(f"{self.name}: USB transfer failed")
        return self._inner.grab(timeout_s)


def test_camera_disconnect_is_logged_retried_and_the_other_camera_keeps_recording(small_rig, tmp_path):
    vis, lwir = cameras(small_rig)
    flaky = FlakyCamera(lwir, fail_after=60, bad_reopens=2)
    with Recorder(small_rig, tmp_path / "s", [vis, flaky], reconnect_backoff_s=0.1) as rec:
        result = rec.run(3.0)
    c = result.cameras["lwir"]
    assert c.disconnects == 1 and c.reconnects == 1
    assert result.status == "degraded" and 0.1 < c.down_s < 2.0 and not c.down_at_end
    assert result.degraded == (f"lwir down {c.down_s:.1f} s",)
    assert result.frames["visible"] == pytest.approx(90, abs=1)  # unaffected
    assert 90 < result.frames["lwir"] < 175  # lost ~0.3 s (two failed reopens with backoff), then recorded again
    with SessionReader(result.path) as r:
        assert r.status == "degraded"
        assert r.manifest["stats"]["outages"]["lwir"]["down_s"] == pytest.approx(c.down_s, abs=0.002)
        events = r.events()[0]
        kinds = [e["kind"] for e in events]
        assert kinds.count("disconnect") == 1 and kinds.count("reconnect") == 1
        assert next(e for e in events if e["kind"] == "reconnect")["down_s"] == pytest.approx(c.down_s, abs=0.002)
        assert "USB transfer failed" in next(e for e in events if e["kind"] == "disconnect")["error"]
        recs = r.records("lwir")
        reconnected = [i for i, x in enumerate(recs) if x.flags & FrameFlags.RECONNECTED]
        assert len(reconnected) == 1 and 50 < reconnected[0] < len(recs) - 30
        vis_counters = [x.frame_counter for x in r.records("visible")]
        assert vis_counters == list(range(len(vis_counters)))


def _nmea(body: str) -> bytes:
    return f"${body}*{checksum(body):02X}\r\n".encode()


class FfcCapable:
    """A sim LWIR camera with a Boson-like ``request_ffc()``: frames are flagged FFC for ``duration_s``."""

    def __init__(self, inner, duration_s: float = 0.2):
        self._inner, self.duration_s = inner, duration_s
        self.ffc_until = 0.0
        self.ffc_runs = 0
        self.threads = set()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def request_ffc(self):
        self.threads.add(threading.current_thread().name)
        self.ffc_runs += 1
        self.ffc_until = time.monotonic() + self.duration_s

    def grab(self, timeout_s=1.0):
        f = self._inner.grab(timeout_s)
        if f is not None and time.monotonic() < self.ffc_until:
            from dataclasses import replace

            f = replace(f, flags=f.flags | FrameFlags.FFC)
        return f


def test_gps_over_a_pty_and_ffc_when_stopped(small_rig, tmp_path):
    master, slave = os.openpty()
    import tty

    tty.setraw(slave)
    port = os.ttyname(slave)
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            ss = f"{12 + i // 10:02d}{i % 10}.00"
            os.write(master, _nmea(f"GPRMC,1235{ss[-4:]},A,5212.3456,N,00432.1000,E,0.1,90.0,150324,,,A"))
            os.write(master, _nmea(f"GPGGA,1235{ss[-4:]},5212.3456,N,00432.1000,E,1,09,0.9,12.5,M,46.9,M,,"))
            if i % 3 == 0:
                os.write(master, b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*00\r\n")
                os.write(master, b"\x00\xffgarbage line\r\n")
            i += 1
            stop.wait(0.2)

    feeder = threading.Thread(target=feed, daemon=True)
    vis, lwir = cameras(small_rig)
    lwir = FfcCapable(lwir, duration_s=0.25)
    try:
        feeder.start()
        with Recorder(small_rig, tmp_path / "s", [vis, lwir], gps_port=port, ffc_when_stopped=True,
                      stopped_for_s=0.5, ffc_min_gap_s=100.0) as rec:
            result = rec.run(3.0)
    finally:
        stop.set()
        feeder.join()
        os.close(master)
        os.close(slave)
    assert result.gps["fixes"] >= 20 and result.gps["bad"] >= 6 and result.gps["bad_checksum"] >= 3
    assert lwir.ffc_runs == 1 and "grab-lwir" not in lwir.threads  # never asked of the acquisition thread
    with SessionReader(result.path) as r:
        events, bad_lines = r.events()
        assert bad_lines == 0
        gps = [e for e in events if e["kind"] == "gps"]
        assert len(gps) == result.gps["fixes"]
        rmc = next(e for e in gps if e["sentence"] == "RMC")
        assert rmc["lat_deg"] == pytest.approx(52 + 12.3456 / 60) and rmc["lon_deg"] == pytest.approx(4 + 32.1 / 60)
        assert rmc["speed_mps"] == pytest.approx(0.1 * 1852 / 3600) and rmc["valid"]
        gga = next(e for e in gps if e["sentence"] == "GGA")
        assert gga["satellites"] == 9 and gga["altitude_m"] == 12.5
        # Time tags on the frames' clock: every fix lies inside the recording's host-time span.
        t_frames = [x.host_ns for x in r.records("visible")]
        assert all(t_frames[0] - 1e9 < e["host_ns"] < t_frames[-1] + 1e9 for e in gps)
        stats = next(e for e in events if e["kind"] == "gps_stats")
        assert stats["bad"] == result.gps["bad"] and r.manifest["stats"]["gps"]["fixes"] == result.gps["fixes"]
        sched = [e for e in events if e["kind"] == "ffc_schedule"]
        assert [e["reason"] for e in sched] == ["stopped"]
        ffc = [e for e in events if e["kind"] == "ffc"]
        assert [e["state"] for e in ffc] == ["start", "end"]
        assert ffc[1]["frames"] == pytest.approx(0.25 * 60, abs=4)
        flagged = sum(1 for x in r.records("lwir") if x.flags & FrameFlags.FFC)
        assert flagged == ffc[1]["frames"] == result.cameras["lwir"].ffc_frames


def test_ffc_interval_schedules_corrections(small_rig, tmp_path):
    vis, lwir = cameras(small_rig)
    lwir = FfcCapable(lwir, duration_s=0.1)
    with Recorder(small_rig, tmp_path / "s", [vis, lwir], ffc_interval_s=0.7) as rec:
        result = rec.run(2.5)
    assert lwir.ffc_runs == 3 and result.ffc_events == 3
    with SessionReader(result.path) as r:
        assert [e["state"] for e in r.events()[0] if e["kind"] == "ffc"] == ["start", "end"] * 3


def test_full_queue_drops_are_counted_logged_and_flagged(small_rig, tmp_path):
    vis, lwir = cameras(small_rig)
    with Recorder(small_rig, tmp_path / "s", [vis, lwir], queue_frames=2) as rec:
        # Hold the LWIR writer back: its queue fills and frames are dropped, never blocking acquisition.
        real_write = rec._flush_pending

        def slow(lane, force):
            if lane.name == "lwir":
                time.sleep(0.1)
            real_write(lane, force)

        rec._flush_pending = slow
        result = rec.run(2.0)
    drops = result.drops["lwir"]
    assert drops > 30 and result.drops["visible"] == 0
    assert result.frames["lwir"] + drops == pytest.approx(120, abs=2)
    with SessionReader(result.path) as r:
        s = r.summary()
        assert s["drops"] == {"lwir": drops}
        # One loss figure: the recorder's, the manifest's and the reader's; counter gaps show our queue drops,
        # except drops after the last written frame (only in the event log).
        lost = s["cameras"]["lwir"]["lost"]
        assert lost == result.lost["lwir"] == r.manifest["stats"]["lost"]["lwir"]
        assert drops - 8 <= lost <= drops
        gaps = sum(1 for x in r.records("lwir") if x.flags & FrameFlags.GAP_BEFORE)
        assert gaps > 0


def test_user_errors_are_one_line(small_rig, tmp_path):
    with pytest.raises(RigError, match="queue size"):
        Recorder(small_rig, tmp_path / "s", queue_frames=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(RigError, match="already exists"):
        with Recorder(small_rig, tmp_path / "busy", cameras(small_rig)):
            pass
    with pytest.raises(RigError, match="cannot open GPS serial port"):
        with Recorder(small_rig, tmp_path / "g", cameras(small_rig), gps_port=str(tmp_path / "nogps")):
            pass
    assert not (tmp_path / "g").exists()


def test_gps_port_dying_is_reopened_with_backoff_raw_lines_kept_and_the_run_is_degraded(small_rig, tmp_path):
    import tty

    link = tmp_path / "gps"  # the port a rig names; the device behind it goes away and comes back
    ptys = []

    def new_pty():
        master, slave = os.openpty()
        tty.setraw(slave)
        ptys.append((master, slave))
        if link.is_symlink():
            link.unlink()
        link.symlink_to(os.ttyname(slave))
        return master

    master = [new_pty()]
    stop = threading.Event()
    sent = []

    def feed():
        i = 0
        while not stop.is_set():
            line = _nmea(f"GPRMC,1235{i % 60:02d}.00,A,5212.3456,N,00432.1000,E,12.0,90.0,150324,,,A")
            try:
                os.write(master[0], line)
                sent.append(line.decode().strip())
            except OSError:
                pass
            i += 1
            stop.wait(0.1)

    feeder = threading.Thread(target=feed, daemon=True)
    try:
        feeder.start()
        with Recorder(small_rig, tmp_path / "s", cameras(small_rig), gps_port=str(link)) as rec:
            def unplug():
                time.sleep(1.0)
                m, s = ptys[0]
                os.close(s)
                os.close(m)  # the device is gone: reads fail
                link.unlink()
                time.sleep(1.0)
                master[0] = new_pty()  # ... and back a second later

            threading.Thread(target=unplug, daemon=True).start()
            result = rec.run(3.5)
    finally:
        stop.set()
        feeder.join()
        for m, s in ptys[1:]:
            os.close(m)
            os.close(s)
    g = result.gps
    assert g["outages"] == 1 and g["reopens"] == 1 and not g["down_at_end"] and 0.9 < g["down_s"] < 2.5
    assert result.status == "degraded" and result.degraded[-1].startswith("GPS down")
    with SessionReader(result.path) as r:
        assert r.status == "degraded" and r.manifest["stats"]["gps"]["reopens"] == 1
        events = r.events()[0]
        kinds = [e["kind"] for e in events]
        assert kinds.count("gps_error") == 1 and kinds.count("gps_reopen") == 1
        assert kinds.count("gps_reopen_failed") >= 1  # the port was missing for a while: backoff, then back
        raw = [e for e in events if e["kind"] == "nmea"]
        assert len(raw) >= 15 and all(e["line"] in sent for e in raw)
        t = [e["host_ns"] for e in raw]
        assert t == sorted(t) and len(set(t)) > 10  # each line with its own arrival time
        gps = [e for e in events if e["kind"] == "gps"]
        assert len(gps) == len(raw)  # every (valid) raw line became a fix
