"""Reproducible Poisson-Gaussian noise: semi-synthetic noisy/clean pairs for CARE and Noise2Void.

Why semi-synthetic: the wheels that ship real nuclei images ship no noisy/clean acquisitions. The clean reference is
a real image, optionally averaged over `bin` x `bin` pixels (YX) first, percentile-normalized and clipped to [0, 1];
the noisy input simulates a far worse camera on it: y = gain * Poisson(x / gain) + N(0, sigma^2), so its variance is
gain * x + sigma^2 (shot noise plus read noise).

The reference is not noise-free: it keeps the real acquisition's own noise, divided by `bin` when binned (a mean of
bin^2 pixels with independent noise). noise.json records an estimate of that residual noise in the reference's
units (`reference.noise_sigma_by_intensity_decile`, see `noise_sigma`), the PSNR a perfect denoiser would score
against such a reference (`psnr_ceiling_db`), and the added noise at 0 and 1. A comparison is
only meaningful well below that ceiling. Every file gets its own seed derived from (seed, file name), so adding a
file never changes another file's noise.
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
# what make_noisy_pairs compares to reuse a folder (the rest of noise.json is derived from these)
SETTINGS = ("gain", "sigma", "bin", "seed", "percentiles", "source", "files")


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


def bin_mean(image: np.ndarray, bin: int) -> np.ndarray:
    """Mean over disjoint bin x bin blocks of the last two axes (YX); a remainder narrower than a block is dropped."""
    a = np.asarray(image, np.float64)
    if bin == 1:
        return a
    if bin < 1 or a.ndim < 2 or min(a.shape[-2:]) < bin:
        raise InputError(f"cannot bin an image of shape {a.shape} by {bin}; expected bin >= 1 and at least {bin} "
                         "pixels along Y and X")
    h, w = a.shape[-2] // bin * bin, a.shape[-1] // bin * bin
    a = a[..., :h, :w].reshape(*a.shape[:-2], h // bin, bin, w // bin, bin)
    return a.mean(axis=(-3, -1))


def noise_sigma(image: np.ndarray, groups: int = 10) -> list[float]:
    """Robust estimates of the std of the noise in `image`, one per intensity decile (dimmest first).

    The Haar diagonal detail (a - b - c + d) / 2 of 2x2 blocks has the variance of white noise and cancels smooth
    signal; its median absolute deviation (x 1.4826) within the blocks of one decile of mean intensity estimates
    that decile's noise (shot noise grows with intensity). Fine texture (nuclei edges) leaks into the brightest
    deciles, so those are upper bounds; spatially correlated noise is underestimated.
    """
    a = np.asarray(image, np.float64)
    h, w = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    b = a[..., :h, :w]
    d = ((b[..., 0::2, 0::2] - b[..., 0::2, 1::2] - b[..., 1::2, 0::2] + b[..., 1::2, 1::2]) / 2).ravel()
    m = ((b[..., 0::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 0::2] + b[..., 1::2, 1::2]) / 4).ravel()
    order = np.argsort(m, kind="stable")
    return [float(1.4826 * np.median(np.abs(g - np.median(g)))) for g in np.array_split(d[order], groups)]


def make_noisy_pairs(src_dir: PathLike, dst_dir: PathLike, gain: float = 1.0, sigma: float = 0.05, seed: int = 0,
                     percentiles: tuple[float, float] = (1.0, 99.8), bin: int = 1) -> Path:
    """Write `dst/images` (noisy inputs) and `dst/targets` (clean references) from `src/images`; return `dst`.

    The reference is `src`'s image binned by `bin` (`bin_mean`), percentile-normalized and clipped to [0, 1] (photon
    counts cannot be negative). Idempotent: an existing `dst` with the same settings is reused, others are an error.
    """
    import tifffile

    src, dst = Path(src_dir), Path(dst_dir)
    files = sorted(p for p in (src / "images").glob("*.tif*") if not p.name.startswith("."))
    if not files:
        raise InputError(f"{src / 'images'} holds no .tif/.tiff files to make noisy pairs from")
    settings = {"gain": gain, "sigma": sigma, "bin": int(bin), "seed": seed, "percentiles": list(percentiles),
                "source": str(src.resolve()), "files": [p.name for p in files]}
    if (dst / "noise.json").is_file():
        old = json.loads((dst / "noise.json").read_text())
        if {k: old.get(k, 1 if k == "bin" else None) for k in SETTINGS} == settings:
            return dst
        raise InputError(f"{dst} holds noisy pairs made with other settings or files (got {settings}); delete it to "
                         "remake them")
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "targets").mkdir(parents=True, exist_ok=True)
    residual = []
    for p in files:
        binned = bin_mean(tifffile.imread(p), bin)
        clean, (lo, hi) = percentile_normalize(binned, *percentiles, clip=True)
        residual.append(np.asarray(noise_sigma(binned)) / (hi - lo + 1e-6))  # in the reference's [0, 1] units
        tifffile.imwrite(dst / "targets" / p.name, clean, compression=None)
        tifffile.imwrite(dst / "images" / p.name, add_poisson_gaussian(clean, gain, sigma, seed, p.name),
                         compression=None)
    deciles = np.median(np.asarray(residual), axis=0)
    mse = float(np.mean(deciles**2))  # each decile holds a tenth of the pixels
    info = {"kind": "semi-synthetic",
            "model": f"x = clip(normalize(mean of {bin}x{bin} pixels of the real image), 0, 1); "
                     "y = gain * Poisson(x / gain) + N(0, sigma^2)",
            **settings,
            "reference": {"noise_sigma_by_intensity_decile": [round(float(v), 6) for v in deciles],
                          "noise_sigma_rms": float(np.sqrt(mse)),
                          "psnr_ceiling_db": float(-10 * np.log10(max(mse, 1e-12))),
                          "note": "the real acquisition's own noise left in the clean reference (noise_sigma, median "
                                  "over files, in the reference's [0, 1] units; the brightest deciles include "
                                  "texture): a perfect denoiser scores about psnr_ceiling_db against it"},
            "added_noise_sigma": {"at_0": float(sigma), "at_1": float(np.sqrt(gain + sigma**2))}}
    (dst / "noise.json").write_text(json.dumps(info, indent=1) + "\n")
    return dst
