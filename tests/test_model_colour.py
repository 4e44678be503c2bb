"""Fused colour (chroma guard), the pyramid fusion prior, the RoadScene split and class weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rig.model.color import guarded_colour, replace_luminance, rgb_to_ycrcb
from rig.model.data import PairRecord, split_part
from rig.model.fusion import pyramid_prior
from rig.model.segmif import create_model


def _chroma(rgb: torch.Tensor) -> torch.Tensor:
    """Largest |Cr - 0.5|, |Cb - 0.5| per pixel."""
    return (rgb_to_ycrcb(rgb)[:, 1:] - 0.5).abs().amax(dim=1)


def test_guard_off_is_replace_luminance() -> None:
    rgb = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    y = torch.rand(1, 1, 5, 7, dtype=torch.float64)
    assert torch.equal(guarded_colour(rgb, y, 0.0), replace_luminance(rgb, y))


def test_guard_keeps_colour_where_luminance_is_the_visible_one_and_fades_it_linearly() -> None:
    rgb = torch.tensor([0.6, 0.3, 0.2], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    y_vis = rgb_to_ycrcb(rgb)[:, :1]
    np.testing.assert_allclose(guarded_colour(rgb, y_vis, 0.5).numpy(), rgb.numpy(), atol=1e-12)
    out = guarded_colour(rgb, y_vis + 0.1, 0.5)  # k = 1 - 0.1 / 0.5 = 0.8
    np.testing.assert_allclose(_chroma(out).numpy(), 0.8 * _chroma(rgb).numpy(), atol=1e-12)


def test_bright_lwir_object_on_dark_coloured_background_gets_no_colour_cast() -> None:
    """Hand-built case: a saturated dark-red visible scene, a hot 16x16 object seen only in LWIR.

    Bound: where the fused luminance exceeds the visible one by the guard (0.5) or more the
    pixel is neutral grey (channels equal to 1e-9); the untrained bundled configuration's fusion
    (its pyramid prior) must also keep the object interior within 2/255 of grey, while the
    plain visible-chroma recombination would put a strong red cast there.
    """
    h = w = 64
    vis = torch.zeros(1, 3, h, w)
    vis[:, 0] = 0.35  # dark, saturated red background
    vis[:, 1] = vis[:, 2] = 0.02
    lwir = torch.full((1, 1, h, w), 0.1)
    lwir[..., 24:40, 24:40] = 1.0
    y_vis = rgb_to_ycrcb(vis)[:, :1]
    out = guarded_colour(vis, torch.full_like(y_vis, 0.9), 0.5)
    assert float(out.amax(dim=1).sub(out.amin(dim=1)).max()) < 1e-6
    model = create_model("cpu").eval()
    assert model.config.chroma_guard == 0.5
    with torch.no_grad():
        fused_y, fused_rgb = model.fuse(vis, lwir)
    inner = fused_rgb[..., 28:36, 28:36]
    assert float(fused_y[..., 28:36, 28:36].min()) > float(y_vis.max()) + 0.5  # the object is bright in the fusion
    assert float((inner.amax(dim=1) - inner.amin(dim=1)).max()) <= 2 / 255
    pasted = replace_luminance(vis, fused_y)[..., 28:36, 28:36]
    assert float((pasted.amax(dim=1) - pasted.amin(dim=1)).min()) > 0.1  # what the guard prevents


def test_pyramid_prior_of_equal_inputs_is_the_input_without_gain_and_additive_base() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 1, 37, 53, generator=g, dtype=torch.float64) * 0.5 + 0.25
    flat = torch.full((1, 1, 37, 53), 0.4, dtype=torch.float64)
    np.testing.assert_allclose(pyramid_prior(flat, flat).numpy(), flat.numpy(), atol=1e-12)
    out = pyramid_prior(img, img, fine_gain=1.0, additive=0.0)
    np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-12)  # exact collapse, any size
    both = pyramid_prior(img, torch.rand(1, 1, 37, 53, generator=g, dtype=torch.float64))
    assert both.shape == img.shape and float(both.min()) >= 0 and float(both.max()) <= 1


def test_pyramid_prior_keeps_an_lwir_only_object() -> None:
    y = torch.full((1, 1, 64, 64), 0.3)
    t = torch.full((1, 1, 64, 64), 0.3)
    t[..., 20:44, 20:44] = 0.9  # warm object invisible in the visible
    out = pyramid_prior(y, t)
    assert float(out[..., 28:36, 28:36].mean()) > 0.75  # the average would give 0.6
    assert abs(float(out[..., :4, :4].mean()) - 0.3) < 0.05


def test_untrained_residual_fast_path_equals_the_network() -> None:
    torch.manual_seed(0)
    model = create_model("cpu").eval()
    v, t = torch.rand(1, 3, 48, 64), torch.rand(1, 1, 48, 64)
    assert model.fusion.is_identity()
    with torch.no_grad():
        fast, _ = model.fuse(v, t)
        feats = model.semantic_features(v, t)
        full = model.fusion(t, rgb_to_ycrcb(v)[:, :1], *feats)
    torch.testing.assert_close(fast, full, atol=1e-6, rtol=0)
    with torch.no_grad():
        model.fusion.reconstruct[-1].bias.fill_(0.01)
    assert not model.fusion.is_identity()


def test_split_part_is_deterministic_and_disjoint() -> None:
    records = [PairRecord(f"p{i:03d}", None, None) for i in range(150)][::-1]  # order must not matter
    train, held = split_part(records, "train"), split_part(records, "held-back")
    assert len(train) == 100 and len(held) == 50
    assert not {r.name for r in train} & {r.name for r in held}
    assert [r.name for r in held[:3]] == ["p002", "p005", "p008"]
    assert split_part(records, "all") == sorted(records, key=lambda r: r.name)
    with pytest.raises(Exception, match="unknown split part"):
        split_part(records, "test")


def test_class_weights_favour_rare_classes(tmp_path) -> None:
    from rig.model.data import PairDataset, write_pair
    from rig.model.train import class_weights

    labels = np.zeros((10, 10), np.uint8)
    labels[:, 9] = 2  # class 2 is 10x rarer than class 0; class 1 absent
    write_pair(tmp_path, "a", np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), labels)
    from rig.model.data import find_pairs

    ds = PairDataset(find_pairs(tmp_path, None, "fmb")[1], 3)
    w = class_weights(ds, 3).tolist()
    assert w[1] == 1.0 and w[2] > w[0]
    np.testing.assert_allclose(w[2] / w[0], 3.0, rtol=1e-6)  # sqrt(90 / 10)


def test_untrained_residual_still_trains() -> None:
    """With autograd on, the fast path is not taken: the zero last layer gets a gradient."""
    torch.manual_seed(0)
    model = create_model("cpu")
    fused_y, _ = model.fuse(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32))
    fused_y.mean().backward()
    assert model.fusion.reconstruct[-1].weight.grad is not None
    assert float(model.fusion.reconstruct[-1].weight.grad.abs().sum()) > 0
