"""Sample and dataset statistics for the processing ops, with the spec's semantics.

An op's `axes` name the axes reduced over. `axes` absent or containing 'batch' means dataset statistics
(bioimage.io format 0.5); otherwise per-sample statistics. As in bioimageio.core, a chain's statistics are taken
from the tensors as they were when the chain started: the raw inputs for preprocessing, the raw network outputs
(and raw inputs, for reference tensors) for postprocessing.

Dataset statistics come either from the data of the current call (all samples in it jointly) or from a
`DatasetStatistics` accumulated over many inputs (e.g. every file given to `biozoo predict`): means and variances
pooled exactly, quantiles averaged over samples (the estimate bioimageio.core uses too).

Masks (masked normalization, see masking.py): a boolean "valid" array per tensor, broadcastable to it, restricts
every statistic of that tensor to the valid elements; without a mask the code path is the unmasked one, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError

BATCH = "batch"


@dataclass(frozen=True)
class Measure:
    """One statistic an op needs: of which tensor, which kind, reduced over which axes."""

    tensor_id: str
    kind: str  # mean | std | quantile
    axes: Optional[tuple[str, ...]]  # None: all axes
    q: float = 0.0
    method: str = "linear"  # numpy quantile method; bioimageio.core uses inverted_cdf for clip percentiles

    @property
    def is_dataset(self) -> bool:
        return self.axes is None or BATCH in self.axes


@dataclass
class _Pooled:
    count: float = 0.0
    mean: Optional[np.ndarray] = None
    m2: Optional[np.ndarray] = None
    quantile_sum: Optional[np.ndarray] = None
    samples: int = 0


class DatasetStatistics:
    """Dataset measures accumulated over many samples; pass to Model.predict(..., dataset_stats=...)."""

    def __init__(self, measures: Iterable[Measure]):
        self.measures = tuple(dict.fromkeys(m for m in measures if m.is_dataset))
        self._acc: dict[Measure, _Pooled] = {m: _Pooled() for m in self.measures}

    def update(self, tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]],
               masks: Optional[Mapping[str, np.ndarray]] = None) -> None:
        """Add one call's tensors; `masks` (bool, broadcastable, True = valid) exclude pixels from the statistics."""
        for m, acc in self._acc.items():
            if m.tensor_id not in tensors:
                continue
            data, axes = tensors[m.tensor_id]
            idx = _reduce_axes(m.axes, axes, m.tensor_id)
            x = np.asarray(data, dtype=np.float64)
            valid = None if masks is None else masks.get(m.tensor_id)
            if m.kind == "quantile":
                value = (np.quantile(x, m.q, axis=idx, keepdims=True) if valid is None
                         else masked_reduce(x, valid, idx, lambda v: np.quantile(v, m.q)))
                acc.quantile_sum = value if acc.quantile_sum is None else acc.quantile_sum + value
                acc.samples += 1
                continue
            if valid is None:
                n = float(np.prod([x.shape[i] for i in idx]))
                mean = x.mean(axis=idx, keepdims=True)
                m2 = ((x - mean) ** 2).sum(axis=idx, keepdims=True)
            else:
                w = np.broadcast_to(valid, x.shape)
                n = w.sum(axis=idx, keepdims=True).astype(np.float64)
                if not n.all():
                    raise InputError(f"the mask of '{m.tensor_id}' leaves no valid pixel for its statistics")
                mean = np.where(w, x, 0.0).sum(axis=idx, keepdims=True) / n
                m2 = np.where(w, (x - mean) ** 2, 0.0).sum(axis=idx, keepdims=True)
            if acc.mean is None:
                acc.count, acc.mean, acc.m2 = n, mean, m2
            else:  # Chan et al. pooled update
                total = acc.count + n
                delta = mean - acc.mean
                acc.mean = acc.mean + delta * n / total
                acc.m2 = acc.m2 + m2 + delta**2 * acc.count * n / total
                acc.count = total

    def value(self, m: Measure) -> Optional[np.ndarray]:
        acc = self._acc.get(m)
        if acc is None:
            return None
        if m.kind == "quantile":
            return None if acc.quantile_sum is None else acc.quantile_sum / acc.samples
        if acc.mean is None:
            return None
        return acc.mean if m.kind == "mean" else np.sqrt(acc.m2 / acc.count)

    def as_dict(self) -> dict[str, list[float]]:
        """Readable summary (for reports): one flat list of values per measure."""
        out = {}
        for m in self.measures:
            v = self.value(m)
            if v is not None:
                label = f"{m.tensor_id}.{m.kind}{'' if m.kind != 'quantile' else f'({m.q:g})'}"
                out[label] = np.ravel(v).astype(float).tolist()
        return out


