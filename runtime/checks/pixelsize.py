"""Pixel sizes: read them from TIFF files (OME, ImageJ, resolution tags), parse --pixel-size, compare with training.

All sizes are handled in micrometers, per space axis id ({"y": 0.65, "x": 0.65}). A TIFF that states no physical
unit, or only a typical screen/print DPI in inches (72, 96, 300 ... written by non-scientific software by default),
has an unknown pixel size: guessing would turn a harmless warning into a wrong rescale.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..errors import InputError

PixelSize = dict[str, float]  # space axis id -> micrometers
PixelSizeArg = Union[None, float, str, Sequence[float], Mapping[str, float]]
TOLERANCE = 0.10  # relative mismatch above which the pixel sizes count as different

_UM_PER_UNIT = {
    "micrometer": 1.0, "micron": 1.0, "microns": 1.0, "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0,
    "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4,
    "meter": 1e6, "m": 1e6, "inch": 25400.0, "in": 25400.0, "angstrom": 1e-4, "å": 1e-4, "pm": 1e-6,
    "picometer": 1e-6,
}
_DEFAULT_DPI = {72.0, 96.0, 150.0, 200.0, 300.0, 600.0, 1200.0}


def to_micrometers(value: float, unit: Optional[str]) -> Optional[float]:
    """`value` in `unit` as micrometers; None when the unit is not a length (e.g. 'pixel') or unknown."""
    factor = _UM_PER_UNIT.get(str(unit or "").strip().lower())
    if factor is None or not value or not math.isfinite(value) or value <= 0:
        return None
    return float(value) * factor


def format_size(size: Mapping[str, float]) -> str:
    return " x ".join(f"{v:.4g}" for v in size.values()) + f" µm ({''.join(size)})"


def training_pixel_size(training: Mapping[str, Any], space_axes: Sequence[Any]) -> tuple[Optional[PixelSize], str]:
    """The training pixel size and where it came from: config.biozoo.training, else the input axes' scale/unit."""
    recorded = training.get("pixel_size")
    if isinstance(recorded, Mapping) and recorded:
        unit = training.get("pixel_size_unit") or "micrometer"
        size = {str(k): to_micrometers(float(v), unit) for k, v in recorded.items() if v is not None}
        size = {k: v for k, v in size.items() if v is not None}
        if size:
            return size, "config.biozoo.training.pixel_size"
    # third-party packages: the space axes' scale counts only with an explicit length unit
    size = {a.id: to_micrometers(a.scale, a.unit) for a in space_axes if a.unit}
    size = {k: v for k, v in size.items() if v is not None}
    return (size or None), "the input axes' scale and unit"


def parse_pixel_size(value: PixelSizeArg, space_ids: Sequence[str]) -> Optional[PixelSize]:
    """--pixel-size / pixel_size=: one number for every space axis, one per axis ('0.65,0.65' = y,x), or a dict.

    Numbers are micrometers; a string may end in a unit ('325nm', '0.65um').
    """
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(space_ids))
        if unknown:
            raise InputError(f"pixel size given for axes {unknown}, but the model's space axes are {list(space_ids)}")
        return {k: _positive(value[k], str(value[k])) for k in space_ids if k in value}
    parts: Sequence[Any] = value.split(",") if isinstance(value, str) else (
        [value] if isinstance(value, (int, float)) else list(value))
    sizes = [_number_with_unit(p) for p in parts]
    if len(sizes) == 1:
        sizes = sizes * len(space_ids)
    if len(sizes) != len(space_ids):
        raise InputError(
            f"--pixel-size '{value}' gives {len(sizes)} values, but the model has {len(space_ids)} space axes "
            f"({','.join(space_ids)}); give one value or one per axis in that order, e.g. --pixel-size "
            f"{','.join(['0.65'] * len(space_ids))}"
        )
    return dict(zip(space_ids, sizes))


