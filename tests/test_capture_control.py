"""Camera control off the grab path: FFC windows, the control thread, V4L2 buffer metadata, open_cameras."""

from __future__ import annotations

import errno
import struct
import threading

import numpy as np
import pytest

from rig.capture import v4l2
from rig.capture.boson_video import V4L2Y16Video
from rig.capture.camera import Camera, CameraError, DeviceInfo, open_cameras
from rig.capture.control import ControlLoop, FfcWindows
from rig.errors import RigError
from rig.rigconfig import parse_rig

MS = 1_000_000


# -- FFC windows ------------------------------------------------------------------------


def test_frames_are_undecided_until_a_poll_after_them_and_idle_frames_are_not_flagged():
    w = FfcWindows(settle_s=0.05)
    assert w.decide(100 * MS) is None  # nothing known yet
    w.observe(100 * MS, 101 * MS, busy=False, ffc_count=10)
    assert w.decide(99 * MS) is False and w.decide(100 * MS) is False and w.decide(105 * MS) is None
    w.observe(200 * MS, 201 * MS, busy=False, ffc_count=10)
    assert w.decide(150 * MS) is False and w.decide(201 * MS) is None


def test_an_ffc_first_seen_late_still_flags_the_frames_since_the_last_idle_poll():
    w = FfcWindows(settle_s=0.05)
    w.observe(0, 1 * MS, busy=False, ffc_count=10)
    w.observe(100 * MS, 101 * MS, busy=False, ffc_count=10)
    # The FFC starts at 150 ms; the poll sent at 200 ms is stalled by the camera until 600 ms and reads COMPLETE,
    # with a new last-FFC frame count: the state arrived late, the window covers it anyway.
    w.observe(200 * MS, 600 * MS, busy=False, ffc_count=55)
    assert [w.decide(t * MS) for t in (99, 100, 150, 400, 600, 650)] == [False, True, True, True, True, True]
    assert w.decide(651 * MS) is None
    (win,) = w.take_closed()
    assert (win.start_ns, win.end_ns, win.reason) == (100 * MS, 650 * MS, "counter") and w.take_closed() == []


def test_a_busy_window_closes_settle_after_complete():
    w = FfcWindows(settle_s=0.05)
    w.observe(10 * MS, 11 * MS, busy=False, ffc_count=1)
    w.observe(100 * MS, 101 * MS, busy=True, ffc_count=2)
    assert w.active() and w.decide(5000 * MS) is True  # open: every later frame is inside
    w.observe(500 * MS, 501 * MS, busy=False, ffc_count=2)
    assert not w.active() and w.decide(551 * MS) is True and w.decide(552 * MS) is None
    assert w.decide(9 * MS) is False and w.decide(10 * MS) is True  # from the last poll that saw it idle
    assert w.take_closed()[0].reason == "seen"


def test_a_requested_window_opens_at_the_request_and_waits_for_the_camera_to_act():
    w = FfcWindows(settle_s=0.05, request_timeout_s=2.0)
    w.observe(0, 1 * MS, busy=False, ffc_count=1)
    w.request(50 * MS)
    assert w.decide(49 * MS) is None and w.decide(50 * MS) is True
    w.observe(60 * MS, 61 * MS, busy=False, ffc_count=1)  # not started yet: stays open
    assert w.active() and w.decide(49 * MS) is False
    w.observe(100 * MS, 101 * MS, busy=True, ffc_count=2)
    w.observe(500 * MS, 502 * MS, busy=False, ffc_count=2)
    assert not w.active() and w.decide(552 * MS) is True
    # A request the camera never acts on closes after the request timeout.
    w.request(1000 * MS)
    w.observe(3100 * MS, 3101 * MS, busy=False, ffc_count=2)
    assert not w.active()


def test_a_failed_poll_flags_frames_until_the_state_is_known_again():
    w = FfcWindows(settle_s=0.0)
    w.observe(0, 1 * MS, busy=False, ffc_count=1)
    w.unknown()
    assert w.decide(50 * MS) is True
    w.observe(300 * MS, 301 * MS, busy=False, ffc_count=1)
    assert w.decide(301 * MS) is True and w.take_closed()[0].reason == "unknown"


