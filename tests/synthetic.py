"""Synthetic microscopy-like data shared by the zoo and exporter tests (bright ellipses on a noisy background)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def blob_folder(root: Path, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    for k in range(n):
        lab = np.zeros((size, size), np.uint16)
        img = rng.normal(100, 5, (size, size))
        for i in range(int(rng.integers(3, 6))):
            cy, cx = rng.uniform(8, size - 8, 2)
            ry, rx = rng.uniform(3, 7, 2)
            blob = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & (lab == 0)
            lab[blob] = i + 1
            img[blob] += rng.uniform(80, 150)
        tifffile.imwrite(root / "images" / f"s{k:02d}.tif", img.astype(np.uint16))
        tifffile.imwrite(root / "masks" / f"s{k:02d}.tif", lab)
    return root


def ellipse_labels(shape=(96, 96), count: int = 12, seed: int = 0, margin: int = 0, radii=(3, 11)) -> np.ndarray:
    """Random touching/overlapping ellipses, later ones on top: a label image of star-convex-ish nuclei, centres at
    least `margin` px inside the image, semi-axes uniform in `radii`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i in range(1, count + 1):
        cy, cx = rng.uniform(margin, shape[0] - margin), rng.uniform(margin, shape[1] - margin)
        a, b, t = rng.uniform(*radii), rng.uniform(*radii), rng.uniform(0, np.pi)
        u, v = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t), -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        lab[(u / a) ** 2 + (v / b) ** 2 < 1] = i
    return lab
