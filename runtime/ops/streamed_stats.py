"""Statistics of images read lazily (memory maps, TIFF pages, Zarr chunks), with the in-memory path's values.

A huge image's pre-pass is bound by reading it (a Zarr chunk is decompressed on every read), so every measure of
one tensor over the same axes shares its passes over the elements: the first pass sums the leaves of numpy's
pairwise tree (the mean) and finds the minimum and maximum, the second sums the squared deviations (the std) and
histograms the window of every quantile's ranks, the third collects the values of each rank's bin. Three reads in
all, however many quantiles (one search per order statistic read the image three times each).

Masked statistics (masked normalization, checks/masking.py): a lazily read valid mask per tensor (broadcastable to
it) makes every pass read the same slabs of the mask and keep the valid elements in C order (`_Compacted`), so the
sums follow numpy's pairwise tree over the compacted values, as np.mean/np.std/np.quantile over `data[valid]` do
in memory (ops/stats.masked_reduce); the valid counts come from the mask (its `count()` when it has one).
"""
from __future__ import annotations

import math
from typing import Any, Collection, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from .order_statistics import interpolate, quantile_ranks
from .stats import DatasetStatistics, Measure, reduce_axes

STREAM_CHUNK = 1 << 22  # elements read at once by the streamed statistics (16 MiB of float32)
_PAIRWISE_BLOCK = 8  # numpy's pairwise summation splits at multiples of 8 (its unrolled inner loop)
_BINS = 1 << 16


class NotFinite(Exception):
    """A tensor named in `streamed_measures(finite=...)` holds NaN or Inf (found in the first pass)."""

    def __init__(self, tensor_id: str):
        super().__init__(tensor_id)
        self.tensor_id = tensor_id


def streamed_measures(measures: Iterable[Measure], tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]],
                      chunk: int = STREAM_CHUNK, finite: Collection[str] = (),
                      masks: Optional[Mapping[str, Any]] = None) -> dict[Measure, np.ndarray]:
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
    (pass those values instead when one is known); quantile methods other than these two raise. The tensors in
    `finite` are checked for NaN/Inf in the first pass (one read of the image less than a check of its own);
    NotFinite is raised for the first that has any (masked elements included, as in memory). `masks`: a lazily
    read bool array per tensor id (True = used; broadcastable, e.g. the masked-normalization mask): the measures
    of that tensor are over its valid elements only, with the values of ops/stats.masked_reduce; the quantile
    method 'median' gives np.median's value (what masking.fill_masked fills masked pixels with)."""
    out: dict[Measure, np.ndarray] = {}
    for tid, group_measures, shape, slices, check in _groups(measures, tensors, finite, masks):
        unknown = [m.kind for m in group_measures if m.kind not in ("mean", "std", "quantile")]
        if unknown:
            raise InputError(f"unknown statistic '{unknown[0]}'")
        values = {m: np.empty(shape, dtype=np.float64) for m in group_measures}
        moments = any(m.kind in ("mean", "std") for m in group_measures)
        spread = any(m.kind == "std" for m in group_measures)
        for dst, group in slices:
            _check_count(group.size)
            plans = {m: _ranks(group.size, m.q, m.quantile_method)
                     for m in group_measures if m.kind == "quantile"}
            scan = _scan(group, chunk, plans, moments, spread, check, np.float32)
            if scan is None:
                raise NotFinite(tid)
            n, mean, squares, ranks = scan
            for m in group_measures:
                if m.kind == "mean":
                    values[m][dst] = float(mean)
                elif m.kind == "std":
                    values[m][dst] = float(np.sqrt(np.float32(float(squares) / n)))
            for m, ((a, b), gamma) in plans.items():
                values[m][dst] = _value(ranks[a], ranks[b], gamma, m.quantile_method)
        out.update(values)
    return out


