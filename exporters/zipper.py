"""Deterministic, atomic zips: the same folder content always gives the same bytes, and a crash leaves no zip.

Entries are sorted, timestamps fixed (1980-01-01, the zip epoch), permissions fixed, compression level fixed, so a
package's sha256 identifies its content and re-exporting a run does not produce a "new" model.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from biozoo.runtime.format.permissions import plain_permissions

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o644 << 16


def write_deterministic_zip(folder: Path, dest: Path) -> Path:
    """Zip every file under ``folder`` (relative names, sorted) into ``dest``, atomically."""
    folder, dest = Path(folder), Path(dest)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = FILE_MODE
                info.create_system = 3  # unix, whatever OS writes the zip
                zf.writestr(info, path.read_bytes(), compresslevel=6)
        plain_permissions(tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
