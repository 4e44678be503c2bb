"""16-bit video sources for the Boson driver: V4L2 (a real camera) and emulated (dry runs).

Both deliver a :class:`VideoFrame`: ``image`` a 2-D ``uint16`` array the caller
owns, ``index`` the source's frame number (a jump means frames were lost) and, for
V4L2, the driver's capture time on ``CLOCK_MONOTONIC``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rig.capture.camera import CameraError
from rig.capture.v4l2 import Y16, V4L2Capture


@dataclass(frozen=True)
class VideoFrame:
    """One 16-bit frame from a video source."""

    image: np.ndarray
    index: int  # V4L2: the driver's buffer sequence; emulated: the frame slot
    monotonic_ns: int | None = None  # capture time (CLOCK_MONOTONIC) if the source stamps it


def as_y16(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """A V4L2 Y16 buffer as an owned ``(height, width)`` uint16 array.

    OpenCV returns Y16 either as ``CV_16UC1`` or, on some builds, as the raw byte
    buffer (``uint8``, ``2 * width * height`` bytes, little-endian): both are accepted.
    """
    if img.dtype == np.uint16 and img.ndim == 2:
        return img if img.flags.owndata else img.copy()
    if img.dtype == np.uint8 and img.size == 2 * width * height:
        return np.ascontiguousarray(img).reshape(-1).view("<u2").reshape(height, width).copy()
    raise CameraError(f"expected 16-bit Y16 frames of {width}x{height}, got {img.dtype} {img.shape} (is the device in Y16 mode?)")


class V4L2Y16Video:
    """A V4L2 device in Y16 (pre-AGC, 16-bit), read with :class:`~rig.capture.v4l2.V4L2Capture`.

    Frames are numbered by the driver's buffer ``sequence`` (frames lost in the
    driver show as a jump) and stamped with the buffer's capture time.
    """

    def __init__(self, device: str, width: int, height: int, fps: float, **capture_kwargs):
        self.device = device
        self.width, self.height, self.fps = width, height, fps
        self._cap = V4L2Capture(device, width, height, Y16, fps, **capture_kwargs)

    def open(self) -> None:
        self._cap.open()

    def start(self) -> None:
        self._cap.start()

    def stop(self) -> None:
        self._cap.stop()

    def read(self, timeout_s: float) -> VideoFrame | None:
        got = self._cap.read(timeout_s)
        if got is None:
            return None
        if len(got.data) != 2 * self.width * self.height:
            raise CameraError(f"video device {self.device}: frame of {len(got.data)} bytes, "
                              f"expected {2 * self.width * self.height} (Y16 {self.width}x{self.height})")
        raw = np.frombuffer(got.data, dtype=np.uint8)
        return VideoFrame(as_y16(raw, self.width, self.height), got.sequence, got.monotonic_ns)

    def close(self) -> None:
        self._cap.close()


class Y16Renderer:
    """Synthetic LWIR frames (counts ~ 8000 + 40/K): a warm blob moving over a road-like gradient.

    Precomputes what it can so that 640x512 at 60 fps stays cheap.
    """

    def __init__(self, width: int, height: int, fps: float = 60.0, seed: int = 0):
        self.width, self.height, self.fps = width, height, fps
        rng = np.random.default_rng(seed)
        y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
        self._base = np.broadcast_to(8000.0 + 400.0 * y, (height, width)).astype(np.float32)
        self._base += rng.normal(0.0, 15.0, (height, width)).astype(np.float32)  # fixed pattern
        self._noise = rng.normal(0.0, 6.0, (4, height, width)).astype(np.float32)
        r = max(4, int(0.06 * width))
        yy, xx = np.mgrid[-3 * r : 3 * r + 1, -3 * r : 3 * r + 1]
        self._blob = (900.0 * np.exp(-(xx**2 + yy**2) / (2.0 * r * r))).astype(np.float32)

    def render(self, frame_count: int, fpa_temperature_c: float = 30.0) -> np.ndarray:
        t = frame_count / self.fps
        img = self._base + self._noise[frame_count % len(self._noise)]
        img += np.float32(30.0 * (fpa_temperature_c - 30.0))  # uncorrected FPA drift
        cx = int(self.width * (0.5 + 0.35 * np.sin(0.6 * t)))
        cy = int(self.height * 0.6)
        h = self._blob.shape[0] // 2
        y0, y1 = max(cy - h, 0), min(cy + h + 1, self.height)
        x0, x1 = max(cx - h, 0), min(cx + h + 1, self.width)
        img[y0:y1, x0:x1] += self._blob[y0 - (cy - h) : y1 - (cy - h), x0 - (cx - h) : x1 - (cx - h)]
        return np.clip(img, 0, 65535).astype(np.uint16)


class EmulatedY16Video:
    """Frames paced at ``fps`` by the host clock, rendered by :class:`Y16Renderer`.

    Used when the rig file gives no ``video_device`` (e.g. a dry run against the
    Boson emulator). Like a camera, it does not wait for a slow reader: frames
    that were due while nobody read are skipped, and the index jumps.
    ``freeze`` (set by the driver during an FFC) repeats the last image, as the
    Boson does while its shutter is closed.
    """

    def __init__(self, width: int, height: int, fps: float, seed: int = 0):
        self.width, self.height, self.fps = width, height, fps
        self._renderer = Y16Renderer(width, height, fps, seed)
        self._t0 = 0.0
        self._last = -1
        self._last_img: np.ndarray | None = None
        self.freeze = False
        self.fpa_temperature_c = 30.0

    def open(self) -> None:
        return None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._last = -1

    def read(self, timeout_s: float) -> VideoFrame | None:
        now = time.monotonic()
        index = max(self._last + 1, int((now - self._t0) * self.fps))
        due = self._t0 + index / self.fps
        if due - now > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            return None
        if due > now:
            time.sleep(due - now)
        self._last = index
        if self.freeze and self._last_img is not None:
            return VideoFrame(self._last_img.copy(), index)
        self._last_img = self._renderer.render(index, self.fpa_temperature_c)
        return VideoFrame(self._last_img.copy(), index)

    def close(self) -> None:
        self._last_img = None
