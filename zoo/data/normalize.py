"""Percentile normalization, per image (CSBDeep convention: 1 / 99.8 by default).

Why percentiles and not min/max: a few hot pixels or a dead region must not set the scale. The percentiles used are
returned so training can record them (run dir statistics) and the exporter can write the same op into the package.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from biozoo.runtime import InputError


def percentile_normalize(image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6,
                         axes: Optional[Union[int, Sequence[int]]] = None, clip: bool = False,
                         ) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the `low` / `high` percentiles of `image` to 0 / 1; return (float32 image, (p_low, p_high)).

    `axes=None` uses all pixels (per image); a flat image (p_high == p_low) maps to ~0 instead of dividing by
    zero, thanks to `eps`. Values beyond the percentiles are kept (e.g. > 1) unless `clip`.
    With `axes` given the percentiles are arrays (e.g. per channel) and are returned as such.
    """
    if not 0 <= low < high <= 100:
        raise InputError(f"percentiles ({low}, {high}) must satisfy 0 <= low < high <= 100, e.g. (1, 99.8)")
    x = np.asarray(image)
    if x.size == 0:
        raise InputError("cannot normalize an empty image")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError("image contains NaN or Inf values; clean or mask them before normalizing")
    keep = axes is not None
    lo = np.percentile(x, low, axis=axes, keepdims=keep).astype(np.float32)
    hi = np.percentile(x, high, axis=axes, keepdims=keep).astype(np.float32)
    out = (x - lo) / (hi - lo + np.float32(eps))
    if clip:
        out = np.clip(out, 0.0, 1.0)
    if keep:
        return out.astype(np.float32, copy=False), (np.squeeze(lo), np.squeeze(hi))  # type: ignore[return-value]
    return out.astype(np.float32, copy=False), (float(lo), float(hi))
