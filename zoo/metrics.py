"""Test metrics and the classical baselines they are reported beside (numpy only)."""
from __future__ import annotations

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
