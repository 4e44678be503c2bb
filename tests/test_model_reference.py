"""Importing published weights: SegMiF reference checkpoints and SegFormer ImageNet encoders.

The reference networks are stood in for by ``segmif_reference`` (tests/segmif_reference.py),
an independent functional re-statement of their forward passes that also makes random
state dicts with their key names: nothing is downloaded.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rig.model as rm
from rig.errors import RigError
from rig.model.checkpoint import read_checkpoint
from rig.model.color import replace_luminance, rgb_to_ycrcb
from rig.model.mit import MIT_CONFIGS, segformer_config, segformer_key
from rig.model.reference import convert_reference, import_reference, load_pretrained_encoder
from rig.model.segmif import create_model, get_config

sys.path.insert(0, str(Path(__file__).parent))
import segmif_reference as ref  # noqa: E402

H, W = 40, 56  # not multiples of 32: the encoder's key/value reductions drop a remainder, as SegFormer's do


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _resize(x: torch.Tensor, size=(H, W)) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def small() -> tuple[dict, dict]:
    """Reference key layout: MiT-b0 encoder, narrow fusion streams (width 16, growth 8)."""
    return ref.fusion_state_dict(width=16, growth=8, seg_dims=(32, 64)), ref.segmentation_state_dict(15)


@pytest.fixture(scope="module")
def files(small, tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("reference")
    torch.save(small[0], d / "fusion.pth")
    torch.save(small[1], d / "seg.pth")
    return d / "fusion.pth", d / "seg.pth"


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rgb, ir = torch.rand(2, 3, H, W, generator=g), torch.rand(2, 1, H, W, generator=g)
    return rgb, ir, rgb_to_ycrcb(rgb)[:, :1]


def test_fusion_equals_reference_at_its_published_shapes() -> None:
    # Fusion_Network3_ac's own sizes (64-channel stems, growth 32, conv3 64->64, conv4 128->64),
    # with a shallow MiT of b1 widths so that the stride-4/8 features have 64 and 128 channels.
    fsd = ref.fusion_state_dict()
    ssd = ref.segmentation_state_dict(9, dims=(64, 128, 160, 256), depths=(1, 1, 1, 1))
    model, ignored = convert_reference(fsd, ssd)
    assert model.config.fusion.width == 64 and model.config.fusion.growth == 32
    assert model.config.classes == "mfnet" and model.config.name == "reference_custom"
    assert sorted(ignored) == sorted([k for k in fsd if k.startswith("ffm2.")] + ["denoise_net.classifier.weight"])
    rgb, ir, y = _inputs()
    with torch.no_grad():
        out1, out2 = ref.encoder_forward_fusion(ssd, rgb)
        torch.testing.assert_close(model.fusion(ir, y, out1, out2), ref.fusion_forward(fsd, ir, y, out1, out2),
                                   atol=1e-4, rtol=1e-4)


def test_fusion_and_segmentation_equal_reference(small) -> None:
    fsd, ssd = small
    model, _ = convert_reference(fsd, ssd)
    rgb, ir, y = _inputs(1)
    with torch.no_grad():
        out1, out2 = ref.encoder_forward_fusion(ssd, rgb)
        expected = ref.fusion_forward(fsd, ir, y, out1, out2)
        assert expected.std() > 0.05  # not a degenerate case
        torch.testing.assert_close(model.fusion(ir, y, out1, out2), expected, atol=1e-4, rtol=1e-4)
        # the same from features at encoder resolution (strides 4 and 8)
        f = model.segmenter.encode(rgb, normalize=False)
        assert f[0].shape[-2:] == (10, 14) and f[1].shape[-2:] == (5, 7)
        torch.testing.assert_close(model.fusion(ir, y, f[0], f[1]), expected, atol=1e-4, rtol=1e-4)
        # segmentation: ImageNet-normalised logits, bilinearly resized to the input
        expected_logits = _resize(ref.segmentation_forward(ssd, rgb))
        assert expected_logits.shape == (2, 15, H, W)
        torch.testing.assert_close(model.segment(rgb), expected_logits, atol=1e-4, rtol=1e-4)


def test_guidance_pass_feeds_the_encoder_the_unnormalised_initial_fusion(small) -> None:
    fsd, ssd = small
    model, _ = convert_reference(fsd, ssd)
    rgb, ir, y = _inputs(2)
    initial = replace_luminance(rgb, 0.5 * (y + ir))
    with torch.no_grad():
        feats = model.semantic_features(rgb, ir)
        out1, out2 = ref.encoder_forward_fusion(ssd, initial)
        torch.testing.assert_close(_resize(feats[0]), out1, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(_resize(feats[1]), out2, atol=1e-4, rtol=1e-4)
        out = model(rgb, ir)
        expected_y = ref.fusion_forward(fsd, ir, y, out1, out2).clamp(0, 1)
        torch.testing.assert_close(out.fused_y, expected_y, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.logits, _resize(ref.segmentation_forward(ssd, out.fused_rgb)),
                                   atol=1e-4, rtol=1e-4)


def test_import_writes_a_checkpoint_load_model_reads(files, tmp_path: Path) -> None:
    out = import_reference(*files, tmp_path / "segmif_reference.pt")
    payload = read_checkpoint(out)
    assert payload["model_version"] == "segmif-reference-b0-fmb"
    assert payload["provenance"]["fusion_file"] == "fusion.pth"
    assert "denoise_net.classifier.weight" in payload["provenance"]["ignored_keys"]
    model = rm.load_model(out)
    assert model.config.name == "reference_b0" and model.config.encoder == segformer_config("b0")
    assert model.config.num_classes == 15 and model.config.decoder_dim == 32
    assert model.config.fusion.variant == "reference" and not model.config.guidance_normalize
    direct, _ = convert_reference(torch.load(files[0]), torch.load(files[1]))
    rgb, ir, _ = _inputs(3)
    with torch.no_grad():
        a, b = rm.load_model(out, channels_last=False)(rgb, ir), direct(rgb, ir)
        fast = model(rgb, ir)  # load_model's default channels-last weights: the same up to summation order
    assert torch.equal(a.fused_y, b.fused_y) and torch.equal(a.logits, b.logits)
    torch.testing.assert_close(fast.fused_y, b.fused_y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.logits, b.logits, atol=1e-4, rtol=1e-4)
    assert 0 <= a.fused_y.min() and a.fused_y.max() <= 1


@pytest.mark.parametrize("n, classes", [(15, "fmb"), (9, "mfnet")])
def test_class_set_is_inferred_from_the_classifier(small, n: int, classes: str) -> None:
    ssd = ref.segmentation_state_dict(n)
    model, _ = convert_reference(small[0], ssd)
    assert model.config.classes == classes and model.config.num_classes == n


def test_unknown_class_count_is_one_line(small) -> None:
    with pytest.raises(RigError, match=r"^seg.pth: 7 classes in denoise_net\.decoder\.linear_pred\.weight"):
        convert_reference(small[0], ref.segmentation_state_dict(7), "fusion.pth", "seg.pth")


def test_reference_b3_config_is_the_published_architecture() -> None:
    cfg = get_config("reference_b3")
    assert cfg.encoder.embed_dims == MIT_CONFIGS["b3"].embed_dims and cfg.encoder.depths == (3, 4, 18, 3)
    assert cfg.encoder.norm_eps == 1e-6 and not cfg.encoder.pad_reduction
    assert (cfg.fusion.width, cfg.fusion.growth, cfg.fusion.dense_layers, cfg.fusion.num_heads) == (64, 32, 5, 8)
    assert cfg.decoder_dim == 256 and not cfg.guidance_normalize
    assert rm.SegMiFConfig.from_dict(cfg.to_dict()) == cfg


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_truncated_file(files, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(files[0].read_bytes()[:2000])
    with pytest.raises(RigError) as e:
        import_reference(bad, files[1], tmp_path / "out.pt")
    assert _one_line(e) == f"{bad}: SegMiF fusion file is a corrupt or truncated PyTorch file"
    assert e.value.path == str(bad) and not (tmp_path / "out.pt").exists()


class _NotWeights:
    pass


def test_non_state_dict_files(files, tmp_path: Path) -> None:
    obj = tmp_path / "object.pth"
    with open(obj, "wb") as f:
        pickle.dump(_NotWeights(), f)
    with pytest.raises(RigError, match=r"a pickle of a Python object \(.*_NotWeights\)") as e:
        import_reference(files[0], obj, tmp_path / "out.pt")
    assert _one_line(e).startswith(f"{obj}: SegMiF segmentation file is")
    run = tmp_path / "run.pth"
    torch.save({"epoch": 3, "lr": 1e-4}, run)
    with pytest.raises(RigError, match="not a state dict: entries that are not tensors: epoch, lr"):
        import_reference(run, files[1], tmp_path / "out.pt")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(RigError, match="not a PyTorch file"):
        import_reference(text, files[1], tmp_path / "out.pt")
    with pytest.raises(RigError, match="no such SegMiF fusion file"):
        import_reference(tmp_path / "nope.pth", files[1], tmp_path / "out.pt")


def test_mismatched_keys_are_listed(small, tmp_path: Path) -> None:
    fsd = dict(small[0])
    del fsd["DRDB1.Dcov2.bias"], fsd["ffm.cross.end_proj2.weight"]
    fsd["extra.weight"] = torch.zeros(3)
    fsd["conv1_vis.weight"] = torch.zeros(32, 1, 3, 3)
    bad = tmp_path / "fusion_bad.pth"
    torch.save(fsd, bad)
    seg = tmp_path / "seg.pth"
    torch.save(small[1], seg)
    with pytest.raises(RigError) as e:
        import_reference(bad, seg, tmp_path / "out.pt")
    assert _one_line(e) == (
        f"{bad}: does not match the SegMiF Fusion_Network3_ac (fusion) layout; "
        "missing keys: DRDB1.Dcov2.bias, ffm.cross.end_proj2.weight; unexpected keys: extra.weight; "
        "shape mismatches: conv1_vis.weight (ckpt [32,1,3,3] vs model [16,1,3,3])")
    # a fusion file for other encoder widths (conv3 expects 64 channels, the b0 encoder gives 32)
    with pytest.raises(RigError, match=r"shape mismatches: conv3\.weight \(ckpt \[16,64,1,1\] vs model \[16,32,1,1\]\)"):
        convert_reference(ref.fusion_state_dict(16, 8, seg_dims=(64, 128)), small[1])
    # a segmentation file without its decoder
    ssd = {k: v for k, v in small[1].items() if ".decoder." not in k}
    with pytest.raises(RigError, match=r"^seg\.pth: does not match .*; missing keys: denoise_net\.decoder\.linear_pred"):
        convert_reference(small[0], ssd, "fusion.pth", "seg.pth")


# --------------------------------------------------------------------------- SegFormer ImageNet encoders


def test_pretrained_encoder_sets_every_weight(tmp_path: Path) -> None:
    sd = ref.imagenet_mit_state_dict()  # mit_b0.pth layout, with the ImageNet head
    path = tmp_path / "mit_b0.pth"
    torch.save(sd, path)
    model = create_model("segmif_b0").eval()
    ignored = load_pretrained_encoder(model, path)
    assert ignored == ["head.weight", "head.bias"]
    encoder_sd = model.segmenter.encoder.state_dict()
    assert len(encoder_sd) == len(sd) - 2
    for key, value in encoder_sd.items():
        assert torch.equal(value, sd[segformer_key(key)]), key
    # and the encoder computes what SegFormer's does with those weights
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for ours, theirs in zip(model.segmenter.encoder(x), ref.mit_forward(sd, "", x)):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_pretrained_encoder_from_an_mmseg_checkpoint(tmp_path: Path) -> None:
    sd = {f"backbone.{k}": v for k, v in ref.imagenet_mit_state_dict().items() if not k.startswith("head.")}
    sd["decode_head.conv_seg.weight"] = torch.zeros(19, 256, 1, 1)
    path = tmp_path / "segformer_b0_city.pth"
    torch.save({"meta": {"epoch": 160}, "state_dict": sd}, path)
    model = create_model("segmif_b0")
    assert load_pretrained_encoder(model.segmenter, path) == ["decode_head.conv_seg.weight"]


def test_pretrained_encoder_mismatch_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mit_b0.pth"
    torch.save(ref.imagenet_mit_state_dict(), path)
    model = create_model("tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RigError) as e:
        load_pretrained_encoder(model, path)
    msg = _one_line(e)
    assert msg.startswith(f"{path}: does not match the SegFormer MiT encoder layout; unexpected keys: block1.1.norm1.weight")
    assert "shape mismatches: patch_embed1.proj.weight (ckpt [32,3,7,7] vs model [8,3,7,7])" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(RigError, match="missing keys: patch_embed1.proj.weight"):
        load_pretrained_encoder(model, other)
