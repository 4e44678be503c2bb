"""The session format: one directory per recording, append-only and crash-safe.

Layout (format ``rig-session`` version 1)::

    SESSION/
      manifest.yaml            rig, software, calibration ref, start/stop, status, cameras
      rig.yaml                 the rig definition the session was recorded with
      cameras/NAME.frames      frame store: self-describing records, appended
      cameras/NAME.index       per-frame index: fixed-size entries, appended
      events.jsonl             event log: one JSON object per line, appended

Frame store record (little-endian)::

    header (76 bytes, struct RECORD_HEADER)   magic "RGFR", version, header size,
                                               seq, frame counter, host/wall/device
                                               timestamps (ns), width, height,
                                               pixel format code, flags,
                                               payload length, payload CRC32,
                                               header CRC32
    payload                                    raw pixels, row-major, little-endian

Raw pixels are stored, not PNG: a 1920x1200 frame takes ~1 ms to append and
~70 ms to PNG-encode, and raw 16-bit LWIR stays bit-exact. Images are exported later.

Index entry: ``offset`` (u64) of the record in the store, followed by a copy of
its 76-byte header (84 bytes). The index is an accelerator: the store alone is
authoritative and the index is rebuilt from it when missing or damaged.

Crash safety: a record is written (header + payload) before its index entry,
and the manifest is replaced atomically. A process killed at any instant leaves
a store whose every complete record reads back bit-exact (checked by CRC) and at
most one torn record at the tail; :class:`SessionReader` recovers complete
records the index missed and reports the torn tail (``torn_tail_bytes``) instead
of hiding it. ``status: recording`` in the manifest of a finished reader means
the recorder did not finalise (killed or crashed).

Manifests are untrusted input: read with ``yaml.safe_load``, and every path in
them must resolve inside the session directory.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from rig import __version__
from rig.errors import RigError
from rig.pixfmt import BY_CODE, pixel_format
from rig.yamlio import Node, dump_yaml, load_yaml

FORMAT_NAME = "rig-session"
FORMAT_VERSION = 1
MAGIC = b"RGFR"
RECORD_HEADER = struct.Struct("<4sHHQqqqqIIHHQII")
HEADER_SIZE = RECORD_HEADER.size  # 76
INDEX_ENTRY = struct.Struct("<Q")  # offset, followed by the header
INDEX_SIZE = INDEX_ENTRY.size + HEADER_SIZE  # 84
NO_TIMESTAMP = -(1 << 63)
STATUSES = ("recording", "complete", "aborted")
MANIFEST = "manifest.yaml"


class DiskFullError(RigError):
    """Free space fell below the writer's reserve; nothing was half-written."""


@dataclass(frozen=True)
class FrameRecord:
    """Metadata of one stored frame; :meth:`SessionReader.read` loads its pixels."""

    camera: str
    seq: int
    frame_counter: int
    host_ns: int
    wall_ns: int
    device_ns: int | None
    width: int
    height: int
    pixel_format: str
    flags: int
    offset: int  # of the payload in the store
    length: int
    crc: int

    @property
    def t(self) -> float:
        """Host monotonic time in seconds."""
        return self.host_ns * 1e-9


@dataclass(frozen=True)
class Pair:
    """Two time-matched frames (``a`` from the first camera, ``b`` from the second)."""

    a: FrameRecord
    b: FrameRecord

    @property
    def dt_ns(self) -> int:
        return self.b.host_ns - self.a.host_ns


@dataclass(frozen=True)
class CameraStream:
    """One camera of a session, as declared in the manifest."""

    name: str
    role: str
    pixel_format: str
    width: int
    height: int
    fps: float
    store: Path
    index: Path


@dataclass
class StreamState:
    """What the reader found in one camera's store."""

    records: list[FrameRecord] = field(default_factory=list)
    torn_tail_bytes: int = 0
    recovered: int = 0  # complete records the index did not list
    corrupt: list[str] = field(default_factory=list)  # problems found while scanning


