"""GenICam driver on harvesters (any GenTL producer: a vendor's ``.cti``, or viky for tests).

* The device is chosen by ``genicam.serial`` or ``genicam.device_id`` of the rig
  file; a missing device is a :class:`CameraError` listing what the producer sees.
* ``configure()`` sets PixelFormat, Width, Height, ExposureTime, Gain,
  AcquisitionFrameRate and the trigger where the device has those nodes, and
  logs a warning, once per camera and node, where it has not. A value the device
  rejects is an error.
* Every buffer is copied before it is requeued: harvesters hands out views into
  driver memory that the next fetch overwrites.
* Fetch timeouts are logged and counted (``grab()`` returns ``None``); a
  transport error raises :class:`CameraError`. The driver never reconnects on its
  own: the recorders do, in one place (:mod:`rig.capture.streams`: a camera that
  raises, or is silent for ``stall_timeout_s``, is logged as a ``disconnect``
  event, closed, and reopened with backoff; the first frame after it is flagged
  :attr:`FrameFlags.RECONNECTED`). One layer, so every reconnect is in the
  session's event log and no driver retry hides a lost device from the user.
* Device counters: ``frame_counter`` is the buffer's GenTL ``FrameID`` (or the
  ``ChunkFrameID`` chunk where the device has it), so frames the device or the
  transport lost show as a counter jump (``GAP_BEFORE``, and the session's ``lost``);
  only a device without either is numbered by a host counter. ``device_ns`` is the
  buffer timestamp (``ChunkTimestamp`` where present, in ns, else the GenTL buffer
  timestamp converted by its tick frequency). ``configure()`` enables the FrameID and
  Timestamp chunks where the device offers them (viky offers neither chunk, but has
  a FrameID).
* Where the device gives no timestamp, ``device_ns`` is None and the frame is
  flagged :attr:`FrameFlags.HOST_TIMESTAMP_ONLY`.

The default producer (``genicam.cti`` absent) is ``viky.cti`` from the genicam wheel.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rig.capture.camera import Camera, CameraError, DeviceInfo, Frame, FrameFlags, now_ns
from rig.rigconfig import CameraSpec

log = logging.getLogger(__name__)


def default_cti() -> Path:
    """The software GenTL producer shipped inside the genicam wheel (viky: 3 simulated devices)."""
    import genicam

    return Path(genicam.__file__).parent / "viky.cti"


class GenicamCamera(Camera):
    """A GenICam camera (rig driver ``genicam``). Construction does no I/O."""

    def __init__(self, spec: CameraSpec, *, num_buffers: int | None = None):
        super().__init__(spec)
        if spec.genicam is None:
            raise CameraError(f"{spec.name}: driver 'genicam' needs a 'genicam' section")
        self.num_buffers = num_buffers
        self.timeouts = 0  # fetch timeouts since construction
        self._harvester: Any = None
        self._ia: Any = None
        self._warned: set[str] = set()
        self._info_cache: DeviceInfo | None = None
        self._timeouts_in_row = 0
        self._last_id: int | None = None
        self._counter = 0

    @property
    def cti(self) -> Path:
        return Path(self.spec.genicam.cti) if self.spec.genicam.cti else default_cti()

    @property
    def node_map(self) -> Any:
        """The device's GenICam node map (harvesters' proxy); open cameras only."""
        if self._ia is None:
            raise CameraError(f"{self.name}: node_map before open()")
        return self._ia.remote_device.node_map

    # -- hooks ----------------------------------------------------------------
    def _open(self) -> None:
        from harvesters.core import Harvester

        cti = self.cti
        if not cti.is_file():
            raise CameraError(f"{self.name}: GenTL producer not found: {cti}")
        h = Harvester()
        try:
            h.add_file(str(cti))
            h.update()
            key, info = self._find(h)
            try:
                ia = h.create(key)
            except Exception as exc:  # genicam raises its own exception types
                raise CameraError(f"{self.name}: cannot open GenICam device {info.id_}: {exc}") from exc
            if self.num_buffers is not None:
                ia.num_buffers = self.num_buffers
        except BaseException:
            h.reset()
            raise
        self._harvester, self._ia = h, ia
        self._info_cache = DeviceInfo(
            vendor=info.vendor or "",
            model=info.model or "",
            serial=str(info.serial_number),
            firmware=str(info.version or ""),
            extra={"device_id": info.id_, "cti": str(cti)},
        )

    def _find(self, h: Any) -> tuple[dict, Any]:
        g = self.spec.genicam
        devices = list(h.device_info_list)
        for info in devices:
            if g.serial is not None and str(info.serial_number) == str(g.serial):
                return {"serial_number": info.serial_number}, info
            if g.serial is None and g.device_id is not None and info.id_ == g.device_id:
                return {"id_": info.id_}, info
        wanted = f"serial '{g.serial}'" if g.serial is not None else f"id '{g.device_id}'"
        seen = ", ".join(f"{d.serial_number} ({d.id_})" for d in devices) or "none"
        raise CameraError(f"{self.name}: no GenICam device with {wanted} on {self.cti.name} (found: {seen})")

    def _configure(self) -> None:
        spec, g = self.spec, self.spec.genicam
        self._set_enum("PixelFormat", spec.pixel_format, required=True)
        self._set("Width", spec.width)
        self._set("Height", spec.height)
        if g.exposure_us is not None:
            self._set_enum("ExposureAuto", "Off", quiet=True)
            self._set("ExposureTime", g.exposure_us)
        if g.gain_db is not None:
            self._set_enum("GainAuto", "Off", quiet=True)
            self._set("Gain", g.gain_db)
        if self._has("AcquisitionFrameRateEnable"):
            self._set("AcquisitionFrameRateEnable", True)
        self._set("AcquisitionFrameRate", spec.fps)
        self._enable_chunks()
        if spec.sync.mode == "hardware" and spec.sync.master != self.name:
            self._set_enum("TriggerSelector", "FrameStart", quiet=True)
            self._set_enum("TriggerMode", "On")
            self._set_enum("TriggerSource", spec.sync.line or "Line0")
            self._set_enum("TriggerActivation", "RisingEdge", quiet=True)
        else:
            self._set_enum("TriggerMode", "Off")

    def _start(self) -> None:
        self._timeouts_in_row = 0
        self._last_id = None
        self._ia.start()

    def _stop(self) -> None:
        if self._ia is not None:
            self._ia.stop()

    def _close(self) -> None:
        if self._ia is not None:
            self._ia.destroy()
            self._ia = None
        if self._harvester is not None:
            self._harvester.reset()
            self._harvester = None

    def _grab(self, timeout_s: float) -> Frame | None:
        from genicam.gentl import GenericException, TimeoutException

        try:
            with self._ia.fetch(timeout=max(timeout_s, 0.001)) as buf:
                host_ns, wall_ns = now_ns()
                image, pixel_format = self._copy_image(buf)
                frame_id = self._chunk("ChunkFrameID")
                frame_id = self._frame_id(buf) if frame_id is None else frame_id
                device_ns = self._chunk("ChunkTimestamp")
                device_ns = self._timestamp_ns(buf) if device_ns is None else device_ns
        except TimeoutException:
            self.timeouts += 1
            self._timeouts_in_row += 1
            log.warning("%s: no frame within %.3f s (%d in a row)", self.name, timeout_s, self._timeouts_in_row)
            return None
        except GenericException as exc:
            raise CameraError(f"{self.name}: transport error: {exc}") from exc
        self._timeouts_in_row = 0
        flags = FrameFlags.NONE
        if device_ns is None:
            flags |= FrameFlags.HOST_TIMESTAMP_ONLY
        if frame_id is None:
            frame_id = self._counter
        elif self._last_id is not None and frame_id > self._last_id + 1:
            flags |= FrameFlags.GAP_BEFORE
        self._last_id = frame_id
        self._counter += 1
        return Frame(self.name, image, frame_id, host_ns, wall_ns, device_ns, flags, pixel_format)

    def _info(self) -> DeviceInfo:
        return self._info_cache

    # -- buffers ----------------------------------------------------------------
    @staticmethod
    def _copy_image(buf: Any) -> tuple[np.ndarray, str]:
        """The first component as an owned array (never a view into the driver's buffer)."""
        comp = buf.payload.components[0]
        w, h = int(comp.width), int(comp.height)
        data = comp.data
        channels = data.size // (w * h) if w * h else 1
        shape = (h, w) if channels == 1 else (h, w, channels)
        return np.array(data[: w * h * channels].reshape(shape), copy=True), str(comp.data_format)

    def _enable_chunks(self) -> None:
        """Turn on the FrameID and Timestamp chunks where the device offers them (quietly: optional)."""
        self._chunks: set[str] = set()
        if not (self._has("ChunkModeActive") and self._has("ChunkSelector")):
            return
        offered = set(getattr(self.node_map, "ChunkSelector").symbolics)
        wanted = [c for c in ("FrameID", "Timestamp") if c in offered]
        if not wanted:
            return
        try:
            self.node_map.ChunkModeActive.value = True
            for c in wanted:
                self.node_map.ChunkSelector.value = c
                self.node_map.ChunkEnable.value = True
                self._chunks.add(f"Chunk{c}")
        except Exception as exc:  # noqa: BLE001 - chunks are a bonus; buffer metadata still works
            log.warning("%s: cannot enable chunks %s: %s", self.name, wanted, exc)

    def _chunk(self, name: str) -> int | None:
        if name not in getattr(self, "_chunks", ()):
            return None
        try:
            return int(getattr(self.node_map, name).value)
        except Exception:  # noqa: BLE001 - a buffer without the chunk
            return None

    @staticmethod
    def _frame_id(buf: Any) -> int | None:
        try:
            return int(buf.frame_id)
        except Exception:
            return None

    @staticmethod
    def _timestamp_ns(buf: Any) -> int | None:
        try:
            ts_ns = int(buf.timestamp_ns)  # GenTL BUFFER_INFO_TIMESTAMP_NS; viky: not available
            if ts_ns:
                return ts_ns
        except Exception:  # noqa: BLE001
            pass
        ts = buf.timestamp  # harvesters: ns if the producer has it, else ticks, else 0
        if not ts:
            return None
        try:
            freq = buf.timestamp_frequency
        except Exception:
            freq = 1_000_000_000
        return int(ts) if freq == 1_000_000_000 else int(ts * 1_000_000_000 // freq)

    # -- nodes --------------------------------------------------------------------
    def _has(self, name: str) -> bool:
        return bool(self.node_map.has_node(name))

    def _missing(self, name: str, quiet: bool) -> None:
        if not quiet and name not in self._warned:
            self._warned.add(name)
            log.warning("%s: device has no '%s' node; leaving it at the device's setting", self.name, name)

    def _set(self, name: str, value: Any, *, quiet: bool = False) -> None:
        if not self._has(name):
            return self._missing(name, quiet)
        node = getattr(self.node_map, name)
        try:
            node.value = value
        except Exception as exc:
            lo, hi = getattr(node, "min", None), getattr(node, "max", None)
            rng = f" (allowed {lo}..{hi})" if lo is not None and hi is not None else ""
            raise CameraError(f"{self.name}: device refused {name} = {value}{rng}: {type(exc).__name__}") from exc

    def _set_enum(self, name: str, value: str, *, required: bool = False, quiet: bool = False) -> None:
        if not self._has(name):
            if required:
                raise CameraError(f"{self.name}: device has no '{name}' node")
            return self._missing(name, quiet)
        node = getattr(self.node_map, name)
        options = tuple(node.symbolics)
        if value not in options:
            if required:
                raise CameraError(f"{self.name}: device offers no {name} '{value}' (it offers: {', '.join(options)})")
            return self._missing(f"{name}={value}", quiet)
        self._set(name, value)
