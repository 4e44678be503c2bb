"""Finding shipped rig and board definitions (package data under ``rigs/``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rig.errors import RigError


def shipped_dir() -> Path:
    """Directory holding the shipped ``*.yaml`` rig files (and ``boards/``)."""
    return Path(str(resources.files("rig.rigs")))


def resolve_definition(name_or_path: str | Path, kind: str) -> Path:
    """Resolve ``--rig``/``--board`` arguments.

    An existing path is used as is; otherwise ``NAME`` or ``NAME.yaml`` is looked
    up among the shipped definitions (``rigs/`` for rigs, ``rigs/boards/`` for boards).
    """
    candidate = Path(name_or_path)
    if candidate.exists():
        if candidate.is_dir():
            raise RigError(f"is a directory, expected a {kind} YAML file", path=candidate)
        return candidate
    folder = shipped_dir() / ("boards" if kind == "board" else "")
    name = candidate.name if candidate.suffix in (".yaml", ".yml") else f"{candidate.name}.yaml"
    shipped = folder / name
    if str(candidate.parent) in ("", ".") and shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise RigError(f"no such file, and no shipped {kind} of that name (shipped: {available})", path=name_or_path)
