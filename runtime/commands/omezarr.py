"""Zarr and OME-Zarr images: read NGFF 0.4 / 0.5 (the resolution level nearest a wanted pixel size), write NGFF 0.5.

Reading opens the level's zarr array itself (slices come back as numpy; nothing is read before a slice asks), with
the metadata parsed and validated by ome-zarr-py. Writing goes through ome-zarr-py's writer: the caller fills a
full-resolution scratch array (whole or tile by tile) inside a temporary sibling folder; `close()` has the library
write the multiscale pyramid with its scale metadata (labels as an NGFF `labels` group, nearest-neighbour levels),
removes the scratch array and renames the folder into place, so a failure never leaves a half-written output.

Only local paths are ever opened (a zarr LocalStore on the absolute path): ome-zarr-py turns strings starting with
'http' or 's3' into remote stores, biozoo never hands it one. zarr and ome-zarr-py are imported here, lazily.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..checks.pixelsize import format_size, to_micrometers
from ..format.permissions import plain_permissions
from ..errors import InputError

NGFF_ORDER = "tczyx"  # the axis order NGFF requires
_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_INSTALL = "pip install 'biozoo[ome-zarr]' (zarr 3 and ome-zarr-py)"


def _libraries():
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
    zarr, LocalStore = _libraries()
    if not path.is_dir():
        raise InputError(f"'{path}' does not exist (a Zarr image is a folder)")
    store = LocalStore(path.absolute(), read_only=True)
    try:
        return zarr, store, zarr.open(store=store, mode="r")
    except Exception as e:  # missing or damaged zarr.json / .zarray / .zgroup
        raise InputError(f"cannot read '{path}': {e}; expected a Zarr array or an OME-Zarr image folder") from None


def open_zarr(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None):
    """(array, axes, pixel size, note) of a plain Zarr array or of the OME-Zarr level whose pixel size is nearest
    `target_pixel_size`; `note` says which level was chosen and why ('' for a single level)."""
    zarr, store, node = _open_node(path)
    if isinstance(node, zarr.Array):
        return node, None, None, ""
    levels, axes, sizes = _multiscales(path, store, node.metadata.zarr_format)
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
    return array, axes, sizes[chosen], note


def open_pyramid(path: Path) -> tuple[list[Any], Optional[str], list[Optional[dict[str, float]]], list[str]]:
    """Every level of an OME-Zarr image, opened lazily (zarr arrays: nothing is read before a slice asks), with
    its axes, each level's pixel size (µm per space axis) and the names of its NGFF label images (viewers). A
    group holding only label images (biozoo's labels of an input not on their grid) has no levels of its own."""
    zarr, store, node = _open_node(path)
    if isinstance(node, zarr.Array):
        raise InputError(f"'{path}' is a plain Zarr array; expected an OME-Zarr image folder (NGFF multiscales)")
    attrs = dict(node.attrs)
    only_labels = "multiscales" not in dict(attrs.get("ome") or attrs) and "labels" in node  # labels, no image
    levels, axes, sizes = ([], None, []) if only_labels else _multiscales(path, store, node.metadata.zarr_format)
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


def _multiscales(path: Path, store, zarr_format: int) -> tuple[list[str], Optional[str], list[Optional[dict[str, float]]]]:
    """Level paths, axes letters (None when not tczyx-like) and each level's pixel size (µm per space axis)."""
    from ome_zarr.axes import Axes
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import ZarrLocation

    try:  # ome-zarr-py detects the version (0.4: zarr v2, plain attributes; 0.5: zarr v3, under "ome")
        location = ZarrLocation(store, fmt=FormatV04() if zarr_format == 2 else FormatV05())
        multiscales = location.root_attrs.get("multiscales")
        if not multiscales:
            raise InputError(f"'{path}' is a Zarr group without OME-Zarr 'multiscales' metadata; give an OME-Zarr "
                             "image folder, or the path of one array inside the group")
        meta = multiscales[0]
        axes = Axes(meta["axes"], fmt=location.fmt).to_list()
        datasets = meta["datasets"]
        levels = [str(d["path"]) for d in datasets]
        common = _scale(meta.get("coordinateTransformations"), len(axes))
        sizes = [_pixel_size(axes, [a * b for a, b in zip(_scale(d.get("coordinateTransformations"), len(axes)),
                                                            common)]) for d in datasets]
    except InputError:
        raise
    except Exception as e:  # ome-zarr-py's validation, missing keys, wrong types
        raise InputError(f"cannot read the OME-Zarr metadata of '{path}': {type(e).__name__}: {e}; expected NGFF "
                         "0.4 or 0.5 multiscales") from None
    return levels, _letters(axes), sizes


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


def _pixel_size(axes: list[dict], scale: list[float]) -> Optional[dict[str, float]]:
    """µm per space axis with a length unit; an axis without a unit has an unknown size (as for TIFF)."""
    size = {}
    for axis, value in zip(axes, scale):
        name = str(axis.get("name", "")).lower()
        if axis.get("type") == "space" and name in "zyx" and axis.get("unit"):
            um = to_micrometers(value, axis["unit"])
            if um is not None:
                size[name] = um
    return size or None


def _nearest(sizes: list[Optional[dict[str, float]]], target: Optional[Mapping[str, float]]) -> int:
    """The level whose pixel size is nearest `target` (sum of |log ratio| over the shared axes); level 0 when
    either is unknown."""
    def distance(size):
        shared = [a for a in (target or {}) if size and a in size]
        return sum(abs(math.log(size[a] / target[a])) for a in shared) if shared else math.inf
    scores = [distance(s) for s in sizes]
    best = min(range(len(sizes)), key=lambda i: scores[i])
    return best if math.isfinite(scores[best]) else 0


# ---- writing ---------------------------------------------------------------------------------------------------
class OmeZarrOutput:
    """A writable array in the caller's axis order (`target[slices] = tile`), stored in NGFF order; `close()`
    writes the OME-Zarr atomically, `abort()` removes everything. A batch axis must have size 1 (NGFF has none)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, axes: str,
                 pixel_size: Optional[Mapping[str, float]] = None, labels: bool = False, image: Any = None, *,
                 chunks: Optional[Mapping[str, int]] = None, at: Optional[Path] = None, reopen: bool = False):
        zarr, LocalStore = _libraries()
        axes = axes.lower()
        self.path, self.shape, self.axes = Path(path), tuple(int(n) for n in shape), axes
        self.dtype = np.dtype(np.uint8 if np.dtype(dtype) == np.bool_ else dtype)
        self.labels, self.image, self.reopened = labels, image, False
        self.pixel_size = dict(pixel_size or {})
        unknown = sorted(set(axes) - set(NGFF_ORDER) - {"b"})
        if len(axes) != len(self.shape) or unknown or len(set(axes)) != len(axes):
            raise InputError(f"cannot write '{path}' as OME-Zarr: axes '{axes}' for shape {self.shape}; expected one "
                             f"letter per axis from '{NGFF_ORDER}' (and b of size 1); write .tif or .npy instead")
        if "b" in axes and self.shape[axes.index("b")] != 1:
            raise InputError(f"cannot write '{path}' as OME-Zarr: its batch axis has {self.shape[axes.index('b')]} "
                             "samples and NGFF has no batch axis; predict one sample per file, or write .tif/.npy")
        self.ngff = "".join(a for a in NGFF_ORDER if a in axes)
        self._order = [axes.index(a) for a in self.ngff]
        self._perm = ([axes.index("b")] if "b" in axes else []) + self._order  # a size-1 batch first, then dropped
        self._ngff_shape = tuple(self.shape[i] for i in self._order)
        fixed = {a: int(n) for a, n in (chunks or {}).items() if a in self.ngff}
        default = [1 if a in "tc" else 64 if a == "z" else 512 for a in self.ngff]
        self._out_chunks = tuple(max(1, min(n, c)) for c, n in zip(default, self._ngff_shape))  # what viewers read
        self._chunks = tuple(max(1, min(n, fixed.get(a) or c)) for a, c, n in zip(self.ngff, default,
                                                                                  self._ngff_shape))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if at is None:
                self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial",
                                                  dir=self.path.parent))
            else:
                self._tmp = Path(at) / f"{self.path.name}.partial"
                if reopen and self._reopen():
                    self.reopened = True
                    return
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp.mkdir(parents=True)
        except OSError as e:
            raise InputError(f"cannot write '{path}': {e.strerror or e}; choose a writable output location") from None
        self._scratch = zarr.create_array(store=LocalStore(self._tmp / "scratch"), shape=self._ngff_shape,
                                          chunks=self._chunks, dtype=self.dtype, fill_value=0, zarr_format=3)

    def _reopen(self) -> bool:
        """Open the scratch array again for writing; False when it is not there with this shape, chunks, dtype."""
        zarr, LocalStore = _libraries()
        try:
            scratch = zarr.open_array(store=LocalStore(self._tmp / "scratch"), mode="r+")
        except Exception:  # zarr raises several types for a missing or damaged array
            return False
        if (tuple(scratch.shape), tuple(scratch.chunks), scratch.dtype) != (self._ngff_shape, self._chunks,
                                                                             self.dtype):
            return False
        self._scratch = scratch
        return True

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_scratch", "image")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, image=None)
        if not self._reopen():
            raise InputError(f"cannot write '{self.path}': its temporary '{self._tmp}' is gone or changed; run again")

    def flush(self) -> None:
        """Nothing to do: every write is in its chunk files when __setitem__ returns."""

    def _key(self, key: Any) -> tuple[tuple, list[int], list[int]]:
        """The scratch index of `key` (caller order), and which caller axes `key` indexes with an int."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (len(self.shape) - len(key) + 1) + key[at + 1:]
        key = key + (slice(None),) * (len(self.shape) - len(key))
        full, ints = [], []
        for i, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, (int, np.integer)):
                k = int(k) + n if int(k) < 0 else int(k)
                full.append(slice(k, k + 1))
                ints.append(i)
            elif isinstance(k, slice) and k.step in (None, 1):
                full.append(slice(*k.indices(n)[:2]))
            else:
                raise IndexError(f"OME-Zarr outputs take ints and contiguous slices, got {k!r}")
        sizes = [s.stop - s.start for s in full]
        return tuple(full[i] for i in self._order), sizes, ints

    def __setitem__(self, key: Any, value: Any) -> None:
        index, sizes, ints = self._key(key)
        kept = [n for i, n in enumerate(sizes) if i not in ints]
        block = np.broadcast_to(np.asarray(value), kept).reshape(sizes)
        block = np.transpose(block, self._perm)
        self._scratch[index] = (block[0] if len(self._perm) > len(self._order) else block).astype(self.dtype,
                                                                                                 copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        index, sizes, ints = self._key(key)
        block = self._scratch[index]
        block = np.transpose(block[None] if len(self._perm) > len(self._order) else block, np.argsort(self._perm))
        return block.reshape([n for i, n in enumerate(sizes) if i not in ints])

    def close(self) -> None:
        """Write the pyramid and metadata, then move the folder into place (replacing an existing output)."""
        try:
            self._write_pyramids()
            shutil.rmtree(self._tmp / "scratch")
            plain_permissions(self._tmp)
            _replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise InputError(f"cannot write '{self.path}': {e.strerror or e}; nothing was written there (check the "
                             "free space and permissions of its folder)") from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _write_pyramids(self) -> None:
        import dask.array as da
        import zarr
        from ome_zarr.format import FormatV05
        from ome_zarr.scale import Methods
        from ome_zarr.writer import write_image, write_labels
        from zarr.storage import LocalStore

        group = zarr.open_group(store=LocalStore(self._tmp), mode="a", zarr_format=3)
        data = da.from_zarr(self._scratch)
        scale = {a: self.pixel_size.get(a, 1.0) if a in "zyx" else 1.0 for a in self.ngff}
        units = {a: "micrometer" for a in self.ngff if a in "zyx" and a in self.pixel_size}
        common = dict(fmt=FormatV05(), storage_options={"chunks": self._out_chunks}, axes_units=units or None)
        factors = _scale_factors(self.ngff, self._ngff_shape)
        if not self.labels:
            write_image(data, group, scale_factors=factors, axes=list(self.ngff), scale=scale, name=_label_name(self.path),
                        **common)
            return
        image = _matching_image(self.image, self.ngff, self._ngff_shape)
        if image is not None:  # the image the labels belong to, at the root, so that viewers show both
            axes, array = image
            write_image(array, group, scale_factors=factors, axes=list(axes), name="image",
                        scale={a: scale.get(a, 1.0) for a in axes}, fmt=FormatV05(),
                        storage_options={"chunks": tuple(max(1, min(c, n)) for c, n in zip(
                            (1 if a in "tc" else 64 if a == "z" else 512 for a in axes), array.shape))},
                        axes_units={a: u for a, u in units.items() if a in axes} or None)
        write_labels(data, group, name=_label_name(self.path), scaler=None, scale_factors=factors,
                     method=Methods.NEAREST, axes=list(self.ngff), scale=scale, **common)


def _label_name(path: Path) -> str:
    name = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.stem
    return name or "labels"


def _scale_factors(axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Powers of two while the smallest y/x side stays >= 64 px (at most 4 extra levels): enough for viewers to
    zoom out fast, none for small outputs."""
    side = min(n for a, n in zip(axes, shape) if a in "yx") if any(a in "yx" for a in axes) else 0
    factors = []
    while len(factors) < 4 and side // 2 ** (len(factors) + 1) >= 64:
        factors.append(2 ** (len(factors) + 1))
    return tuple(factors)


def _matching_image(image: Any, label_axes: str, label_shape: tuple[int, ...]):
    """(NGFF axes, dask array) of the input image when it lies on the labels' grid, else None."""
    if image is None or getattr(image, "axes", None) is None:
        return None
    import dask.array as da

    axes = image.axes.lower()
    if set(axes) - set(NGFF_ORDER):
        return None
    array = da.from_array(image.data, chunks=tuple(1 if a in "tc" else min(n, 512) for a, n in
                                                    zip(axes, image.data.shape)))
    ngff = "".join(a for a in NGFF_ORDER if a in axes)
    array = array.transpose([axes.index(a) for a in ngff])
    wanted = {a: n for a, n in zip(label_axes, label_shape) if a in "zyx"}
    have = {a: n for a, n in zip(ngff, array.shape) if a in "zyx"}
    return (ngff, array) if wanted == have else None


def _replace(tmp: Path, path: Path) -> None:
    """Rename `tmp` onto `path`; an existing output (checked by the caller: --overwrite) is moved aside first and
    removed only once the new one is in place."""
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "previous")
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", path)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
