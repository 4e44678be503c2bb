"""Checkpoints (bit-exact round trip, clear errors) and the inference API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import rig.model as rm
from rig.errors import RigError
from rig.model.checkpoint import model_from_checkpoint, read_checkpoint, save_checkpoint
from rig.model.segmif import create_model

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny")
    # make batch-norm statistics non-trivial so buffers are checked too
    model.segmenter.decoder.fuse[1].running_mean.uniform_()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model, "test-1")


def test_checkpoint_round_trip_is_bit_exact(tiny_ckpt: Path, tmp_path: Path) -> None:
    original = read_checkpoint(tiny_ckpt)["state_dict"]
    model = model_from_checkpoint(tiny_ckpt)
    again = save_checkpoint(tmp_path / "again.pt", model, "test-1")
    reloaded = read_checkpoint(again)
    assert reloaded["model_version"] == "test-1"
    assert reloaded["config"] == model.config.to_dict()
    assert original.keys() == reloaded["state_dict"].keys()
    for k, v in original.items():
        assert torch.equal(v, reloaded["state_dict"][k]), k
        assert v.dtype == reloaded["state_dict"][k].dtype
    # and the loaded model computes exactly what a model with those weights computes
    v, t = torch.rand(1, 3, 32, 40), torch.rand(1, 1, 32, 40)
    with torch.inference_mode():
        a = model(v, t)
        b = model_from_checkpoint(again)(v, t)
    assert torch.equal(a.fused_y, b.fused_y) and torch.equal(a.logits, b.logits)


def test_checkpoint_is_weights_only_loadable(tiny_ckpt: Path) -> None:
    payload = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    assert payload["format"] == "rig.model.segmif" and payload["config"]["name"] == "segmif_tiny"


def test_missing_and_corrupt_checkpoints(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(RigError, match="no such checkpoint file") as e:
        read_checkpoint(tmp_path / "nope.pt")
    assert e.value.path == str(tmp_path / "nope.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_ckpt.read_bytes()[:1000])
    with pytest.raises(RigError) as e:
        read_checkpoint(truncated)
    assert str(e.value) == f"{truncated}: corrupt or truncated PyTorch checkpoint (its zip archive is incomplete)"
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("hello")
    with pytest.raises(RigError, match="not a PyTorch checkpoint: expected a file written by torch.save"):
        read_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(RigError, match="not a SegMiF checkpoint") as e:
        read_checkpoint(foreign)
    assert e.value.key == "format"


def test_a_text_file_as_checkpoint_is_one_complete_line(tmp_path: Path) -> None:
    """torch's own message for this runs to a paragraph; ours names the file and the problem, whole."""
    readme = tmp_path / "README.md"
    readme.write_text("# rig\n\nSoftware for a car-roof visible + LWIR camera rig. Install with pip install -e .\n")
    with pytest.raises(RigError) as e:
        read_checkpoint(readme)
    assert str(e.value) == (f"{readme}: not a PyTorch checkpoint: expected a file written by torch.save, such as "
                            "rig train's OUT/final.pt or its --export file")


def test_a_pickled_python_object_is_named_not_loaded(tmp_path: Path) -> None:
    import collections

    obj = tmp_path / "object.pt"
    torch.save({"format": "rig.model.segmif", "thing": collections.OrderedDict, "fn": Path}, obj)
    with pytest.raises(RigError) as e:
        read_checkpoint(obj)
    msg = str(e.value)
    assert msg.startswith(f"{obj}: PyTorch file holds a Python object (") and "\n" not in msg
    assert msg.endswith("not only weights; rig loads checkpoints with weights_only=True and refuses it")