def test_control_loop_never_runs_on_the_callers_thread_and_reports_a_lost_channel():
    threads, ffcs = set(), []
    release, ran, lost = threading.Event(), threading.Event(), threading.Event()

    def poll():
        threads.add(threading.current_thread().name)
        if len(ffcs) >= 2:
            raise OSError("read failed: [Errno 5] Input/output error")
        return False, len(ffcs)

    def run():
        threads.add(threading.current_thread().name)
        release.wait(5)  # a slow serial command: held until the caller has returned
        ffcs.append(1)
        ran.set()

    def on_poll(status):
        if status.lost:
            lost.set()

    loop = ControlLoop("lwir", FfcWindows(), poll, run, lambda: 31.5, poll_s=0.01, busy_poll_s=0.01, lost_after=3,
                       on_poll=on_poll)
    loop.start()
    try:
        loop.request_ffc()
        assert not ffcs  # returned while the command is still held: the caller never waits on the serial line
        release.set()
        assert ran.wait(30)  # the loop's own thread ran the command (the bound only stops a hung test)
        loop.request_ffc()
        assert lost.wait(30)  # reported by the loop once three polls in a row failed
    finally:
        loop.stop()
    assert threads == {"control-lwir"}
    st = loop.status
    assert st.temperature_c == 31.5 and st.failures_in_row >= 3 and "Input/output error" in st.lost


# -- V4L2 buffer metadata -------------------------------------------------------------------


def test_v4l2_structs_and_ioctl_numbers_match_the_kernel_abi():
    assert v4l2.BUFFER.size == 88 and v4l2.REQBUFS.size == 20
    assert v4l2.VIDIOC_DQBUF == 0xC0585611 and v4l2.VIDIOC_QBUF == 0xC058560F and v4l2.VIDIOC_QUERYBUF == 0xC0585609
    assert v4l2.VIDIOC_REQBUFS == 0xC0145608 and v4l2.VIDIOC_S_FMT == 0xC0D05605
    assert v4l2.VIDIOC_STREAMON == 0x40045612 and v4l2.VIDIOC_STREAMOFF == 0x40045613
    assert v4l2.Y16 == 0x20363159  # 'Y16 '


def test_v4l2_buffer_parsing_on_kernel_layout_bytes():
    # Hand-laid struct v4l2_buffer (x86-64): index, type, bytesused, flags, field, pad, timeval, timecode,
    # sequence, memory, m.offset (8-byte union), length, reserved2, request_fd, pad.
    raw = (struct.pack("<IIIII", 2, 1, 655360, 0x2001, 1) + b"\0" * 4 + struct.pack("<qq", 1234, 567890)
           + b"\0" * 16 + struct.pack("<II", 4242, 1) + struct.pack("<Q", 0x10000) + struct.pack("<IIi", 655360, 0, 0)
           + b"\0" * 4)
    b = v4l2.parse_buffer(raw)
    assert (b.index, b.bytesused, b.sequence, b.offset, b.length) == (2, 655360, 4242, 0x10000, 655360)
    assert b.timestamp_ns == 1234 * 10**9 + 567890 * 1000 and b.monotonic and not b.error
    assert v4l2.parse_buffer(v4l2.pack_buffer(index=1, flags=0x40, sequence=7, timestamp_ns=5 * 10**9)).error
    with pytest.raises(CameraError, match="v4l2_buffer of 10 bytes"):
        v4l2.parse_buffer(b"\0" * 10)