@dataclass
class StatsContext:
    """Statistics for one processing chain over the tensors of one call; values are cached per measure."""

    tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]]
    dataset: Optional[DatasetStatistics] = None
    masks: Optional[Mapping[str, np.ndarray]] = None  # tensor id -> bool "valid", broadcastable to the tensor
    _cache: dict[Measure, np.ndarray] = field(default_factory=dict)

    def seed(self, values: Mapping[Measure, np.ndarray]) -> "StatsContext":
        """Use already computed values (e.g. streamed whole-image statistics applied tile by tile)."""
        self._cache.update({m: np.asarray(v, dtype=np.float32) for m, v in values.items()})
        return self

    def prefetch(self, measures: Iterable[Measure]) -> None:
        """Compute an op's quantiles of one tensor over the same axes in one np.quantile call: numpy partitions the
        data once for all q (scale_range's two percentiles cost one pass, not two); values equal separate calls."""
        groups: dict[tuple, list[Measure]] = {}
        for m in measures:
            if m.kind != "quantile" or m in self._cache or m.tensor_id not in self.tensors:
                continue
            if self.masks is not None and self.masks.get(m.tensor_id) is not None:
                continue
            if m.is_dataset and self.dataset is not None and self.dataset.value(m) is not None:
                continue
            method = m.method if not m.is_dataset else "linear"
            groups.setdefault((m.tensor_id, m.axes, method), []).append(m)
        for (tid, reduce, method), group in groups.items():
            if len(group) < 2:
                continue
            data, axes = self.tensors[tid]
            idx = _reduce_axes(reduce, axes, tid)
            values = np.quantile(data, [m.q for m in group], axis=idx, keepdims=True, method=method)
            for m, v in zip(group, values):
                self._cache[m] = np.asarray(v.astype(np.float64), dtype=np.float32)

    def get(self, m: Measure, target_axes: Sequence[str]) -> np.ndarray:
        """The measure's value, broadcastable against a tensor with `target_axes` (same axis ids and order)."""
        if m not in self._cache:  # float32, like the data: float64 stats would upcast every op on the image
            self._cache[m] = np.asarray(self._compute(m), dtype=np.float32)
        value = self._cache[m]
        axes = self.tensors[m.tensor_id][1] if m.tensor_id in self.tensors else target_axes
        if tuple(axes) != tuple(target_axes):  # a reference tensor with other axes: only scalars broadcast safely
            if value.size != 1:
                raise InputError(
                    f"per-axis statistics of '{m.tensor_id}' (axes {list(axes)}) cannot be applied to a tensor with "
                    f"axes {list(target_axes)}; the package's processing is inconsistent"
                )
            return value.reshape(())
        return value

    def _compute(self, m: Measure) -> np.ndarray:
        if m.is_dataset and self.dataset is not None:
            known = self.dataset.value(m)
            if known is not None:
                return known
        if m.tensor_id not in self.tensors:
            raise InputError(f"statistics need tensor '{m.tensor_id}', which is not part of this call")
        data, axes = self.tensors[m.tensor_id]
        idx = _reduce_axes(m.axes, axes, m.tensor_id)
        valid = None if self.masks is None else self.masks.get(m.tensor_id)
        if valid is not None:
            return _masked_measure(m, data, valid, idx)
        if m.kind == "quantile":
            method = m.method if not m.is_dataset else "linear"  # dataset quantiles: linear, as in bioimageio.core
            return np.quantile(data, m.q, axis=idx, keepdims=True, method=method).astype(np.float64)
        if m.kind == "mean":  # float32 with numpy's pairwise summation, as bioimageio.core computes it
            return np.mean(data, axis=idx, keepdims=True)
        return np.std(data, axis=idx, keepdims=True)


