"""Reading sessions: manifest validation, index + store scan with recovery, frames, pairs, events."""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from rig.errors import RigError
from rig.pixfmt import pixel_format
from rig.session.format import (FORMAT_NAME, FORMAT_VERSION, HEADER_SIZE, INDEX_ENTRY, INDEX_SIZE, MAGIC, MANIFEST,
                                MAX_EVENT_LINE_BYTES, MAX_MANIFEST_BYTES, STATUSES, CameraStream, FrameFlags,
                                FrameRecord, confined, open_regular, require_regular_file, unpack_header)
from rig.session.pairing import Pair, pair_by_counter, pair_by_timestamp
from rig.yamlio import Node, load_yaml


@dataclass
class StreamState:
    """What the reader found in one camera's store."""

    records: list[FrameRecord] = field(default_factory=list)
    torn_tail_bytes: int = 0
    recovered: int = 0  # complete records the index did not list
    corrupt: list[str] = field(default_factory=list)  # problems found while scanning
    skipped_bytes: int = 0  # damaged bytes stepped over to reach the next valid record


@dataclass(frozen=True)
class CorruptFrame:
    """A frame whose payload does not match its CRC (found by :meth:`SessionReader.verify`)."""

    camera: str
    seq: int
    frame_counter: int
    offset: int  # of the payload in the store

    def __str__(self) -> str:
        return f"{self.camera} frame {self.seq} (counter {self.frame_counter}, byte {self.offset}): payload CRC mismatch"


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
        if not manifest_path.exists():
            raise RigError("not a session: manifest.yaml is missing", path=self.path)
        require_regular_file(manifest_path, "manifest", MAX_MANIFEST_BYTES)
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

    # -- references ---------------------------------------------------------
    def calibration_path(self) -> Path | None:
        """The calibration the manifest names, confined to the session directory (``None`` if none).

        ``calibration:`` is untrusted like every manifest path: absolute paths, ``..`` and
        symlinks leading out of the session are refused (:func:`rig.session.attach_calibration`
        puts a copy inside).
        """
        ref = self.manifest.get("calibration")
        if ref is None:
            return None
        return confined(self.path, ref, self.manifest_path, "calibration")

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
            fd = self._fds[rec.camera] = open_regular(self.cameras[rec.camera].store, "frame store")
        buf = os.pread(fd, rec.length, rec.offset)
        if len(buf) != rec.length or (verify and zlib.crc32(buf) != rec.crc):
            raise RigError(f"frame {rec.seq} of camera '{rec.camera}' is corrupt (CRC mismatch)",
                           path=self.cameras[rec.camera].store)
        fmt = pixel_format(rec.pixel_format)
        return np.frombuffer(buf, dtype=fmt.dtype).reshape(fmt.shape(rec.width, rec.height))

    def verify(self, progress=None) -> list[CorruptFrame]:
        """CRC-check every frame of every camera; returns the corrupt ones (``progress(n_done)`` per frame)."""
        bad = []
        done = 0
        for name in self.cameras:
            for rec in self.records(name):
                try:
                    self.read(rec)
                except RigError:
                    bad.append(CorruptFrame(name, rec.seq, rec.frame_counter, rec.offset))
                done += 1
                if progress is not None:
                    progress(done)
        return bad

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
        if mode not in ("counter", "timestamp"):
            raise ValueError(f"unknown pairing mode '{mode}'")
        if max_dt_ns is None:
            slower = min(self.cameras[self._name(a)].fps, self.cameras[self._name(b)].fps)
            max_dt_ns = int(0.5e9 / slower)
        if mode == "counter":
            return pair_by_counter(ra, rb, max_dt_ns)
        return pair_by_timestamp(ra, rb, max_dt_ns)

    def unpaired(self, camera: str, pairs: Sequence[Pair]) -> list[FrameRecord]:
        name = self._name(camera)
        used = {p.a.seq for p in pairs if p.a.camera == name} | {p.b.seq for p in pairs if p.b.camera == name}
        return [r for r in self.records(name) if r.seq not in used]

    # -- events -------------------------------------------------------------
    def events(self) -> tuple[list[dict], int]:
        """``(events, bad_lines)``; a torn or corrupt line is counted, never fatal."""
        path = self.path / "events.jsonl"
        if not os.path.lexists(path):
            return [], 0
        confined(self.path, "events.jsonl", self.manifest_path, "events.jsonl")
        events, bad = [], 0
        with os.fdopen(open_regular(path, "event log"), "rb") as f:
            while line := f.readline(MAX_EVENT_LINE_BYTES + 1):
                if len(line) > MAX_EVENT_LINE_BYTES:  # skip the rest of an over-long line, unread
                    while line and not line.endswith(b"\n"):
                        line = f.readline(MAX_EVENT_LINE_BYTES)
                    bad += 1
                    continue
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
            # A counter that goes back (a reconnect restarts it) is a new run, not negative loss.
            missing = int(np.clip(np.diff(counters) - 1, 0, None).sum()) if n > 1 else 0
            gaps = int((dts > 1.5 / s.fps).sum()) if n > 1 else 0
            flags = np.array([r.flags for r in recs], dtype=np.int64)
            cams[name] = {
                "role": s.role, "format": f"{s.pixel_format} {s.width}x{s.height}", "frames": n,
                "duration_s": duration, "fps_nominal": s.fps, "fps_measured": (n - 1) / duration if duration > 0 else 0.0,
                "lost": missing, "missing_by_counter": missing, "gaps": gaps,
                "ffc": int(((flags & FrameFlags.FFC) != 0).sum()),
                "unpaired": int(((flags & FrameFlags.UNPAIRED) != 0).sum()),
                "reconnects": int(((flags & FrameFlags.RECONNECTED) != 0).sum()),
                "torn_tail_bytes": st.torn_tail_bytes, "recovered": st.recovered, "corrupt": list(st.corrupt),
                "skipped_bytes": st.skipped_bytes,
            }
        events, bad = self.events()
        drops = {}
        for e in events:
            if e.get("kind") == "drop":
                drops[e.get("camera")] = drops.get(e.get("camera"), 0) + int(e.get("count", 1))
        for name, c in cams.items():
            c["dropped_in_queue"] = drops.get(name, 0)
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
    """Load the index, verify it against the store, recover and measure the tail.

    Records the index does not list are recovered from the store. A damaged stretch
    (an unreadable header, a payload whose CRC fails) is stepped over: the scan resyncs on
    the next valid record header, so intact frames after the damage are kept and the
    damage is listed in ``corrupt``. Only an incomplete record at the very end is a torn tail.
    """
    state = StreamState()
    if not os.path.lexists(stream.store):
        return state
    store_size = require_regular_file(stream.store, "frame store")
    end = 0  # end of the last good record in the store
    if os.path.lexists(stream.index):
        require_regular_file(stream.index, "frame index")
        with os.fdopen(open_regular(stream.index, "frame index"), "rb") as f:
            data = f.read()
        for i in range(len(data) // INDEX_SIZE):
            entry = data[i * INDEX_SIZE:(i + 1) * INDEX_SIZE]
            (offset,) = INDEX_ENTRY.unpack_from(entry)
            rec = unpack_header(entry[INDEX_ENTRY.size:], stream.name, offset)
            if rec is None or offset != end or rec.offset + rec.length > store_size:
                break  # damaged or ahead of the store: fall back to scanning the store from here
            state.records.append(rec)
            end = rec.offset + rec.length
    with os.fdopen(open_regular(stream.store, "frame store"), "rb") as f:
        while end + HEADER_SIZE <= store_size:
            f.seek(end)
            rec = unpack_header(f.read(HEADER_SIZE), stream.name, end)
            if rec is not None and rec.offset + rec.length > store_size:
                break  # torn payload at the tail
            if rec is not None and zlib.crc32(f.read(rec.length)) == rec.crc:
                state.records.append(rec)
                state.recovered += 1
                end = rec.offset + rec.length
                continue
            problem = (f"payload CRC mismatch in frame {rec.seq} at byte {end}" if rec is not None
                       else f"unreadable record header at byte {end}")
            nxt = _next_record(f, end + 1, store_size, stream.name)
            if nxt is None:
                if rec is None:
                    break  # nothing valid follows: a torn (or damaged) tail
                nxt = rec.offset + rec.length  # a valid header with a bad payload: skip just that record
            state.corrupt.append(f"{problem}; {nxt - end} bytes skipped")
            state.skipped_bytes += nxt - end
            end = nxt
    state.torn_tail_bytes = store_size - end
    return state


def _next_record(f, start: int, store_size: int, camera: str, chunk: int = 1 << 20) -> int | None:
    """Offset of the next valid record header (with a complete, CRC-valid payload) at or after ``start``."""
    pos = start
    while pos + HEADER_SIZE <= store_size:
        f.seek(pos)
        buf = f.read(chunk + HEADER_SIZE)
        i = buf.find(MAGIC)
        while i != -1:
            at = pos + i
            f.seek(at)
            rec = unpack_header(f.read(HEADER_SIZE), camera, at)
            if rec is not None and rec.offset + rec.length <= store_size and zlib.crc32(f.read(rec.length)) == rec.crc:
                return at
            i = buf.find(MAGIC, i + 1)
        pos += chunk
    return None