def test_devices_are_checked_with_one_line_errors(monkeypatch) -> None:
    from rig.model.api import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RigError, match=r"^device: 'cuda' was requested but no CUDA device is available \(torch .*\); "
                                       r"use --device cpu$"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RigError, match=r"^device: 'cuda:3' was requested but this machine has 2 CUDA device\(s\) "
                                       r"\(cuda:0..cuda:1\)$"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(RigError, match="^device: 'mps' was requested but the Apple MPS backend is not available"):
        resolve_device("mps")
    with pytest.raises(RigError, match="^device: invalid device 'gpu'; use cpu, cuda, cuda:N or mps$"):
        resolve_device("gpu")


def test_mismatched_weights_name_the_keys(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = read_checkpoint(tiny_ckpt)
    sd = payload["state_dict"]
    sd["fusion.extra.weight"] = torch.zeros(1)
    del sd["fusion.hia1.soam.q_seg.weight"]
    sd["segmenter.decoder.classifier.bias"] = torch.zeros(9)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(RigError) as e:
        model_from_checkpoint(bad)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and e.value.key == "state_dict"
    assert "missing keys: fusion.hia1.soam.q_seg.weight" in msg
    assert "unexpected keys: fusion.extra.weight" in msg
    assert "segmenter.decoder.classifier.bias (9,) vs model (15,)" in msg


def test_bad_config_in_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    payload = read_checkpoint(tiny_ckpt)
    payload["config"]["fusion"]["colour"] = 3
    bad = tmp_path / "badcfg.pt"
    torch.save(payload, bad)
    with pytest.raises(RigError, match="invalid model config") as e:
        model_from_checkpoint(bad)
    assert e.value.key == "config"


def test_public_api_exports() -> None:
    assert len(rm.FMB_CLASSES) == len(rm.FMB_PALETTE) == 15
    assert rm.FMB_CLASSES[0] == "background" and rm.FMB_CLASSES[14] == "pole"
    assert len(rm.MFNET_CLASSES) == 9 and rm.IGNORE_INDEX == 255
    assert isinstance(rm.MODEL_VERSION, str) and rm.MODEL_VERSION
    assert rm.colorize(np.array([[0, 1], [255, 14]])).tolist() == [
        [[0, 0, 0], [128, 64, 128]], [[255, 255, 255], [153, 153, 153]]]


def test_fuse_and_segment_single_and_batch(tiny_ckpt: Path) -> None:
    model = rm.load_model(tiny_ckpt)
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (2, 48, 64), dtype=np.uint8)
    fused, labels = rm.fuse_and_segment(vis, ir, model, batch_size=1)
    assert fused.shape == (2, 48, 64, 3) and fused.dtype == np.uint8
    assert labels.shape == (2, 48, 64) and labels.dtype == np.uint8 and labels.max() < 15
    f1, l1 = rm.fuse_and_segment(vis[1], ir[1], model)
    assert f1.shape == (48, 64, 3) and l1.shape == (48, 64)
    assert np.abs(f1.astype(int) - fused[1]).max() <= 1 and (l1 == labels[1]).mean() > 0.99
    # (H, W, 1) thermal is accepted; bf16 gives the same shapes
    fb, lb = rm.fuse_and_segment(vis[0], ir[0][..., None], model, precision="bf16")
    assert fb.shape == (48, 64, 3) and lb.dtype == np.uint8


@pytest.mark.parametrize("vis_shape, vis_dtype, ir_shape, ir_dtype, key, message", [
    ((48, 64, 3), np.uint8, (48, 64), np.uint16, "lwir", "8-bit .* got uint16 .*lwir8"),
    ((48, 64, 3), np.uint16, (48, 64), np.uint8, "visible", "8-bit"),
    ((48, 64, 3), np.uint8, (48, 60), np.uint8, "lwir", r"pair sizes differ: visible \(48, 64\) vs lwir \(48, 60\)"),
    ((48, 64), np.uint8, (48, 64), np.uint8, "visible", r"RGB of shape \(H, W, 3\)"),
    ((48, 64, 4), np.uint8, (48, 64), np.uint8, "visible", "RGB of shape"),
    ((2, 48, 64, 3), np.uint8, (48, 64), np.uint8, "lwir", r"\(B, H, W\)"),
    ((16, 64, 3), np.uint8, (16, 64), np.uint8, "visible", "too small: 64x16"),
    ((48, 64, 3), np.float32, (48, 64), np.uint8, "visible", "got float32"),
])
def test_bad_inputs_give_clear_errors(vis_shape, vis_dtype, ir_shape, ir_dtype, key, message) -> None:
    with pytest.raises(RigError, match=message) as e:
        rm.fuse_and_segment(np.zeros(vis_shape, vis_dtype), np.zeros(ir_shape, ir_dtype), model=object())
    assert e.value.key == key


