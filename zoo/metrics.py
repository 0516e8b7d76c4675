"""Test metrics, the classical baselines they are reported beside, and their bootstrap intervals (numpy only)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the split maximizing between-class variance of the histogram."""
    hist, edges = np.histogram(image.ravel(), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def psnr(pred: np.ndarray, clean: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((pred.astype(np.float64) - clean.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def gaussian_filter(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflect borders (the baseline denoiser)."""
    if sigma <= 0:
        return image.astype(np.float32)
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = image.astype(np.float64)
    for axis in range(out.ndim):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(out.ndim)], mode="reflect")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, padded)
    return out.astype(np.float32)


def best_gaussian_sigma(noisy: list[np.ndarray], clean: list[np.ndarray], sigmas=(0.5, 0.75, 1.0, 1.5, 2.0, 3.0)) -> float:
    """The sigma with the best mean PSNR on the given (validation) pairs: the baseline gets tuned too."""
    scores = [np.mean([psnr(gaussian_filter(n, s), c) for n, c in zip(noisy, clean)]) for s in sigmas]
    return float(sigmas[int(np.argmax(scores))])


# ---------------------------------------------------------------- bootstrap intervals over test tiles
# Why tiles: a few test images give a few numbers, too few to tell two methods apart; disjoint tiles of them are
# the resampling units. Every metric is a ratio of per-tile sums (squared error / pixels, intersection / union), so
# the metric of the original tiles is exactly the headline number, and a resample of tiles weighs each pixel once.
# Caveat the callers must report: neighbouring tiles (and consecutive frames) are correlated, so the interval
# assumes more independence than the data has; claims should hold with room to spare, not by a hair.

def tile_slices(shape: tuple[int, ...], tile: int) -> list[tuple[slice, ...]]:
    """Disjoint tiles of ``tile`` pixels along the last two axes (YX) covering the whole image; the last row and
    column of tiles are smaller when the size is not a multiple (no pixel is dropped)."""
    if tile < 1 or len(shape) < 2:
        raise ValueError(f"tile_slices needs a tile >= 1 and an image with >= 2 axes; got tile {tile}, shape {shape}")
    lead = tuple(slice(None) for _ in shape[:-2])
    return [lead + (slice(y, min(y + tile, shape[-2])), slice(x, min(x + tile, shape[-1])))
            for y in range(0, shape[-2], tile) for x in range(0, shape[-1], tile)]


def squared_error_parts(preds, cleans, tile: int) -> np.ndarray:
    """Per tile of every image: (sum of squared errors, pixels), shape [tiles, 2] (tiles of image 0 first)."""
    rows = []
    for p, c in zip(preds, cleans):
        err = (np.asarray(p, np.float64) - np.asarray(c, np.float64)) ** 2
        rows += [(float(err[s].sum()), float(err[s].size)) for s in tile_slices(err.shape, tile)]
    return np.asarray(rows, np.float64).reshape(-1, 2)


def overlap_parts(preds, truths, tile: int) -> np.ndarray:
    """Per tile of every image: (foreground intersection, union) pixels, shape [tiles, 2]."""
    rows = []
    for p, t in zip(preds, truths):
        p, t = np.asarray(p, bool), np.asarray(t, bool)
        rows += [(float((p[s] & t[s]).sum()), float((p[s] | t[s]).sum())) for s in tile_slices(p.shape, tile)]
    return np.asarray(rows, np.float64).reshape(-1, 2)


def pooled_psnr(parts: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """PSNR of all pixels of the tiles (last-but-one axis) from their (squared error, pixels) sums."""
    mse = parts[..., 0].sum(-1) / parts[..., 1].sum(-1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def pooled_iou(parts: np.ndarray) -> np.ndarray:
    """Foreground IoU of all pixels of the tiles from their (intersection, union) sums; 1 where nothing is there."""
    inter, union = parts[..., 0].sum(-1), parts[..., 1].sum(-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


STATISTICS = {"psnr": pooled_psnr, "foreground_iou": pooled_iou}


def bootstrap_indices(n: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """[resamples, n] tile indices drawn with replacement; the same draw is used for every method (paired)."""
    if n < 2:
        raise ValueError(f"a bootstrap over tiles needs >= 2 tiles, got {n}; use more test images or smaller tiles")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]  # a resample of tiles without error has an infinite PSNR
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def bootstrap_interval(parts: np.ndarray, metric: str, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of ``metric`` (a key of STATISTICS) over the tiles of ``parts``."""
    stat = _statistic(metric)
    idx = bootstrap_indices(len(parts), resamples, seed)
    return _interval(stat(np.asarray(parts)[idx]))


def paired_difference(better: np.ndarray, worse: np.ndarray, metric: str, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, list[float]]:
    """(metric(better) - metric(worse), its paired 95% bootstrap interval): both methods' tiles are resampled with the
    same indices, so what the tiles share (content, noise realization) cancels out of the difference."""
    better, worse = np.asarray(better), np.asarray(worse)
    if better.shape != worse.shape:
        raise ValueError(f"paired tiles must match: got {better.shape} and {worse.shape}; compare methods evaluated "
                         "on the same test tiles")
    stat = _statistic(metric)
    idx = bootstrap_indices(len(better), resamples, seed)
    return float(stat(better) - stat(worse)), _interval(stat(better[idx]) - stat(worse[idx]))


def claim(better: str, worse: str, metric: str, parts: dict[str, np.ndarray], resamples: int = 2000,
          seed: int = 0, images: Optional[np.ndarray] = None) -> dict:
    """The record of "``better`` beats ``worse`` on ``metric``": the difference, its paired 95% interval, and
    ``holds`` (the whole interval is above 0). A claim that does not hold is reported, never dropped. With
    ``images`` (the image index of each tile) it also gives the difference on each test image alone: a check that
    does not assume tiles of one image to be independent."""
    diff, ci = paired_difference(parts[better], parts[worse], metric, resamples, seed)
    out = {"better": better, "worse": worse, "metric": metric, "difference": diff, "ci95": ci, "holds": ci[0] > 0}
    if images is not None:
        stat, images = _statistic(metric), np.asarray(images)
        out["per_image"] = [float(stat(parts[better][images == i]) - stat(parts[worse][images == i]))
                            for i in np.unique(images)]
    return out


def _statistic(metric: str):
    if metric not in STATISTICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(STATISTICS)}")
    return STATISTICS[metric]
