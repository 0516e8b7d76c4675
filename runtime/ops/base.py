"""The base of every processing op (one frozen dataclass per op id), and the typed kwargs it is built from.

An untrusted rdf may put a string where a gain belongs, NaN in a threshold, a percentile of 300 or three
per-channel values for a two-channel axis. `Op.from_kwargs` checks them when the op is built (at load), so the
failure names the entry instead of surfacing as a numpy error in the middle of a prediction: every value against
its field's annotation, then the op's own rules (`check_values`), then per-element lists and finiteness.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import PackageError
from ..format import rdf_fields as F
from ..format.description import Tensor
from .stats import Measure, StatsContext

Axes = Sequence[str]
_OWN = ("tensor_id", "where")  # set by the builder, never by the rdf's kwargs


@dataclass(frozen=True)
class Op:
    """Base: subclasses set `op_id` and their kwargs as fields, and implement `__call__`."""

    op_id: ClassVar[str]
    tensor_id: str
    where: str

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], tensor: Tensor, where: str) -> "Op":
        """The op for one rdf entry of `tensor`; unknown or bad kwargs are PackageErrors naming the entry."""
        fields = set(cls.__dataclass_fields__) - set(_OWN)
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise PackageError(f"{where}: op '{cls.op_id}' got unexpected kwargs {unknown}; expected some of "
                               f"{sorted(fields)}")
        values = cls.checked_kwargs(kwargs, tensor, where)
        try:
            return cls(tensor_id=tensor.id, where=where, **values)
        except TypeError as e:
            raise PackageError(f"{where}: op '{cls.op_id}' has invalid kwargs {kwargs}: {e}") from None

    @classmethod
    def checked_kwargs(cls, kwargs: Mapping[str, Any], tensor: Tensor, where: str) -> dict[str, Any]:
        """kwargs with each value checked against the op's field annotation (float, int, str, axes, numbers)."""
        out = _typed(cls, kwargs, where)
        cls.check_values(out, tensor, where)
        _per_element(out, tensor, where)
        for name, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise F.refuse(f"{where}.kwargs.{name}", value, "a finite number")
        if out.get("axes") is not None:
            out["axes"] = tuple(out["axes"])
        return out

    @classmethod
    def check_values(cls, values: Mapping[str, Any], tensor: Tensor, where: str) -> None:
        """The op's own rules on its typed kwargs (ranges, orders, known names); none by default."""

    @property
    def measures(self) -> tuple[Measure, ...]:
        return ()

    def network_axes(self, axes: Sequence[Any]) -> tuple[Any, ...]:
        """The axes of the tensor before this op, given those after it: the same unless the op changes the shape
        (e.g. labels from a network's maps on a subsampled grid)."""
        return axes

    def __call__(self, x: np.ndarray, axes: Axes, stats: StatsContext) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _numbers(value: Any, where: str) -> Any:
    """A number or a non-empty list of numbers; whole numbers stay ints (grids, sizes index with them)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise F.refuse(where, value, "a number or a non-empty list of numbers")
        return [_numbers(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return F.number(value, where)


def _typed(cls: type, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _OWN}
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        here = f"{where}.kwargs.{name}"
        field = fields[name]
        annotation = str(field.type)
        optional = annotation.startswith("Optional") or field.default is None
        if value is None and optional:
            out[name] = None
        elif name == "axes":
            out[name] = F.texts(value, here)
        elif annotation.endswith("float]") or annotation == "float":
            out[name] = F.number(value, here, strictly_positive=name == "eps")
        elif annotation.endswith("int]") or annotation == "int":
            out[name] = F.integer(value, here)
        elif annotation.endswith("str]") or annotation == "str":
            out[name] = F.text(value, here)
        else:  # Any: a number or a list of numbers (per-channel values, grids)
            out[name] = _numbers(value, here)
    return out


def _per_element(out: Mapping[str, Any], tensor: Tensor, where: str) -> None:
    """A list given with `axis` has one value, or one per element of that axis."""
    axis = out.get("axis")
    if isinstance(axis, str) and axis in [a.id for a in tensor.axes]:
        size = tensor.axis(axis).size
        for name, value in out.items():
            if isinstance(value, list) and name != "axes" and isinstance(size, int) and len(value) not in (1, size):
                raise PackageError(f"{where}: kwargs.{name} has {len(value)} values, but axis '{axis}' of "
                                   f"'{tensor.id}' has {size} elements; give one value per element")
