"""Pairing frames of two cameras: by host timestamp (free-running) or by trigger counter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rig.session.format import FrameRecord


@dataclass(frozen=True)
class Pair:
    """Two time-matched frames (``a`` from the first camera, ``b`` from the second)."""

    a: FrameRecord
    b: FrameRecord

    @property
    def dt_ns(self) -> int:
        return self.b.host_ns - self.a.host_ns


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


def pair_by_counter(ra: Sequence[FrameRecord], rb: Sequence[FrameRecord], max_dt_ns: int | None = None) -> list[Pair]:
    """Pair hardware-triggered frames by trigger count, checked against time.

    Each camera counts the triggers it saw; the two counters differ by a constant
    offset while both see every trigger. The offset is anchored on the first pair
    whose host timestamps agree within ``max_dt_ns`` (half the trigger period, say),
    and a frame is paired with the other camera's frame of the same trigger only if
    their timestamps agree too. When they do not, a camera missed a trigger or was
    reconnected (its counter restarted): the pairing re-anchors on the frame nearest
    in time, so one missed trigger never shifts the later pairs. Frames with no
    partner stay unpaired. ``max_dt_ns=None`` trusts counters alone (relative to each
    camera's first frame), for recordings without usable timestamps.
    """
    if not ra or not rb:
        return []
    if max_dt_ns is None:
        ca, cb = ra[0].frame_counter, rb[0].frame_counter
        by_b = {r.frame_counter - cb: r for r in rb}
        return [Pair(r, by_b[r.frame_counter - ca]) for r in ra if (r.frame_counter - ca) in by_b]
    tb = np.array([r.host_ns for r in rb], dtype=np.int64)
    by_counter: dict[int, list[int]] = {}
    for j, r in enumerate(rb):
        by_counter.setdefault(r.frame_counter, []).append(j)
    used: set[int] = set()
    out: list[Pair] = []
    offset: int | None = None
    for a in ra:
        match = None
        if offset is not None:
            for j in by_counter.get(a.frame_counter + offset, ()):
                if j not in used and abs(int(tb[j]) - a.host_ns) <= max_dt_ns:
                    match = j
                    break
        if match is None:  # (re-)anchor on the nearest unused frame in time
            k = int(np.searchsorted(tb, a.host_ns))
            near = [j for j in (k - 1, k) if 0 <= j < len(tb) and j not in used
                    and abs(int(tb[j]) - a.host_ns) <= max_dt_ns]
            if near:
                match = min(near, key=lambda j: abs(int(tb[j]) - a.host_ns))
                offset = rb[match].frame_counter - a.frame_counter
        if match is not None:
            used.add(match)
            out.append(Pair(a, rb[match]))
    return out
