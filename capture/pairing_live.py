"""Live unpaired flagging for a rig with one visible and one LWIR camera.

Pairs themselves are made at read time by :meth:`rig.session.SessionReader.pairs`
(by frame/trigger counter on hardware-synced rigs, else nearest host timestamp
within half the slower frame period, one-to-one). While recording, a frame is
flagged ``UNPAIRED`` when *no* frame of the other camera falls inside its
pairing window (timestamp mode) or the other camera has no frame with its
relative counter (counter mode). That is decidable while recording: a writer
holds a frame until the other camera's stream has passed the window (or that
camera has been silent for ``grace_s``). A frame of the faster camera that has
a candidate but loses the one-to-one match (every other LWIR frame on a 30/60
fps rig) is *not* flagged: that is the reader's decision.

:meth:`LivePairing.summary` computes the pairing the reader will make (with the
reader's own functions) for the manifest's ``stats.pairing``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rig.capture.camera import Frame
from rig.capture.streams import CameraStream
from rig.rigconfig import RigConfig
from rig.session import pair_by_counter, pair_by_timestamp


@dataclass(frozen=True)
class LivePairing:
    """How frames of two streams pair: ``counter`` or ``timestamp`` (within ``window_ns``)."""

    mode: str
    window_ns: int = 0
    grace_s: float = 0.5

    @classmethod
    def for_streams(cls, rig: RigConfig, streams: Sequence[CameraStream], grace_s: float = 0.5) -> "LivePairing | None":
        """The pairing of a visible + LWIR rig, or None for any other set of cameras."""
        roles = {s.camera.role for s in streams}
        if len(streams) != 2 or roles != {"visible", "lwir"}:
            return None
        if rig.is_hardware_synced:
            return cls("counter", 0, grace_s)
        return cls("timestamp", int(0.5e9 / min(s.fps for s in streams)), grace_s)

    def unpaired(self, frame: Frame, stream: CameraStream, other: CameraStream, force: bool) -> bool | None:
        """True/False once decidable; None while ``other`` may still deliver a partner of ``frame``."""
        silent = other.done or other.state != "streaming" or time.monotonic() - other.last_arrival > self.grace_s
        if self.mode == "timestamp":
            lo, hi = frame.host_ns - self.window_ns, frame.host_ns + self.window_ns
            latest = other.latest_ns
            if not force and not silent and (latest is None or latest < hi):
                return None
            ts = np.fromiter(tuple(other.recent_ns), dtype=np.int64)
            return not bool(((ts >= lo) & (ts <= hi)).any())
        rel = frame.frame_counter - (stream.first_counter or 0)
        latest = other.latest_rel_counter
        if not force and not silent and (latest is None or latest < rel):
            return None
        return rel not in set(other.recent_counters)

    def summary(self, streams: Sequence[CameraStream]) -> dict:
        """Mode, window, pairs, unpaired per camera (as the reader pairs) and the live flags, for the manifest."""
        a, b = streams
        if a.camera.role != "visible":
            a, b = b, a
        if self.mode == "counter":
            pairs = pair_by_counter(a.records, b.records, self.window_ns)  # as the reader pairs: counter and time
        else:
            pairs = pair_by_timestamp(a.records, b.records, self.window_ns)
        used_a = {p.a.seq for p in pairs}
        used_b = {p.b.seq for p in pairs}
        dts = np.array([abs(p.dt_ns) for p in pairs], dtype=np.int64)
        return {
            "mode": self.mode, "window_ns": self.window_ns, "cameras": [a.name, b.name],
            "pairs": len(pairs),
            "unpaired": {a.name: len(a.records) - len(used_a), b.name: len(b.records) - len(used_b)},
            "flagged_unpaired": {a.name: a.unpaired, b.name: b.unpaired},
            "max_dt_ns": int(dts.max()) if len(dts) else 0,
            "median_dt_ns": int(np.median(dts)) if len(dts) else 0,
        }