class FakeV4L2:
    """A V4L2 driver behind ioctl/mmap: Y16 frames whose sequence skips ``lost`` (frames lost in the driver)."""

    def __init__(self, w, h, sequences, lost_flag_error=()):
        self.w, self.h = w, h
        self.sequences = list(sequences)
        self.errors = set(lost_flag_error)
        self.buffers = [bytearray(2 * w * h) for _ in range(3)]
        self.queued: list[int] = []
        self.streaming = False

    def ioctl(self, fd, request, arg, mutate):
        if request == v4l2.VIDIOC_S_FMT:
            struct.pack_into("=II", arg, 8, self.w, self.h)  # accepts the asked Y16 format
        elif request == v4l2.VIDIOC_S_PARM:
            raise OSError(errno.EINVAL, "Invalid argument")  # a fixed-rate device
        elif request == v4l2.VIDIOC_REQBUFS:
            struct.pack_into("=I", arg, 0, len(self.buffers))
        elif request == v4l2.VIDIOC_QUERYBUF:
            i = v4l2.parse_buffer(bytes(arg)).index
            arg[:] = v4l2.pack_buffer(index=i, offset=i * 4096, length=len(self.buffers[i]))
        elif request == v4l2.VIDIOC_QBUF:
            self.queued.append(v4l2.parse_buffer(bytes(arg)).index)
        elif request == v4l2.VIDIOC_STREAMON:
            self.streaming = True
        elif request == v4l2.VIDIOC_STREAMOFF:
            self.streaming = False
        elif request == v4l2.VIDIOC_DQBUF:
            if not self.sequences:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
            seq = self.sequences.pop(0)
            i = self.queued.pop(0)
            img = np.full((self.h, self.w), (1000 + seq) & 0xFFFF, "<u2")
            self.buffers[i][:] = img.tobytes()
            flags = v4l2.BUF_FLAG_TIMESTAMP_MONOTONIC | (v4l2.BUF_FLAG_ERROR if seq in self.errors else 0)
            arg[:] = v4l2.pack_buffer(index=i, bytesused=len(self.buffers[i]), flags=flags, sequence=seq,
                                      timestamp_ns=(10 + seq) * 16_666_000)

    def mmap(self, fd, length, flags, prot, offset):
        return memoryview(self.buffers[offset // 4096])


def test_v4l2_capture_numbers_frames_by_driver_sequence_and_stamps_capture_time():
    drv = FakeV4L2(8, 4, [0, 1, 2, 5, 6, 7], lost_flag_error={6})
    video = V4L2Y16Video("/dev/video9", 8, 4, 60.0, ioctl=drv.ioctl, mmap=drv.mmap, wait=lambda fd, t: True,
                         open_fd=lambda path: -1)
    video.open()
    video.start()
    assert drv.streaming and len(drv.queued) == 3
    got = [video.read(0.1) for _ in range(7)]
    frames = [g for g in got if g is not None]
    assert [f.index for f in frames] == [0, 1, 2, 5, 7]  # 3 and 4 lost in the driver; 6 marked corrupt
    assert got[4] is None and got[6] is None  # the error buffer and an empty queue
    assert [f.monotonic_ns for f in frames] == [(10 + s) * 16_666_000 for s in (0, 1, 2, 5, 7)]
    assert frames[3].image.dtype == np.uint16 and (frames[3].image == 1005).all()
    assert len(drv.queued) == 3  # every buffer requeued
    video.stop()
    assert not drv.streaming


def test_v4l2_sequence_wraps_are_unwrapped():
    drv = FakeV4L2(2, 2, [2**32 - 2, 2**32 - 1, 0, 1])
    cap = v4l2.V4L2Capture("0", 2, 2, ioctl=drv.ioctl, mmap=drv.mmap, wait=lambda fd, t: True, open_fd=lambda p: -1)
    cap.open()
    cap.start()
    assert [cap.read(0.1).sequence for _ in range(4)] == [2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1]


# -- open_cameras --------------------------------------------------------------------------


class _Cam(Camera):
    def __init__(self, spec, fail_configure=False):
        super().__init__(spec)
        self.fail_configure = fail_configure
        self.closed = 0

    def _open(self):
        pass

    def _configure(self):
        if self.fail_configure:
            raise CameraError(f"{self.name}: device refused Width = 99999")

    def _start(self):
        pass

    def _stop(self):
        pass

    def _close(self):
        self.closed += 1

    def _grab(self, timeout_s):
        return None

    def _info(self):
        return DeviceInfo("x", "y", "z")


def test_open_cameras_closes_what_it_opened_when_configure_fails():
    rig = parse_rig({"rig": "two", "cameras": [
        {"name": n, "role": r, "driver": "genicam", "resolution": [32, 32], "pixel_format": "Mono8", "fps": 10,
         "genicam": {"serial": str(i)}} for i, (n, r) in enumerate((("a", "visible"), ("b", "lwir")))]})
    a, b = _Cam(rig.cameras[0]), _Cam(rig.cameras[1], fail_configure=True)
    with pytest.raises(RigError, match="cannot start camera 'b': b: device refused Width"):
        open_cameras([a, b])
    assert not a.is_open and not b.is_open and (a.closed, b.closed) == (1, 1)  # b was opened, then configure failed
