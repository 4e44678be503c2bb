"""The camera interface every driver implements (sim, GenICam, Boson).

Lifecycle, as in harvesters: ``open()`` finds and connects the device,
``configure()`` applies the rig file's settings, ``start()``/``stop()`` control
streaming, ``close()`` releases the device. As a context manager a camera is
opened and configured on enter, stopped and closed on exit::

    with make_camera(spec) as cam:
        cam.start()
        frame = cam.grab(timeout_s=1.0)

Constructors do no I/O.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field

import numpy as np

from rig.rigconfig import CameraSpec
from rig.session.format import FrameFlags  # noqa: F401  (re-exported: drivers flag frames)


@dataclass(frozen=True)
class Frame:
    """One image from one camera, with its timing.

    ``image`` is owned by the frame (never a view into driver memory).
    ``host_ns`` is ``time.monotonic_ns()`` at arrival, ``wall_ns`` is
    ``time.time_ns()`` at arrival, ``device_ns`` the camera's own timestamp if it has one.
    """

    camera: str
    image: np.ndarray
    frame_counter: int
    host_ns: int
    wall_ns: int
    device_ns: int | None = None
    flags: FrameFlags = FrameFlags.NONE
    pixel_format: str = "Mono8"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


@dataclass(frozen=True)
class DeviceInfo:
    """What a camera says about itself (shown by ``rig check``)."""

    vendor: str
    model: str
    serial: str
    firmware: str = ""
    extra: dict = field(default_factory=dict)


class CameraError(RuntimeError):
    """A camera could not be reached, configured or read."""


class Camera(abc.ABC):
    """Base class of all drivers. Subclasses implement the ``_``-prefixed hooks."""

    def __init__(self, spec: CameraSpec):
        self.spec = spec
        self._opened = False
        self._streaming = False

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def is_open(self) -> bool:
        return self._opened

    @property
    def is_streaming(self) -> bool:
        return self._streaming

    # -- lifecycle ----------------------------------------------------------
    def open(self) -> None:
        if not self._opened:
            self._open()
            self._opened = True

    def configure(self) -> None:
        self._require_open("configure")
        self._configure()

    def start(self) -> None:
        self._require_open("start")
        if not self._streaming:
            self._start()
            self._streaming = True

    def stop(self) -> None:
        if self._streaming:
            self._streaming = False
            self._stop()

    def close(self) -> None:
        self.stop()
        if self._opened:
            self._opened = False
            self._close()

    def grab(self, timeout_s: float = 1.0) -> Frame | None:
        """Next frame, or ``None`` if none arrived within ``timeout_s``."""
        if not self._streaming:
            raise CameraError(f"{self.name}: grab() before start()")
        return self._grab(timeout_s)

    def info(self) -> DeviceInfo:
        self._require_open("info")
        return self._info()

    def __enter__(self) -> "Camera":
        self.open()
        try:
            self.configure()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self, what: str) -> None:
        if not self._opened:
            raise CameraError(f"{self.name}: {what}() before open()")

    # -- hooks --------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    def _configure(self) -> None:
        return None

    @abc.abstractmethod
    def _start(self) -> None: ...

    @abc.abstractmethod
    def _stop(self) -> None: ...

    def _close(self) -> None:
        return None

    @abc.abstractmethod
    def _grab(self, timeout_s: float) -> Frame | None: ...

    @abc.abstractmethod
    def _info(self) -> DeviceInfo: ...


def now_ns() -> tuple[int, int]:
    """(host monotonic ns, wall ns) taken together."""
    return time.monotonic_ns(), time.time_ns()


def open_cameras(cameras: list[Camera]) -> None:
    """Open and configure every camera; on a failure close the ones already opened and raise.

    A camera that cannot start gives :class:`~rig.errors.RigError` ("cannot start camera 'NAME': ...").
    """
    from rig.errors import RigError

    opened: list[Camera] = []
    try:
        for cam in cameras:
            opened.append(cam)  # closed on failure even if only open() succeeded (configure() failed)
            try:
                cam.open()
                cam.configure()
            except CameraError as exc:
                raise RigError(f"cannot start camera '{cam.name}': {exc}") from None
    except BaseException:
        for cam in opened:
            try:
                cam.close()
            except Exception:  # noqa: BLE001 - closing what was opened must not hide the first error
                pass
        raise


def make_camera(spec: CameraSpec, **kwargs) -> Camera:
    """Build the driver named by ``spec.driver`` (no I/O until ``open()``)."""
    if spec.driver == "sim":
        from rig.capture.sim_camera import SimCamera

        return SimCamera(spec, **kwargs)
    if spec.driver == "genicam":
        from rig.capture.genicam import GenicamCamera

        return GenicamCamera(spec, **kwargs)
    if spec.driver == "boson":
        from rig.capture.boson import BosonCamera

        return BosonCamera(spec, **kwargs)
    raise CameraError(f"unknown driver '{spec.driver}'")
