"""Live recording dashboard: a rich table on a terminal, periodic plain lines otherwise.

::

    with Dashboard(console) as dash:
        recorder.run(duration_s, on_status=dash.update)
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rig.capture.recorder import RecorderStatus


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def render_status(s: RecorderStatus) -> Group:
    """The dashboard as a rich renderable."""
    table = Table("camera", "fps target", "fps actual", "frames", "drops", "queue", "MB/s", "state", "FFC",
                  title=f"recording {s.path}")
    for c in s.cameras:
        drops = Text(str(c.drops), style="bold red" if c.drops else "")
        state = Text(c.state, style="green" if c.state == "streaming" else "yellow")
        table.add_row(c.name, f"{c.fps_target:g}", f"{c.fps_actual:.1f}", str(c.frames), drops,
                      f"{c.queue_depth}/{c.queue_capacity}", f"{c.mb_per_s:.1f}", state, c.ffc or "-")
    total = f" / {s.duration_s:g} s" if s.duration_s else " (Ctrl-C to stop)"
    low = s.disk_free_bytes < 2 * s.min_free_bytes
    footer = Text.assemble(
        f"elapsed {s.elapsed_s:.1f} s{total}   disk free ",
        (_mb(s.disk_free_bytes), "bold red" if low else ""),
        f" (reserve {_mb(s.min_free_bytes)})   GPS {s.gps}",
        f" ({s.gps_bad} bad sentences)" if s.gps_bad else "",
        f"   FFCs {s.ffc_events}",
    )
    return Group(table, footer)


def status_line(s: RecorderStatus) -> str:
    """One plain line (logs, pipes, CI)."""
    cams = "  ".join(f"{c.name} {c.fps_actual:.1f}/{c.fps_target:g} fps {c.frames} fr {c.drops} drops "
                     f"q {c.queue_depth} {c.mb_per_s:.1f} MB/s{' ' + c.state if c.state != 'streaming' else ''}"
                     f"{' FFC' if c.ffc == 'in FFC' else ''}" for c in s.cameras)
    return (f"[{s.elapsed_s:6.1f} s] {cams}  disk free {_mb(s.disk_free_bytes)}  GPS {s.gps}"
            f"{f' ({s.gps_bad} bad)' if s.gps_bad else ''}  FFCs {s.ffc_events}")


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