def _reduce_axes(reduce: Optional[tuple[str, ...]], axes: Sequence[str], tensor_id: str) -> tuple[int, ...]:
    if reduce is None:
        return tuple(range(len(axes)))
    missing = [a for a in reduce if a not in axes and a != BATCH]
    if missing:
        raise InputError(
            f"processing of '{tensor_id}' reduces over axes {missing}, which the tensor (axes {list(axes)}) lacks; "
            "the package's processing kwargs are inconsistent with its axes"
        )
    return tuple(i for i, a in enumerate(axes) if a in reduce)


def masked_reduce(data: np.ndarray, valid: np.ndarray, idx: tuple[int, ...], fn) -> np.ndarray:
    """fn over the valid elements of every slice reduced over `idx`; keepdims shape, float64."""
    keep = [i for i in range(data.ndim) if i not in idx]
    moved = np.moveaxis(data, keep, range(len(keep)))
    ok = np.moveaxis(np.broadcast_to(valid, data.shape), keep, range(len(keep)))
    head = moved.shape[: len(keep)]
    moved, ok = moved.reshape(head + (-1,)), ok.reshape(head + (-1,))
    out = np.empty(head, dtype=np.float64)
    for k in np.ndindex(*head):
        values = moved[k][ok[k]]
        if values.size == 0:
            raise InputError("the mask leaves no valid pixel to compute normalization statistics from; "
                             "check the mask (non-zero = pixels to use) or the ignored value")
        out[k] = fn(values)
    return out.reshape([data.shape[i] if i in keep else 1 for i in range(data.ndim)])


def _masked_measure(m: Measure, data: np.ndarray, valid: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    if m.kind == "quantile":
        method = m.method if not m.is_dataset else "linear"
        return masked_reduce(data, valid, idx, lambda v: np.quantile(v, m.q, method=method))
    if m.kind == "mean":
        return masked_reduce(data, valid, idx, np.mean)
    return masked_reduce(data, valid, idx, np.std)


# ---- streamed statistics (images read lazily, e.g. memory-mapped) ------------------------------------------------
STREAM_CHUNK = 1 << 22  # elements read at once by the streamed statistics (16 MiB of float32)
_PAIRWISE_BLOCK = 8  # numpy's pairwise summation splits at multiples of 8 (its unrolled inner loop)


def streamed_measures(measures: Iterable[Measure], tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]],
                      chunk: int = STREAM_CHUNK) -> dict[Measure, np.ndarray]:
    """Each per-sample measure of lazily read tensors (e.g. np.memmap views in model layout) computed once, reading
    at most about `chunk` elements at a time, with the same values as the in-memory path:

    - mean and std reproduce numpy's float32 pairwise summation tree exactly (numpy splits a contiguous reduction
      at n/2 rounded down to a multiple of 8; the halves are summed recursively): identical bits to
      np.mean/np.std on the float32 image;
    - quantiles are exact order statistics: a 65536-bin histogram between the exact minimum and maximum finds the
      bin that holds each needed rank, the values of that bin are collected (a finer histogram of the bin when it
      holds more than `chunk` values) and sorted; numpy's interpolation ('linear', 'inverted_cdf') is then applied
      to them, so the value equals np.quantile's (the error bound of the histogram step is zero: it only locates).
    Dataset measures are computed over this call's tensors, as StatsContext does without a DatasetStatistics
    (pass those values instead when one is known); quantile methods other than these two raise."""
    out: dict[Measure, np.ndarray] = {}
    groups: dict[tuple, list[Measure]] = {}  # measures of one tensor over the same axes share their passes
    for m in dict.fromkeys(measures):
        if m.tensor_id in tensors:
            data, axes = tensors[m.tensor_id]
            groups.setdefault((m.tensor_id, _reduce_axes(m.axes, axes, m.tensor_id)), []).append(m)
    for (tid, idx), group_measures in groups.items():
        data = tensors[tid][0]
        keep = [i for i in range(data.ndim) if i not in idx]
        values = {m: np.empty([1 if i in idx else data.shape[i] for i in range(data.ndim)], dtype=np.float64)
                  for m in group_measures}
        for k in np.ndindex(*[data.shape[i] for i in keep]):
            sel = [slice(None)] * data.ndim
            for i, j in zip(keep, k):
                sel[i] = j
            dst = tuple(0 if i in idx else k[keep.index(i)] for i in range(data.ndim))
            for m, v in _group_measures(group_measures, data[tuple(sel)], chunk).items():
                values[m][dst] = v
        out.update(values)
    return out


