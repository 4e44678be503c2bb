"""Saving and loading SegMiF checkpoints.

A checkpoint is a plain ``dict`` readable with ``torch.load(..., weights_only=True)``::

    {"format": "rig.model.segmif", "format_version": 1,
     "model_version": str, "config": SegMiFConfig.to_dict(),
     "state_dict": {...},            # the network weights
     ...}                            # optional training state (optimizers, step, history)

Every problem (missing file, corrupt file, foreign file, mismatched weights) is a
:class:`~rig.errors.RigError` naming the file and, for mismatches, the keys.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from rig.errors import RigError
from rig.model.segmif import SegMiF, SegMiFConfig

CHECKPOINT_FORMAT = "rig.model.segmif"
FORMAT_VERSION = 1
_MAX_LISTED = 8


def save_checkpoint(path: str | Path, model: SegMiF, model_version: str = "unversioned", **extra: Any) -> Path:
    """Write ``model`` (and ``extra`` entries, e.g. optimizer states) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "model_version": model_version,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and sanity-check a checkpoint dict (tensors on CPU); see the module doc for the layout."""
    path = Path(path)
    if not path.is_file():
        raise RigError("no such checkpoint file", path=path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors, unpickling errors, truncated files, ...
        raise RigError(_unreadable_reason(path, exc), path=path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RigError(f"not a SegMiF checkpoint (expected format {CHECKPOINT_FORMAT!r})", path=path, key="format")
    if payload.get("format_version") != FORMAT_VERSION:
        raise RigError(f"unsupported checkpoint format version {payload.get('format_version')!r} "
                       f"(this rig reads {FORMAT_VERSION})", path=path, key="format_version")
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise RigError("missing or malformed entry", path=path, key=key)
    return payload


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """One complete sentence on why ``torch.load`` failed (torch's own messages run to paragraphs)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # torch.save's zip archive, or its legacy pickle format
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if unsafe:
            return (f"PyTorch file holds a Python object ({unsafe.group(1)}), not only weights; "
                    "rig loads checkpoints with weights_only=True and refuses it")
        return (f"a PyTorch file that cannot be loaded ({type(exc).__name__}): corrupt, truncated or written by "
                "another program")
    if head.startswith(b"PK"):
        return "corrupt or truncated PyTorch checkpoint (its zip archive is incomplete)"
    return ("not a PyTorch checkpoint: expected a file written by torch.save, such as rig train's OUT/final.pt "
            "or its --export file")


def listed(keys: list[str]) -> str:
    """The first few of ``keys``, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def key_problems(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    """What is wrong with a state dict's keys, one clause per kind (``""`` if nothing): the wording every
    weights error uses (our checkpoints and the imported reference files alike)."""
    parts = [f"{what}: {listed(keys)}" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if keys]
    return "; ".join(parts)


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise a :class:`RigError` listing missing, unexpected and wrongly shaped keys, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and (not isinstance(state_dict[k], torch.Tensor) or state_dict[k].shape != v.shape)
    ]
    problems = key_problems(missing, unexpected, shapes)
    if problems:
        raise RigError("weights do not match the model config; " + problems, path=path, key="state_dict")


def model_from_checkpoint(path: str | Path, payload: dict[str, Any] | None = None) -> SegMiF:
    """Build the model described by the checkpoint's config and load its weights (CPU, eval mode)."""
    payload = read_checkpoint(path) if payload is None else payload
    try:
        config = SegMiFConfig.from_dict(payload["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise RigError(f"invalid model config: {exc}", path=path, key="config") from None
    model = SegMiF(config)
    check_state_dict(model, payload["state_dict"], path)
    model.load_state_dict(payload["state_dict"])
    return model.eval()
