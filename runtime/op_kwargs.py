"""Typed kwargs of processing ops: an untrusted rdf may put a string where a gain belongs, NaN in a threshold, a
percentile of 300 or three per-channel values for a two-channel axis. Checked when the op is built (at load), so
the failure names the entry instead of surfacing as a numpy error in the middle of a prediction."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from . import rdf_fields as F
from .description import DTYPES, Tensor
from .errors import PackageError

_PERCENTILES = ("min_percentile", "max_percentile")


def _numbers(value: Any, where: str) -> Any:
    """A number or a non-empty list of numbers; whole numbers stay ints (grids, sizes index with them)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise F.refuse(where, value, "a number or a non-empty list of numbers")
        return [_numbers(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return F.number(value, where)


def checked_kwargs(cls: type, kwargs: Mapping[str, Any], tensor: Tensor, where: str) -> dict[str, Any]:
    """kwargs with each value checked against the op's field annotation (float, int, str, axes, numbers)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("tensor_id", "where")}
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
    for name in _PERCENTILES:
        if out.get(name) is not None and not 0 <= out[name] <= 100:
            raise F.refuse(f"{where}.kwargs.{name}", out[name], "a percentile between 0 and 100")
    lo, hi = out.get("min_percentile"), out.get("max_percentile")
    if lo is not None and hi is not None and lo >= hi:
        raise PackageError(f"{where}: min_percentile {lo} must be below max_percentile {hi}")
    if "dtype" in out and out["dtype"] not in DTYPES:
        raise F.refuse(f"{where}.kwargs.dtype", out["dtype"], f"one of {', '.join(DTYPES)}")
    axis = out.get("axis")
    if isinstance(axis, str) and axis in [a.id for a in tensor.axes]:
        size = tensor.axis(axis).size
        for name, value in out.items():
            if isinstance(value, list) and name != "axes" and isinstance(size, int) and len(value) not in (1, size):
                raise PackageError(f"{where}: kwargs.{name} has {len(value)} values, but axis '{axis}' of "
                                   f"'{tensor.id}' has {size} elements; give one value per element")
    for name, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise F.refuse(f"{where}.kwargs.{name}", value, "a finite number")
    return out
