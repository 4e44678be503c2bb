"""YAML reading with key-path aware validation.

Configs and manifests are untrusted input: only ``yaml.safe_load`` is used, and
every accessor reports the file and the dotted key path of what is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from rig.errors import RigError


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely; unreadable or malformed files raise :class:`RigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RigError("file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RigError(f"cannot read file ({exc.__class__.__name__}: {exc})", path=path) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RigError(f"not valid YAML: {where}{problem}", path=path) from None


def dump_yaml(data: Any) -> str:
    """Serialise plain data to block-style YAML with stable key order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


class Node:
    """A view on one mapping of a YAML document that knows its file and key path.

    ``Node(data, path).req("cameras")`` returns the child or raises
    ``RigError("FILE: cameras: missing required key")``.
    """

    def __init__(self, data: Any, path: str | Path | None, key: str = ""):
        self.data = data
        self.path = path
        self.key = key

    # -- errors ---------------------------------------------------------
    def error(self, message: str, key: str | None = None) -> RigError:
        return RigError(message, path=self.path, key=self._join(key) if key is not None else (self.key or None))

    def _join(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.key}[{key}]"
        return f"{self.key}.{key}" if self.key else str(key)

    # -- structure ------------------------------------------------------
    def mapping(self) -> "Node":
        if not isinstance(self.data, dict):
            what = "empty" if self.data is None else f"a {type(self.data).__name__}"
            raise self.error(f"expected a mapping, got {what}")
        return self

    def child(self, key: str) -> "Node":
        return Node(self.data.get(key), self.path, self._join(key))

    def has(self, key: str) -> bool:
        return isinstance(self.data, dict) and key in self.data and self.data[key] is not None

    def req(self, key: str) -> "Node":
        self.mapping()
        if key not in self.data or self.data[key] is None:
            raise self.error("missing required key", key)
        return self.child(key)

    def opt(self, key: str) -> "Node | None":
        self.mapping()
        return self.child(key) if self.has(key) else None

    def items(self) -> list["Node"]:
        if not isinstance(self.data, list):
            raise self.error(f"expected a list, got {type(self.data).__name__}")
        return [Node(v, self.path, self._join(i)) for i, v in enumerate(self.data)]

    def reject_unknown(self, allowed: Iterable[str]) -> None:
        self.mapping()
        allowed = set(allowed)
        for k in self.data:
            if k not in allowed:
                raise self.error(f"unknown key (allowed: {', '.join(sorted(allowed))})", str(k))

    # -- scalars --------------------------------------------------------
    def str(self, choices: Sequence[str] | None = None) -> str:
        if not isinstance(self.data, str) or not self.data:
            raise self.error(f"expected a non-empty string, got {self.data!r}")
        if choices is not None and self.data not in choices:
            raise self.error(f"'{self.data}' is not one of: {', '.join(choices)}")
        return self.data

    def bool(self) -> bool:
        if not isinstance(self.data, bool):
            raise self.error(f"expected true or false, got {self.data!r}")
        return self.data

    def int(self, lo: int | None = None, hi: int | None = None) -> int:
        if isinstance(self.data, bool) or not isinstance(self.data, int):
            raise self.error(f"expected an integer, got {self.data!r}")
        self._range(self.data, lo, hi)
        return self.data

    def float(self, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
              unit: str | None = None) -> float:
        """The number; a range error names ``unit`` (e.g. ``"must be <= 10 (metres), got 60"``)."""
        if isinstance(self.data, bool) or not isinstance(self.data, (int, float)) or not math.isfinite(self.data):
            raise self.error(f"expected a number, got {self.data!r}")
        value = float(self.data)
        u = f" ({unit})" if unit else ""
        if open_lo and lo is not None and value <= lo:
            raise self.error(f"must be > {lo:g}{u}, got {value:g}")
        self._range(value, None if open_lo else lo, hi, u)
        return value

    def floats(self, n: int | None = None, *, choices_n: Sequence[int] | None = None) -> list[float]:
        items = self.items()
        if n is not None and len(items) != n:
            raise self.error(f"expected {n} numbers, got {len(items)}")
        if choices_n is not None and len(items) not in choices_n:
            raise self.error(f"expected {' or '.join(map(str, choices_n))} numbers, got {len(items)}")
        return [item.float() for item in items]

    def ints(self, n: int | None = None, lo: int | None = None) -> list[int]:
        items = self.items()
        if n is not None and len(items) != n:
            raise self.error(f"expected {n} integers, got {len(items)}")
        return [item.int(lo=lo) for item in items]

    def _range(self, value: float, lo: float | None, hi: float | None, unit: str = "") -> None:
        if lo is not None and value < lo:
            raise self.error(f"must be >= {lo:g}{unit}, got {value:g}")
        if hi is not None and value > hi:
            raise self.error(f"must be <= {hi:g}{unit}, got {value:g}")
