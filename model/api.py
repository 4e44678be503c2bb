"""Inference API used by the rest of the rig (registration writes Fusion/, Label/, Color/).

    from rig.model import load_model, fuse_and_segment
    model = load_model()                       # bundled CPU weights
    fused, labels = fuse_and_segment(visible_rgb, lwir8, model)

Images are NumPy ``uint8``: visible ``(H, W, 3)`` RGB or ``(B, H, W, 3)``;
LWIR ``(H, W)`` or ``(B, H, W)`` (8-bit, e.g. the registration's ``lwir8``).
Outputs: fused RGB ``uint8`` of the visible's shape, labels ``uint8`` ``(H, W)``
or ``(B, H, W)`` with class ids (:data:`~rig.model.classes.FMB_CLASSES` for the
bundled model).
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path

import numpy as np

from rig.errors import RigError

MODEL_VERSION = "segmif-cpu-sim-0.3"
BUNDLED_WEIGHTS = "segmif_cpu.pt"
MIN_SIZE = 32


def bundled_weights_path() -> Path:
    """Path of the weights shipped with the package (``rig/model/weights/segmif_cpu.pt``)."""
    return Path(str(resources.files("rig.model"))) / "weights" / BUNDLED_WEIGHTS


def resolve_device(device: str | None = None) -> "torch.device":  # noqa: F821
    """``None``/``"auto"`` -> CUDA when present, else CPU; otherwise ``torch.device(device)``, checked.

    A device that this machine lacks (``cuda`` without CUDA, ``cuda:3`` on a
    2-GPU machine, ``mps`` off Apple silicon) is a one-line :class:`RigError`,
    raised before any model or data is touched.
    """
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RigError(f"invalid device {device!r}; use cpu, cuda, cuda:N or mps", key="device") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise RigError(f"{device!r} was requested but no CUDA device is available (torch {torch.__version__}, "
                           f"{build}); use --device cpu", key="device")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise RigError(f"{device!r} was requested but this machine has {count} CUDA device(s) "
                           f"(cuda:0..cuda:{count - 1})", key="device")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RigError(f"{device!r} was requested but the Apple MPS backend is not available on this machine; "
                           "use --device cpu", key="device")
        return dev
    backend = getattr(torch, dev.type, None)
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise RigError(f"{device!r} was requested but torch has no available {dev.type} backend here; "
                       "use cpu, cuda or mps", key="device")
    return dev


def load_model(path: str | Path | None = None, device: str | None = "cpu", channels_last: bool = True):
    """Load a SegMiF checkpoint (default: the bundled weights) in eval mode on ``device``.

    The device is checked first, so a missing GPU fails before the weights are read.
    ``channels_last`` stores the convolution weights NHWC, which oneDNN runs ~20 % faster on CPU with
    the same outputs (``benchmarks/bench_model.py`` times both; ``tests/test_model_io.py`` checks the
    equality); ``False`` keeps PyTorch's default layout.
    """
    import torch

    from rig.model.checkpoint import model_from_checkpoint

    dev = resolve_device(device)
    path = bundled_weights_path() if path is None else Path(path)
    model = model_from_checkpoint(path).to(dev)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def check_pair(visible: np.ndarray, lwir: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate a visible/LWIR pair or batch; returns ``(visible (B,H,W,3), lwir (B,H,W), batched)``."""
    visible, lwir = np.asarray(visible), np.asarray(lwir)
    for name, arr in (("visible", visible), ("lwir", lwir)):
        if arr.dtype != np.uint8:
            hint = " (16-bit counts: pass the 8-bit normalised image, e.g. the registration's lwir8)" \
                if arr.dtype == np.uint16 else ""
            raise RigError(f"expected an 8-bit (uint8) image, got {arr.dtype}{hint}", key=name)
    if visible.ndim not in (3, 4) or visible.shape[-1] != 3:
        raise RigError(f"expected RGB of shape (H, W, 3) or (B, H, W, 3), got {visible.shape}", key="visible")
    batched = visible.ndim == 4
    if lwir.ndim == visible.ndim and lwir.shape[-1] == 1:
        lwir = lwir[..., 0]
    if lwir.ndim != visible.ndim - 1:
        raise RigError(f"expected shape {'(B, H, W)' if batched else '(H, W)'} to match visible {visible.shape}, "
                       f"got {lwir.shape}", key="lwir")
    if lwir.shape != visible.shape[:-1]:
        raise RigError(f"pair sizes differ: visible {visible.shape[:-1]} vs lwir {lwir.shape} "
                       "(register the pair first)", key="lwir")
    h, w = visible.shape[-3:-1]
    if min(h, w) < MIN_SIZE:
        raise RigError(f"image too small: {w}x{h}, need at least {MIN_SIZE}x{MIN_SIZE}", key="visible")
    if not batched:
        visible, lwir = visible[None], lwir[None]
    return visible, lwir, batched


