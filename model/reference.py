"""Weights published by others: the SegMiF reference checkpoints and SegFormer's ImageNet encoders.

**SegMiF reference checkpoints** (github.com/JinyuanLiu-CV/SegMiF) are two plain
``state_dict`` files: the fusion network ``Fusion_Network3_ac`` and the segmentation
network ``Network3(backbone, n_classes)`` (keys ``denoise_net.encoder.*`` for its
Mix Transformer, ``denoise_net.decoder.*`` for its SegFormer head).
:func:`import_reference` converts such a pair into a rig checkpoint that
:func:`rig.model.load_model` reads::

    from rig.model.reference import import_reference
    import_reference("modelfusion.pth", "model-seg.pth", "segmif_reference.pt")
    model = rig.model.load_model("segmif_reference.pt")

The class set (15 FMB or 9 MFNet) comes from the classifier's shape, the MiT size
(b0 ... b5) from the encoder's shapes; the architecture is the ``reference_*``
config (``rig.model.segmif.MODEL_CONFIGS["reference_b3"]``), written to compute
what the reference code computes. The converted model satisfies:

* ``model.fusion(lwir, y_vis, f1, f2)`` equals ``Fusion_Network3_ac.forward(ir, vis, out1, out2)``
  (``f1``, ``f2`` the encoder's stride-4 and stride-8 features, at encoder or image resolution);
* ``model.segment(rgb)`` (``rgb`` in [0, 1]) equals ``Network3.forward(rgb)``'s logits
  bilinearly resized to the input size.

Which reference behaviours are kept and which are fixed is listed in
``model/README.md`` ("Reference checkpoints").

**SegFormer ImageNet encoders** (NVlabs/SegFormer ``mit_b0.pth`` ... ``mit_b5.pth``, keys of
its ``MixVisionTransformer``): :func:`load_pretrained_encoder` loads one into a model's
encoder (``head.*``, the ImageNet classifier, is ignored).

Every problem (missing, unreadable or foreign file, wrong key set, wrong shapes) is a
one-line :class:`~rig.errors.RigError` naming the file and the first offending keys.
"""

from __future__ import annotations

import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from rig.errors import RigError
from rig.model.checkpoint import key_problems, listed
from rig.model.classes import get_class_set
from rig.model.mit import MIT_CONFIGS, MiTConfig, MixTransformer, segformer_key
from rig.model.segmif import MODEL_CONFIGS, SegMiF, SegMiFConfig

REFERENCE_REPOSITORY = "JinyuanLiu-CV/SegMiF"
#: SegFormer's head counts, the same for b0 ... b5 (they do not show in the weights' shapes).
SEGFORMER_HEADS = (1, 2, 5, 8)
#: The reference fusion network's HIA head count (``FeatureFusionModule(dim)``'s default).
REFERENCE_HIA_HEADS = 8

# Our HIA parameter names -> the reference's (under ``ffm.cross.``).
_HIA_NAMES = {
    "embed_ir.proj": "channel_proj1",
    "embed_vis.proj": "channel_proj2",
    "embed_seg.proj": "channel_proj3",
    "soam.kv_ir": "cross_attn2.kv1",
    "soam.kv_vis": "cross_attn2.kv2",
    "moam.kv_seg": "cross_attn.kv3",
    "mlp_ir.proj": "end_proj1",
    "mlp_vis.proj": "end_proj2",
    "mlp_ir.norm": "norm1",
    "mlp_vis.norm": "norm2",
}
_DRDB_NAMES = {"drdb_ir1": "DRDB1", "drdb_vis1": "DRDB2", "drdb_ir2": "DRDB3", "drdb_vis2": "DRDB4"}
_FUSION_NAMES = {"stem_ir": "conv1_ir", "stem_vis": "conv1_vis", "seg_proj1": "conv3", "seg_proj2": "conv4",
                 "reconstruct.0": "conv2", "reconstruct.1": "conv21", "reconstruct.2": "conv22"}
# Present in the reference files, unused by the reference forward passes.
_UNUSED_FUSION = re.compile(r"ffm2\..+")  # the second HIA, built but never called
_UNUSED_SEGMENTATION = re.compile(r"denoise_net\.classifier\.weight")  # WeTr's CAM classifier
# Buffers that older files may lack; the model keeps its own value.
_OPTIONAL = re.compile(r".*\.num_batches_tracked")

