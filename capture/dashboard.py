"""Live recording dashboard: a rich table on a terminal, periodic plain lines otherwise.

::

    with Dashboard(console) as dash:
        recorder.run(duration_s, on_status=dash.update)
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class CameraStatus:
    """One camera's row of the dashboard."""

    name: str
    role: str
    fps_target: float
    fps_actual: float
    frames: int
    lost: int  # frames missing by counter among those written (as ``rig session info`` counts them)
    dropped_in_queue: int  # frames our queue dropped (part of ``lost`` once a later frame is written)
    queue_depth: int
    queue_capacity: int
    mb_per_s: float
    state: str  # streaming | reconnecting | stopped
    ffc: str  # "" (not an LWIR camera), "idle", "in FFC"
    down_s: float = 0.0  # time disconnected so far


@dataclass(frozen=True)
class RecorderStatus:
    """A snapshot of a recording (:meth:`rig.capture.recorder.Recorder.status`)."""

    path: Path
    elapsed_s: float
    duration_s: float | None
    cameras: list[CameraStatus]
    disk_free_bytes: int
    min_free_bytes: int
    gps: str  # "off", "no fix", "52.12345 N 4.56789 E 12.3 m/s 9 sats", ...
    gps_bad: int
    ffc_events: int


@dataclass
class RateWindow:
    """Frame and byte rates over the last ``span_s`` seconds, from cumulative counts sampled now and then."""

    span_s: float = 2.0
    samples: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))  # (t, frames, bytes)

    def add(self, t: float, frames: int, nbytes: int) -> None:
        self.samples.append((t, frames, nbytes))

    def rates(self, now: float, frames: int, nbytes: int) -> tuple[float, float]:
        """Add a sample and return (frames/s, MB/s) since the oldest sample within ``span_s`` (at least two kept)."""
        self.samples.append((now, frames, nbytes))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.span_s:
            self.samples.popleft()
        t0, f0, b0 = self.samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (frames - f0) / dt, (nbytes - b0) / dt / 1e6


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _state(c: CameraStatus) -> str:
    down = f", down {c.down_s:.1f} s" if c.down_s > 0 else ""
    return c.state + (", in FFC" if c.ffc == "in FFC" else "") + down


def render_status(s: RecorderStatus) -> Group:
    """The dashboard as a rich renderable (fits 80 columns)."""
    table = Table("camera", "fps", "frames", "lost", "queue", "MB/s", "state", title=f"recording {s.path}",
                  box=box.SIMPLE_HEAD, title_justify="left")
    for c in s.cameras:
        lost = Text(str(c.lost), style="bold red" if c.lost else "")
        state = Text(_state(c), style="green" if c.state == "streaming" and not c.down_s else "yellow")
        table.add_row(c.name, f"{c.fps_actual:.1f}/{c.fps_target:g}", str(c.frames), lost,
                      f"{c.queue_depth}/{c.queue_capacity}", f"{c.mb_per_s:.1f}", state)
    for col in table.columns:
        col.overflow = "fold"  # never cut a value short
    total = f" / {s.duration_s:g} s" if s.duration_s else " (Ctrl-C to stop)"
    low = s.disk_free_bytes < 2 * s.min_free_bytes
    footer = Text.assemble(
        f"elapsed {s.elapsed_s:.1f} s{total}, FFCs {s.ffc_events}, disk free ",
        (_mb(s.disk_free_bytes), "bold red" if low else ""),
        f" (reserve {_mb(s.min_free_bytes)})\nGPS {s.gps}",
        f" ({s.gps_bad} bad sentences)" if s.gps_bad else "",
    )
    return Group(table, footer)


def status_line(s: RecorderStatus) -> str:
    """Plain status (logs, pipes, CI): a line for the recording, then one per camera; each fits 80 columns."""
    gps = f"GPS {s.gps}" + (f" ({s.gps_bad} bad sentences)" if s.gps_bad else "")
    head = f"[{s.elapsed_s:6.1f} s] disk free {_mb(s.disk_free_bytes)}, FFCs {s.ffc_events}"
    lines = [f"{head}, {gps}"] if s.gps == "off" else [head, f"  {gps}"]
    for c in s.cameras:
        extra = "" if c.state == "streaming" and c.ffc != "in FFC" and not c.down_s else f", {_state(c)}"
        line = (f"  {c.name} {c.fps_actual:.1f}/{c.fps_target:g} fps, {c.frames} frames, {c.lost} lost, "
                f"q {c.queue_depth}, {c.mb_per_s:.1f} MB/s")
        if len(line + extra) <= 80:
            lines.append(line + extra)
        else:
            lines += [line, f"    {_state(c)}"]
    return "\n".join(lines)


class Dashboard:
    """Shows :class:`RecorderStatus` snapshots: ``rich.live`` on a TTY, a plain line every ``plain_every_s`` otherwise."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None, plain_every_s: float = 5.0):
        self.console = console or Console()
        self.live = self.console.is_terminal if live is None else live
        self.plain_every_s = plain_every_s
        self._live: Live | None = None
        self._next_plain = 0.0
        self.last: RecorderStatus | None = None

    def __enter__(self) -> "Dashboard":
        if self.live:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            if self.last is not None:
                self._live.update(render_status(self.last))
            self._live.__exit__(*exc)
            self._live = None

    def update(self, status: RecorderStatus) -> None:
        self.last = status
        if self._live is not None:
            self._live.update(render_status(status))
            return
        now = time.monotonic()
        if now >= self._next_plain:
            self._next_plain = now + self.plain_every_s
            print(status_line(status), flush=True)
