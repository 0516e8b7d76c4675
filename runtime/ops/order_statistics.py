"""Quantiles as numpy computes them, from the order statistics they read: one home for the ranks and the
interpolation, shared by the in-memory statistics (stats.py) and the streamed ones (streamed_stats.py).

In memory, `quantiles` selects the ranks by successive partitions of one copy, each of the part above the last rank
found (np.quantile partitions the whole copy once for all its ranks, which numpy's introselect does about twice as
slowly as the successive ones: 46 ms against 23 ms for scale_range's two percentiles of a 2048^2 float32 image).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import InputError

FAST_METHODS = ("linear", "inverted_cdf")


def quantile_ranks(n: int, q: float, method: str) -> tuple[tuple[int, int], float]:
    """The 0-based ranks np.quantile reads for `q` of n values, and its weight between them."""
    if method == "linear":
        virtual = (n - 1) * q
        lo = int(np.floor(virtual))
        return (max(0, min(lo, n - 1)), max(0, min(lo + 1, n - 1))), virtual - lo
    if method == "inverted_cdf":
        rank = max(0, min(n - 1, int(np.ceil(n * q)) - 1))
        return (rank, rank), 0.0
    raise InputError(f"quantile method '{method}' cannot be streamed; biozoo streams 'linear' and 'inverted_cdf'")


def interpolate(a: np.floating, b: np.floating, gamma: float, method: str) -> float:
    """np.quantile's value between the order statistics a <= b, for quantiles given as an array (float64
    arithmetic, as bioimageio.core asks for them; a lone Python float would keep float32 data in float32)."""
    if method == "inverted_cdf":
        return float(a)
    diff = np.float64(b - a)  # numpy's _lerp: the difference in the data's dtype, the rest in float64 (the
    a, b = np.float64(a), np.float64(b)  # weights' dtype), the far end's form above one half
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def quantiles(data: np.ndarray, qs: Sequence[float], idx: tuple[int, ...], method: str) -> np.ndarray:
    """np.quantile(data, qs, axis=idx, keepdims=True, method=method) as float64, the same values; float32 data with
    the two methods biozoo streams go through successive partitions, anything else through numpy itself."""
    data = np.asarray(data)
    if data.dtype != np.float32 or method not in FAST_METHODS or not data.size:
        return np.asarray(np.quantile(data, list(qs), axis=idx, keepdims=True, method=method), dtype=np.float64)
    reduced = sorted(i % data.ndim for i in idx)
    kept_shape = [1 if i in reduced else n for i, n in enumerate(data.shape)]
    moved = np.moveaxis(data, reduced, list(range(data.ndim - len(reduced), data.ndim)))
    rows = moved.reshape(math.prod(kept_shape), -1)
    out = np.empty((len(qs), rows.shape[0]), dtype=np.float64)
    for g in range(rows.shape[0]):
        out[:, g] = _row_quantiles(rows[g], qs, method)
    return out.reshape(len(qs), *kept_shape)


def _row_quantiles(row: np.ndarray, qs: Sequence[float], method: str) -> list[float]:
    values = np.array(row, dtype=np.float32)  # a copy, partitioned in place
    n = values.size
    plans = [quantile_ranks(n, q, method) for q in qs]
    found, start = {}, 0  # values[start:] holds everything not yet placed, all >= the ranks found
    for r in sorted({r for pair, _ in plans for r in pair}):
        if r == start and start:  # the next rank after one found: the smallest of the rest, swapped into place
            j = start + int(np.argmin(values[start:]))
            values[[r, j]] = values[[j, r]]
        else:
            values[start:].partition(r - start)
        found[r], start = values[r], r + 1
    if np.isnan(values[min(found):]).any():  # NaN sorts above every number: numpy's quantile is then NaN
        return [math.nan] * len(qs)
    return [interpolate(found[lo], found[hi], gamma, method) for (lo, hi), gamma in plans]