def _number_with_unit(text: Any) -> float:
    if isinstance(text, (int, float)):
        return _positive(text, str(text))
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([^\s0-9]*)\s*", str(text))
    if not match:
        raise InputError(f"--pixel-size value '{text}' is not a number; expected e.g. 0.65 (micrometers) or 325nm")
    number = _positive(match.group(1), str(text))
    if not match.group(2):
        return number
    um = to_micrometers(number, match.group(2))
    if um is None:
        raise InputError(f"--pixel-size unit '{match.group(2)}' is not a length unit; use um, nm or mm")
    return um


def _positive(text: Any, original: str) -> float:
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise InputError(f"pixel size '{original}' is not a number; expected e.g. 0.65 (micrometers)") from None
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"pixel size '{original}' must be a positive number of micrometers")
    return number


# ---- reading TIFF metadata ------------------------------------------------------------------------------------
def tiff_pixel_size(tif: Any) -> Optional[PixelSize]:
    """Pixel size of an open tifffile.TiffFile in micrometers by axis id (z, y, x), or None when it is not stated."""
    for reader in (_ome, _imagej, _resolution_tags):
        try:
            size = reader(tif)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, ZeroDivisionError):
            size = None
        if size:
            return size
    return None


def read_pixel_size(path: Path) -> Optional[PixelSize]:
    """Pixel size from a file's metadata without reading its pixels; None for non-TIFF files or no metadata."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tiff_pixel_size(tif)
    except Exception:  # unreadable files are reported when their pixels are read
        return None


def _ome(tif: Any) -> Optional[PixelSize]:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    pixels = re.search(r"<(?:\w+:)?Pixels\b([^>]*)>", tif.ome_metadata)
    if not pixels:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(1)))
    size = {}
    for axis in ("Z", "Y", "X"):
        if f"PhysicalSize{axis}" in attrs:
            um = to_micrometers(float(attrs[f"PhysicalSize{axis}"]), attrs.get(f"PhysicalSize{axis}Unit", "µm"))
            if um is not None:
                size[axis.lower()] = um
    return size or None


def _tag_resolution(page: Any, name: str) -> Optional[float]:
    tag = page.tags.get(name)
    if tag is None:
        return None
    num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
    return float(num) / float(den) if den else None


def _imagej(tif: Any) -> Optional[PixelSize]:
    meta = tif.imagej_metadata
    if not meta or "unit" not in meta:
        return None
    unit = str(meta["unit"]).replace("\\u00B5", "µ")
    page = tif.pages[0]
    size = {}
    for axis, tag in (("y", "YResolution"), ("x", "XResolution")):
        per_unit = _tag_resolution(page, tag)
        if per_unit:
            um = to_micrometers(1.0 / per_unit, unit)
            if um is not None:
                size[axis] = um
    if "spacing" in meta and size:
        z = to_micrometers(float(meta["spacing"]), unit)
        if z is not None:
            size = {"z": z, **size}
    return size or None


def _resolution_tags(tif: Any) -> Optional[PixelSize]:
    page = tif.pages[0]
    unit_tag = page.tags.get("ResolutionUnit")
    unit = int(unit_tag.value) if unit_tag is not None else 2  # TIFF default: inch
    if unit not in (2, 3):  # 1 = no absolute unit
        return None
    x, y = _tag_resolution(page, "XResolution"), _tag_resolution(page, "YResolution")
    if not x or not y:
        return None
    if unit == 2 and x == y and round(x, 6) in _DEFAULT_DPI:
        return None  # a default DPI of non-scientific software, not a measurement
    name = "inch" if unit == 2 else "cm"
    size = {"y": to_micrometers(1.0 / y, name), "x": to_micrometers(1.0 / x, name)}
    return {k: v for k, v in size.items() if v is not None} or None


def mismatch(input_size: Mapping[str, float], train_size: Mapping[str, float]) -> dict[str, float]:
    """Per shared axis: input/training ratio, for axes whose sizes differ by more than TOLERANCE."""
    ratios = {a: input_size[a] / train_size[a] for a in train_size if a in input_size}
    return {a: r for a, r in ratios.items() if abs(r - 1.0) > TOLERANCE}