def streamed_dataset_update(stats: DatasetStatistics, tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]],
                            chunk: int = STREAM_CHUNK, finite: Collection[str] = (),
                            masks: Optional[Mapping[str, Any]] = None) -> None:
    """Add one sample read lazily to `stats`, as DatasetStatistics.update adds one held in memory: float64 count,
    mean and sum of squared deviations per kept slice, and linear float64 quantiles from the exact order
    statistics (the same values to float64 rounding: the sums follow the pairwise tree of each slice). `finite`:
    as for streamed_measures (NotFinite); `masks`: as there (DatasetStatistics.update's masked values, to float64
    rounding: the sums run over the compacted valid values)."""
    for tid, group_measures, shape, slices, check in _groups(stats.measures, tensors, finite, masks):
        means, m2s, count, counts = np.empty(shape), np.empty(shape), 0, np.empty(shape)
        quantiles = {m: np.empty(shape) for m in group_measures if m.kind == "quantile"}
        moments = len(quantiles) < len(group_measures)  # a mean or a std: both need both moments
        for dst, group in slices:
            _check_count(group.size)
            plans = {m: quantile_ranks(group.size, m.q, "linear") for m in quantiles}
            scan = _scan(group, chunk, plans, moments, moments, check, np.float64)
            if scan is None:
                raise NotFinite(tid)
            count, means[dst], m2s[dst], ranks = scan
            counts[dst] = count
            for m, ((a, b), gamma) in plans.items():  # np.quantile's interpolation on float64 data
                quantiles[m][dst] = interpolate(np.float64(ranks[a]), np.float64(ranks[b]), gamma, "linear")
        for m in group_measures:
            if m.kind == "quantile":
                stats.add_quantile(m, quantiles[m])
            else:
                stats.add_moments(m, counts if masks and tid in masks else float(count), means, m2s)


def _groups(measures: Iterable[Measure], tensors: Mapping[str, tuple[np.ndarray, Sequence[str]]],
            finite: Collection[str], masks: Optional[Mapping[str, Any]] = None
            ) -> Iterator[tuple[str, list[Measure], list[int], Iterator, bool]]:
    """Per tensor and reduced axes: (tensor id, its measures there, the keepdims shape of their values, the
    (value index, lazily read group of elements) of every kept slice, whether to check that tensor for NaN/Inf).
    Measures of one tensor over the same axes share their passes (axes of length 1 aside: over channel, y, x and
    over y, x of a one-channel image read the same elements in the same order); one group of measures covers every
    element of its tensor, so the check rides on the first."""
    grouped: dict[tuple, list[Measure]] = {}
    reduced: dict[tuple, set] = {}
    for m in dict.fromkeys(measures):
        if m.tensor_id in tensors:
            idx = reduce_axes(m.axes, tensors[m.tensor_id][1], m.tensor_id)
            key = (m.tensor_id, tuple(i for i in idx if tensors[m.tensor_id][0].shape[i] != 1))
            grouped.setdefault(key, []).append(m)
            reduced.setdefault(key, set()).update(idx)
    unchecked = set(finite)
    for key, group_measures in grouped.items():
        tid, idx, data = key[0], tuple(sorted(reduced[key])), tensors[key[0]][0]
        keep = [i for i in range(data.ndim) if i not in idx]
        mask = None if masks is None else masks.get(tid)

        def slices(data=data, idx=idx, keep=keep, mask=mask):
            for k in np.ndindex(*[data.shape[i] for i in keep]):
                sel = [slice(None)] * data.ndim
                for i, j in zip(keep, k):
                    sel[i] = j
                group = data[tuple(sel)]
                if mask is not None:  # the mask's slice for it: index 0 along the axes it broadcasts over
                    group = _Compacted(group, mask[tuple(0 if isinstance(s, int) and mask.shape[i] == 1 else s
                                                         for i, s in enumerate(sel))])
                yield tuple(0 if i in idx else k[keep.index(i)] for i in range(data.ndim)), group

        yield (tid, group_measures, [1 if i in idx else data.shape[i] for i in range(data.ndim)], slices(),
               tid in unchecked)
        unchecked.discard(tid)


def _scan(group: np.ndarray, chunk: int, plans: Mapping, moments: bool, spread: bool, finite: bool,
          dtype: Any) -> Optional[tuple[int, Any, Any, dict[int, np.float32]]]:
    """(count, mean, sum of squared deviations from it, values of the plans' ranks) of one group of elements in
    three shared passes (more only for a crowded histogram bin), sums in `dtype` over numpy's pairwise tree;
    `moments`: the mean, `spread`: the squared deviations too. None when `finite` asks for a check and the first
    pass finds NaN or Inf."""
    n = group.size
    leaves = _leaves(0, n, chunk)
    search = _OrderSearch(sorted({r for pair, _ in plans.values() for r in pair}), chunk) if plans else None
    sums, bad = [], 0
    for x in _read(group, leaves):
        if finite:
            bad += x.size - int(np.count_nonzero(np.isfinite(x)))
        if moments:
            sums.append(np.add.reduce(x.astype(dtype, copy=False)))
        if search:
            search.bounds(x)
    if bad or (finite and isinstance(group, _Compacted) and group.bad):  # masked elements count too
        return None
    mean = None
    if moments:  # numpy divides by an intp count
        total = _tree_sum(iter(sums), n, chunk, dtype)
        mean = np.float32(float(total) / n) if dtype == np.float32 else total / n
    if search:
        search.open()
    squares = []
    if spread or (search and search.windows):
        for x in _read(group, leaves):
            if spread:
                d = x.astype(dtype, copy=False) - mean
                squares.append(np.add.reduce(np.multiply(d, d, out=d)))
            if search and search.windows:
                search.histogram(x)
    while search and search.windows:
        search.locate()
        for x in _read(group, leaves):
            search.collect(x)
        if search.settle():  # crowded bins: narrowed windows to histogram again
            for x in _read(group, leaves):
                search.histogram(x)
    return (n, mean, _tree_sum(iter(squares), n, chunk, dtype) if spread else None,
            search.found if search else {})


