"""Flat-field corrections (FFC) during a drive: observing them and scheduling them.

Frames flagged ``FFC`` are kept (later stages skip them); :func:`observe_ffc`
turns each run of written flagged frames into an ``ffc`` event with ``state:
start`` / ``state: end`` (and the number of flagged frames). Cameras with FFC
windows (:mod:`rig.capture.control`, the Boson) have the flag of each frame
decided by the recorder from the windows when the state for the frame's time is
known, and each closed window is logged as an ``ffc_window`` event.

Cameras that can run one on request (``request_ffc()``, the Boson) get one every
``interval_s`` and, with ``when_stopped``, when GPS says the vehicle has stood
still for ``stopped_for_s`` (at most once per ``min_gap_s``): :class:`FfcScheduler`.
``request_ffc()`` returns at once: the camera's control thread sends the command,
so neither the recorder's loop nor the grab thread waits on the control channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rig.capture.camera import Frame, FrameFlags
from rig.capture.streams import CameraStream, LogEvent
from rig.errors import RigError


@dataclass(frozen=True)
class FfcPolicy:
    """When to ask an FFC-capable LWIR camera for a correction."""

    interval_s: float | None = None
    when_stopped: bool = False
    stopped_speed_mps: float = 0.5
    stopped_for_s: float = 2.0
    min_gap_s: float = 60.0

    def __post_init__(self) -> None:
        if self.interval_s is not None and self.interval_s <= 0:
            raise RigError(f"--ffc-interval must be positive, got {self.interval_s:g}")


class FfcScheduler:
    """Marks FFC requests on streams per :class:`FfcPolicy`; call :meth:`tick` from the recorder's loop."""

    def __init__(self, policy: FfcPolicy, t_start: float):
        self.policy = policy
        self.t_start = t_start
        self._still_since: float | None = None

    def tick(self, now: float, streams: Sequence[CameraStream], speed_fix, log_event: LogEvent) -> None:
        """Request an FFC where one is due (``speed_fix``: the latest GPS fix with a speed, or None)."""
        p = self.policy
        capable = [s for s in streams if s.camera.role == "lwir" and hasattr(s.camera, "request_ffc")]
        if not capable:
            return
        why = None
        if p.interval_s is not None:
            due = [s for s in capable if now - max(s.last_ffc_request, self.t_start) >= p.interval_s]
            if due:
                why, capable = "interval", due
        if why is None and p.when_stopped and self.vehicle_stopped(now, speed_fix):
            due = [s for s in capable if now - s.last_ffc_request >= p.min_gap_s]
            if due:
                why, capable = "stopped", due
        if why is None:
            return
        for s in capable:
            if s.state == "streaming" and not s.in_ffc:
                s.last_ffc_request = now
                try:
                    s.camera.request_ffc()
                except Exception as exc:  # noqa: BLE001 - a camera going down is the grab thread's business
                    log_event("ffc_schedule", camera=s.name, reason=why, ok=False, error=str(exc))
                    continue
                log_event("ffc_schedule", camera=s.name, reason=why)

    def vehicle_stopped(self, now: float, fix) -> bool:
        """Whether GPS has said for ``stopped_for_s`` that the vehicle is below ``stopped_speed_mps``."""
        if fix is None or not fix.valid or now - fix.host_ns * 1e-9 > 3.0:
            self._still_since = None
            return False
        if fix.speed_mps > self.policy.stopped_speed_mps:
            self._still_since = None
            return False
        if self._still_since is None:
            self._still_since = now
        return now - self._still_since >= self.policy.stopped_for_s


def observe_ffc(stream: CameraStream, frame: Frame, flags: FrameFlags, log_event: LogEvent) -> bool:
    """Track FFC runs of a stream's written frames; True when ``frame`` starts a new FFC."""
    ffc = bool(flags & FrameFlags.FFC)
    started = False
    if ffc and not stream.in_ffc:
        stream.in_ffc, stream.ffc_run, started = True, 0, True
        log_event("ffc", camera=stream.name, state="start", frame_counter=frame.frame_counter,
                  frame_host_ns=frame.host_ns)
    if ffc:
        stream.ffc_run += 1
    elif stream.in_ffc:
        stream.in_ffc = False
        log_event("ffc", camera=stream.name, state="end", frame_counter=frame.frame_counter,
                  frame_host_ns=frame.host_ns, frames=stream.ffc_run)
    return started
