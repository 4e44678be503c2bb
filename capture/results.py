"""What a recording produced: per camera as the finished session reads back, plus outages."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CameraResult:
    """One camera of the finished session, as :meth:`SessionReader.summary` reads it, plus its outages."""

    name: str
    role: str
    fps_target: float
    frames: int  # in the session
    lost: int  # frames missing by counter (our queue drops included): the summary's ``lost``
    dropped_in_queue: int  # of those, dropped by a full queue of ours (``drop`` events)
    gaps: int  # intervals longer than 1.5 frame periods (timing, apart from ``lost``)
    ffc_frames: int  # frames flagged FFC
    unpaired: int  # frames flagged UNPAIRED
    disconnects: int
    reconnects: int
    down_s: float  # time the camera was down (disconnected), up to the end of the run
    down_at_end: bool  # still down when the run ended
    bytes: int
    fps_measured: float

    @property
    def drops(self) -> int:
        return self.dropped_in_queue


@dataclass(frozen=True)
class RecordingResult:
    """Outcome of :meth:`Recorder.run`."""

    path: Path
    status: str  # manifest status: complete | degraded | aborted
    stop_reason: str  # duration | interrupted | stopped | terminated | disk-full | error
    message: str
    duration_s: float
    cameras: dict[str, CameraResult]
    pairing: dict
    gps: dict | None
    ffc_events: int
    degraded: tuple[str, ...] = ()  # one line per outage ("lwir down 4.2 s (to the end)", "GPS down 3.0 s")

    @property
    def frames(self) -> dict[str, int]:
        return {n: c.frames for n, c in self.cameras.items()}

    @property
    def lost(self) -> dict[str, int]:
        return {n: c.lost for n, c in self.cameras.items()}

    @property
    def drops(self) -> dict[str, int]:
        return {n: c.dropped_in_queue for n, c in self.cameras.items()}

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.cameras.values())


def result_dict(result: RecordingResult) -> dict:
    """The result as plain data (JSON-ready)."""
    d = asdict(result)
    d["path"] = str(result.path)
    return d