_Transform = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _linear_to_conv1x1(t: torch.Tensor) -> torch.Tensor:
    """A ``Linear`` weight ``(out, in)`` as a 1x1 ``Conv2d`` weight ``(out, in, 1, 1)``."""
    return t[:, :, None, None] if t.ndim == 2 else t


# --------------------------------------------------------------------------- files


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a ``state_dict`` file (``torch.load(weights_only=True)``) as ``{name: tensor}``.

    Accepts a plain state dict or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``;
    a ``module.`` prefix (``DataParallel``) is dropped. ``what`` names the file's role in errors.
    """
    path = Path(path)
    if not path.is_file():
        raise RigError(f"no such {what} file", path=path)
    try:
        with warnings.catch_warnings():  # torch warns about plain pickles' protocol before failing on them
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zips, foreign pickles, text files, ...
        raise RigError(f"{what} file is {_unreadable(path, exc)}", path=path) from None
    if isinstance(payload, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(payload.get(wrapper), dict):
                payload = payload[wrapper]
                break
    if not isinstance(payload, dict) or not payload:
        raise RigError(f"{what} file is not a state dict (expected {{name: tensor}}, got {type(payload).__name__})",
                       path=path)
    foreign = [str(k) for k, v in payload.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if foreign:
        raise RigError(f"{what} file is not a state dict: entries that are not tensors: {listed(foreign)}",
                       path=path)
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return dict(payload)


def _pickled_object(path: Path) -> str | None:
    """The first class a plain pickle refers to outside torch/collections (read, never executed)."""
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                name = None
                if op.name == "GLOBAL":
                    name = str(arg).replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = f"{strings[-2]}.{strings[-1]}"
                elif isinstance(arg, str):
                    strings.append(arg)
                if name and not name.startswith(("torch.", "collections.", "builtins.", "_codecs.")):
                    return name
    except Exception:  # truncated or not a pickle after all
        return None
    return None


def _unreadable(path: Path, exc: Exception) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    with open(path, "rb") as f:
        head = f.read(4)
    unsafe = found.group(1) if found else None
    if unsafe is None and head[:1] == b"\x80" and not zipfile.is_zipfile(path):
        unsafe = _pickled_object(path)  # plain pickles fail before torch names the class
    if unsafe:
        return f"a pickle of a Python object ({unsafe}), not a state dict of tensors"
    if head.startswith(b"PK") or zipfile.is_zipfile(path):
        return "a corrupt or truncated PyTorch file"
    if head[:1] == b"\x80":
        return f"a PyTorch/pickle file that cannot be loaded ({type(exc).__name__}): corrupt or truncated"
    return "not a PyTorch file (expected one written by torch.save)"


def _shape(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _layout_error(path: str | Path, what: str, missing: list[str], unexpected: list[str],
                  shapes: list[str]) -> RigError:
    return RigError(f"does not match the {what} layout; " + key_problems(missing, unexpected, shapes), path=path)


def _need(sd: dict[str, torch.Tensor], key: str, path: str | Path, what: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise _layout_error(path, what, [key], [], [])
    t = sd[key]
    if t.ndim != ndim:
        raise _layout_error(path, what, [], [], [f"{key} (ckpt {_shape(t.shape)}, expected {ndim} dimensions)"])
    return t


# --------------------------------------------------------------------------- shape inference


def infer_mit_config(sd: dict[str, torch.Tensor], prefix: str, path: str | Path, what: str) -> tuple[str, MiTConfig]:
    """``(size name, MiTConfig)`` of a SegFormer ``MixVisionTransformer`` state dict (keys under ``prefix``).

    Embedding widths, depths, MLP ratios and reduction ratios come from the shapes;
    head counts, which do not show in them, are SegFormer's (1, 2, 5, 8). The name is
    ``b0`` ... ``b5`` when the sizes are one of SegFormer's, else ``custom``.
    """
    dims, depths, ratios, srs = [], [], [], []
    in_channels = 3
    for i in range(1, 5):
        w = _need(sd, f"{prefix}patch_embed{i}.proj.weight", path, what, 4)
        if i == 1:
            in_channels = int(w.shape[1])
        dim = int(w.shape[0])
        block = re.compile(re.escape(f"{prefix}block{i}.") + r"(\d+)\.")
        ids = {int(m.group(1)) for m in (block.match(k) for k in sd) if m}
        if not ids:
            raise _layout_error(path, what, [f"{prefix}block{i}.0.*"], [], [])
        fc1 = _need(sd, f"{prefix}block{i}.0.mlp.fc1.weight", path, what, 2)
        sr = sd.get(f"{prefix}block{i}.0.attn.sr.weight")
        dims.append(dim)
        depths.append(max(ids) + 1)
        ratios.append(max(int(fc1.shape[0]) // dim, 1))
        srs.append(int(sr.shape[-1]) if sr is not None else 1)
    try:
        config = MiTConfig(embed_dims=tuple(dims), num_heads=SEGFORMER_HEADS, mlp_ratios=tuple(ratios),
                           depths=tuple(depths), sr_ratios=tuple(srs), in_channels=in_channels,
                           norm_eps=1e-6, pad_reduction=False)
    except ValueError as exc:
        raise RigError(f"{what}: Mix Transformer widths {tuple(dims)} do not fit SegFormer's heads "
                       f"{SEGFORMER_HEADS} ({exc})", path=path) from None
    for name in ("b0", "b1", "b2", "b3", "b4", "b5"):
        if replace(MIT_CONFIGS[name], pad_reduction=False) == config:
            return name, config
    return "custom", config


def _classes(n: int, key: str, path: str | Path) -> str:
    for name in ("fmb", "mfnet"):
        if get_class_set(name).num_classes == n:
            return name
    raise RigError(f"{n} classes in {key}; rig knows 15 (FMB) and 9 (MFNet/MSRS)", path=path)


def reference_config(fusion_sd: dict[str, torch.Tensor], segmentation_sd: dict[str, torch.Tensor],
                     fusion_path: str | Path = "fusion", segmentation_path: str | Path = "segmentation"
                     ) -> SegMiFConfig:
    """The ``reference_*`` :class:`SegMiFConfig` whose shapes fit the two reference state dicts."""
    seg_what, fus_what = "SegMiF Network3 (segmentation)", "SegMiF Fusion_Network3_ac (fusion)"
    size, encoder = infer_mit_config(segmentation_sd, "denoise_net.encoder.", segmentation_path, seg_what)
    pred = _need(segmentation_sd, "denoise_net.decoder.linear_pred.weight", segmentation_path, seg_what, 4)
    c1 = _need(segmentation_sd, "denoise_net.decoder.linear_c1.proj.weight", segmentation_path, seg_what, 2)
    classes = _classes(int(pred.shape[0]), "denoise_net.decoder.linear_pred.weight", segmentation_path)
    stem = _need(fusion_sd, "conv1_ir.weight", fusion_path, fus_what, 4)
    dense = _need(fusion_sd, "DRDB1.Dcov1.weight", fusion_path, fus_what, 4)
    layers = sum(1 for k in fusion_sd if re.fullmatch(r"DRDB1\.Dcov\d+\.weight", k))
    base = MODEL_CONFIGS["reference_b3"]
    try:
        fusion = replace(base.fusion, width=int(stem.shape[0]), growth=int(dense.shape[0]), dense_layers=layers,
                         num_heads=REFERENCE_HIA_HEADS)
    except ValueError as exc:
        raise RigError(f"{fus_what}: {exc}", path=fusion_path) from None
    return replace(base, name=f"reference_{size}", fusion=fusion, encoder=encoder, decoder_dim=int(c1.shape[0]),
                   classes=classes)


# --------------------------------------------------------------------------- name mapping


def _hia_name(rest: str) -> str:
    for ours, theirs in _HIA_NAMES.items():
        if rest.startswith(ours + "."):
            return "ffm.cross." + theirs + rest[len(ours):]
    raise KeyError(rest)


def reference_name(key: str) -> tuple[str, str, _Transform]:
    """Where a ``reference_*`` model's state-dict entry comes from: ``(file, reference key, transform)``.

    ``file`` is ``"fusion"`` or ``"segmentation"``; ``transform`` turns the reference
    tensor into ours (identity, or a ``Linear`` weight into a 1x1 convolution's).
    """
    if key.startswith("segmenter.encoder."):
        return "segmentation", "denoise_net.encoder." + segformer_key(key[len("segmenter.encoder."):]), _identity
    m = re.fullmatch(r"segmenter\.decoder\.proj\.(\d)\.(weight|bias)", key)
    if m:
        return "segmentation", f"denoise_net.decoder.linear_c{int(m.group(1)) + 1}.proj.{m.group(2)}", \
            _linear_to_conv1x1
    for ours, theirs in (("segmenter.decoder.fuse.0.", "denoise_net.decoder.linear_fuse.conv."),
                         ("segmenter.decoder.fuse.1.", "denoise_net.decoder.linear_fuse.bn."),
                         ("segmenter.decoder.classifier.", "denoise_net.decoder.linear_pred.")):
        if key.startswith(ours):
            return "segmentation", theirs + key[len(ours):], _identity
    if key == "fusion.act.weight":
        return "fusion", "relu.weight", _identity
    rest = key[len("fusion."):]
    m = re.fullmatch(r"(hia[12])\.(.+)", rest)
    if m:
        return "fusion", _hia_name(m.group(2)), _identity  # one reference HIA serves both depths
    m = re.fullmatch(r"(drdb_\w+)\.(layers\.(\d+)\.conv|local_fusion)\.(weight|bias)", rest)
    if m and m.group(1) in _DRDB_NAMES:
        layer = f"Dcov{int(m.group(3)) + 1}" if m.group(3) is not None else "conv"
        return "fusion", f"{_DRDB_NAMES[m.group(1)]}.{layer}.{m.group(4)}", _identity
    for ours, theirs in _FUSION_NAMES.items():
        if rest.startswith(ours + "."):
            return "fusion", theirs + rest[len(ours):], _identity
    raise KeyError(f"no reference counterpart for {key!r}")


def _expected_shape(ours: torch.Size, transform: _Transform) -> tuple[int, ...]:
    return tuple(ours[:2]) if transform is _linear_to_conv1x1 else tuple(ours)


def _map_file(model_sd: dict[str, torch.Tensor], file: str, sd: dict[str, torch.Tensor], path: str | Path,
              what: str, unused: re.Pattern[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state-dict entries from one reference file, and the reference keys left unused; strict."""
    out: dict[str, torch.Tensor] = {}
    wanted: set[str] = set()
    missing, shapes = [], []
    for key, ours in model_sd.items():
        src, ref, transform = reference_name(key)
        if src != file:
            continue
        wanted.add(ref)
        if ref not in sd:
            if not _OPTIONAL.fullmatch(ref) and ref not in missing:
                missing.append(ref)
            continue
        expected = _expected_shape(ours.shape, transform)
        if tuple(sd[ref].shape) != expected:
            entry = f"{ref} (ckpt {_shape(sd[ref].shape)} vs model {_shape(expected)})"
            if entry not in shapes:
                shapes.append(entry)
            continue
        out[key] = transform(sd[ref]).to(ours.dtype)
    ignored = [k for k in sd if k not in wanted and unused.fullmatch(k)]
    unexpected = [k for k in sd if k not in wanted and not unused.fullmatch(k)]
    if missing or unexpected or shapes:
        raise _layout_error(path, what, missing, unexpected, shapes)
    return out, ignored


# --------------------------------------------------------------------------- conversion


def convert_reference(fusion_sd: dict[str, torch.Tensor], segmentation_sd: dict[str, torch.Tensor],
                      fusion_path: str | Path = "fusion", segmentation_path: str | Path = "segmentation"
                      ) -> tuple[SegMiF, list[str]]:
    """A ``reference_*`` :class:`SegMiF` holding the two reference state dicts' weights (eval mode).

    Returns ``(model, ignored)``: ``ignored`` lists the reference keys that its forward
    passes never use (``ffm2.*``, ``denoise_net.classifier.weight``). The paths only name
    the files in errors.
    """
    config = reference_config(fusion_sd, segmentation_sd, fusion_path, segmentation_path)
    model = SegMiF(config)
    model_sd = model.state_dict()
    seg, ignored_seg = _map_file(model_sd, "segmentation", segmentation_sd, segmentation_path,
                                 "SegMiF Network3 (segmentation)", _UNUSED_SEGMENTATION)
    fus, ignored_fus = _map_file(model_sd, "fusion", fusion_sd, fusion_path,
                                 "SegMiF Fusion_Network3_ac (fusion)", _UNUSED_FUSION)
    state = {**seg, **fus}
    model.load_state_dict({**model_sd, **state}, strict=True)  # optional buffers keep the model's value
    return model.eval(), ignored_fus + ignored_seg


def import_reference(fusion_path: str | Path, segmentation_path: str | Path, out_path: str | Path,
                     model_version: str | None = None) -> Path:
    """Convert the SegMiF reference checkpoints into a rig checkpoint at ``out_path``; returns its path.

    Args:
        fusion_path: ``Fusion_Network3_ac`` state dict (e.g. the reference's ``modelfusion-final2.pth``).
        segmentation_path: ``Network3(backbone, n_classes)`` state dict (e.g. ``model-fusion_add_final2.pth``).
        out_path: the rig checkpoint to write (``load_model(out_path)`` reads it).
        model_version: stored as the checkpoint's ``model_version``; default
            ``segmif-reference-<size>-<classes>``, e.g. ``segmif-reference-b3-fmb``.
    """
    from rig.model.checkpoint import save_checkpoint

    fusion_sd = read_state_dict(fusion_path, "SegMiF fusion")
    segmentation_sd = read_state_dict(segmentation_path, "SegMiF segmentation")
    model, ignored = convert_reference(fusion_sd, segmentation_sd, fusion_path, segmentation_path)
    size = model.config.name.removeprefix("reference_")
    version = model_version or f"segmif-reference-{size}-{model.config.classes}"
    provenance = {
        "source": f"github.com/{REFERENCE_REPOSITORY}",
        "fusion_file": Path(fusion_path).name,
        "segmentation_file": Path(segmentation_path).name,
        "ignored_keys": ignored,
    }
    return save_checkpoint(out_path, model, version, provenance=provenance)


# --------------------------------------------------------------------------- pretrained encoders


def _encoder_of(model: nn.Module) -> MixTransformer:
    if isinstance(model, MixTransformer):
        return model
    if isinstance(model, SegMiF):
        return model.segmenter.encoder
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, MixTransformer):
        return encoder
    raise TypeError(f"no Mix Transformer encoder in {type(model).__name__}")


