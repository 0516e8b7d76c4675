"""Images as array-likes read slice by slice, outputs written slice by slice: so that memory need not grow with the
image.

    with open_image(path, target_pixel_size) as image:   # .npy, .tif/.tiff, .png, .zarr, .ome.zarr
        image.data[0:256, 0:256]                          # numpy; .shape, .dtype without reading pixels
        image.axes, image.pixel_size, image.note
    target = create_output(path, shape, dtype, axes, pixel_size, labels=False)
    target[0:256, 0:256] = tile; target.close()           # or target.abort(): nothing stays behind

`.data` is a read-only np.memmap for .npy and for uncompressed contiguous TIFF, tifffile's zarr store for other
TIFF (an eager read when zarr is missing), the zarr array for Zarr and OME-Zarr (the level nearest
`target_pixel_size`, see omezarr.py), an in-memory array for PNG.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..checks.pixelsize import read_pixel_size as read_tiff_pixel_size
from ..format.permissions import plain_permissions
from ..errors import InputError
from .omezarr import in_zarr, is_zarr, open_zarr
from .omezarr_output import OmeZarrOutput

READ_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".zarr")
TIFF_AXES = {"Y": "y", "X": "x", "Z": "z", "C": "c", "S": "c", "T": "t"}


def tiff_axes(series_axes: str) -> Optional[str]:
    """tifffile's series axes as biozoo letters, None when one cannot be told or repeats."""
    axes = "".join(TIFF_AXES.get(a, "?") for a in series_axes)
    return None if "?" in axes or len(set(axes)) != len(axes) else axes


