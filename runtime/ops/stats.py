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

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from .order_statistics import quantiles

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

    @property
    def quantile_method(self) -> str:
        """How a quantile interpolates: its own method per sample; dataset quantiles linear, as in bioimageio.core."""
        return "linear" if self.is_dataset else self.method


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
        for m in self._acc:
            if m.tensor_id not in tensors:
                continue
            data, axes = tensors[m.tensor_id]
            idx = reduce_axes(m.axes, axes, m.tensor_id)
            x = np.asarray(data, dtype=np.float64)
            valid = None if masks is None else masks.get(m.tensor_id)
            if m.kind == "quantile":
                self.add_quantile(m, np.quantile(x, m.q, axis=idx, keepdims=True) if valid is None
                                  else masked_reduce(x, valid, idx, lambda v: np.quantile(v, m.q)))
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
            self.add_moments(m, n, mean, m2)

    def add_moments(self, m: Measure, count: Any, mean: np.ndarray, m2: np.ndarray) -> None:
        """Pool one sample's element count, float64 mean and sum of squared deviations into a mean/std measure
        (Chan et al.): what update() does with a sample in memory, for samples streamed from files."""
        acc = self._acc[m]
        if acc.mean is None:
            acc.count, acc.mean, acc.m2 = count, mean, m2
        else:
            total = acc.count + count
            delta = mean - acc.mean
            acc.mean = acc.mean + delta * count / total
            acc.m2 = acc.m2 + m2 + delta**2 * acc.count * count / total
            acc.count = total

    def add_quantile(self, m: Measure, value: np.ndarray) -> None:
        """One sample's float64 quantile (linear) into a quantile measure: the dataset value is their mean."""
        acc = self._acc[m]
        acc.quantile_sum = value if acc.quantile_sum is None else acc.quantile_sum + value
        acc.samples += 1

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
        """Compute an op's quantiles of one tensor over the same axes together, from one copy partitioned rank after
        rank (order_statistics.quantiles): scale_range's two percentiles cost one copy, not two; values equal
        np.quantile's."""
        groups: dict[tuple, list[Measure]] = {}
        for m in measures:
            if m.kind != "quantile" or m in self._cache or m.tensor_id not in self.tensors:
                continue
            if self.masks is not None and self.masks.get(m.tensor_id) is not None:
                continue
            if m.is_dataset and self.dataset is not None and self.dataset.value(m) is not None:
                continue
            method = m.quantile_method
            groups.setdefault((m.tensor_id, m.axes, method), []).append(m)
        for (tid, reduce, method), group in groups.items():
            if len(group) < 2:
                continue
            data, axes = self.tensors[tid]
            idx = reduce_axes(reduce, axes, tid)
            values = quantiles(data, [m.q for m in group], idx, method)
            for m, v in zip(group, values):
                self._cache[m] = np.asarray(v, dtype=np.float32)

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
        idx = reduce_axes(m.axes, axes, m.tensor_id)
        valid = None if self.masks is None else self.masks.get(m.tensor_id)
        if valid is not None:
            return _masked_measure(m, data, valid, idx)
        if m.kind == "quantile":
            method = m.quantile_method
            return quantiles(data, [m.q], idx, method)[0]
        if m.kind == "mean":  # float32 with numpy's pairwise summation, as bioimageio.core computes it
            return np.mean(data, axis=idx, keepdims=True)
        return np.std(data, axis=idx, keepdims=True)


def reduce_axes(reduce: Optional[tuple[str, ...]], axes: Sequence[str], tensor_id: str) -> tuple[int, ...]:
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
        method = m.quantile_method
        # the unmasked path's quantiles (order_statistics: float64 interpolation), so that a mask changes which
        # values are used, not how their quantile is rounded (np.quantile with a lone float lerps in float32)
        return masked_reduce(data, valid, idx, lambda v: quantiles(v, [m.q], (0,), method)[0, 0])
    if m.kind == "mean":
        return masked_reduce(data, valid, idx, np.mean)
    return masked_reduce(data, valid, idx, np.std)