def load_pretrained_encoder(model: nn.Module, path: str | Path) -> list[str]:
    """Load NVlabs SegFormer ImageNet weights (``mit_b0.pth`` ... ``mit_b5.pth``) into ``model``'s encoder.

    ``model`` is a :class:`SegMiF`, a :class:`~rig.model.segformer.SegFormer` or a
    :class:`MixTransformer`; its encoder must have the file's sizes (e.g. ``mit_b3.pth``
    for ``paper`` / ``segmif_b3``). Keys are those of SegFormer's ``MixVisionTransformer``;
    a full mmseg checkpoint (``backbone.*``) works too. Every encoder weight is set or a
    one-line :class:`RigError` names the missing, unexpected and mis-shaped keys; nothing is
    changed then.

    Returns:
        the file's keys that were ignored: ``head.*`` (the ImageNet classifier) and, in an
        mmseg checkpoint, everything outside the backbone.
    """
    what = "SegFormer MiT encoder"
    encoder = _encoder_of(model)
    sd = read_state_dict(path, what)
    anchor = next((k for k in sd if k.endswith("patch_embed1.proj.weight")), None)
    if anchor is None:
        raise _layout_error(path, what, ["patch_embed1.proj.weight"], [], [])
    prefix = anchor[: -len("patch_embed1.proj.weight")]
    state: dict[str, torch.Tensor] = {}
    wanted, missing, shapes = set(), [], []
    for key, ours in encoder.state_dict().items():
        ref = prefix + segformer_key(key)
        wanted.add(ref)
        if ref not in sd:
            missing.append(ref)
        elif sd[ref].shape != ours.shape:
            shapes.append(f"{ref} (ckpt {_shape(sd[ref].shape)} vs model {_shape(ours.shape)})")
        else:
            state[key] = sd[ref].to(ours.dtype)
    rest = [k for k in sd if k not in wanted]
    ignored = [k for k in rest if not k.startswith(prefix) or k[len(prefix):].startswith("head.")]
    unexpected = [k for k in rest if k not in ignored]
    if missing or unexpected or shapes:
        raise _layout_error(path, what, missing, unexpected, shapes)
    encoder.load_state_dict(state, strict=True)
    return ignored

