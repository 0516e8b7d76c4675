"""Seeded augmentations that keep image and target aligned: flips, rot90 in YX, intensity jitter.

Why only these: they are exact (no interpolation, so instance boundaries and class maps stay valid) and they
respect the microscope's symmetries. Z is never flipped into YX (anisotropic voxels). Every random number comes from
the caller's numpy Generator, so a patch is a pure function of (data, seed): resumable and worker-independent.
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
