"""SegMiF architecture: shapes and dtypes for every config, HIA maths, colour round trip."""

from __future__ import annotations

import math

import pytest
import torch

from rig.model.color import replace_luminance, rgb_to_ycrcb, ycrcb_to_rgb
from rig.model.drdb import DRDB
from rig.model.hia import HierarchicalInteractiveAttention, attend, global_context
from rig.model.mit import MIT_CONFIGS, MiTConfig, MixTransformer
from rig.model.segmif import MODEL_CONFIGS, SegMiF, SegMiFConfig, create_model, get_config

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny() -> SegMiF:
    torch.manual_seed(0)
    return create_model("tiny").eval()


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_every_config_gives_documented_shapes_and_dtypes(name: str) -> None:
    torch.manual_seed(0)
    config = get_config(name)
    model = SegMiF(config).eval()
    b, h, w = 2, 64, 96
    with torch.inference_mode():
        out = model(torch.rand(b, 3, h, w), torch.rand(b, 1, h, w))
    assert out.fused_y.shape == (b, 1, h, w)
    assert out.fused_rgb.shape == (b, 3, h, w)
    assert out.logits.shape == (b, config.num_classes, h, w)
    assert all(t.dtype == torch.float32 for t in out)
    assert 0.0 <= out.fused_y.min() and out.fused_y.max() <= 1.0
    assert 0.0 <= out.fused_rgb.min() and out.fused_rgb.max() <= 1.0


def test_paper_config_is_mit_b3_with_full_width_drdbs() -> None:
    paper = get_config("paper")
    assert paper.encoder == MIT_CONFIGS["b3"] and paper.encoder.depths == (3, 4, 18, 3)
    assert (paper.fusion.width, paper.fusion.growth, paper.fusion.dense_layers) == (32, 32, 5)
    assert paper.num_classes == 15 and paper.seg_scale == 1.0
    assert get_config("cpu", classes="mfnet").num_classes == 9


def test_untrained_residual_fusion_starts_at_the_average() -> None:
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    v, t = torch.rand(1, 3, 32, 48), torch.rand(1, 1, 32, 48)
    y = rgb_to_ycrcb(v)[:, :1]
    with torch.inference_mode():
        fused_y, _ = model.fuse(v, t)
    torch.testing.assert_close(fused_y, (0.5 * (y + t)).clamp(1e-3, 1 - 1e-3), atol=1e-6, rtol=0)
    direct = SegMiF(get_config("tiny", fusion=get_config("tiny").fusion.__class__(
        width=4, growth=4, dense_layers=2, num_heads=2, residual=False))).eval()
    with torch.inference_mode():
        assert not torch.allclose(direct.fuse(v, t)[0], 0.5 * (y + t), atol=1e-2)


def test_mit_sizes_and_strides() -> None:
    # b0..b5 follow SegFormer: embed dims and depths
    assert MIT_CONFIGS["b0"].embed_dims == (32, 64, 160, 256)
    assert [MIT_CONFIGS[f"b{i}"].depths for i in range(1, 6)] == [
        (2, 2, 2, 2), (3, 4, 6, 3), (3, 4, 18, 3), (3, 8, 27, 3), (3, 6, 40, 3)]
    enc = MixTransformer(MIT_CONFIGS["tiny"]).eval()
    feats = enc(torch.rand(1, 3, 64, 128))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    assert [f.shape[1] for f in feats] == list(MIT_CONFIGS["tiny"].embed_dims)
    with pytest.raises(ValueError, match="divisible"):
        MiTConfig(embed_dims=(10, 16, 24, 32), num_heads=(3, 1, 1, 1))


def test_config_dict_round_trip_and_errors() -> None:
    cfg = get_config("cpu")
    assert SegMiFConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config 'b9'"):
        get_config("b9")
    with pytest.raises(ValueError, match="unknown class set"):
        get_config("tiny", classes="coco")
    with pytest.raises(ValueError, match="seg_scale"):
        get_config("tiny", seg_scale=0.0)


def test_drdb_keeps_shape_and_is_residual() -> None:
    block = DRDB(4, growth=3, num_layers=2)
    x = torch.rand(2, 4, 10, 12)
    assert block(x).shape == x.shape
    for p in block.local_fusion.parameters():
        torch.nn.init.zeros_(p)
    assert torch.equal(block(x), x)  # zero local fusion -> identity