@dataclass
class LazyImage:
    """An opened image: `data` (array-like: .shape, .dtype, slices -> numpy), `axes` (letters or None),
    `pixel_size` (µm by space axis, or None), `note` (which OME-Zarr level was read and why, else ''), `origin`
    (where the first pixel's centre lies, µm by space axis: an OME-Zarr translation; None when at 0)."""
    data: Any
    axes: Optional[str]
    pixel_size: Optional[dict[str, float]]
    note: str = ""
    origin: Optional[dict[str, float]] = None
    _close: Optional[Callable[[], None]] = field(default=None, repr=False)

    def close(self) -> None:
        if self._close is not None:
            self._close()
            self._close = None

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_image(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None) -> LazyImage:
    """Open `path` without reading its pixels; for an OME-Zarr, the resolution level whose pixel size is nearest
    `target_pixel_size` (µm by space axis, e.g. the model's training pixel size), named in `.note`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if in_zarr(path):
        data, axes, size, note, origin = open_zarr(path, target_pixel_size)
        return LazyImage(data, axes, size, note, origin)
    if suffix not in READ_SUFFIXES:
        raise InputError(f"cannot read '{path}': unsupported file type '{suffix}'; expected one of {READ_SUFFIXES}")
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    if suffix == ".png":
        data, axes = read_png(path)
        return LazyImage(data, axes, None)
    try:
        if suffix == ".npy":
            return LazyImage(_npy_memmap(path), None, None)
        return _open_tiff(path)
    except InputError:
        raise
    except Exception as e:  # tifffile/numpy raise many types for damaged files
        raise InputError(f"cannot read '{path}': {e}; is the file complete and a valid {suffix[1:].upper()}?") from None


def read_png(path: Path) -> tuple[np.ndarray, str]:
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading PNG needs Pillow: pip install 'biozoo[png]' (or convert the image to TIFF)") from None
    with Image.open(path) as im:
        data = np.asarray(im)
    return data, "yx" if data.ndim == 2 else "yxc"


def _npy_memmap(path: Path) -> np.memmap:
    from numpy.lib import format as npformat

    with open(path, "rb") as f:
        version = npformat.read_magic(f)
        read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
        shape, _, dtype = read(f)
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"input file '{path.name}' holds dtype {dtype!s}; expected a numeric array (bool, int, uint, "
                         "float, complex)")
    if 0 in shape:
        return np.zeros(shape, dtype)  # numpy cannot map an empty array
    return np.load(path, mmap_mode="r", allow_pickle=False)  # raises ValueError when the file is too short


def _open_tiff(path: Path) -> LazyImage:
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes = tiff_axes(series.axes)
        size = read_tiff_pixel_size(path)
        try:
            data = tifffile.memmap(path, mode="r", series=0)  # uncompressed and contiguous only
            if tuple(data.shape) != tuple(series.shape):
                data = data.reshape(series.shape)
            tif.close()
            return LazyImage(data, axes, size)
        except ValueError:
            pass
        try:
            import zarr
        except ImportError:  # no zarr: read it whole
            data = series.asarray()
            tif.close()
            return LazyImage(data, axes, size)
        store = series.aszarr(level=0)
        array = zarr.open_array(store=store, mode="r")

        def close() -> None:
            store.close()
            tif.close()
        return LazyImage(array, axes, size, _close=close)
    except BaseException:
        tif.close()
        raise


def read_pixel_size(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None
                    ) -> Optional[dict[str, float]]:
    """Pixel size from a file's metadata without reading pixels: TIFF tags / OME-XML / ImageJ, OME-Zarr scale
    metadata (of the level nearest `target_pixel_size`); None when the file states none."""
    path = Path(path)
    if not in_zarr(path):
        return read_tiff_pixel_size(path)
    try:
        with open_image(path, target_pixel_size) as image:
            return image.pixel_size
    except InputError:  # unreadable files are reported when their pixels are read
        return None


def create_output(path: Path, shape: tuple[int, ...], dtype: Any, axes: str,
                  pixel_size: Optional[Mapping[str, float]] = None, labels: bool = False, image: Any = None, *,
                  chunks: Optional[Mapping[str, int]] = None, at: Optional[Path] = None, reopen: bool = False,
                  origin: Optional[Mapping[str, float]] = None):
    """A writable array-like of `shape` in `axes` order (`target[slices] = block`), finished by `.close()` (the
    output appears atomically: written under a temporary sibling name, renamed at the end) or `.abort()`
    (everything removed). .npy and .tif: a memory-mapped temporary file; .zarr / .ome.zarr: NGFF 0.5 with
    `pixel_size` (µm by space axis) as scale metadata and `origin` (the first pixel's centre, in the same units) as
    translation, `labels` as an NGFF labels group (`image`, a LazyImage of the input, then goes to the root so that
    viewers show both).

    For writers in other processes (distributed prediction): the object pickles without its data and reopens its
    temporary for writing where it is unpickled; `chunks` (axis letter -> length) sets the Zarr chunks writes are
    aligned to; `at` (a folder beside `path`) holds the temporary under a fixed name, which `reopen` takes up again
    when it is there with the same shape and dtype (a resumed run)."""
    path = Path(path)
    if is_zarr(path):
        return OmeZarrOutput(path, shape, dtype, axes, pixel_size, labels, image, chunks=chunks, at=at, reopen=reopen,
                             origin=origin)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise InputError(f"cannot write '{path}': unsupported output type '{suffix}'; use .tif, .npy or .ome.zarr")
    return MappedOutput(path, shape, dtype, axes, at=at, reopen=reopen)


class MappedOutput:
    """A memory-mapped .npy or TIFF under a temporary sibling name, renamed onto `path` by `close()`."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, axes: str, *, at: Optional[Path] = None,
                 reopen: bool = False):
        self.path, self.axes, self.reopened = path, axes, False
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(np.uint8 if np.dtype(dtype) == np.bool_
                                                                        else dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if at is not None:
                self._tmp = Path(at) / f"{path.name}.partial{path.suffix}"
                if reopen and self._tmp.is_file() and self._reopen():
                    self.reopened = True
                    return
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
                os.close(fd)
                self._tmp = Path(tmp)
            if path.suffix.lower() == ".npy":
                self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=self.dtype, shape=self.shape)
            else:
                import tifffile

                self._array = tifffile.memmap(self._tmp, shape=self.shape, dtype=self.dtype,
                                              metadata={"axes": axes.upper().replace("B", "Q")})
        except OSError as e:
            self.abort()
            raise InputError(f"cannot write '{path}': {e.strerror or e}; choose a writable output location") from None

    def _reopen(self) -> bool:
        """Map the temporary again for writing; False when it does not hold an array of this shape and dtype."""
        try:
            if self.path.suffix.lower() == ".npy":
                array = np.load(self._tmp, mmap_mode="r+", allow_pickle=False)
            else:
                import tifffile

                array = tifffile.memmap(self._tmp, mode="r+")
        except (OSError, ValueError):
            return False
        if tuple(array.shape) != self.shape or array.dtype != self.dtype:
            return False
        self._array = array
        return True

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_array"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self._reopen():
            raise InputError(f"cannot write '{self.path}': its temporary '{self._tmp}' is gone or changed; run again")

    def __setitem__(self, key: Any, value: Any) -> None:
        self._array[key] = value

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[key])

    @property
    def base(self) -> Optional[np.ndarray]:  # engine.streaming.release drops the written pages through it
        return self.__dict__.get("_array")

    def flush(self) -> None:
        """Written pages to the file, then out of this process's resident set."""
        from ..engine.streaming import release

        self._array.flush()
        release(self._array)

    def close(self) -> None:
        try:
            self._array.flush()
            del self._array
            plain_permissions(self._tmp)
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise InputError(f"cannot write '{self.path}': {e.strerror or e}; nothing was written there (check the "
                             "free space and permissions of its folder)") from None

    def abort(self) -> None:
        self.__dict__.pop("_array", None)
        if getattr(self, "_tmp", None) is not None:
            self._tmp.unlink(missing_ok=True)
