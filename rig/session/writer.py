"""Writing sessions: append-only frame stores and indexes, the event log, the manifest."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from rig import __version__
from rig.errors import RigError
from rig.pixfmt import pixel_format
from rig.session.format import (FORMAT_NAME, FORMAT_VERSION, HEADER_SIZE, INDEX_ENTRY, INDEX_SIZE, MANIFEST, STATUSES,
                                CameraStream, FrameRecord, pack_header, unpack_header)
from rig.yamlio import dump_yaml, load_yaml


class DiskFullError(RigError):
    """Free space fell below the writer's reserve; nothing was half-written."""


class _StreamWriter:
    """Appends one camera's records; thread-safe."""

    def __init__(self, stream: CameraStream):
        self.stream = stream
        self.fmt = pixel_format(stream.pixel_format)
        self.lock = threading.Lock()
        self.seq = 0
        self.bytes_written = 0
        self._store = os.open(stream.store, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._index = os.open(stream.index, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._offset = os.fstat(self._store).st_size

    def write(self, image: np.ndarray, frame_counter: int, host_ns: int, wall_ns: int,
              device_ns: int | None, flags: int) -> FrameRecord:
        s = self.stream
        expected = self.fmt.shape(s.width, s.height)
        if image.shape != expected or image.dtype != self.fmt.dtype:
            raise ValueError(f"{s.name}: frame {image.shape} {image.dtype} does not match "
                             f"{s.pixel_format} {s.width}x{s.height} (expected {expected} {self.fmt.dtype})")
        payload = memoryview(np.ascontiguousarray(image)).cast("B")
        crc = zlib.crc32(payload)
        with self.lock:
            header = pack_header(self.seq, frame_counter, host_ns, wall_ns, device_ns, s.width, s.height,
                                 self.fmt.code, int(flags), len(payload), crc)
            _write_all(self._store, [header, payload])
            record_offset = self._offset
            _write_all(self._index, [INDEX_ENTRY.pack(record_offset), header])
            self._offset += HEADER_SIZE + len(payload)
            self.bytes_written += HEADER_SIZE + len(payload)
            rec = unpack_header(header, s.name, record_offset)
            self.seq += 1
        assert rec is not None
        return rec

    def fsync(self) -> None:
        with self.lock:
            os.fsync(self._store)
            os.fsync(self._index)

    def close(self) -> None:
        with self.lock:
            for fd in (self._store, self._index):
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _write_all(fd: int, buffers: list) -> None:
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


class SessionWriter:
    """Creates a session and appends frames and events to it.

    ::

        with SessionWriter.create("drive01", rig) as w:
            w.write_frame(frame)          # a rig.capture.camera.Frame
            w.log_event("ffc", camera="lwir")
        # leaving the block finalises the manifest as "complete"
        # (as "aborted" if an exception escaped)

    ``write_frame`` is thread-safe and may be called from one thread per camera.
    ``min_free_bytes``: the writer raises :class:`DiskFullError` *before* a write
    would leave less than this much free space.
    """

    def __init__(self, path: Path, manifest: dict, streams: dict[str, CameraStream], *, min_free_bytes: int):
        self.path = path
        self._manifest = manifest
        self.streams = streams
        self.min_free_bytes = min_free_bytes
        self._writers = {name: _StreamWriter(s) for name, s in streams.items()}
        self._events = open(path / "events.jsonl", "a", encoding="utf-8")
        self._events_lock = threading.Lock()
        self._free_checked_ns = 0
        self._free_lock = threading.Lock()
        self._in_flight = 0  # bytes granted by _check_free and still being written
        self._free_bytes = shutil.disk_usage(path).free
        self._closed = False

    @classmethod
    def create(cls, path: str | Path, rig, *, calibration: str | Path | None = None, cameras: Sequence | None = None,
               min_free_bytes: int = 512 << 20, overwrite: bool = False) -> "SessionWriter":
        """Create a new session directory for ``rig`` (a :class:`~rig.rigconfig.RigConfig`).

        ``cameras`` restricts the recorded cameras (default: all of the rig). ``calibration``,
        a calibration file, is copied into the session (``calibration.yaml``) so that the
        manifest's reference stays inside it.
        """
        path = Path(path)
        if calibration is not None and not Path(calibration).is_file():
            raise RigError("calibration file not found", path=calibration)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise RigError("already exists and is not empty; choose another --out or remove it", path=path)
        (path / "cameras").mkdir(parents=True, exist_ok=True)
        specs = [c for c in rig.cameras if cameras is None or c.name in cameras]
        streams = {
            c.name: CameraStream(c.name, c.role, c.pixel_format, c.width, c.height, c.fps,
                                 path / "cameras" / f"{c.name}.frames", path / "cameras" / f"{c.name}.index")
            for c in specs
        }
        if rig.source is not None and Path(rig.source).is_file():
            shutil.copyfile(rig.source, path / "rig.yaml")
        if calibration is not None:
            shutil.copyfile(calibration, path / "calibration.yaml")
            calibration = "calibration.yaml"
        manifest = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "status": "recording",
            "software": f"rig {__version__}",
            "rig": {"name": rig.name, "file": "rig.yaml" if (path / "rig.yaml").exists() else None,
                    "hardware_sync": rig.is_hardware_synced},
            "calibration": calibration,
            "started_wall_ns": time.time_ns(),
            "started_host_ns": time.monotonic_ns(),
            "stopped_wall_ns": None,
            "cameras": {
                s.name: {"role": s.role, "pixel_format": s.pixel_format, "width": s.width, "height": s.height,
                         "fps": s.fps, "store": f"cameras/{s.name}.frames", "index": f"cameras/{s.name}.index"}
                for s in streams.values()
            },
            "stats": {},
        }
        _write_manifest(path, manifest)
        return cls(path, manifest, streams, min_free_bytes=min_free_bytes)

    # -- writing ------------------------------------------------------------
    def write_frame(self, frame) -> FrameRecord:
        """Append a :class:`~rig.capture.camera.Frame` to its camera's store."""
        return self.write_image(frame.camera, frame.image, frame.frame_counter, frame.host_ns, frame.wall_ns,
                                frame.device_ns, int(frame.flags))

    def write_image(self, camera: str, image: np.ndarray, frame_counter: int, host_ns: int, wall_ns: int,
                    device_ns: int | None = None, flags: int = 0) -> FrameRecord:
        if self._closed:
            raise RuntimeError("session writer is closed")
        try:
            writer = self._writers[camera]
        except KeyError:
            raise ValueError(f"camera '{camera}' is not part of this session ({', '.join(self._writers)})") from None
        nbytes = image.nbytes + HEADER_SIZE + INDEX_SIZE
        self._check_free(nbytes)
        try:
            return writer.write(image, frame_counter, host_ns, wall_ns, device_ns, flags)
        finally:
            with self._free_lock:
                self._in_flight -= nbytes

    def _check_free(self, nbytes: int) -> None:
        # statvfs costs ~10 us; refresh it at most every 50 ms and account for writes in between.
        # One lock for all cameras' writer threads: two writes must not both spend the last bytes.
        with self._free_lock:
            now = time.monotonic_ns()
            if now - self._free_checked_ns > 50_000_000:
                # Writes granted but not yet on disk are not in statvfs yet: keep them spent.
                self._free_bytes = shutil.disk_usage(self.path).free - self._in_flight
                self._free_checked_ns = now
            if self._free_bytes - nbytes < self.min_free_bytes:
                self._free_checked_ns = 0  # re-measure next time: space may have been freed
                raise DiskFullError(
                    f"less than {self.min_free_bytes >> 20} MiB free on the disk; stopped before a write could fail",
                    path=self.path)
            self._free_bytes -= nbytes
            self._in_flight += nbytes

    def log_event(self, kind: str, **data) -> None:
        """Append an event (``kind`` plus JSON-serialisable fields) to ``events.jsonl``."""
        entry = {"host_ns": time.monotonic_ns(), "wall_ns": time.time_ns(), "kind": kind, **data}
        line = json.dumps(entry, separators=(",", ":"), default=_json_default) + "\n"
        with self._free_lock:  # the event log counts against the reserve too (never refused: it is small)
            self._free_bytes -= len(line)
        with self._events_lock:
            self._events.write(line)
            self._events.flush()

    def fsync(self) -> None:
        """Flush everything to stable storage (for power-loss safety; a kill is safe without it)."""
        for w in self._writers.values():
            w.fsync()

    def frames_written(self) -> dict[str, int]:
        return {name: w.seq for name, w in self._writers.items()}

    def bytes_written(self) -> dict[str, int]:
        return {name: w.bytes_written for name, w in self._writers.items()}

    def close(self, status: str = "complete", **stats) -> None:
        """Finalise: flush, and rewrite the manifest with ``status`` and stop time."""
        if self._closed:
            return
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        self._closed = True
        for w in self._writers.values():
            w.close()
        with self._events_lock:
            self._events.close()
        self._manifest["status"] = status
        self._manifest["stopped_wall_ns"] = time.time_ns()
        self._manifest["stats"] = {"frames": self.frames_written(), **stats}
        _write_manifest(self.path, self._manifest)

    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("complete" if exc_type is None or exc_type is KeyboardInterrupt else "aborted")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_yaml(manifest))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST)
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def attach_calibration(session: str | Path, calibration_file: str | Path) -> Path:
    """Copy ``calibration_file`` into a finished session and name it in the manifest.

    The copy (``SESSION/calibration.yaml``) travels with the session, so later
    stages find it without ``--calibration`` and the manifest path stays inside
    the session directory. Returns the copy's path.
    """
    session, calibration_file = Path(session), Path(calibration_file)
    manifest_path = session / MANIFEST
    if not manifest_path.is_file():
        raise RigError("not a session: manifest.yaml is missing", path=session)
    if not calibration_file.is_file():
        raise RigError("calibration file not found", path=calibration_file)
    manifest = load_yaml(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise RigError(f"not a {FORMAT_NAME} manifest", path=manifest_path)
    target = session / "calibration.yaml"
    tmp = session / "calibration.yaml.tmp"
    shutil.copyfile(calibration_file, tmp)
    os.replace(tmp, target)
    manifest["calibration"] = target.name
    _write_manifest(session, manifest)
    return target