def _leaves(start: int, n: int, chunk: int) -> list[tuple[int, int]]:
    """The flat ranges numpy's pairwise float32 sum of n elements adds up directly when split into parts of at
    most `chunk` (its recursion: halves at n/2 rounded down to a multiple of 8), in order."""
    if n <= chunk:
        return [(start, start + n)]
    half = n // 2
    half -= half % _PAIRWISE_BLOCK
    return _leaves(start, half, chunk) + _leaves(start + half, n - half, chunk)


def _tree_sum(leaf_sums: Iterator[Any], n: int, chunk: int, dtype: Any = np.float32) -> Any:
    """The leaves' sums added up the way numpy's recursion adds them (`dtype` at every node)."""
    if n <= chunk:
        return next(leaf_sums)
    half = n // 2
    half -= half % _PAIRWISE_BLOCK
    return dtype(_tree_sum(leaf_sums, half, chunk, dtype) + _tree_sum(leaf_sums, n - half, chunk, dtype))


def _read(group: np.ndarray, leaves: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    if isinstance(group, _Compacted):
        yield from group.read(leaves)
        return
    for start, stop in leaves:
        yield np.ascontiguousarray(_rows(group, start, stop))


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


def _check_count(n: int) -> None:
    if n == 0:  # a mask that leaves a slice empty (checks/masking.check_not_empty refuses most of them earlier)
        raise InputError("the mask leaves no valid pixel to compute normalization statistics from; "
                         "check the mask (non-zero = pixels to use) or the ignored value")


def _ranks(n: int, q: float, method: str) -> tuple[tuple[int, int], float]:
    if method == "median":  # np.median: the mean of the middle value(s)
        return ((n - 1) // 2, n // 2), 0.5
    return quantile_ranks(n, q, method)


def _value(a: np.float32, b: np.float32, gamma: float, method: str) -> float:
    if method == "median":  # np.median's float32 mean of the two middle values (one when n is odd)
        return float(a) if a == b else float(np.mean(np.array([a, b], dtype=np.float32)))
    return interpolate(a, b, gamma, method)


def slabs(shape: Sequence[int], size: int) -> Iterator[tuple]:
    """Basic indices covering an array of `shape` in C order, each of about `size` elements at most (whole rows of
    the first axis whose inner block fits; ints for the axes before it; the axes after it whole, left out)."""
    shape = tuple(int(n) for n in shape)
    if not shape:
        yield ()
        return
    depth = 0
    while depth < len(shape) - 1 and math.prod(shape[depth + 1:]) > size:
        depth += 1
    rows = max(1, size // max(1, math.prod(shape[depth + 1:])))
    for prefix in np.ndindex(*shape[:depth]):
        for r in range(0, shape[depth], rows):
            yield tuple(int(i) for i in prefix) + (slice(r, min(r + rows, shape[depth])),)


class _Compacted:
    """The valid elements of a lazily read group in C order, read the way _scan reads a group: `size` (the valid
    count, from the mask), `read(leaves)` (one sweep over slabs of the group and the same slabs of the mask per
    call), `bad` (NaN/Inf among every element of the first sweep, masked ones included: in memory the whole input
    is checked). The mask broadcasts against the group (length 1 where it does); a mask with `derive(block)`
    computes a slab's validity from the group's own slab (--ignore-value on a one-channel image: one read)."""

    def __init__(self, group: Any, mask: Any):
        self.group, self.mask, self.bad, self._first = group, mask, 0, True
        self.shape = tuple(group.shape)
        broadcast = math.prod(n for n, m in zip(self.shape, mask.shape) if m == 1)
        counted = mask.valid_count() if hasattr(mask, "valid_count") else sum(
            int(np.count_nonzero(np.asarray(mask[key]))) for key in slabs(mask.shape, STREAM_CHUNK))
        self.size = counted * broadcast

    def _mask_key(self, key: tuple) -> tuple:
        return tuple((0 if isinstance(k, int) else slice(None)) if n == 1 else k for k, n in zip(key, self.mask.shape))

    def _values(self, size: int) -> Iterator[np.ndarray]:
        derive = getattr(self.mask, "derive", None)
        for key in slabs(self.shape, size):
            block = np.asarray(self.group[key], dtype=np.float32)
            if self._first:
                self.bad += block.size - int(np.count_nonzero(np.isfinite(block)))
            valid = derive(block) if derive is not None else None
            if valid is None:
                valid = np.asarray(self.mask[self._mask_key(key)]).astype(bool, copy=False)
            yield block[np.broadcast_to(valid, block.shape)]

    def read(self, leaves: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
        values = self._values(max((b - a for a, b in leaves), default=1))
        pending, have = [], 0
        for start, stop in leaves:
            while have < stop - start:
                pending.append(next(values))
                have += pending[-1].size
            block = pending[0] if len(pending) == 1 else np.concatenate(pending)
            rest = block[stop - start:]
            pending, have = ([rest] if rest.size else []), rest.size
            yield block[:stop - start]
        if self._first:  # the finite check sees the masked slabs after the last valid value too
            for _ in values:
                pass
            self._first = False


class _OrderSearch:
    """Exact values of several 0-based ranks, found together over passes the caller makes: `bounds` on every
    element, then rounds of `histogram` (every open window), `locate`, `collect`, `settle`. It holds at most
    ~chunk values per wanted bin besides one histogram per window."""

    def __init__(self, ranks: Sequence[int], chunk: int):
        self.ranks, self.chunk = list(ranks), chunk
        self.lo: Optional[np.float32] = None
        self.hi: Optional[np.float32] = None
        self.found: dict[int, np.float32] = {}
        self.windows: list[tuple] = []  # (lo, hi, values known to lie below lo, ranks inside)
        self._counts: list[np.ndarray] = []
        self._wanted: list[tuple] = []  # (window, bin, values below the bin, ranks in it, small enough to collect)
        self._picked: list[list[np.ndarray]] = []
        self._seen: list[list] = []

    def bounds(self, x: np.ndarray) -> None:
        self.lo = x.min() if self.lo is None else min(self.lo, x.min())
        self.hi = x.max() if self.hi is None else max(self.hi, x.max())

    def open(self) -> None:
        self._windows([(self.lo, self.hi, 0, self.ranks)])

    def _windows(self, windows: list[tuple]) -> None:
        for lo, hi, _, ranks in windows:
            if lo == hi:
                self.found.update({r: np.float32(lo) for r in ranks})
        self.windows = [w for w in windows if w[0] != w[1]]
        self._counts = [np.zeros(_BINS, dtype=np.int64) for _ in self.windows]

    def histogram(self, x: np.ndarray) -> None:
        for (lo, hi, _, _), counts in zip(self.windows, self._counts):
            counts += np.bincount(_bin_of(x[(x >= lo) & (x <= hi)], lo, hi), minlength=_BINS)

    def locate(self) -> None:
        self._wanted = []
        for (lo, hi, below, ranks), counts in zip(self.windows, self._counts):
            cumulative = np.cumsum(counts)
            by_bin: dict[int, list[int]] = {}
            for r in ranks:
                by_bin.setdefault(int(np.searchsorted(cumulative, r - below, side="right")), []).append(r)
            self._wanted += [((lo, hi), b, below + (int(cumulative[b - 1]) if b else 0), rs,
                              int(counts[b]) <= self.chunk) for b, rs in by_bin.items()]
        self._picked = [[] for _ in self._wanted]
        self._seen = [[] for _ in self._wanted]

    def collect(self, x: np.ndarray) -> None:
        for (window, b, _, _, small), picked, seen in zip(self._wanted, self._picked, self._seen):
            inside = x[(x >= window[0]) & (x <= window[1])]
            inside = inside[_bin_of(inside, *window) == b]
            if small:
                picked.append(inside)
            elif inside.size:  # a crowded bin: only its bounds, the next round's window
                low, high = inside.min(), inside.max()
                seen[:] = [min(low, seen[0]), max(high, seen[1])] if seen else [low, high]

    def settle(self) -> bool:
        """The ranks of collected bins found; True when crowded bins left windows for another round."""
        narrowed = []
        for (_, _, before, ranks, small), picked, seen in zip(self._wanted, self._picked, self._seen):
            if small:
                values = np.sort(np.concatenate(picked))
                self.found.update({r: values[r - before] for r in ranks})
            else:
                narrowed.append((seen[0], seen[1], before, ranks))
        self._windows(narrowed)
        return bool(self.windows)


def _bin_of(x: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    scale = _BINS / (float(hi) - float(lo))
    return np.clip(((x.astype(np.float64) - float(lo)) * scale).astype(np.int64), 0, _BINS - 1)


__all__ = ["NotFinite", "STREAM_CHUNK", "slabs", "streamed_dataset_update", "streamed_measures"]
