"""Files and folders written through tempfile (mode 0600 / 0700, so that nobody sees them half-written) get the
permissions open() and mkdir() would have given them (0666 / 0777 less the umask) before they are renamed into
place: an output in a shared facility folder must be readable by the others as any file there."""
from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it, since setting it to read it back races with other threads creating files
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_permissions(path: os.PathLike) -> None:
    """Give `path` (a file, or a folder and everything in it) the default permissions for new files."""
    mask = _umask()
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    elif path.exists():
        os.chmod(path, 0o666 & ~mask)
