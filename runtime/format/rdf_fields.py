"""Typed readers for fields of an untrusted rdf: each returns the value as the expected type or raises a
PackageError naming the field, what it holds and what was expected (a string where a size belongs, a list where a
mapping belongs, a bool posing as an int, NaN, ...). The description parser reads every field through these."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ..errors import PackageError


def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse(where: str, value: Any, expected: str) -> PackageError:
    return PackageError(f"{where} is {shown(value)} ({type(value).__name__}); expected {expected}. Fix the "
                        "package's rdf.yaml (or get a valid copy of the package)")


def mapping(value: Any, where: str, default: Optional[Mapping] = None) -> Mapping[str, Any]:
    if value is None and default is not None:
        return default
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise refuse(where, value, "a mapping with text keys")
    return value


def listing(value: Any, where: str, default: Optional[list] = None) -> list:
    if value is None and default is not None:
        return default
    if not isinstance(value, (list, tuple)):
        raise refuse(where, value, "a list")
    return list(value)


def text(value: Any, where: str, default: Optional[str] = None) -> str:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise refuse(where, value, "text")
    return str(value)


def integer(value: Any, where: str, minimum: Optional[int] = None, default: Optional[int] = None) -> int:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise refuse(where, value, "a whole number" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise refuse(where, value, f"a whole number >= {minimum}")
    return int(value)


def number(value: Any, where: str, minimum: Optional[float] = None, default: Optional[float] = None,
           strictly_positive: bool = False) -> float:
    if value is None and default is not None:
        return default
    if isinstance(value, str):  # YAML 1.1 readers (PyYAML) load '1e-05' as text; YAML 1.2 writers mean a number
        try:
            value = float(value)
        except ValueError:
            raise refuse(where, value, "a finite number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise refuse(where, value, "a finite number")
    if strictly_positive and value <= 0:
        raise refuse(where, value, "a number > 0")
    if minimum is not None and value < minimum:
        raise refuse(where, value, f"a number >= {minimum}")
    return float(value)


def flag(value: Any, where: str, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise refuse(where, value, "true or false")
    return value


def texts(value: Any, where: str) -> tuple[str, ...]:
    return tuple(text(v, f"{where}[{i}]") for i, v in enumerate(listing(value, where, default=[])))
