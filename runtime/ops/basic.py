"""The spec's pre/post-processing ops (format 0.5): one small frozen dataclass each.

Each op is built once from its rdf entry (`Op.from_kwargs`, with the op's own kwarg rules) and applied to a numpy
array whose axes are the tensor's axis ids, in the tensor's order. Statistics come from a StatsContext (see
stats.py for the spec's semantics). The registry that lists them is `biozoo.runtime.ops.OPS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import numpy as np

from ..errors import PackageError
from ..format import rdf_fields as F
from ..format.description import DTYPES, Tensor
from .base import Axes, Op
from .stats import Measure


def _check_percentiles(values: Mapping[str, Any], where: str) -> None:
    for name in ("min_percentile", "max_percentile"):
        if values.get(name) is not None and not 0 <= values[name] <= 100:
            raise F.refuse(f"{where}.kwargs.{name}", values[name], "a percentile between 0 and 100")
    lo, hi = values.get("min_percentile"), values.get("max_percentile")
    if lo is not None and hi is not None and lo >= hi:
        raise PackageError(f"{where}: min_percentile {lo} must be below max_percentile {hi}")


def _along(values: Any, axis: Optional[str], axes: Axes, where: str) -> Any:
    """Scalars stay scalars; a list given `axis` becomes an array broadcasting along that axis."""
    if axis is None or np.isscalar(values):
        return np.float32(values) if np.isscalar(values) else np.asarray(values, np.float32)
    if axis not in axes:
        raise PackageError(f"{where}: kwargs.axis '{axis}' is not an axis of the tensor (axes {list(axes)})")
    shape = [1] * len(axes)
    shape[list(axes).index(axis)] = -1
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _affine(x: np.ndarray, scale: np.ndarray, subtract: np.ndarray) -> np.ndarray:
    """(x - subtract) * scale in float32, two passes over the image, no float64 temporaries."""
    out = np.subtract(x, subtract, dtype=np.float32)
    out *= np.asarray(scale, dtype=np.float32)
    return out


@dataclass(frozen=True)
class Binarize(Op):
    op_id: ClassVar[str] = "binarize"
    threshold: Any = 0.5
    axis: Optional[str] = None

    def __call__(self, x, axes, stats):
        return x > _along(self.threshold, self.axis, axes, self.where)


@dataclass(frozen=True)
class Clip(Op):
    op_id: ClassVar[str] = "clip"
    min: Optional[float] = None
    max: Optional[float] = None
    min_percentile: Optional[float] = None
    max_percentile: Optional[float] = None
    axes: Optional[tuple[str, ...]] = None

    @classmethod
    def check_values(cls, values, tensor, where):
        _check_percentiles(values, where)

    def _percentile(self, p: Optional[float]) -> Optional[Measure]:
        return None if p is None else Measure(self.tensor_id, "quantile", self.axes, p / 100, "inverted_cdf")

    @property
    def measures(self):
        return tuple(m for m in (self._percentile(self.min_percentile), self._percentile(self.max_percentile)) if m)

    def __call__(self, x, axes, stats):
        lo_m, hi_m = self._percentile(self.min_percentile), self._percentile(self.max_percentile)
        lo = self.min if lo_m is None else stats.get(lo_m, axes)
        hi = self.max if hi_m is None else stats.get(hi_m, axes)
        return np.clip(x, lo, hi).astype(x.dtype, copy=False)


@dataclass(frozen=True)
class EnsureDtype(Op):
    op_id: ClassVar[str] = "ensure_dtype"
    dtype: str = "float32"

    @classmethod
    def check_values(cls, values, tensor, where):
        if "dtype" in values and values["dtype"] not in DTYPES:
            raise F.refuse(f"{where}.kwargs.dtype", values["dtype"], f"one of {', '.join(DTYPES)}")

    def __call__(self, x, axes, stats):
        return x.astype(self.dtype, copy=False)


@dataclass(frozen=True)
class FixedZeroMeanUnitVariance(Op):
    op_id: ClassVar[str] = "fixed_zero_mean_unit_variance"
    mean: Any = 0.0
    std: Any = 1.0
    axis: Optional[str] = None
    eps: float = 1e-6

    def __call__(self, x, axes, stats):
        mean = _along(self.mean, self.axis, axes, self.where)
        std = _along(self.std, self.axis, axes, self.where)
        return ((x - mean) / (std + np.float32(self.eps))).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ScaleLinear(Op):
    op_id: ClassVar[str] = "scale_linear"
    gain: Any = 1.0
    offset: Any = 0.0
    axis: Optional[str] = None

    def __call__(self, x, axes, stats):
        gain = _along(self.gain, self.axis, axes, self.where)
        offset = _along(self.offset, self.axis, axes, self.where)
        return (x * gain + offset).astype(np.float32, copy=False)


@dataclass(frozen=True)
class ScaleRange(Op):
    op_id: ClassVar[str] = "scale_range"
    min_percentile: float = 0.0
    max_percentile: float = 100.0
    axes: Optional[tuple[str, ...]] = None
    eps: float = 1e-6
    reference_tensor: Optional[str] = None

    @classmethod
    def check_values(cls, values, tensor, where):
        _check_percentiles(values, where)

    @property
    def measures(self):
        ref = self.reference_tensor or self.tensor_id
        return (
            Measure(ref, "quantile", self.axes, self.min_percentile / 100),
            Measure(ref, "quantile", self.axes, self.max_percentile / 100),
        )

    def __call__(self, x, axes, stats):
        lo, hi = (stats.get(m, axes) for m in self.measures)
        return _affine(x, 1 / (hi - lo + np.float32(self.eps)), lo)


@dataclass(frozen=True)
class Sigmoid(Op):
    op_id: ClassVar[str] = "sigmoid"

    def __call__(self, x, axes, stats):
        out = np.negative(x, dtype=np.float32)
        np.exp(out, out=out)
        out += 1.0
        return np.reciprocal(out, out=out)


@dataclass(frozen=True)
class Softmax(Op):
    op_id: ClassVar[str] = "softmax"
    axis: str = "channel"

    def __call__(self, x, axes, stats):
        if self.axis not in axes:
            raise PackageError(f"{self.where}: softmax axis '{self.axis}' is not an axis of the tensor ({list(axes)})")
        i = list(axes).index(self.axis)
        e = np.exp(x - x.max(axis=i, keepdims=True), dtype=np.float32)
        return e / e.sum(axis=i, keepdims=True)


@dataclass(frozen=True)
class ZeroMeanUnitVariance(Op):
    op_id: ClassVar[str] = "zero_mean_unit_variance"
    axes: Optional[tuple[str, ...]] = None
    eps: float = 1e-6

    @property
    def measures(self):
        return (Measure(self.tensor_id, "mean", self.axes), Measure(self.tensor_id, "std", self.axes))

    def __call__(self, x, axes, stats):
        mean, std = (stats.get(m, axes) for m in self.measures)
        return _affine(x, 1 / (std + np.float32(self.eps)), mean)


@dataclass(frozen=True)
class ScaleMeanVariance(Op):
    op_id: ClassVar[str] = "scale_mean_variance"
    reference_tensor: str = ""
    axes: Optional[tuple[str, ...]] = None
    eps: float = 1e-6

    @classmethod
    def checked_kwargs(cls, kwargs, tensor: Tensor, where):
        out = super().checked_kwargs(kwargs, tensor, where)
        if out.get("axes") is None:  # the spec's default here is per sample
            out["axes"] = tuple(a.id for a in tensor.axes if a.type != "batch")
        return out

    @property
    def measures(self):
        return tuple(Measure(t, k, self.axes) for t in (self.tensor_id, self.reference_tensor) for k in ("mean", "std"))

    def __call__(self, x, axes, stats):
        mean, std, ref_mean, ref_std = (stats.get(m, axes) for m in self.measures)
        return ((x - mean) / (std + self.eps) * (ref_std + self.eps) + ref_mean).astype(np.float32, copy=False)
