"""Resample arrays along chosen axes to exact target lengths (numpy only; the runtime has no scipy dependency).

Pixel centres are aligned (output pixel i sits at input coordinate (i + 0.5) * n_in / n_out - 0.5), so resampling
to the training resolution and back returns the original grid exactly in shape and, for nearest neighbour, maps
every output pixel to the input pixel covering it. `linear` is separable (bi/trilinear) interpolation for images
and float outputs; `nearest` keeps label values intact for integer/boolean outputs and masks. `resample_window`
computes a window of the result from the input's rows between its coordinates (images larger than memory,
commands/rescaled.py) with the very same arithmetic.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def _coordinates(n_in: int, n_out: int) -> np.ndarray:
    return np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)


def _step(out: np.ndarray, axis: int, n_in: int, n_out: int, order: str, rows: slice = slice(None),
          offset: int = 0) -> np.ndarray:
    """Output rows `rows` of resampling `axis` (n_in -> n_out long) of `out`, whose index 0 along `axis` is input
    row `offset` (a band of rows: resample_band); the whole axis by default."""
    pos = _coordinates(n_in, n_out)[rows]
    if order == "nearest" or n_in == 1:
        return np.take(out, np.floor(pos + 0.5).astype(np.intp).clip(0, n_in - 1) - offset, axis=axis)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    shape = [1] * out.ndim
    shape[axis] = len(pos)
    w = (pos - lo).astype(np.float32 if out.dtype != np.float64 else np.float64).reshape(shape)
    a = np.take(out, lo - offset, axis=axis)
    b = np.take(out, hi - offset, axis=axis)
    return a + (b - a) * w if out.dtype.kind == "f" else (a * (1 - w) + b * w)


def resample(data: np.ndarray, lengths: Mapping[int, int], order: str = "linear") -> np.ndarray:
    """`data` with axis i resampled to lengths[i] for every i given; order 'linear' or 'nearest'."""
    if order not in ("linear", "nearest"):
        raise ValueError(f"order must be 'linear' or 'nearest', got {order!r}")
    out = data
    for axis, n_out in lengths.items():
        if n_out != out.shape[axis]:
            out = _step(out, axis, out.shape[axis], n_out, order)
    return out.astype(data.dtype, copy=False) if data.dtype.kind == "f" else out


def band_rows(n_in: int, n_out: int, order: str, start: int, stop: int) -> tuple[int, int]:
    """[lo, hi): the input rows that output rows start:stop of resampling an axis n_in -> n_out read."""
    if n_out == n_in:
        return start, stop
    pos = _coordinates(n_in, n_out)[start:stop]
    if order == "nearest" or n_in == 1:
        rows = np.floor(pos + 0.5).astype(np.intp).clip(0, n_in - 1)
        return int(rows.min()), int(rows.max()) + 1
    lo = np.floor(pos).astype(np.intp)
    return int(lo.min()), min(int(lo.max()) + 1, n_in - 1) + 1


def resample_window(block: np.ndarray, lengths: Mapping[int, int], order: str,
                    window: Mapping[int, tuple[int, int, int, int]]) -> np.ndarray:
    """A window of resample(data, lengths, order) from `block`, a window of `data`: `window` maps an axis to
    (n_in, start, stop, offset): output indices start:stop along it, of data's n_in, while `block` holds data's
    indices offset.. there (at least band_rows(n_in, lengths[axis], order, start, stop)); axes not in `window`
    are whole. Bit-identical to the whole array's result: the same coordinates, steps, axis order and dtypes."""
    if order not in ("linear", "nearest"):
        raise ValueError(f"order must be 'linear' or 'nearest', got {order!r}")
    out = block
    for axis, (n_in, start, stop, offset) in window.items():
        if lengths.get(axis, n_in) == n_in:  # not resampled: the window's own indices
            out = np.take(out, np.arange(start - offset, stop - offset), axis=axis)
    for axis, n_out in lengths.items():
        if axis in window:
            n_in, start, stop, offset = window[axis]
            if n_out != n_in:
                out = _step(out, axis, n_in, n_out, order, slice(start, stop), offset)
        elif n_out != out.shape[axis]:
            out = _step(out, axis, out.shape[axis], n_out, order)
    return out.astype(block.dtype, copy=False) if block.dtype.kind == "f" else out


def order_for(data: np.ndarray) -> str:
    """Nearest neighbour for labels and masks (int, uint, bool), linear for float data."""
    return "linear" if data.dtype.kind == "f" else "nearest"
