"""Sessions: one directory per recording, append-only and crash-safe.

The format (layout, record header, flags) is described in :mod:`rig.session.format`;
:class:`SessionWriter` records, :class:`SessionReader` reads (recovering what a killed
recorder did not index), :mod:`rig.session.pairing` time-matches two cameras.
"""

from rig.session.format import (FORMAT_NAME, FORMAT_VERSION, HEADER_SIZE, INDEX_ENTRY, INDEX_SIZE, MANIFEST, MAGIC,
                                NO_TIMESTAMP, RECORD_HEADER, STATUSES, CameraStream, FrameFlags, FrameRecord, confined,
                                pack_header, unpack_header)
from rig.session.pairing import Pair, pair_by_counter, pair_by_timestamp
from rig.session.reader import SessionReader, StreamState
from rig.session.writer import DiskFullError, SessionWriter, attach_calibration

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "HEADER_SIZE", "INDEX_ENTRY", "INDEX_SIZE", "MANIFEST", "MAGIC", "NO_TIMESTAMP",
    "RECORD_HEADER", "STATUSES", "CameraStream", "DiskFullError", "FrameFlags", "FrameRecord", "Pair", "SessionReader",
    "SessionWriter", "StreamState", "attach_calibration", "confined", "pack_header", "pair_by_counter", "pair_by_timestamp",
    "unpack_header",
]
