"""Read images (TIFF, NPY, PNG) with their axes when the file says them; write outputs atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..format.npy import load_npy

READ_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
WRITE_SUFFIXES = (".tif", ".tiff", ".npy")
_TIFF_AXES = {"Y": "y", "X": "x", "Z": "z", "C": "c", "S": "c", "T": "t"}


def read_image(path: Path) -> tuple[np.ndarray, Optional[str]]:
    """The pixels and, when the file records them, the axes as biozoo letters (e.g. 'zyx'); None otherwise."""
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise InputError(f"cannot read '{path}': unsupported file type '{suffix}'; expected one of {READ_SUFFIXES}")
    if not path.is_file():
        raise InputError(f"input file '{path}' does not exist")
    try:
        if suffix == ".npy":
            return load_npy(path, f"input file '{path}'", error=InputError), None
        if suffix == ".png":
            return _read_png(path)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = "".join(_TIFF_AXES.get(a, "?") for a in series.axes)
        axes = None if "?" in axes or len(set(axes)) != len(axes) else axes
        return data, axes
    except InputError:
        raise
    except Exception as e:  # tifffile/numpy raise many types for damaged files
        raise InputError(f"cannot read '{path}': {e}; is the file complete and a valid {suffix[1:].upper()}?") from None


def image_info(path: Path) -> tuple[tuple[int, ...], np.dtype, Optional[str]]:
    """Shape, dtype and (when recorded) axes of an image file from its header alone: no pixel is read, so that
    predict can refuse an image too large for memory before loading it."""
    suffix = path.suffix.lower()
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
            axes = "".join(_TIFF_AXES.get(a, "?") for a in series.axes)
        return shape, dtype, None if "?" in axes or len(set(axes)) != len(axes) else axes
    except ImportError:
        raise InputError("reading PNG needs Pillow: pip install 'biozoo[png]' (or convert the image to TIFF)") from None
    except Exception as e:  # damaged headers: numpy/tifffile/PIL raise many types
        raise InputError(f"cannot read '{path}': {e}; is the file complete and a valid {suffix[1:].upper()}?") from None


def _read_png(path: Path) -> tuple[np.ndarray, str]:
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading PNG needs Pillow: pip install 'biozoo[png]' (or convert the image to TIFF)") from None
    with Image.open(path) as im:
        data = np.asarray(im)
    return data, "yx" if data.ndim == 2 else "yxc"


def write_image(path: Path, data: np.ndarray, axes: str) -> None:
    """Write TIFF (with axes metadata) or NPY; via a temporary file, so a failure leaves no partial output."""
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write '{path}': unsupported output type '{suffix}'; use .tif or .npy")
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
        os.replace(tmp, path)
    except OSError as e:  # disk full, quota, a folder replaced meanwhile: nothing half-written stays behind
        Path(tmp).unlink(missing_ok=True)
        raise InputError(f"cannot write '{path}': {e.strerror or e}; nothing was written there (check the free "
                         "space and permissions of its folder)") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