def test_output_normalization(tiny_ckpt: Path) -> None:
    from rig.model.color import replace_luminance
    from rig.model.segmif import minmax_normalize

    y = torch.tensor([[[[0.2, 0.4], [0.6, 0.3]]]])
    torch.testing.assert_close(minmax_normalize(y), torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]]))
    model = rm.load_model(tiny_ckpt)
    rng = np.random.default_rng(1)
    vis = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    ir = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    raw, labels_raw = rm.fuse_and_segment(vis, ir, model, normalize="none")
    stretched, labels = rm.fuse_and_segment(vis, ir, model)
    v = torch.from_numpy(vis).permute(2, 0, 1)[None].float() / 255
    t = torch.from_numpy(ir)[None, None].float() / 255
    with torch.inference_mode():
        out = model(v, t)
    expected_raw = (out.fused_rgb.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    expected = (replace_luminance(v, minmax_normalize(out.fused_y)) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.abs(raw.astype(int) - expected_raw).max() <= 1
    assert np.abs(stretched.astype(int) - expected).max() <= 1
    assert np.array_equal(labels, labels_raw)  # segmentation does not see the stretch
    with pytest.raises(RigError, match="normalize must be one of minmax, none"):
        rm.fuse_and_segment(vis, ir, model, normalize="gamma")


def test_bad_precision_and_device(tiny_ckpt: Path) -> None:
    with pytest.raises(RigError, match="precision"):
        rm.fuse_and_segment(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8), object(), precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(RigError, match="no CUDA device"):
            rm.load_model(tiny_ckpt, device="cuda")


def test_bundled_weights_ship_and_load() -> None:
    path = rm.bundled_weights_path()
    assert path.is_file(), "model/weights/segmif_cpu.pt is part of the package"
    assert path.stat().st_size <= 25 * 1024 * 1024
    payload = read_checkpoint(path)
    assert payload["model_version"] == rm.MODEL_VERSION
    assert "seg_optimizer" not in payload  # exported without training state
    model = rm.load_model()
    assert model.config == rm.get_config("cpu") and not model.training
    fused, labels = rm.fuse_and_segment(np.zeros((40, 56, 3), np.uint8), np.zeros((40, 56), np.uint8), model)
    assert fused.shape == (40, 56, 3) and labels.shape == (40, 56)


def test_channels_last_gives_the_eager_layouts_outputs() -> None:
    """load_model's default NHWC weights (faster on CPU) give the same fused images and labels as the default
    layout, and fuse() the same fused images without segmenting."""
    import torch

    from rig.sim import render_registered

    s = render_registered(seed=2, variant="day", size=(320, 240))
    fast, plain = rm.load_model(), rm.load_model(channels_last=False)
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    f_fast, l_fast = rm.fuse_and_segment(s.visible, s.lwir8, fast)
    f_plain, l_plain = rm.fuse_and_segment(s.visible, s.lwir8, plain)
    assert np.array_equal(f_fast, f_plain)
    assert (l_fast == l_plain).mean() > 0.999  # float sums in another order may flip a tie, nothing more
    with torch.inference_mode():
        rgb = torch.from_numpy(s.visible).permute(2, 0, 1)[None].float() / 255
        assert torch.allclose(fast.segment(rgb), plain.segment(rgb), atol=1e-4)
    assert np.array_equal(rm.fuse(s.visible, s.lwir8, fast), f_fast)
