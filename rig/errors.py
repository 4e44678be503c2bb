"""User-facing errors.

Every problem a user can cause (a bad file, a missing session, a camera that is
not there) is raised as :class:`RigError`. The CLI prints it as one line and
exits non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class RigError(Exception):
    """An error to show to the user as one line: ``FILE: KEY: problem``."""

    def __init__(self, message: str, *, path: str | Path | None = None, key: str | None = None):
        self.message = message
        self.path = str(path) if path is not None else None
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.key) if p]
        return ": ".join(parts + [self.message])