OUTPUT_NORMALIZATIONS = ("minmax", "none")


def fuse_and_segment(visible: np.ndarray, lwir: np.ndarray, model=None, *, device: str | None = None,
                     precision: str = "fp32", batch_size: int = 4,
                     normalize: str = "minmax") -> tuple[np.ndarray, np.ndarray]:
    """Fuse and segment registered pairs in one call (see the module doc for shapes).

    Args:
        model: a loaded model; ``None`` loads the bundled weights (load once and
            pass it in when processing many pairs).
        device: where to run; default: the model's device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; CPU or CUDA).
        batch_size: pairs per forward pass.
        normalize: ``"minmax"`` stretches each fused luminance to the full 0-255
            range, as the reference implementation's fusion network does with its
            output; ``"none"`` returns the network's luminance as is. Segmentation
            always sees the un-stretched fused image (what it was trained on).

    Returns:
        ``(fused, labels)``; :func:`fuse` gives the same ``fused`` without running the segmentation head.
    """
    return _run(visible, lwir, model, device, precision, batch_size, normalize, segment=True)


def fuse(visible: np.ndarray, lwir: np.ndarray, model=None, *, device: str | None = None, precision: str = "fp32",
         batch_size: int = 4, normalize: str = "minmax") -> np.ndarray:
    """Fuse registered pairs with the model, without segmenting them (``register-and-fuse --no-segmentation``).

    Same arguments and the same fused images as :func:`fuse_and_segment`; the segmentation head is not
    run (only the fusion guidance pass uses the encoder, and not at all for a fusion network at its
    parameter-free prior, as in the bundled weights)."""
    return _run(visible, lwir, model, device, precision, batch_size, normalize, segment=False)[0]


def _run(visible, lwir, model, device, precision: str, batch_size: int, normalize: str, segment: bool):
    import torch

    from rig.model.segmif import minmax_normalize

    if precision not in ("fp32", "bf16"):
        raise RigError(f"precision must be 'fp32' or 'bf16', got {precision!r}", key="precision")
    if normalize not in OUTPUT_NORMALIZATIONS:
        raise RigError(f"normalize must be one of {', '.join(OUTPUT_NORMALIZATIONS)}, got {normalize!r}",
                       key="normalize")
    vis, ir, batched = check_pair(visible, lwir)
    if model is None:
        model = load_model(device=device or "cpu")
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    model = model.to(dev).eval()
    fused_out = np.empty_like(vis)
    labels_out = np.empty(vis.shape[:-1], dtype=np.uint8) if segment else None
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for i in range(0, len(vis), batch_size):
            v = torch.from_numpy(vis[i:i + batch_size]).to(dev).permute(0, 3, 1, 2).float() / 255.0
            t = torch.from_numpy(ir[i:i + batch_size]).to(dev)[:, None].float() / 255.0
            fused_y, fused_rgb = model.fuse(v, t)
            if segment:
                labels_out[i:i + batch_size] = model.segment(fused_rgb).argmax(dim=1).to(torch.uint8).cpu().numpy()
            fused_rgb = fused_rgb.float()
            if normalize == "minmax":
                fused_rgb = model.colour(v.float(), minmax_normalize(fused_y.float()))
            fused = (fused_rgb.clamp(0, 1) * 255.0).round().to(torch.uint8)
            fused_out[i:i + batch_size] = fused.permute(0, 2, 3, 1).cpu().numpy()
    if not batched:
        return fused_out[0], (labels_out[0] if segment else None)
    return fused_out, labels_out
