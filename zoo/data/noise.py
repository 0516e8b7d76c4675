"""Reproducible Poisson-Gaussian noise: semi-synthetic noisy/clean pairs for CARE and Noise2Void.

Why semi-synthetic: the wheels that ship real nuclei images ship no noisy/clean acquisitions. We take the real image
(percentile-normalized to ~[0, 1]) as the clean target and simulate the camera: y = gain * Poisson(x / gain) +
N(0, sigma^2), so the variance is gain * x + sigma^2 (shot noise plus read noise). Every file gets its own seed derived
from (seed, file name), so adding a file never changes another file's noise. Outputs are documented as semi-synthetic
in noise.json.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Union

import numpy as np

from biozoo.runtime import InputError

from .normalize import percentile_normalize

PathLike = Union[str, Path]


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])


def add_poisson_gaussian(clean: np.ndarray, gain: float = 1.0, sigma: float = 0.05, seed: int = 0,
                         key: str = "") -> np.ndarray:
    """Noisy float32 copy of `clean` (>= 0, typically normalized to [0, 1]); same (seed, key) -> same noise.

    `gain` is the intensity of one photon (larger = noisier shot noise; 0 = no shot noise); `sigma` the read noise.
    """
    if gain < 0 or sigma < 0:
        raise InputError(f"noise gain {gain} and sigma {sigma} must be >= 0")
    x = np.asarray(clean, dtype=np.float64)
    if not np.isfinite(x).all():
        raise InputError("clean image contains NaN or Inf")
    rng = _rng(seed, key)
    x = np.clip(x, 0.0, None)
    shot = gain * rng.poisson(x / gain) if gain > 0 else x
    read = rng.normal(0.0, sigma, size=x.shape) if sigma > 0 else 0.0
    return np.asarray(shot + read, dtype=np.float32)


def make_noisy_pairs(src_dir: PathLike, dst_dir: PathLike, gain: float = 1.0, sigma: float = 0.05, seed: int = 0,
                     percentiles: tuple[float, float] = (1.0, 99.8)) -> Path:
    """Write `dst/images` (noisy inputs) and `dst/targets` (clean, normalized) from `src/images`; return `dst`.

    The clean image is clipped to [0, 1] after percentile normalization (photon counts cannot be negative).
    Idempotent: an existing `dst` with the same parameters is reused, other parameters are an error.
    """
    import tifffile

    src, dst = Path(src_dir), Path(dst_dir)
    files = sorted(p for p in (src / "images").glob("*.tif*") if not p.name.startswith("."))
    if not files:
        raise InputError(f"{src / 'images'} holds no .tif/.tiff files to make noisy pairs from")
    info = {"kind": "semi-synthetic", "model": "y = gain * Poisson(x / gain) + N(0, sigma^2); x = clean in [0, 1]",
            "gain": gain, "sigma": sigma, "seed": seed, "percentiles": list(percentiles),
            "source": str(src.resolve()), "files": [p.name for p in files]}
    if (dst / "noise.json").is_file():
        old = json.loads((dst / "noise.json").read_text())
        if {k: old.get(k) for k in info} == info:
            return dst
        raise InputError(f"{dst} holds noisy pairs made with other settings or files; delete it to remake them")
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "targets").mkdir(parents=True, exist_ok=True)
    for p in files:
        clean, _ = percentile_normalize(tifffile.imread(p), *percentiles, clip=True)
        tifffile.imwrite(dst / "targets" / p.name, clean, compression=None)
        tifffile.imwrite(dst / "images" / p.name, add_poisson_gaussian(clean, gain, sigma, seed, p.name),
                         compression=None)
    (dst / "noise.json").write_text(json.dumps(info, indent=1) + "\n")
    return dst