def _group_measures(measures: Sequence[Measure], group: np.ndarray, chunk: int) -> dict[Measure, float]:
    """The measures of one group of elements: one pairwise pass for the mean, one more for the std, and every
    quantile's order statistics found together (three passes in all, however many quantiles)."""
    n, found = group.size, {}
    unknown = [m.kind for m in measures if m.kind not in ("mean", "std", "quantile")]
    if unknown:
        raise InputError(f"unknown statistic '{unknown[0]}'")
    if any(m.kind in ("mean", "std") for m in measures):
        mean = np.float32(float(_pairwise(group, 0, n, chunk, None)) / n)  # numpy divides by an intp count
        std = (float(np.sqrt(np.float32(float(_pairwise(group, 0, n, chunk, mean)) / n)))
               if any(m.kind == "std" for m in measures) else None)
        found.update({m: float(mean) if m.kind == "mean" else std for m in measures if m.kind in ("mean", "std")})
    plans = {m: _quantile_ranks(n, m.q, m.method if not m.is_dataset else "linear")
             for m in measures if m.kind == "quantile"}
    if plans:
        ranks = _order_statistics(group, sorted({r for (a, b), _ in plans.values() for r in (a, b)}), chunk)
        for m, ((a, b), gamma) in plans.items():
            found[m] = _interpolate(ranks[a], ranks[b], gamma, m.method if not m.is_dataset else "linear")
    return found