# --------------------------------------------------------------------------- headers
def pack_header(seq, counter, host_ns, wall_ns, device_ns, width, height, fmt_code, flags, payload_len, payload_crc) -> bytes:
    dev = NO_TIMESTAMP if device_ns is None else int(device_ns)
    body = RECORD_HEADER.pack(
        MAGIC, FORMAT_VERSION, HEADER_SIZE, seq, counter, host_ns, wall_ns, dev,
        width, height, fmt_code, flags, payload_len, payload_crc, 0,
    )
    crc = zlib.crc32(body[: HEADER_SIZE - 4])
    return body[: HEADER_SIZE - 4] + struct.pack("<I", crc)


def unpack_header(buf: bytes, camera: str, header_offset: int) -> FrameRecord | None:
    """Decode a record header; ``None`` if it is not a valid header."""
    if len(buf) < HEADER_SIZE:
        return None
    f = RECORD_HEADER.unpack_from(buf)
    if f[0] != MAGIC or f[2] != HEADER_SIZE or zlib.crc32(buf[: HEADER_SIZE - 4]) != f[14]:
        return None
    (_, _, _, seq, counter, host, wall, dev, w, h, code, flags, length, crc, _) = f
    if code not in BY_CODE or BY_CODE[code].nbytes(w, h) != length:
        return None
    return FrameRecord(camera, seq, counter, host, wall, None if dev == NO_TIMESTAMP else dev, w, h,
                       BY_CODE[code].name, flags, header_offset + HEADER_SIZE, length, crc)


# --------------------------------------------------------------------------- paths
def confined(session_dir: Path, relative: str, manifest: Path, key: str) -> Path:
    """Resolve a manifest path, refusing anything that leaves the session directory."""
    if not isinstance(relative, str) or not relative:
        raise RigError("expected a relative path", path=manifest, key=key)
    p = Path(relative)
    if p.is_absolute():
        raise RigError(f"absolute path '{relative}' not allowed: paths must stay inside the session", path=manifest, key=key)
    root = session_dir.resolve()
    resolved = (root / p).resolve()
    if not resolved.is_relative_to(root):
        raise RigError(f"path '{relative}' leaves the session directory", path=manifest, key=key)
    return resolved


# --------------------------------------------------------------------------- writer
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
    def create(cls, path: str | Path, rig, *, calibration: str | None = None, cameras: Sequence | None = None,
               min_free_bytes: int = 512 << 20, overwrite: bool = False) -> "SessionWriter":
        """Create a new session directory for ``rig`` (a :class:`~rig.rigconfig.RigConfig`).

        ``cameras`` restricts the recorded cameras (default: all of the rig).
        """
        path = Path(path)
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


