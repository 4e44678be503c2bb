"""The session format: one directory per recording, append-only and crash-safe.

This module holds the layout, the record header, the frame flags and manifest path
confinement; :mod:`rig.session.writer`, :mod:`rig.session.reader` and
:mod:`rig.session.pairing` build on it.

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

import enum
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from rig.errors import RigError
from rig.pixfmt import BY_CODE

FORMAT_NAME = "rig-session"
FORMAT_VERSION = 1
MAGIC = b"RGFR"
RECORD_HEADER = struct.Struct("<4sHHQqqqqIIHHQII")
HEADER_SIZE = RECORD_HEADER.size  # 76
INDEX_ENTRY = struct.Struct("<Q")  # offset, followed by the header
INDEX_SIZE = INDEX_ENTRY.size + HEADER_SIZE  # 84
NO_TIMESTAMP = -(1 << 63)
STATUSES = ("recording", "complete", "degraded", "aborted")  # degraded: complete, with an outage (see stats)
MANIFEST = "manifest.yaml"


class FrameFlags(enum.IntFlag):
    """Per-frame flags, stored in each record header and its index entry."""

    NONE = 0
    FFC = 1  # taken during a flat-field correction (LWIR): later stages skip it
    UNPAIRED = 2  # no partner frame within the pairing window
    GAP_BEFORE = 4  # frames were lost (counter jump or queue drop) just before this one
    TRIGGERED = 8  # acquired on a hardware trigger
    RECONNECTED = 16  # first frame after a reconnect
    HOST_TIMESTAMP_ONLY = 32  # the device gave no timestamp


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


# --------------------------------------------------------------------------- untrusted files
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB; anything near this is not one
MAX_EVENT_LINE_BYTES = 1 << 20  # longer lines are counted as unreadable, never loaded whole


def require_regular_file(path: Path, what: str, max_bytes: int | None = None) -> int:
    """Refuse anything but a regular file (a FIFO would block a reader, ``/dev/zero`` never ends).

    Symlinks are followed (confinement to the session is checked separately); returns the size.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RigError(f"{what} is missing", path=path) from None
    except OSError as exc:
        raise RigError(f"cannot read {what} ({exc.strerror})", path=path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a directory" if stat.S_ISDIR(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file")
        raise RigError(f"{what} is {kind}, not a regular file; refusing to read it", path=path)
    if max_bytes is not None and st.st_size > max_bytes:
        raise RigError(f"{what} is {st.st_size} bytes, more than the {max_bytes} a {what} can be; refusing to read it",
                       path=path)
    return st.st_size


def open_regular(path: Path, what: str) -> int:
    """``os.open`` a regular file read-only, without blocking on a FIFO swapped in after the check."""
    require_regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RigError(f"{what} is not a regular file; refusing to read it", path=path)
    return fd