def _rows(group: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Flat C-order elements [start, stop) of a lazily read array as float32, reading about stop - start elements
    (plus at most two partial rows): rows are taken along the first axis whose inner block fits in stop - start,
    so that leading axes of size 1 (batch, channel) never make a row the whole image."""
    shape = tuple(group.shape)
    if not shape:
        return np.asarray(group, dtype=np.float32).reshape(1)[start:stop]
    depth = 0
    while depth < len(shape) - 1 and math.prod(shape[depth + 1:]) > max(1, stop - start):
        depth += 1
    inner = math.prod(shape[depth + 1:])
    r0, r1 = start // inner, -(-stop // inner)  # rows over the flattened leading axes shape[:depth + 1]
    parts, r = [], r0
    while r < r1:
        prefix = np.unravel_index(r, shape[:depth + 1])
        last = min(r1, r - int(prefix[-1]) + shape[depth])  # the rows sharing this prefix of the leading axes
        index = tuple(int(i) for i in prefix[:-1]) + (slice(int(prefix[-1]), int(prefix[-1]) + last - r),)
        parts.append(np.asarray(group[index], dtype=np.float32).reshape(-1))
        r = last
    block = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return block[start - r0 * inner: stop - r0 * inner]


def _pairwise(group: np.ndarray, start: int, n: int, chunk: int, center: Optional[np.float32]) -> np.float32:
    """numpy's pairwise float32 sum of group's flat elements [start, start+n) (of (x - center)**2 when given)."""
    if n > chunk:
        half = n // 2
        half -= half % _PAIRWISE_BLOCK
        return np.float32(_pairwise(group, start, half, chunk, center)
                          + _pairwise(group, start + half, n - half, chunk, center))
    x = _rows(group, start, start + n)
    if center is not None:
        x = x - center
        x = np.multiply(x, x, out=x)
    return np.add.reduce(np.ascontiguousarray(x))


def _chunks(group: np.ndarray, chunk: int):
    n = group.size
    for start in range(0, n, chunk):
        yield _rows(group, start, min(n, start + chunk))


def _quantile_ranks(n: int, q: float, method: str) -> tuple[tuple[int, int], float]:
    """The 0-based ranks np.quantile reads for `q` of n values, and its weight between them."""
    if method == "linear":
        virtual = (n - 1) * q
        lo = int(np.floor(virtual))
        return (max(0, min(lo, n - 1)), max(0, min(lo + 1, n - 1))), virtual - lo
    if method == "inverted_cdf":
        rank = max(0, min(n - 1, int(np.ceil(n * q)) - 1))
        return (rank, rank), 0.0
    raise InputError(f"quantile method '{method}' cannot be streamed; biozoo streams 'linear' and 'inverted_cdf'")


def _interpolate(a: np.float32, b: np.float32, gamma: float, method: str) -> float:
    if method == "inverted_cdf":
        return float(a)
    diff = b - a  # numpy's _lerp: float32 difference, float64 weight, the far end's form above one half
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def _order_statistics(group: np.ndarray, ranks: Sequence[int], chunk: int,
                      bins: int = 1 << 16) -> dict[int, np.float32]:
    """The values of the 0-based `ranks` in sorted order, exact, holding at most ~chunk values per rank besides
    the histograms. Passes are shared by every rank: one for the minimum and maximum, then per round one that
    histograms every open window and one that collects the values of each rank's bin (or, for a bin crowded
    with more than `chunk` values, its minimum and maximum: the next round's window)."""
    lo = hi = None
    for x in _chunks(group, chunk):
        lo = x.min() if lo is None else min(lo, x.min())
        hi = x.max() if hi is None else max(hi, x.max())
    found: dict[int, np.float32] = {}
    windows = [(lo, hi, 0, list(ranks))]  # (lo, hi, values known to lie below lo, ranks inside)
    while windows:
        for w in [w for w in windows if w[0] == w[1]]:
            found.update({r: np.float32(w[0]) for r in w[3]})
        windows = [w for w in windows if w[0] != w[1]]
        if not windows:
            break
        counts = [np.zeros(bins, dtype=np.int64) for _ in windows]
        for x in _chunks(group, chunk):
            for (wlo, whi, _, _), c in zip(windows, counts):
                inside = x[(x >= wlo) & (x <= whi)]
                c += np.bincount(_bin_of(inside, wlo, whi, bins), minlength=bins)
        wanted = []  # (window, bin, values below the bin, ranks in it)
        for (wlo, whi, below, inside), c in zip(windows, counts):
            cumulative = np.cumsum(c)
            by_bin: dict[int, list[int]] = {}
            for r in inside:
                by_bin.setdefault(int(np.searchsorted(cumulative, r - below, side="right")), []).append(r)
            wanted += [((wlo, whi), b, below + (int(cumulative[b - 1]) if b else 0), rs, int(c[b]) <= chunk)
                       for b, rs in by_bin.items()]
        picked: list[list[np.ndarray]] = [[] for _ in wanted]  # a small bin's values
        bounds: list[list] = [[] for _ in wanted]  # a crowded bin's minimum and maximum so far
        for x in _chunks(group, chunk):
            for (window, b, _, _, small), parts, seen in zip(wanted, picked, bounds):
                inside = x[(x >= window[0]) & (x <= window[1])]
                inside = inside[_bin_of(inside, *window, bins) == b]
                if small:
                    parts.append(inside)
                elif inside.size:
                    low, high = inside.min(), inside.max()
                    seen[:] = [min(low, seen[0]), max(high, seen[1])] if seen else [low, high]
        windows = []
        for (_, _, before, rs, small), parts, seen in zip(wanted, picked, bounds):
            if small:
                values = np.sort(np.concatenate(parts))
                found.update({r: values[r - before] for r in rs})
            else:  # a crowded bin: narrow the window to it and histogram again
                windows.append((seen[0], seen[1], before, rs))
    return found


def _bin_of(x: np.ndarray, lo: np.float32, hi: np.float32, bins: int) -> np.ndarray:
    scale = bins / (float(hi) - float(lo))
    return np.clip(((x.astype(np.float64) - float(lo)) * scale).astype(np.int64), 0, bins - 1)
