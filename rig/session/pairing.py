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


def pair_by_counter(ra: Sequence[FrameRecord], rb: Sequence[FrameRecord]) -> list[Pair]:
    """Pair hardware-triggered frames by trigger count (counters relative to each camera's first)."""
    if not ra or not rb:
        return []
    ca, cb = ra[0].frame_counter, rb[0].frame_counter
    by_b = {r.frame_counter - cb: r for r in rb}
    return [Pair(r, by_b[r.frame_counter - ca]) for r in ra if (r.frame_counter - ca) in by_b]
