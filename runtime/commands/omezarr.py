"""Zarr and OME-Zarr images read: NGFF 0.4 / 0.5, the resolution level nearest a wanted pixel size (writing:
omezarr_output.py).

Reading opens the level's zarr array itself (slices come back as numpy; nothing is read before a slice asks), with
the metadata parsed and validated by ome-zarr-py.

Only local paths are ever opened (a zarr LocalStore on the absolute path): ome-zarr-py turns strings starting with
'http' or 's3' into remote stores, biozoo never hands it one. zarr and ome-zarr-py are imported here, lazily.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional

from ..checks.pixelsize import format_size, to_micrometers
from ..errors import InputError

NGFF_ORDER = "tczyx"  # the axis order NGFF requires
_INSTALL = "pip install 'biozoo[ome-zarr]' (zarr 3 and ome-zarr-py)"


def libraries():
    try:
        import zarr
        from zarr.storage import LocalStore
    except ImportError:
        raise InputError(f"reading or writing Zarr needs the zarr package: {_INSTALL}") from None
    return zarr, LocalStore


def is_zarr(path: Path) -> bool:
    """A .zarr / .ome.zarr path (written as OME-Zarr)."""
    return Path(path).suffix.lower() == ".zarr"


def in_zarr(path: Path) -> bool:
    """A Zarr folder or a group or array inside one (in.ome.zarr/labels/cells): read as Zarr."""
    return any(is_zarr(p) for p in (Path(path), *Path(path).parents))


def _open_node(path: Path) -> tuple[Any, Any, Any]:
    """(zarr module, read-only local store, root array or group) of a Zarr folder."""
    zarr, LocalStore = libraries()
    if not path.is_dir():
        raise InputError(f"'{path}' does not exist (a Zarr image is a folder)")
    store = LocalStore(path.absolute(), read_only=True)
    try:
        return zarr, store, zarr.open(store=store, mode="r")
    except Exception as e:  # missing or damaged zarr.json / .zarray / .zgroup
        raise InputError(f"cannot read '{path}': {e}; expected a Zarr array or an OME-Zarr image folder") from None


def open_zarr(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None):
    """(array, axes, pixel size, note, origin) of a plain Zarr array or of the OME-Zarr level whose pixel size is
    nearest `target_pixel_size`; `note` says which level was chosen and why ('' for a single level), `origin` where
    its first pixel's centre lies (µm per space axis, None when at 0)."""
    zarr, store, node = _open_node(path)
    if isinstance(node, zarr.Array):
        return node, None, None, "", None
    levels, axes, sizes, origins = _multiscales(path, dict(node.attrs), node.metadata.zarr_format)
    chosen = _nearest(sizes, target_pixel_size)
    note = ""
    if len(levels) > 1:
        size = f" ({format_size(sizes[chosen])})" if sizes[chosen] else ""
        why = (f"nearest the training pixel size {format_size(target_pixel_size)}" if target_pixel_size and
               sizes[chosen] else "full resolution: no training pixel size to match" if not target_pixel_size
               else "full resolution: the file states no pixel size")
        note = f"OME-Zarr level '{levels[chosen]}' of {len(levels)}{size}, {why}"
    try:
        array = zarr.open_array(store=store, path=levels[chosen], mode="r")
    except Exception as e:
        raise InputError(f"cannot read level '{levels[chosen]}' of '{path}': {e}; is the OME-Zarr complete?") from None
    return array, axes, sizes[chosen], note, origins[chosen]


def open_pyramid(path: Path) -> tuple[list[Any], Optional[str], list[Optional[dict[str, float]]], list[str]]:
    """Every level of an OME-Zarr image, opened lazily (zarr arrays: nothing is read before a slice asks), with
    its axes, each level's pixel size (µm per space axis) and the names of its NGFF label images (viewers). A
    group holding only label images (biozoo's labels of an input not on their grid) has no levels of its own."""
    zarr, store, node = _open_node(path)
    if isinstance(node, zarr.Array):
        raise InputError(f"'{path}' is a plain Zarr array; expected an OME-Zarr image folder (NGFF multiscales)")
    attrs = dict(node.attrs)
    only_labels = "multiscales" not in dict(attrs.get("ome") or attrs) and "labels" in node  # labels, no image
    levels, axes, sizes, _ = ([], None, [], []) if only_labels else _multiscales(path, attrs,
                                                                                node.metadata.zarr_format)
    try:
        arrays = [zarr.open_array(store=store, path=level, mode="r") for level in levels]
    except Exception as e:
        raise InputError(f"cannot read the levels {levels} of '{path}': {e}; is the OME-Zarr complete?") from None
    labels: list[str] = []
    if "labels" in node:
        attrs = dict(node["labels"].attrs)
        listed = attrs.get("labels") or (attrs.get("ome") or {}).get("labels") or []
        labels = [str(name) for name in listed if isinstance(name, str) and "/" not in name and name not in ("..", ".")]
    return arrays, axes, sizes, labels


