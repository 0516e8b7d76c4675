"""Percentile estimates for the input checks, from one fixed-seed sample of pixels per input, shared by the checks.

The checks compare percentiles against loose limits (half the training p_low..p_high range, a 2x spread ratio), so
an estimate is enough; the normalization the package's spec defines is computed exactly elsewhere (ops/stats.py)
and never uses these. The sample is jittered: the flat index range is cut into n equal strata and one position is
drawn uniformly in each (positions come out sorted, so reading them is one forward pass through memory, and no
periodic structure of the image can alias with a stride). The n indicators 1[value <= t] are independent and their
mean is the image's fraction <= t, so by Hoeffding's inequality the empirical fraction is off by more than eps with
probability at most 2 exp(-2 n eps^2), for each percentile: with n = 2^16 an estimated percentile's rank is off by
less than 1.1 percentile points except with probability < 1e-6, for any image (`rank_error_bound`); the checks'
limits are tens of percentile points wide. (2^18 values would cost ~10x more time, cache misses included, for a
bound of 0.5 points that changes no verdict.) The seed is
fixed, so the same input gives the same numbers on every run. Inputs with at most n (valid) values use all of them:
the percentiles are then exact, as before.

`PixelSample` draws the positions once per array shape; the raw input and the normalized input (same shape) are read
at the same positions, so one draw serves the batch-effects and the distribution-shift check.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

SAMPLE_SIZE = 1 << 16
SEED = 0x5EED


def rank_error_bound(n: int, confidence: float = 1e-6) -> float:
    """The eps such that a percentile estimated from an n-value sample is within eps in rank with probability
    >= 1 - confidence (Hoeffding, see the module docstring)."""
    return math.sqrt(math.log(2.0 / confidence) / (2.0 * n))


class PixelSample:
    """Fixed-seed flat positions into arrays of one shape, optionally restricted to a valid mask.

    `valid` broadcasts against the shape (True = pixel counted). Positions are drawn once and reused by `values`.
    """

    def __init__(self, shape: Sequence[int], valid: Optional[np.ndarray] = None, size: int = SAMPLE_SIZE,
                 seed: int = SEED):
        self.shape = tuple(int(n) for n in shape)
        self.size = size
        total = math.prod(self.shape)
        full_valid = None if valid is None else np.broadcast_to(valid, self.shape)
        n_valid = total if full_valid is None else int(np.count_nonzero(valid)) * (total // max(valid.size, 1))
        self.exact = n_valid <= size
        if self.exact:  # small input: every (valid) value, exact percentiles
            self.positions = None if full_valid is None else np.flatnonzero(full_valid)
            return
        rng = np.random.default_rng(seed)
        if full_valid is None:
            self.positions = _jittered(rng, total, size)
            return
        # draw among all positions, keep the valid ones: as uniform over the valid pixels as drawing among them
        drawn = _jittered(rng, total, min(total, int(math.ceil(size * total / n_valid))))
        self.positions = drawn[full_valid[np.unravel_index(drawn, self.shape)]]

    def values(self, x: np.ndarray, where: Optional[tuple[int, int]] = None) -> np.ndarray:
        """The sampled values of x (float64), x of this sample's shape; `where` = (axis, index) keeps only the
        positions with that index along that axis (one batch sample of a pooled draw)."""
        if x.shape != self.shape:
            raise ValueError(f"PixelSample drawn for shape {self.shape}, got an array of shape {x.shape}")
        if self.positions is None:
            chosen = x if where is None else np.take(x, [where[1]], axis=where[0])
            return chosen.astype(np.float64).ravel()
        positions = self.positions
        if where is not None:
            positions = positions[np.unravel_index(positions, self.shape)[where[0]] == where[1]]
        flat = x.reshape(-1) if x.flags.c_contiguous else None
        picked = np.take(flat, positions) if flat is not None else x[np.unravel_index(positions, self.shape)]
        return picked.astype(np.float64)

    def percentiles(self, x: np.ndarray, qs: Sequence[float], where: Optional[tuple[int, int]] = None
                    ) -> np.ndarray:
        """Estimated percentiles (0..100) of x's (valid) values; exact when the input is small."""
        return np.percentile(self.values(x, where), list(qs))


def _jittered(rng: np.random.Generator, total: int, n: int) -> np.ndarray:
    """n sorted positions in [0, total): one uniform draw in each of n equal strata."""
    edges = (np.arange(n + 1, dtype=np.float64) * (total / n))
    positions = (edges[:-1] + rng.random(n) * (edges[1:] - edges[:-1])).astype(np.int64)
    return np.minimum(positions, total - 1)


def estimate_percentiles(x: np.ndarray, qs: Sequence[float], valid: Optional[np.ndarray] = None,
                         size: int = SAMPLE_SIZE) -> np.ndarray:
    """One-off estimate (see the module docstring for the error bound)."""
    return PixelSample(x.shape, valid, size).percentiles(x, qs)
