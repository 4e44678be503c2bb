"""FLIR Boson driver: control over the serial port (validated, via flirpy), video over V4L2 as Y16.

Control goes through :class:`~rig.capture.boson_control.BosonControl` (flirpy's
real framing, every reply checked, bounded retries). Video is read with OpenCV's
V4L2 backend in Y16 (pre-AGC, 16-bit) and kept 16-bit end to end.

Dry run: when the rig file gives no ``boson.video_device``, frames come from
:class:`~rig.capture.boson_video.EmulatedY16Video` (synthetic 16-bit frames paced
at the rig's fps), while control still talks to whatever is on ``serial_port`` —
typically ``rig emulate boson``. That lets ``rig record`` run end to end without
a camera. Pass ``emulated_video=False`` to refuse this and require a device.

FFC: the driver polls the camera's FFC state every ``ffc_poll_s`` (every frame
while one is running) and flags frames taken during an FFC with
:attr:`FrameFlags.FFC`; if the state cannot be read, frames are flagged too
(later stages skip them rather than trust them). :meth:`BosonCamera.run_ffc`
starts one.
"""

from __future__ import annotations

import logging
import time

from rig.capture.boson_control import BosonControl
from rig.capture.boson_protocol import FfcState
from rig.capture.boson_video import EmulatedY16Video, V4L2Y16Video
from rig.capture.camera import Camera, CameraError, DeviceInfo, Frame, FrameFlags, now_ns
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
        emulated_video: bool = True,
    ):
        super().__init__(spec)
        if spec.boson is None:
            raise CameraError(f"{spec.name}: driver 'boson' needs a 'boson' section")
        self.reply_timeout_s = reply_timeout_s
        self.attempts = attempts
        self.ffc_poll_s = ffc_poll_s
        self.emulated_video = emulated_video
        self._ctl: BosonControl | None = None
        self._video: V4L2Y16Video | EmulatedY16Video | None = None
        self._info_cache: DeviceInfo | None = None
        self._ffc_busy = False
        self._next_poll = 0.0
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
        self._ffc_busy = False
        self._next_poll = 0.0
        self._video.start()

    def _stop(self) -> None:
        return None

    def _close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None

    def _grab(self, timeout_s: float) -> Frame | None:
        got = self._video.read(timeout_s)
        if got is None:
            return None
        image, index = got
        host_ns, wall_ns = now_ns()
        flags = FrameFlags.NONE
        if self._ffc_active():
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
            device_ns=None,
            flags=flags | FrameFlags.HOST_TIMESTAMP_ONLY,
            pixel_format=self.spec.pixel_format,
        )

    def _info(self) -> DeviceInfo:
        return self._info_cache

    # -- Boson specifics --------------------------------------------------------
    def run_ffc(self) -> None:
        """Start a flat-field correction; frames are flagged FFC until the camera reports it complete."""
        self._call(self.control.run_ffc)
        self._ffc_busy = True
        self._next_poll = 0.0

    def fpa_temperature_c(self) -> float:
        return self._call(self.control.fpa_temperature_c)

    def _ffc_active(self) -> bool:
        now = time.monotonic()
        if now < self._next_poll:
            return self._ffc_busy
        try:
            state = self.control.ffc_state()
            self._ffc_busy = state in _FFC_BUSY
            if isinstance(self._video, EmulatedY16Video):
                self._video.freeze = self._ffc_busy
                self._video.fpa_temperature_c = self.control.fpa_temperature_c()
        except CameraError as exc:
            log.warning("%s: FFC state unknown, flagging frame as FFC: %s", self.name, exc)
            self._ffc_busy = True
        self._next_poll = now if self._ffc_busy else now + self.ffc_poll_s
        return self._ffc_busy

    def _call(self, fn, *args):
        """Run a control/video call, naming this camera in any CameraError."""
        try:
            return fn(*args)
        except CameraError as exc:
            raise CameraError(f"{self.name}: {exc}") from exc
