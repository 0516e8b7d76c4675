"""The journal of a block-by-block run (Dask): what the run is (`run.json`: the package, the inputs' stamps, the
plan, the statistics) and which blocks are finished (one file per block under done/, written by the workers), in a
hidden folder beside the output, so that `--resume` skips finished blocks and never takes up another run's."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from ..engine.tiling import Plan
from ..errors import InputError
from ..format.package import sha256_of
from ..model import Model
from .block_worker import DONE

log = logging.getLogger("biozoo")
JOURNAL_SUFFIX = ".biozoo-run"


def journal_folder(targets: Mapping[str, Path]) -> Path:
    first = next(iter(targets.values()))
    return first.parent / f".{first.name}{JOURNAL_SUFFIX}"


class Journal:
    """The record of a run's finished blocks: `run.json` (what the run is) and one empty file per finished block
    under done/ (written by the workers). A journal that describes another run is never taken up: --resume
    refuses it, a run without --resume replaces it."""

    def __init__(self, folder: Path, fingerprint: dict, resume: bool):
        self.folder, self.resumed = folder, False
        record = folder / "run.json"
        if resume and record.is_file():
            try:
                previous = json.loads(record.read_text())
            except (OSError, ValueError):
                previous = None
            if previous != fingerprint:
                differ = sorted(k for k in fingerprint if not previous or previous.get(k) != fingerprint[k])
                raise InputError(f"cannot resume from '{folder}': it was left by a run with other "
                                 f"{', '.join(differ) or 'settings'}; run again without --resume to start over")
            self.resumed = True
        elif resume:
            log.info("--resume: no unfinished run at '%s'; starting from the first block", folder)
        elif folder.exists():
            log.info("starting over: removing the unfinished run at '%s' (--resume would continue it)", folder)
        if not self.resumed:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                (folder / DONE).mkdir(parents=True)
                (folder / "run.json").write_text(json.dumps(fingerprint))
            except OSError as e:
                raise InputError(f"cannot write beside the output ('{folder}'): {e.strerror or e}; choose a writable "
                                 "output folder") from None

    def done(self) -> set[int]:
        """The finished blocks: a file named by the block's index (dense: empty; StarDist: N.npz, its objects)."""
        return {int(p.name.split(".")[0]) for p in (self.folder / DONE).iterdir() if p.name.split(".")[0].isdigit()}

    def forget_blocks(self) -> None:
        for marker in (self.folder / DONE).iterdir():
            marker.unlink()

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup")


def stamp(path: Path) -> list:
    """What tells a changed input file apart without reading it: size and modification time (a Zarr folder:
    those of its metadata files and its arrays' one level down, never a walk over millions of chunks)."""
    if path.is_file():
        files = [path]
    else:
        levels = [path, *(d for d in sorted(path.iterdir()) if d.is_dir())]
        files = [d / name for d in levels for name in METADATA if (d / name).is_file()]
    return [[str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def fingerprint(model: Model, sample: Mapping[str, Path], targets: Mapping[str, Path], plan: Plan,
                 stats: Mapping, dtypes: Mapping[str, np.dtype]) -> dict:
    digest = hashlib.sha256()
    for m in sorted(stats, key=repr):
        digest.update(repr(m).encode())
        digest.update(np.asarray(stats[m], dtype=np.float64).tobytes())
    return {
        "package": sha256_of(model.package.rdf_path),
        "inputs": {tid: [str(p.resolve()), stamp(p)] for tid, p in sample.items()},
        "outputs": {tid: [str(p.resolve()), str(dtypes[tid])] for tid, p in targets.items()},
        "plan": [[p.axis_id, p.tile, list(p.starts), list(p.cuts)] for p in plan.tiled],
        "statistics": digest.hexdigest(),
    }


__all__ = ["JOURNAL_SUFFIX", "Journal", "fingerprint", "journal_folder", "stamp"]
