"""Terminal output every command shares: tables that fold instead of cutting, progress bars.

rich cuts table cells with an ellipsis ("came…") when a table is wider than the
terminal; a user at 80 columns then cannot read camera names or formats.
:func:`table` wraps cells between words instead. :func:`progress` is a rich
progress bar that draws only on a terminal: on a pipe or in a log file a
transient bar would leave a stray blank line behind (before an ``error:``
line, say), so there it stays silent.
"""

from __future__ import annotations

from typing import Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.table import Table
from rich.text import Text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, width: int = 80, title: str | None = None) -> Table:
    """A table that fits ``width`` terminal columns, whose cells are never cut with an ellipsis.

    Columns take their natural width while the table fits; beyond that the column with the
    most room above its longest word gives way first, so text wraps between words. Only
    when the longest words alone do not fit are they folded.
    """
    cells = [[Text.from_markup(str(c)).plain for c in col] for col in zip(headers, *rows)]
    natural = [max(cell_len(c) for c in col) for col in cells]
    longest = [max((cell_len(w) for c in col for w in c.split()), default=1) for col in cells]
    widths = list(natural)
    room = max(len(headers), width - 3 * len(headers) - 1)  # padding and borders
    while sum(widths) > room:
        slack = [w - m for w, m in zip(widths, longest)]
        i = max(range(len(widths)), key=lambda k: (slack[k], widths[k]) if slack[k] > 0 else (0, widths[k]))
        if widths[i] <= 1:
            break
        widths[i] -= 1
    t = Table(title=title)
    for h, w in zip(headers, widths):
        t.add_column(h, overflow="fold", width=w)
    for r in rows:
        t.add_row(*(str(c) for c in r))
    return t


def progress(*columns: str | ProgressColumn, console: Console | None = None, transient: bool = True) -> Progress:
    """A rich :class:`~rich.progress.Progress` that is disabled when ``console`` is not a terminal."""
    console = console or Console(stderr=True)
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)
