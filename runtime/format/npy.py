"""Read a .npy file written by a stranger: header first, then only what the header honestly describes.

`np.load` trusts the header: a 1 KB file claiming shape (149 GiB,) fails deep inside numpy with an exception type
nobody catches, object arrays need pickle, a text file gives a ValueError. `load_npy` reads the header with
numpy.lib.format, refuses non-numeric dtypes (object, structured, strings), refuses arrays above MAX_NPY_BYTES
(4 GiB; $BIOZOO_MAX_NPY_BYTES) or whose data size differs from the file's, then loads with allow_pickle=False.
Every refusal is `error` (PackageError by default) naming the file.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import BiozooError, PackageError
from .safe_yaml import file_kind

MAX_NPY_BYTES = 4 * 2**30
_NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex


def max_npy_bytes() -> int:
    value = os.environ.get("BIOZOO_MAX_NPY_BYTES")
    return int(value) if value and value.isdigit() else MAX_NPY_BYTES


def load_npy(path: str | os.PathLike[str], where: str, *, error: type[BiozooError] = PackageError) -> np.ndarray:
    """The array in `path` (`where` names it in messages, e.g. "inputs[0].test_tensor")."""
    from numpy.lib import format as npformat

    path = Path(path)
    prefix = f"{where} '{path.name}'"
    limit = max_npy_bytes()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{prefix} is not a regular file ({file_kind(st.st_mode)}); expected a .npy file")
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{prefix} is not a regular file; expected a .npy file")
            version = npformat.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npformat.read_array_header_2_0(f)
            else:
                raise error(f"{prefix} is .npy format {version[0]}.{version[1]}; biozoo reads numeric arrays in "
                            "format 1.0 or 2.0 (what numpy.save writes): save it again with numpy.save")
            if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
                raise error(f"{prefix} holds dtype {dtype!s}; expected a numeric array (bool, int, uint, float, "
                            "complex): object, string and structured arrays are refused")
            if any(not isinstance(n, int) or n < 0 for n in shape):
                raise error(f"{prefix} declares the shape {shape}; expected non-negative integer sizes")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > limit:
                raise error(f"{prefix} declares shape {shape} of {dtype!s}: {_size(nbytes)}, more than the "
                            f"{_size(limit)} accepted (set BIOZOO_MAX_NPY_BYTES to raise the limit)")
            data_bytes = st.st_size - f.tell()
            if data_bytes != nbytes:
                raise error(f"{prefix} declares shape {shape} of {dtype!s} ({nbytes} bytes of data) but holds "
                            f"{data_bytes} bytes after its header; the file is truncated or not what it claims: "
                            "save the array again with numpy.save")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except BiozooError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, MemoryError) as e:
        text = " ".join(str(e).split())[:300]
        raise error(f"{prefix} is not a readable .npy file ({type(e).__name__}: {text}); expected an array saved "
                    "with numpy.save") from None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