def _per_head_reference(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    ks = k.view(b, n, heads, d).softmax(dim=1)
    g = torch.einsum("bnhi,bnhj->bhij", ks, v.view(b, n, heads, d))
    qs = q.view(b, n, heads, d).softmax(dim=-1)
    return g, torch.einsum("bnhi,bhij->bnhj", qs, g).reshape(b, n, c)


def test_linear_attention_matches_per_head_formula() -> None:
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 50, 8, dtype=torch.float64) for _ in range(3))
    g = global_context(k, v, num_heads=2)
    g_ref, out_ref = _per_head_reference(q, k, v, 2)
    assert g.shape == (2, 8, 8)
    torch.testing.assert_close(g[:, :4, :4], g_ref[:, 0])
    torch.testing.assert_close(g[:, 4:, 4:], g_ref[:, 1])
    assert torch.count_nonzero(g[:, :4, 4:]) == 0 and torch.count_nonzero(g[:, 4:, :4]) == 0
    torch.testing.assert_close(attend(q, g, 2), out_ref)


def test_global_context_is_a_pixel_mean_hand_case() -> None:
    # equal keys -> uniform softmax over pixels -> G[i, j] = mean_n V[n, j]
    k = torch.zeros(1, 4, 2)
    v = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]])
    g = global_context(k, v, num_heads=1)
    torch.testing.assert_close(g, torch.tensor([[[4.0, 5.0], [4.0, 5.0]]]))
    # resolution independence: repeating every pixel leaves G unchanged
    torch.testing.assert_close(global_context(k.repeat(1, 3, 1), v.repeat(1, 3, 1), 1), g)


def test_hia_shapes_ablations_and_errors() -> None:
    x = torch.rand(2, 8, 6, 7)
    for soam, moam in ((True, True), (True, False), (False, True)):
        hia = HierarchicalInteractiveAttention(8, 4, soam, moam)
        a, b = hia(x, x.flip(-1), x.flip(-2))
        assert a.shape == b.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        HierarchicalInteractiveAttention(8, 3)
    with pytest.raises(ValueError, match="at least one"):
        HierarchicalInteractiveAttention(8, 2, soam=False, moam=False)


def test_hia_uses_segmentation_features() -> None:
    torch.manual_seed(0)
    hia = HierarchicalInteractiveAttention(8, 2).eval()
    x = torch.rand(1, 8, 5, 5)
    a1, _ = hia(x, x, torch.rand(1, 8, 5, 5))
    a2, _ = hia(x, x, torch.rand(1, 8, 5, 5))
    assert not torch.allclose(a1, a2)


def test_ycrcb_round_trip_and_known_values() -> None:
    rgb = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ycrcb_to_rgb(rgb_to_ycrcb(rgb)), rgb)
    white = torch.ones(1, 3, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(rgb_to_ycrcb(white).flatten(), torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64))
    red = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(1, 3, 1, 1)
    assert math.isclose(float(rgb_to_ycrcb(red)[0, 0]), 0.299)
    grey = replace_luminance(rgb, torch.full((2, 1, 5, 6), 0.25, dtype=torch.float64))
    torch.testing.assert_close(rgb_to_ycrcb(grey)[:, :1], torch.full((2, 1, 5, 6), 0.25, dtype=torch.float64),
                               atol=0.2, rtol=0)  # clamping may move out-of-gamut pixels


def test_bf16_autocast_on_cpu(tiny: SegMiF) -> None:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(torch.rand(1, 3, 48, 64), torch.rand(1, 1, 48, 64))
    assert out.logits.shape == (1, 15, 48, 64)
    assert torch.isfinite(out.logits.float()).all()


def test_forward_is_batch_consistent(tiny: SegMiF) -> None:
    torch.manual_seed(3)
    v, t = torch.rand(3, 3, 40, 56), torch.rand(3, 1, 40, 56)
    with torch.inference_mode():
        batch = tiny(v, t)
        single = tiny(v[1:2], t[1:2])
    torch.testing.assert_close(batch.fused_y[1:2], single.fused_y, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.logits[1:2], single.logits, atol=1e-4, rtol=1e-4)
