"""Classical fusion baselines against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from rig.model.baselines import (collapse_pyramid, fuse_baseline, fuse_luminance, laplacian, laplacian_pyramid,
                                 stretch_minmax)


def test_average_and_max_on_constant_grey():
    vis = np.full((8, 10, 3), 100, np.uint8)  # grey: chroma neutral, luminance 100
    ir = np.full((8, 10), 200, np.uint8)
    assert (fuse_baseline(vis, ir, "average") == 150).all()
    assert (fuse_baseline(vis, ir, "max") == 200).all()
    assert (fuse_baseline(vis, ir, "laplacian") == 150).all()  # flat: only the averaged base remains


def test_colour_comes_from_the_visible_chroma():
    vis = np.zeros((4, 4, 3), np.uint8)
    vis[..., 0] = 200  # red
    ir = np.full((4, 4), 255, np.uint8)
    out = fuse_baseline(vis, ir, "max").astype(int)
    assert (out[..., 0] > out[..., 1]).all() and (out[..., 0] > out[..., 2]).all()


def test_pyramid_round_trip_is_exact():
    rng = np.random.default_rng(0)
    img = rng.random((37, 53)).astype(np.float32)
    pyr = laplacian_pyramid(img, 5)
    assert len(pyr) == 5 and pyr[-1].shape == (3, 4)
    np.testing.assert_allclose(collapse_pyramid(pyr), img, atol=1e-5)


def test_laplacian_keeps_the_stronger_detail_and_averages_the_base():
    y = np.zeros((64, 64))
    y[:, 32:] = 0.8  # a step edge in the visible only
    t = np.full((64, 64), 0.6)  # flat LWIR
    fused = laplacian(y, t, levels=5)
    # The edge stays as sharp as in the visible image (its fine detail comes from y alone), where
    # averaging halves it ...
    assert np.diff(fused[32]).max() == pytest.approx(0.8, abs=0.03)
    assert np.diff(fuse_luminance(y, t, "average")[32]).max() == pytest.approx(0.4)
    # ... and the mean level is the average of both images' means.
    assert fused.mean() == pytest.approx(0.5 * (y.mean() + t.mean()), abs=0.02)
    np.testing.assert_allclose(laplacian(y, y), y, atol=1e-5)  # fusing an image with itself changes nothing
    np.testing.assert_allclose(laplacian(y, t, levels=1), 0.5 * (y + t), atol=1e-6)  # one level: the base alone


def test_stretch_and_errors():
    np.testing.assert_allclose(stretch_minmax(np.array([0.2, 0.4, 0.6])), [0.0, 0.5, 1.0])
    assert (stretch_minmax(np.full(3, 0.3)) == 0.3).all()
    a = np.array([[0.2, 0.4]])
    np.testing.assert_allclose(fuse_luminance(a, a[:, ::-1], "average", stretch=True), [[0.3, 0.3]])  # constant
    np.testing.assert_allclose(fuse_luminance(a, a, "max", stretch=True), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="unknown fusion baseline 'median'; known: average, max, laplacian"):
        fuse_luminance(a, a, "median")
    with pytest.raises(ValueError, match="one size"):
        fuse_baseline(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8), "max")
