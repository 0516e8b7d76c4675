"""The bootstrap over test tiles (zoo/metrics.py): intervals that recover a known difference, contain 0 for identical
methods, are reproducible for a seed, and pool tiles so that the original tiles give the headline metric."""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.zoo import metrics as M


def _psnr_parts(rng, tiles: int, mse: float, pixels: int = 64 * 64) -> np.ndarray:
    """Per-tile (sum of squared errors, pixels) of a method whose errors have variance ``mse`` (varying by tile)."""
    per_tile = mse * rng.uniform(0.5, 1.5, tiles)
    return np.stack([per_tile * pixels, np.full(tiles, pixels, float)], 1)


def test_tiles_cover_every_pixel_once():
    tiles = M.tile_slices((2, 130, 70), 64)  # a leading axis is kept whole; edge tiles are smaller, none dropped
    seen = np.zeros((2, 130, 70), int)
    for s in tiles:
        seen[s] += 1
    assert len(tiles) == 3 * 2 and np.all(seen == 1)
    with pytest.raises(ValueError, match="tile >= 1"):
        M.tile_slices((64,), 64)


def test_pooled_metrics_equal_the_whole_image_metrics():
    rng = np.random.default_rng(0)
    clean, pred = rng.random((100, 150)), rng.random((100, 150))
    assert M.pooled_psnr(M.squared_error_parts([pred], [clean], 32)) == pytest.approx(M.psnr(pred, clean))
    a, b = rng.random((100, 150)) > 0.5, rng.random((100, 150)) > 0.3
    assert M.pooled_iou(M.overlap_parts([a], [b], 32)) == pytest.approx(M.iou(a, b))
    assert M.pooled_iou(np.zeros((3, 2))) == 1.0  # nothing predicted, nothing there


def test_known_difference_is_recovered():
    rng = np.random.default_rng(1)
    better = _psnr_parts(rng, 200, 1e-3)
    worse = better.copy()
    worse[:, 0] *= 2.0  # twice the squared error on every tile: exactly 10 log10(2) = 3.01 dB worse
    diff, (lo, hi) = M.paired_difference(better, worse, "psnr")
    assert diff == pytest.approx(10 * np.log10(2))
    assert lo == pytest.approx(diff, abs=1e-9) and hi == pytest.approx(diff, abs=1e-9)  # paired: tile content cancels
    c = M.claim("care", "gaussian", "psnr", {"care": better, "gaussian": worse})
    assert c["holds"] and c["better"] == "care" and c["ci95"][0] > 0


def test_noisy_difference_interval_contains_the_truth_and_excludes_zero():
    rng = np.random.default_rng(2)
    better = _psnr_parts(rng, 150, 1e-3)
    worse = better.copy()
    worse[:, 0] *= rng.uniform(1.1, 1.5, 150)  # 0.4-1.8 dB worse per tile
    diff, (lo, hi) = M.paired_difference(better, worse, "psnr")
    assert 0 < lo < diff < hi and hi - lo < 0.3


def test_identical_methods_give_an_interval_around_zero():
    rng = np.random.default_rng(3)
    a = _psnr_parts(rng, 100, 1e-3)
    b = a.copy()
    b[:, 0] *= rng.normal(1.0, 0.1, 100)  # same method, another noise draw: no real difference
    diff, (lo, hi) = M.paired_difference(a, b, "psnr")
    assert lo < 0 < hi
    c = M.claim("n2v", "gaussian", "psnr", {"n2v": a, "gaussian": b})
    assert c["holds"] is False  # reported as not holding, not dropped
    same = M.claim("n2v", "copy", "psnr", {"n2v": a, "copy": a})
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0] and not same["holds"]


def test_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    rng = np.random.default_rng(4)
    parts = np.stack([rng.uniform(0, 50, 80), rng.uniform(50, 100, 80)], 1)  # (intersection, union)
    first = M.bootstrap_interval(parts, "foreground_iou", resamples=500, seed=7)
    assert first == M.bootstrap_interval(parts, "foreground_iou", resamples=500, seed=7)
    assert first != M.bootstrap_interval(parts, "foreground_iou", resamples=500, seed=8)
    lo, hi = first
    assert lo < M.pooled_iou(parts) < hi


def test_per_image_differences_and_errors():
    rng = np.random.default_rng(5)
    better = _psnr_parts(rng, 6, 1e-3)
    worse = better * np.array([[2.0, 1.0]])
    c = M.claim("a", "b", "psnr", {"a": better, "b": worse}, resamples=200, images=np.array([0, 0, 0, 1, 1, 1]))
    assert c["per_image"] == pytest.approx([10 * np.log10(2)] * 2)
    with pytest.raises(ValueError, match="same test tiles"):
        M.paired_difference(better, worse[:5], "psnr")
    with pytest.raises(ValueError, match="unknown metric"):
        M.bootstrap_interval(better, "ssim")
    with pytest.raises(ValueError, match=">= 2 tiles"):
        M.bootstrap_interval(better[:1], "psnr")
