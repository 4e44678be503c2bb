"""FLIR Boson driver: control over the serial port (validated, via flirpy), video over V4L2 as Y16.

Control goes through :class:`~rig.capture.boson_control.BosonControl` (flirpy's
real framing, every reply checked, bounded retries). Video is read with OpenCV's
V4L2 backend in Y16 (pre-AGC, 16-bit) and kept 16-bit end to end.

Dry run: when the rig file gives no ``boson.video_device``, frames come from
:class:`~rig.capture.boson_video.EmulatedY16Video` (synthetic 16-bit frames paced
at the rig's fps), while control still talks to whatever is on ``serial_port`` —
typically ``rig emulate boson``. That lets ``rig record`` run end to end without
a camera. Pass ``emulated_video=False`` to refuse this and require a device.

Control runs on its own thread (:class:`~rig.capture.control.ControlLoop`,
started and stopped with streaming): FFC requests, the FFC state and last-FFC
frame count every ``ffc_poll_s`` (``busy_poll_s`` while an FFC runs) and the FPA
temperature. :meth:`grab` only reads video: it never waits on the serial line.
Frames get :attr:`FrameFlags.FFC` from the camera's :attr:`ffc_windows` (see
:mod:`rig.capture.control`): inside an open window at grab time they are flagged
at once; frames whose state is not known yet are decided by the recorder, which
holds them until it is. :meth:`request_ffc` asks for an FFC without waiting.
A control channel that fails ``lost_after`` polls in a row (the port is gone)
makes :meth:`grab` raise :class:`CameraError`: the recorder's reconnect layer
takes over.

Frame counters: the V4L2 path numbers frames by the driver's buffer ``sequence``
(a jump is a frame lost in the driver) and stamps them with the buffer's
capture timestamp; the emulated path by its own frame index.
"""

from __future__ import annotations

import logging
import time

from rig.capture.boson_control import BosonControl, UnknownStateError
from rig.capture.boson_protocol import FfcState
from rig.capture.boson_video import EmulatedY16Video, V4L2Y16Video
from rig.capture.camera import Camera, CameraError, DeviceInfo, Frame, FrameFlags, now_ns
from rig.capture.control import ControlLoop, ControlStatus, FfcWindows
from rig.rigconfig import CameraSpec

log = logging.getLogger(__name__)

_FFC_BUSY = (FfcState.IMMINENT, FfcState.IN_PROGRESS)