# --------------------------------------------------------------------------- reader
class SessionReader:
    """Reads a session: frames per camera, time-matched pairs, events, and damage.

    Opening validates the manifest, confines its paths to the session directory,
    loads the index and scans the tail of each store (recovering complete records
    that a killed recorder did not index, and measuring any torn tail).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RigError("no such session directory", path=self.path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise RigError("not a session: manifest.yaml is missing", path=self.path)
        self.manifest_path = manifest_path
        self.manifest = load_yaml(manifest_path)
        root = Node(self.manifest, manifest_path).mapping()
        if root.req("format").str() != FORMAT_NAME:
            raise root.error(f"not a {FORMAT_NAME} manifest", "format")
        version = root.req("version").int()
        if version > FORMAT_VERSION:
            raise root.error(f"session format version {version} is newer than this rig ({FORMAT_VERSION}); upgrade rig",
                             "version")
        self.status = root.req("status").str(STATUSES)
        self.cameras: dict[str, CameraStream] = {}
        cams = root.req("cameras").mapping()
        for name in cams.data:
            c = cams.child(str(name)).mapping()
            fmt = c.req("pixel_format").str()
            try:
                pixel_format(fmt)
            except ValueError as exc:
                raise c.error(str(exc), "pixel_format") from None
            self.cameras[str(name)] = CameraStream(
                str(name), c.req("role").str(), fmt, c.req("width").int(lo=1), c.req("height").int(lo=1),
                c.req("fps").float(0.0, open_lo=True),
                confined(self.path, c.req("store").data, manifest_path, f"cameras.{name}.store"),
                confined(self.path, c.req("index").data, manifest_path, f"cameras.{name}.index"),
            )
        self.hardware_sync = bool((self.manifest.get("rig") or {}).get("hardware_sync", False))
        self.streams: dict[str, StreamState] = {name: _scan_stream(s) for name, s in self.cameras.items()}
        self._fds: dict[str, int] = {}

    # -- frames -------------------------------------------------------------
    def records(self, camera: str) -> list[FrameRecord]:
        return self.streams[self._name(camera)].records

    def frames(self, camera: str) -> Iterator[tuple[FrameRecord, np.ndarray]]:
        """Iterate ``(record, image)`` for one camera (by name or role), in order."""
        for rec in self.records(camera):
            yield rec, self.read(rec)

    def read(self, rec: FrameRecord, *, verify: bool = True) -> np.ndarray:
        """Load a frame's pixels (bit-exact; CRC-checked unless ``verify=False``)."""
        fd = self._fds.get(rec.camera)
        if fd is None:
            fd = self._fds[rec.camera] = os.open(self.cameras[rec.camera].store, os.O_RDONLY)
        buf = os.pread(fd, rec.length, rec.offset)
        if len(buf) != rec.length or (verify and zlib.crc32(buf) != rec.crc):
            raise RigError(f"frame {rec.seq} of camera '{rec.camera}' is corrupt (CRC mismatch)",
                           path=self.cameras[rec.camera].store)
        fmt = pixel_format(rec.pixel_format)
        return np.frombuffer(buf, dtype=fmt.dtype).reshape(fmt.shape(rec.width, rec.height))

    def _name(self, camera: str) -> str:
        if camera in self.cameras:
            return camera
        by_role = [n for n, s in self.cameras.items() if s.role == camera]
        if len(by_role) == 1:
            return by_role[0]
        raise RigError(f"no camera '{camera}' in session (cameras: {', '.join(self.cameras)})", path=self.path)

    # -- pairs --------------------------------------------------------------
    def pairs(self, a: str = "visible", b: str = "lwir", mode: str = "auto",
              max_dt_ns: int | None = None) -> list[Pair]:
        """Time-matched pairs of two cameras.

        ``mode="counter"`` pairs hardware-triggered frames by trigger/frame
        counter (relative to each camera's first counter); ``"timestamp"`` pairs
        each frame of the slower camera with the nearest frame of the other by
        host timestamp, within half the slower frame period (or ``max_dt_ns``),
        one-to-one. ``"auto"`` picks ``counter`` for hardware-synced rigs.
        """
        ra, rb = self.records(a), self.records(b)
        if mode == "auto":
            mode = "counter" if self.hardware_sync else "timestamp"
        if mode == "counter":
            return pair_by_counter(ra, rb)
        if mode != "timestamp":
            raise ValueError(f"unknown pairing mode '{mode}'")
        if max_dt_ns is None:
            slower = min(self.cameras[self._name(a)].fps, self.cameras[self._name(b)].fps)
            max_dt_ns = int(0.5e9 / slower)
        return pair_by_timestamp(ra, rb, max_dt_ns)

    def unpaired(self, camera: str, pairs: Sequence[Pair]) -> list[FrameRecord]:
        name = self._name(camera)
        used = {p.a.seq for p in pairs if p.a.camera == name} | {p.b.seq for p in pairs if p.b.camera == name}
        return [r for r in self.records(name) if r.seq not in used]

    # -- events -------------------------------------------------------------
    def events(self) -> tuple[list[dict], int]:
        """``(events, bad_lines)``; a torn or corrupt line is counted, never fatal."""
        path = self.path / "events.jsonl"
        if not path.exists():
            return [], 0
        events, bad = [], 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    item = json.loads(line)
                    if isinstance(item, dict):
                        events.append(item)
                        continue
                except (ValueError, UnicodeDecodeError):
                    pass
                bad += 1
        return events, bad

    # -- summary ------------------------------------------------------------
    def summary(self) -> dict:
        """Per-camera counts, duration, rates, counter gaps and torn tails (for ``rig session info``)."""
        cams = {}
        for name, s in self.cameras.items():
            st = self.streams[name]
            recs = st.records
            n = len(recs)
            duration = (recs[-1].host_ns - recs[0].host_ns) * 1e-9 if n > 1 else 0.0
            counters = np.array([r.frame_counter for r in recs], dtype=np.int64)
            dts = np.diff(np.array([r.host_ns for r in recs], dtype=np.int64)) * 1e-9
            missing = int(np.clip(np.diff(counters) - 1, 0, None).sum()) if n > 1 else 0
            gaps = int((dts > 1.5 / s.fps).sum()) if n > 1 else 0
            cams[name] = {
                "role": s.role, "format": f"{s.pixel_format} {s.width}x{s.height}", "frames": n,
                "duration_s": duration, "fps_nominal": s.fps, "fps_measured": (n - 1) / duration if duration > 0 else 0.0,
                "missing_by_counter": missing, "gaps": gaps,
                "flagged": int(sum(1 for r in recs if r.flags)),
                "torn_tail_bytes": st.torn_tail_bytes, "recovered": st.recovered, "corrupt": list(st.corrupt),
            }
        events, bad = self.events()
        drops = {}
        for e in events:
            if e.get("kind") == "drop":
                drops[e.get("camera")] = drops.get(e.get("camera"), 0) + int(e.get("count", 1))
        return {"path": str(self.path), "status": self.status, "rig": (self.manifest.get("rig") or {}).get("name"),
                "software": self.manifest.get("software"), "cameras": cams, "events": len(events),
                "bad_event_lines": bad, "drops": drops}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "SessionReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _scan_stream(stream: CameraStream) -> StreamState:
    """Load the index, verify it against the store, recover and measure the tail."""
    state = StreamState()
    if not stream.store.exists():
        return state
    store_size = stream.store.stat().st_size
    end = 0  # end of the last good record in the store
    if stream.index.exists():
        data = stream.index.read_bytes()
        for i in range(len(data) // INDEX_SIZE):
            entry = data[i * INDEX_SIZE:(i + 1) * INDEX_SIZE]
            (offset,) = INDEX_ENTRY.unpack_from(entry)
            rec = unpack_header(entry[INDEX_ENTRY.size:], stream.name, offset)
            if rec is None or offset != end or rec.offset + rec.length > store_size:
                break  # damaged or ahead of the store: fall back to scanning the store from here
            state.records.append(rec)
            end = rec.offset + rec.length
    with open(stream.store, "rb") as f:
        while end + HEADER_SIZE <= store_size:
            f.seek(end)
            rec = unpack_header(f.read(HEADER_SIZE), stream.name, end)
            if rec is None:
                state.corrupt.append(f"unreadable record header at byte {end}")
                break
            if rec.offset + rec.length > store_size:
                break  # torn payload
            if zlib.crc32(f.read(rec.length)) != rec.crc:
                state.corrupt.append(f"payload CRC mismatch in frame {rec.seq} at byte {end}")
                break
            state.records.append(rec)
            state.recovered += 1
            end = rec.offset + rec.length
    state.torn_tail_bytes = store_size - end
    return state


def pair_by_timestamp(ra: Sequence[FrameRecord], rb: Sequence[FrameRecord], max_dt_ns: int) -> list[Pair]:
    """One-to-one nearest-host-timestamp matching within ``max_dt_ns`` (greedy by |dt|)."""
    if not ra or not rb:
        return []
    ta = np.array([r.host_ns for r in ra], dtype=np.int64)
    tb = np.array([r.host_ns for r in rb], dtype=np.int64)
    candidates = []
    for ia, t in enumerate(ta):
        j = int(np.searchsorted(tb, t))
        for jb in (j - 1, j):
            if 0 <= jb < len(tb):
                dt = abs(int(tb[jb]) - int(t))
                if dt <= max_dt_ns:
                    candidates.append((dt, ia, jb))
    candidates.sort()
    used_a, used_b, out = set(), set(), []
    for dt, ia, jb in candidates:
        if ia in used_a or jb in used_b:
            continue
        used_a.add(ia)
        used_b.add(jb)
        out.append(Pair(ra[ia], rb[jb]))
    out.sort(key=lambda p: p.a.host_ns)
    return out


def pair_by_counter(ra: Sequence[FrameRecord], rb: Sequence[FrameRecord]) -> list[Pair]:
    """Pair hardware-triggered frames by trigger count (counters relative to each camera's first)."""
    if not ra or not rb:
        return []
    ca, cb = ra[0].frame_counter, rb[0].frame_counter
    by_b = {r.frame_counter - cb: r for r in rb}
    return [Pair(r, by_b[r.frame_counter - ca]) for r in ra if (r.frame_counter - ca) in by_b]
