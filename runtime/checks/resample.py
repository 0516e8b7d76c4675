"""Resample arrays along chosen axes to exact target lengths (numpy only; the runtime has no scipy dependency).

Pixel centres are aligned (output pixel i sits at input coordinate (i + 0.5) * n_in / n_out - 0.5), so resampling
to the training resolution and back returns the original grid exactly in shape and, for nearest neighbour, maps
every output pixel to the input pixel covering it. `linear` is separable (bi/trilinear) interpolation for images
and float outputs; `nearest` keeps label values intact for integer/boolean outputs and masks.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def _coordinates(n_in: int, n_out: int) -> np.ndarray:
    return np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)


def resample(data: np.ndarray, lengths: Mapping[int, int], order: str = "linear") -> np.ndarray:
    """`data` with axis i resampled to lengths[i] for every i given; order 'linear' or 'nearest'."""
    if order not in ("linear", "nearest"):
        raise ValueError(f"order must be 'linear' or 'nearest', got {order!r}")
    out = data
    for axis, n_out in lengths.items():
        n_in = out.shape[axis]
        if n_out == n_in:
            continue
        pos = _coordinates(n_in, n_out)
        if order == "nearest" or n_in == 1:
            out = np.take(out, np.floor(pos + 0.5).astype(np.intp).clip(0, n_in - 1), axis=axis)
            continue
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        shape = [1] * out.ndim
        shape[axis] = n_out
        w = (pos - lo).astype(np.float32 if out.dtype != np.float64 else np.float64).reshape(shape)
        a = np.take(out, lo, axis=axis)
        b = np.take(out, hi, axis=axis)
        out = a + (b - a) * w if out.dtype.kind == "f" else (a * (1 - w) + b * w)
    return out.astype(data.dtype, copy=False) if data.dtype.kind == "f" else out


def order_for(data: np.ndarray) -> str:
    """Nearest neighbour for labels and masks (int, uint, bool), linear for float data."""
    return "linear" if data.dtype.kind == "f" else "nearest"