class BosonCamera(Camera):
    """A FLIR Boson (rig driver ``boson``). Construction does no I/O."""

    def __init__(
        self,
        spec: CameraSpec,
        *,
        reply_timeout_s: float = 0.25,
        attempts: int = 4,
        ffc_poll_s: float = 0.1,
        busy_poll_s: float = 0.02,
        ffc_settle_s: float = 0.05,
        emulated_video: bool = True,
    ):
        super().__init__(spec)
        if spec.boson is None:
            raise CameraError(f"{spec.name}: driver 'boson' needs a 'boson' section")
        self.reply_timeout_s = reply_timeout_s
        self.attempts = attempts
        self.ffc_poll_s = ffc_poll_s
        self.busy_poll_s = busy_poll_s
        self.emulated_video = emulated_video
        self.ffc_windows = FfcWindows(ffc_settle_s)  # kept across reopens: one timeline per camera
        self._ctl: BosonControl | None = None
        self._video: V4L2Y16Video | EmulatedY16Video | None = None
        self._info_cache: DeviceInfo | None = None
        self._loop: ControlLoop | None = None
        self._last_index = -1
        self._base_count = 0

    @property
    def control(self) -> BosonControl:
        """The validated control channel (open cameras only)."""
        if self._ctl is None:
            raise CameraError(f"{self.name}: control used before open()")
        return self._ctl

    @property
    def video_is_emulated(self) -> bool:
        return isinstance(self._video, EmulatedY16Video)

    # -- hooks ----------------------------------------------------------------
    def _open(self) -> None:
        b = self.spec.boson
        ctl = BosonControl(b.serial_port, b.baudrate, reply_timeout_s=self.reply_timeout_s, attempts=self.attempts)
        self._call(ctl.open)
        try:
            major, minor, patch = self._call(ctl.firmware)
            self._info_cache = DeviceInfo(
                vendor="FLIR",
                model=f"Boson {self._call(ctl.part_number)}",
                serial=str(self._call(ctl.camera_serial)),
                firmware=f"{major}.{minor}.{patch}",
                extra={"sensor_serial": self._call(ctl.sensor_serial), "serial_port": b.serial_port},
            )
            if b.video_device:
                video = V4L2Y16Video(b.video_device, self.spec.width, self.spec.height, self.spec.fps)
            elif self.emulated_video:
                log.info("%s: no video_device in the rig file: emulated 16-bit frames (dry run)", self.name)
                video = EmulatedY16Video(self.spec.width, self.spec.height, self.spec.fps)
            else:
                raise CameraError(f"{self.name}: no boson.video_device in the rig file")
            self._call(video.open)
            self._video = video
            self._ctl = ctl
        except BaseException:
            ctl.close()
            raise

    def _configure(self) -> None:
        b = self.spec.boson
        self._call(self.control.set_ffc_mode, b.ffc_mode)
        self._call(self.control.set_external_sync_mode, b.external_sync)

    def _start(self) -> None:
        self._base_count = self._call(self.control.frame_count)
        self._last_index = -1
        self.ffc_windows.reset_counter()
        self._video.start()
        ctl = self.control
        self._loop = ControlLoop(self.name, self.ffc_windows, self._poll_ffc, ctl.run_ffc, ctl.fpa_temperature_c,
                                 poll_s=self.ffc_poll_s, busy_poll_s=self.busy_poll_s, on_poll=self._on_poll)
        self._loop.start()

    def _stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        if isinstance(self._video, V4L2Y16Video):
            self._video.stop()

    def _close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None

    def _grab(self, timeout_s: float) -> Frame | None:
        if self._loop is not None and (lost := self._loop.status.lost):
            raise CameraError(f"{self.name}: {lost}")
        got = self._video.read(timeout_s)
        if got is None:
            return None
        host_ns, wall_ns = now_ns()
        device_ns = None
        image, index = got.image, got.index
        if got.monotonic_ns is not None:  # V4L2: the driver's capture time, on the host's monotonic clock
            wall_ns -= host_ns - got.monotonic_ns
            host_ns = device_ns = got.monotonic_ns
        flags = FrameFlags.NONE if device_ns is not None else FrameFlags.HOST_TIMESTAMP_ONLY
        if self.ffc_windows.decide(host_ns):
            flags |= FrameFlags.FFC
        if self._last_index >= 0 and index > self._last_index + 1:
            flags |= FrameFlags.GAP_BEFORE
        self._last_index = index
        return Frame(
            camera=self.name,
            image=image,
            frame_counter=self._base_count + index,
            host_ns=host_ns,
            wall_ns=wall_ns,
            device_ns=device_ns,
            flags=flags,
            pixel_format=self.spec.pixel_format,
        )

    def _info(self) -> DeviceInfo:
        return self._info_cache

    # -- Boson specifics --------------------------------------------------------
    def request_ffc(self) -> None:
        """Ask for a flat-field correction; returns at once (the control thread sends it)."""
        if self._loop is None:
            raise CameraError(f"{self.name}: request_ffc() before start()")
        self._loop.request_ffc()

    def run_ffc(self) -> None:
        """Start a flat-field correction: through the control thread while streaming, directly otherwise."""
        if self._loop is not None:
            self._loop.request_ffc()
            return
        self.ffc_windows.request(time.monotonic_ns())
        self._call(self.control.run_ffc)

    @property
    def control_status(self) -> ControlStatus | None:
        """What the control thread knows (temperature, FFC, failures); None unless streaming."""
        return self._loop.status if self._loop is not None else None

    def fpa_temperature_c(self) -> float | None:
        """The FPA temperature: the control thread's latest reading while streaming, else read now."""
        if self._loop is not None:
            return self._loop.status.temperature_c
        return self._call(self.control.fpa_temperature_c)

    def _poll_ffc(self) -> tuple[bool, int]:
        """One FFC poll on the control thread: (busy, last-FFC frame count)."""
        try:
            busy = self.control.ffc_state() in _FFC_BUSY
        except UnknownStateError as exc:  # the channel works, the state is not understood: flag, don't trust
            log.warning("%s: %s; flagging frames as FFC", self.name, exc)
            busy = True
        return busy, self.control.last_ffc_frame_count()

    def _on_poll(self, status: ControlStatus) -> None:
        video = self._video
        if isinstance(video, EmulatedY16Video):  # the Boson repeats its last image while the shutter is closed
            video.freeze = status.ffc_active
            if status.temperature_c is not None:
                video.fpa_temperature_c = status.temperature_c

    def _call(self, fn, *args):
        """Run a control/video call, naming this camera in any CameraError."""
        try:
            return fn(*args)
        except CameraError as exc:
            raise CameraError(f"{self.name}: {exc}") from exc