Sizes = list[Optional[dict[str, float]]]  # per level: µm per space axis, or None


def _multiscales(path: Path, attrs: Mapping[str, Any], zarr_format: int
                 ) -> tuple[list[str], Optional[str], Sizes, Sizes]:
    """Level paths, axes letters (None when not tczyx-like), each level's pixel size and the position of its first
    pixel's centre (its translation; None when 0), in µm per space axis."""
    # ome_zarr.io (its ZarrLocation) imports dask.array: 0.7-1.5 s of every run's start, for a dict lookup
    from ome_zarr.axes import Axes
    from ome_zarr.format import FormatV04, FormatV05, detect_format

    try:  # ome-zarr-py detects the version (0.4: zarr v2, plain attributes; 0.5: zarr v3, under "ome")
        attrs = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
        fmt = detect_format(attrs, FormatV04() if zarr_format == 2 else FormatV05())
        multiscales = attrs.get("multiscales")
        if not multiscales:
            raise InputError(f"'{path}' is a Zarr group without OME-Zarr 'multiscales' metadata; give an OME-Zarr "
                             "image folder, or the path of one array inside the group")
        meta = multiscales[0]
        axes = Axes(meta["axes"], fmt=fmt).to_list()
        datasets = meta["datasets"]
        levels = [str(d["path"]) for d in datasets]
        common = meta.get("coordinateTransformations")
        scales = [[a * b for a, b in zip(_scale(d.get("coordinateTransformations"), len(axes)),
                                         _scale(common, len(axes)))] for d in datasets]
        sizes = [_pixel_size(axes, s) for s in scales]
        # NGFF: a level's own transformations first, then the multiscale's: (i * s + t) * S + T
        origins = [_pixel_size(axes, [t * c + u for t, c, u in zip(_translation(d.get("coordinateTransformations"),
                                                                                  len(axes)),
                                                                     _scale(common, len(axes)),
                                                                     _translation(common, len(axes)))], zero=True)
                   for d in datasets]
    except InputError:
        raise
    except Exception as e:  # ome-zarr-py's validation, missing keys, wrong types
        raise InputError(f"cannot read the OME-Zarr metadata of '{path}': {type(e).__name__}: {e}; expected NGFF "
                         "0.4 or 0.5 multiscales") from None
    return levels, _letters(axes), sizes, origins


def _translation(transformations: Any, ndim: int) -> list[float]:
    for t in transformations or ():
        if t.get("type") == "translation" and len(t.get("translation", ())) == ndim:
            return [float(v) for v in t["translation"]]
    return [0.0] * ndim


def _scale(transformations: Any, ndim: int) -> list[float]:
    for t in transformations or ():
        if t.get("type") == "scale" and len(t.get("scale", ())) == ndim:
            return [float(v) for v in t["scale"]]
    return [1.0] * ndim


def _letters(axes: list[dict]) -> Optional[str]:
    letters = ""
    for axis in axes:
        name = str(axis.get("name", "")).lower()
        kind = axis.get("type")
        letters += name if name in NGFF_ORDER else {"channel": "c", "time": "t"}.get(kind, "?")
    return None if "?" in letters or len(set(letters)) != len(letters) else letters


def _pixel_size(axes: list[dict], scale: list[float], zero: bool = False) -> Optional[dict[str, float]]:
    """µm per space axis with a length unit; an axis without a unit has an unknown size (as for TIFF). With
    `zero` (translations), None when every value is 0."""
    size = {}
    for axis, value in zip(axes, scale):
        name = str(axis.get("name", "")).lower()
        if axis.get("type") == "space" and name in "zyx" and axis.get("unit"):
            um = to_micrometers(value, axis["unit"]) if not zero else (  # a translation may be negative
                0.0 if not value else math.copysign(to_micrometers(abs(value), axis["unit"]) or math.nan, value))
            if um is not None and not math.isnan(um):
                size[name] = um
    return size if size and (not zero or any(size.values())) else None


def _nearest(sizes: list[Optional[dict[str, float]]], target: Optional[Mapping[str, float]]) -> int:
    """The level whose pixel size is nearest `target` (sum of |log ratio| over the shared axes); level 0 when
    either is unknown."""
    def distance(size):
        shared = [a for a in (target or {}) if size and a in size]
        return sum(abs(math.log(size[a] / target[a])) for a in shared) if shared else math.inf
    scores = [distance(s) for s in sizes]
    best = min(range(len(sizes)), key=lambda i: scores[i])
    return best if math.isfinite(scores[best]) else 0


__all__ = ["NGFF_ORDER", "in_zarr", "is_zarr", "open_pyramid", "open_zarr"]
