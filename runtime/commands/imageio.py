"""Read images (TIFF, NPY, PNG, Zarr, OME-Zarr) with their axes when the file says them; write outputs atomically.

`read_image` / `write_image` hold whole arrays; `open_image` / `create_output` (lazyio.py) give array-likes that
read and write slice by slice. A `.zarr` / `.ome.zarr` path (a folder) goes to omezarr.py.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from ..format.permissions import plain_permissions
from ..errors import InputError
from ..format.npy import load_npy
from .lazyio import READ_SUFFIXES, LazyImage, create_output, open_image, read_pixel_size, read_png, tiff_axes
from .omezarr import in_zarr, is_zarr

WRITE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
__all__ = ["LazyImage", "create_output", "image_info", "open_image", "read_image", "read_pixel_size", "write_image"]


def read_image(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None
               ) -> tuple[np.ndarray, Optional[str]]:
    """The pixels and, when the file records them, the axes as biozoo letters (e.g. 'zyx'); None otherwise. For
    an OME-Zarr, the level nearest `target_pixel_size` (see `open_image`)."""
    suffix = path.suffix.lower()
    if in_zarr(path):
        with open_image(path, target_pixel_size) as image:
            return np.asarray(image.data[...]), image.axes
    if suffix not in READ_SUFFIXES:
        raise InputError(f"cannot read '{path}': unsupported file type '{suffix}'; expected one of {READ_SUFFIXES}")
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    try:
        if suffix == ".npy":
            return load_npy(path, f"input file '{path}'", error=InputError), None
        if suffix == ".png":
            return read_png(path)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
        return data, tiff_axes(series.axes)
    except InputError:
        raise
    except Exception as e:  # tifffile/numpy raise many types for damaged files
        raise InputError(f"cannot read '{path}': {e}; is the file complete and a valid {suffix[1:].upper()}?") from None


def image_info(path: Path, target_pixel_size: Optional[Mapping[str, float]] = None
               ) -> tuple[tuple[int, ...], np.dtype, Optional[str]]:
    """Shape, dtype and (when recorded) axes of an image file from its header alone: no pixel is read, so that
    predict can refuse an image too large for memory before loading it."""
    suffix = path.suffix.lower()
    if in_zarr(path):
        with open_image(path, target_pixel_size) as image:
            return tuple(int(n) for n in image.data.shape), np.dtype(image.data.dtype), image.axes
    if suffix not in READ_SUFFIXES:
        raise InputError(f"cannot read '{path}': unsupported file type '{suffix}'; expected one of {READ_SUFFIXES}")
    try:
        if suffix == ".npy":
            from numpy.lib import format as npformat

            with open(path, "rb") as f:
                version = npformat.read_magic(f)
                read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
                shape, _, dtype = read(f)
            return tuple(int(n) for n in shape), np.dtype(dtype), None
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                width, height, bands = im.width, im.height, len(im.getbands())
                dtype = np.dtype(np.uint16 if im.mode.startswith("I;16") else np.int32 if im.mode == "I"
                                 else np.float32 if im.mode == "F" else np.uint8)
            return ((height, width) if bands == 1 else (height, width, bands)), dtype, "yx" if bands == 1 else "yxc"
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(n) for n in series.shape), np.dtype(series.dtype)
            axes = tiff_axes(series.axes)
        return shape, dtype, axes
    except ImportError:
        raise InputError("reading PNG needs Pillow: pip install 'biozoo[png]' (or convert the image to TIFF)") from None
    except Exception as e:  # damaged headers: numpy/tifffile/PIL raise many types
        raise InputError(f"cannot read '{path}': {e}; is the file complete and a valid {suffix[1:].upper()}?") from None


def write_image(path: Path, data: np.ndarray, axes: str, pixel_size: Optional[Mapping[str, float]] = None,
                labels: Optional[bool] = None, image: Optional[LazyImage] = None,
                origin: Optional[Mapping[str, float]] = None) -> None:
    """Write TIFF (with axes metadata), NPY or OME-Zarr; via a temporary file or folder, so a failure leaves no
    partial output. OME-Zarr only: `pixel_size` (µm by space axis) becomes the scale metadata, `origin` (the
    first pixel's centre) the translation, and integer data
    (`labels` None) or `labels=True` is written as an NGFF labels group, with `image` (the input) at the root."""
    suffix = path.suffix.lower()
    if is_zarr(path):
        target = create_output(path, data.shape, data.dtype, axes, pixel_size=pixel_size, image=image,
                               labels=np.issubdtype(data.dtype, np.integer) if labels is None else labels,
                               origin=origin)
        try:
            target[...] = data
        except BaseException:
            target.abort()
            raise
        target.close()
        return
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write '{path}': unsupported output type '{suffix}'; use .tif, .npy or .ome.zarr")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write '{path}': {e.strerror or e}; choose a writable output location") from None
    os.close(fd)
    try:
        if suffix == ".npy":
            np.save(tmp, data)
        else:
            import tifffile

            tifffile.imwrite(tmp, data, metadata={"axes": axes.upper().replace("B", "Q")})
        plain_permissions(tmp)
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, a folder replaced meanwhile: nothing half-written stays behind
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write '{path}': {e.strerror or e}; nothing was written there (check the free "
                         "space and permissions of its folder)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
