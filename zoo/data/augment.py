"""Seeded augmentations that keep image and target aligned: flips, rot90 in YX, intensity jitter (`Augment`), and
for models meant to generalize across microscopes a random zoom (`zoom_pair`) and photometric changes (`Photometric`).

Why `Augment` has only flips, rot90 and a jitter: they are exact (no interpolation, so instance boundaries and class
maps stay valid) and they respect the microscope's symmetries. The zoom interpolates the image (linearly, with a
Gaussian prefilter when it shrinks) and takes the labels by nearest neighbour from the same coordinates, so a label
image stays an instance map and stays aligned to within half a pixel; targets derived from labels (StarDist's) must
then be computed from the zoomed labels, never interpolated. Z is never flipped into YX (anisotropic voxels).
Every random number comes from the caller's numpy Generator, so a patch is a pure function of (data, seed):
resumable and worker-independent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Augment:
    """`intensity` = relative jitter: x -> x * U(1 - i, 1 + i) + U(-i, i) (0 turns it off)."""

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1

    def __call__(self, rng: np.random.Generator, image: np.ndarray, target: Optional[np.ndarray],
                 jitter_target: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Apply one random draw to `image` (..., Y, X) and the same geometry to `target`.

        `jitter_target` also applies the intensity jitter to the target: right for CARE (the pair's relation must
        stay intact), wrong for class maps.
        """
        arrays = [image] if target is None else [image, target]
        y_ax, x_ax = image.ndim - 2, image.ndim - 1
        if self.flips:
            for ax in (y_ax, x_ax):
                if rng.random() < 0.5:
                    arrays = [np.flip(a, axis=ax) for a in arrays]
        if self.rot90:
            k = int(rng.integers(4))
            square = image.shape[y_ax] == image.shape[x_ax]
            if k and (square or k == 2):  # a non-square patch keeps its shape only under 180 degrees
                arrays = [np.rot90(a, k, axes=(y_ax, x_ax)) for a in arrays]
        if self.intensity > 0:
            scale = 1.0 + rng.uniform(-self.intensity, self.intensity)
            shift = rng.uniform(-self.intensity, self.intensity)
            arrays[0] = arrays[0] * np.float32(scale) + np.float32(shift)
            if jitter_target and target is not None:
                arrays[1] = arrays[1] * np.float32(scale) + np.float32(shift)
        arrays = [np.ascontiguousarray(a) for a in arrays]
        return arrays[0], (arrays[1] if target is not None else None)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (reflect border), numpy only; sigma in pixels (<= 0: a copy)."""
    out = np.asarray(image, np.float32)
    if sigma <= 0:
        return out.copy()
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-t**2 / (2 * sigma**2))
    k = (k / k.sum()).astype(np.float32)
    for axis in (out.ndim - 2, out.ndim - 1):
        n = out.shape[axis]
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect" if n > r else "symmetric")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * np.take(padded, np.arange(i, i + n), axis=axis)
        out = acc
    return out


def zoom_coordinates(start: float, count: int, scale: float) -> np.ndarray:
    """Source coordinates (pixel centres) of ``count`` output pixels of a zoom by ``scale`` whose first pixel's
    left edge lies at source position ``start``: output pixel k covers source [start + k / s, start + (k + 1) / s)."""
    return start + (np.arange(count) + 0.5) / scale - 0.5


def zoom_pair(image: np.ndarray, labels: np.ndarray, coords_y: np.ndarray, coords_x: np.ndarray, scale: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of a 2D pair sampled at the source coordinates ``coords_y`` x ``coords_x`` (see
    ``zoom_coordinates``): the image bilinearly (Gaussian prefilter of sigma (1/scale - 1) / 2 when shrinking, the
    larger pixels of a coarser camera), the labels by nearest neighbour from the same coordinates: the same ids, no
    new or mixed ones. Coordinates beyond the image take its edge pixels."""
    if image.ndim != 2 or image.shape != labels.shape:
        raise ValueError(f"zoom_pair needs one 2D image and label image of one shape; got {image.shape} and "
                         f"{labels.shape}")
    # only the source window the coordinates touch (+ the prefilter's reach) is filtered and read
    sigma = (1.0 / scale - 1.0) / 2 if scale < 1 else 0.0
    reach = int(np.ceil(3 * sigma)) + 2
    lo = [max(0, int(np.floor(c.min())) - reach) for c in (coords_y, coords_x)]
    hi = [min(n, int(np.ceil(c.max())) + reach + 1) for c, n in zip((coords_y, coords_x), image.shape)]
    window = np.asarray(image[lo[0]:hi[0], lo[1]:hi[1]], np.float32)
    if sigma > 0:
        window = gaussian_blur(window, sigma)
    cy, cx = coords_y - lo[0], coords_x - lo[1]
    ny, nx = window.shape

    def corners(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip(c, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        return i0, np.minimum(i0 + 1, n - 1), (c - i0).astype(np.float32)

    y0, y1, wy = corners(cy, ny)
    x0, x1, wx = corners(cx, nx)
    rows = window[y0] * (1 - wy)[:, None] + window[y1] * wy[:, None]
    zoomed = rows[:, x0] * (1 - wx)[None] + rows[:, x1] * wx[None]
    ly = np.clip(np.floor(coords_y + 0.5).astype(np.int64), 0, image.shape[0] - 1)
    lx = np.clip(np.floor(coords_x + 0.5).astype(np.int64), 0, image.shape[1] - 1)
    return np.ascontiguousarray(zoomed, np.float32), np.ascontiguousarray(labels[np.ix_(ly, lx)])


@dataclass(frozen=True)
class Photometric:
    """Gamma, additive Gaussian noise and blur of a normalized image, each on half of the draws (all off by default;
    an all-off instance draws no random number). `gamma` = (low, high), log-uniform; `noise` = the largest sigma,
    sigma ~ U(0, noise); `blur` = the largest Gaussian sigma in pixels, sigma ~ U(0, blur).
    Order: blur (optics), gamma (detector response), noise (after the optics, as a camera adds it)."""

    gamma: Optional[tuple[float, float]] = None
    noise: float = 0.0
    blur: float = 0.0

    @property
    def active(self) -> bool:
        return self.gamma is not None or self.noise > 0 or self.blur > 0

    def __call__(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        x = np.asarray(image, np.float32)
        if self.blur > 0 and rng.random() < 0.5:
            x = gaussian_blur(x, float(rng.uniform(0, self.blur)))
        if self.gamma is not None and rng.random() < 0.5:
            g = float(np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
            x = (np.sign(x) * np.abs(x) ** np.float32(g)).astype(np.float32)
        if self.noise > 0 and rng.random() < 0.5:
            x = x + rng.normal(0, rng.uniform(0, self.noise), x.shape).astype(np.float32)
        return np.ascontiguousarray(x, np.float32)
