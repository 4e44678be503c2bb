"""GenICam driver against viky.cti, the software GenTL producer shipped in the genicam wheel.

Viky has three devices (serials 0, 1, 2), settable Width/Height/AcquisitionFrameRate,
PixelFormat Mono8/RGBa8, and no exposure, gain, trigger or timestamps: the tests
rely on exactly that, so none is skipped for lack of hardware.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from rig.capture.camera import CameraError, FrameFlags, make_camera
from rig.capture.genicam import GenicamCamera, default_cti
from rig.rigconfig import parse_rig


def _spec(size=(320, 240), fps=40.0, fmt="Mono8", **genicam):
    genicam = genicam or {"serial": "1"}
    rig = parse_rig(
        {
            "rig": "viky",
            "cameras": [
                {
                    "name": "vis",
                    "role": "visible",
                    "driver": "genicam",
                    "resolution": list(size),
                    "pixel_format": fmt,
                    "fps": fps,
                    "genicam": genicam,
                }
            ],
        }
    )
    return rig.cameras[0]


def test_default_producer_is_viky():
    assert default_cti().name == "viky.cti" and default_cti().is_file()
    assert GenicamCamera(_spec()).cti == default_cti()


@pytest.mark.parametrize("size,fps", [((320, 240), 40.0), ((640, 480), 25.0)])
def test_frame_count_matches_rate_and_size(size, fps):
    duration = 1.5
    with make_camera(_spec(size, fps)) as cam:
        assert cam.node_map.Width.value == size[0] and cam.node_map.AcquisitionFrameRate.value == fps
        cam.start()
        first = cam.grab(2.0)  # let the stream settle, then count a fixed window
        t0 = time.monotonic()
        frames = []
        while time.monotonic() - t0 < duration:
            f = cam.grab(1.0)
            assert f is not None
            frames.append(f)
    expected = fps * duration
    assert len(frames) == pytest.approx(expected, rel=0.10)
    assert all(f.shape == (size[1], size[0]) and f.image.dtype == np.uint8 for f in frames)
    ids = [first.frame_counter] + [f.frame_counter for f in frames]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # viky numbers frames; none lost
    host = np.array([f.host_ns for f in frames], dtype=np.int64)
    assert np.all(np.diff(host) > 0)
    # no device timestamps on viky: host time only, flagged
    assert all(f.device_ns is None and f.flags & FrameFlags.HOST_TIMESTAMP_ONLY for f in frames)
    print(f"viky {size[0]}x{size[1]} @ {fps} fps: {len(frames)} frames in {duration} s (expected {expected:.0f})")


def test_frames_are_copies_not_driver_views():
    with make_camera(_spec(fps=60.0), num_buffers=3) as cam:
        cam.start()
        held = cam.grab(2.0)
        snapshot = held.image.copy()
        later = [cam.grab(2.0) for _ in range(12)]  # several times round the 3 driver buffers
    assert np.array_equal(held.image, snapshot)  # the driver reused its buffers; our frame did not change
    assert not any(np.shares_memory(held.image, f.image) for f in later)
    assert held.image.flags.owndata and held.image.base is None
    # the scene moves, so a reused buffer would have shown a different image
    assert not np.array_equal(held.image, later[-1].image)


@pytest.mark.parametrize("key,value,serial,device_id", [("serial", "2", "2", "VikyTL_DEV_blue"), ("device_id", "VikyTL_DEV_red", "0", "VikyTL_DEV_red")])
def test_device_selection(key, value, serial, device_id):
    with make_camera(_spec(**{key: value})) as cam:
        info = cam.info()
    assert (info.serial, info.extra["device_id"], info.model) == (serial, device_id, "Viky")


def test_missing_serial_is_a_clear_error():
    cam = make_camera(_spec(serial="99"))
    with pytest.raises(CameraError) as err:
        cam.open()
    msg = str(err.value)
    assert msg.startswith("vis: no GenICam device with serial '99' on viky.cti")
    assert "found: 0 (VikyTL_DEV_red), 1 (VikyTL_DEV_green), 2 (VikyTL_DEV_blue)" in msg
    assert "\n" not in msg and not cam.is_open


def test_missing_nodes_warn_once(caplog):
    spec = _spec(serial="0", exposure_us=2000.0, gain_db=3.0)
    with caplog.at_level(logging.WARNING, logger="rig.capture.genicam"):
        with make_camera(spec) as cam:
            cam.configure()  # again: no second warning
    warned = [r.getMessage() for r in caplog.records]
    for node in ("ExposureTime", "Gain", "TriggerMode"):
        assert sum(f"'{node}'" in m for m in warned) == 1, warned


def test_rejected_settings_are_errors():
    with pytest.raises(CameraError, match=r"vis: device refused Width = 5000 \(allowed 100\.\.800\)"):
        with make_camera(_spec(size=(5000, 240))):
            pass
    with pytest.raises(CameraError, match=r"offers no PixelFormat 'BayerRG8' \(it offers: RGBa8, Mono8\)"):
        with make_camera(_spec(fmt="BayerRG8")):
            pass
    with pytest.raises(CameraError, match="GenTL producer not found"):
        with make_camera(_spec(serial="1", cti="/nonexistent/producer.cti")):
            pass


def test_timeouts_are_counted_and_the_driver_never_reconnects_itself(caplog):
    # One reconnect layer: the recorder's (rig.capture.streams). The driver only reports.
    with make_camera(_spec(fps=2.0)) as cam:
        cam.start()
        cam.grab(2.0)
        ia = cam._ia
        with caplog.at_level(logging.WARNING, logger="rig.capture.genicam"):
            results = [cam.grab(0.05) for _ in range(3)]  # frames come every 0.5 s
        assert results == [None, None, None]
        assert cam.timeouts == 3 and cam._ia is ia  # counted, same acquirer: no hidden reopen
        assert "no frame within 0.050 s (3 in a row)" in caplog.records[-1].getMessage()
        assert not any("reconnect" in r.getMessage() for r in caplog.records)
        f = cam.grab(2.0)
        assert f is not None and not f.flags & FrameFlags.RECONNECTED and f.shape == (240, 320)
    assert not cam.is_open


def _fail_fetch_once(cam, at_call: int):
    """Make the camera's current acquirer raise a GenTL transport error on its ``at_call``-th fetch."""
    from genicam.gentl import GenericException

    real, calls = cam._ia.fetch, [0]

    def fetch(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at_call:
            raise GenericException("link down")
        return real(*args, **kwargs)

    cam._ia.fetch = fetch


def test_transport_error_is_a_camera_error():
    with make_camera(_spec()) as cam:
        cam.start()
        _fail_fetch_once(cam, 1)
        with pytest.raises(CameraError, match="vis: transport error: .*link down"):
            cam.grab(1.0)


def test_recorder_reopens_a_genicam_camera_after_a_transport_error(tmp_path):
    from rig.capture.recorder import Recorder
    from rig.session import SessionReader

    spec = _spec(fps=40.0)
    rig = parse_rig({"rig": "viky", "cameras": [{"name": "vis", "role": "visible", "driver": "genicam",
                                                  "resolution": [320, 240], "pixel_format": "Mono8", "fps": 40.0,
                                                  "genicam": {"serial": "1"}}]})
    cam = make_camera(spec)
    with Recorder(rig, tmp_path / "s", [cam], reconnect_backoff_s=0.05, min_free_bytes=0) as rec:
        _fail_fetch_once(cam, 10)  # the acquirer of the first open only
        result = rec.run(3.0)
    c = result.cameras["vis"]
    assert (c.disconnects, c.reconnects) == (1, 1)
    with SessionReader(result.path) as r:
        events = r.events()[0]
        disc = [e for e in events if e["kind"] == "disconnect"]
        assert len(disc) == 1 and "transport error" in disc[0]["error"]
        assert [e["kind"] for e in events].count("reconnect") == 1
        recs = r.records("vis")
        reconnected = [i for i, x in enumerate(recs) if x.flags & FrameFlags.RECONNECTED]
        assert len(reconnected) == 1 and 5 <= reconnected[0] < len(recs) - 1  # frames before and after


def test_frames_are_numbered_by_the_device_frame_id_so_device_loss_is_visible():
    # viky has a GenTL FrameID but no timestamp and no FrameID/Timestamp chunks: what it has is used.
    with make_camera(_spec(fps=40.0)) as cam:
        assert cam._chunks == set()  # viky offers neither chunk
        cam.start()
        ids = []
        real = cam._ia.fetch

        def fetch(*a, **kw):  # note the producer's own FrameID of each buffer
            buf = real(*a, **kw)
            ids.append(int(buf.frame_id))
            return buf

        cam._ia.fetch = fetch
        frames = [cam.grab(2.0) for _ in range(5)]
        time.sleep(0.3)  # let the producer run ahead: frames it overwrote show as a FrameID jump
        frames += [cam.grab(2.0) for _ in range(3)]
    assert [f.frame_counter for f in frames] == ids
    assert all(f.device_ns is None and f.flags & FrameFlags.HOST_TIMESTAMP_ONLY for f in frames)
    jumps = [b.frame_counter - a.frame_counter for a, b in zip(frames, frames[1:])]
    assert all(j >= 1 for j in jumps)
    assert all(bool(b.flags & FrameFlags.GAP_BEFORE) == (j > 1) for b, j in zip(frames[1:], jumps))
