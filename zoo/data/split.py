"""Leakage-proof train/val/test splits: made once, written to `split.json`, verified on every later use.

A data folder holds `images/` and, with the same file names, `masks/` (segmentation) and/or `targets/` (CARE).
The first call writes `split.json` (per part: file name -> sha256 of each paired file, plus the seed, the fractions
and a checksum of the whole manifest); every later call reuses it and never reshuffles. Training stops with a
TrainingError when a file sits in two parts, a file was moved between parts (the assignment is recomputed from the
recorded seed and fractions), a file's content changed, or files appeared or vanished since the split.

The assignment depends on file *content*, not names (rank of sha256(seed, image sha256)), so identical images always
land in the same part and a renamed file cannot migrate. Small images must be cut into disjoint tiles first
(`tile_dataset`) so that test pixels are never seen in training.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from biozoo.runtime import TrainingError

from .fetch import sha256_file

PathLike = Union[str, Path]
PARTS = ("train", "val", "test")
PAIRED = ("masks", "targets")
SUFFIXES = (".tif", ".tiff")
FORMAT = "biozoo-split/1"
SOURCE_SEPARATOR = "@@"  # SOURCE@@NAME: a file of dataset SOURCE in a mixed folder (zoo/data/sources.py)
_RESPLIT = ("delete {m} to re-split deliberately (this changes the test set: metrics are then not comparable with "
            "runs on the old split)")


@dataclass(frozen=True)
class Split:
    """The parts of one data folder. `manifest_hash` goes into the run dir and the package."""

    root: Path
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    folders: tuple[str, ...]
    seed: int
    fractions: tuple[float, float, float]
    manifest_hash: str

    def part(self, name: str) -> tuple[str, ...]:
        if name not in PARTS:
            raise TrainingError(f"unknown split part '{name}'; expected one of {', '.join(PARTS)}")
        return getattr(self, name)

    def paths(self, part: str, folder: str = "images") -> list[Path]:
        return [self.root / folder / n for n in self.part(part)]


def list_files(data_dir: PathLike) -> tuple[tuple[str, ...], dict[str, dict[str, str]]]:
    """(paired folders, name -> {folder: sha256}) of a data folder; checks that every image has its partners."""
    root = Path(data_dir)
    if not (root / "images").is_dir():
        raise TrainingError(f"data folder {root} has no images/ subfolder; expected images/ plus masks/ or targets/ "
                            f"with the same file names (or fetch one: biozoo data fetch NAME)")
    folders = ("images",) + tuple(f for f in PAIRED if (root / f).is_dir())
    names = {f: sorted(p.name for p in (root / f).iterdir() if p.suffix.lower() in SUFFIXES
                       and not p.name.startswith(".")) for f in folders}
    if not names["images"]:
        raise TrainingError(f"{root / 'images'} holds no .tif/.tiff files")
    for f in folders[1:]:
        missing, extra = set(names["images"]) - set(names[f]), set(names[f]) - set(names["images"])
        if missing or extra:
            raise TrainingError(f"{root / f} does not match images/: missing {sorted(missing)[:5]}, extra "
                                f"{sorted(extra)[:5]}; every image needs a partner of the same name")
    return folders, {n: {f: sha256_file(root / f / n) for f in folders} for n in names["images"]}


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _assign(hashes: dict[str, dict[str, str]], seed: int, fractions: Sequence[float]) -> dict[str, str]:
    """Name -> part. When every file is named SOURCE@@NAME (a folder that mixes datasets, zoo/data/sources.py),
    each source is split by itself, exactly as its own folder is: a file lands in the same part in every mix."""
    groups: dict[str, dict[str, dict[str, str]]] = {}
    for name, h in hashes.items():
        groups.setdefault(name.split(SOURCE_SEPARATOR, 1)[0] if SOURCE_SEPARATOR in name else "", {})[name] = h
    if len(groups) > 1 and "" not in groups:
        return {n: p for group in groups.values() for n, p in _assign_one(group, seed, fractions).items()}
    return _assign_one(hashes, seed, fractions)


def _assign_one(hashes: dict[str, dict[str, str]], seed: int, fractions: Sequence[float]) -> dict[str, str]:
    """Name -> part. Rank by sha256(seed, image content): stable across numpy versions and platforms."""
    order = sorted(hashes, key=lambda n: (hashlib.sha256(f"{seed}:{hashes[n]['images']}".encode()).hexdigest(), n))
    n = len(order)
    n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
    n_val = max(1, round(n * fractions[1])) if fractions[1] > 0 else 0
    if n - n_test - n_val < 1:
        raise TrainingError(f"only {n} file(s) to split into train/val/test with fractions {tuple(fractions)}; cut "
                            f"small images into disjoint tiles first (tile_dataset / data.tile) or add data")
    parts = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
    # identical images must share a part, whatever their rank: give each content group its first member's part
    first: dict[str, str] = {}
    out = {}
    for name, part in zip(order, parts):
        out[name] = first.setdefault(hashes[name]["images"], part)
    return out


def make_or_load_split(data_dir: PathLike, fractions: Optional[Sequence[float]] = None,
                       seed: Optional[int] = None) -> Split:
    """Write `split.json` on first use (default fractions 0.7/0.15/0.15, seed 0), else verify and reuse it.

    Passing fractions/seed that differ from an existing manifest is an error, never a silent re-split.
    """
    root = Path(data_dir)
    manifest = root / "split.json"
    folders, hashes = list_files(root)
    if not manifest.exists():
        fr = tuple(float(f) for f in (fractions if fractions is not None else (0.7, 0.15, 0.15)))
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise TrainingError(f"split fractions {fr} must be three non-negative numbers (train, val, test) "
                                f"summing to 1")
        s = 0 if seed is None else int(seed)
        assign = _assign(hashes, s, fr)
        body = {"format": FORMAT, "seed": s, "fractions": list(fr), "folders": list(folders),
                "parts": {p: {n: hashes[n] for n in sorted(assign) if assign[n] == p} for p in PARTS}}
        record = dict(body, checksum=hashlib.sha256(_canonical(body)).hexdigest())
        fd, tmp = tempfile.mkstemp(prefix=".split.", dir=root)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, manifest)
    return _load(manifest, folders, hashes, fractions, seed)


def _load(manifest: Path, folders: tuple[str, ...], hashes: dict[str, dict[str, str]],
          fractions: Optional[Sequence[float]], seed: Optional[int]) -> Split:
    fix = _RESPLIT.format(m=manifest)
    try:
        record = json.loads(manifest.read_text())
        body = {k: record[k] for k in ("format", "seed", "fractions", "folders", "parts")}
        checksum = record["checksum"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"{manifest} is unreadable or incomplete ({e}); restore it from the run dir, or {fix}")
    if body["format"] != FORMAT:
        raise TrainingError(f"{manifest} has format {body['format']!r}, expected {FORMAT!r}; {fix}")
    if hashlib.sha256(_canonical(body)).hexdigest() != checksum:
        raise TrainingError(f"{manifest} was edited after it was written (its checksum does not match); restore it, "
                            f"or {fix}")
    if fractions is not None and [round(float(f), 6) for f in fractions] != [round(f, 6) for f in body["fractions"]]:
        raise TrainingError(f"{manifest} was made with fractions {tuple(body['fractions'])}, you asked for "
                            f"{tuple(fractions)}; splits are never remade silently: use the recorded fractions, or {fix}")
    if seed is not None and int(seed) != body["seed"]:
        raise TrainingError(f"{manifest} was made with seed {body['seed']}, you asked for {seed}; use the recorded "
                            f"seed, or {fix}")
    where: dict[str, str] = {}
    recorded: dict[str, dict[str, str]] = {}
    for part in PARTS:
        for name, h in body["parts"].get(part, {}).items():
            if name in where:
                raise TrainingError(f"'{name}' is listed in both '{where[name]}' and '{part}' of {manifest}: "
                                    f"test data would leak into training; {fix}")
            where[name], recorded[name] = part, h
    expected = _assign(recorded, body["seed"], body["fractions"]) if recorded else {}
    for name, part in sorted(where.items()):
        if expected[name] != part:
            raise TrainingError(f"'{name}' is in '{part}' in {manifest} but its split (seed {body['seed']}) puts it "
                                f"in '{expected[name]}': it was moved between parts; restore {manifest}, or {fix}")
    _compare(manifest, where, recorded, tuple(body["folders"]), folders, hashes, fix)
    return Split(root=manifest.parent, folders=tuple(body["folders"]), seed=body["seed"],
                 fractions=tuple(body["fractions"]), manifest_hash=checksum,
                 **{p: tuple(sorted(n for n in where if where[n] == p)) for p in PARTS})


def _compare(manifest: Path, where: dict[str, str], recorded: dict[str, dict[str, str]], rec_folders: tuple[str, ...],
             folders: tuple[str, ...], hashes: dict[str, dict[str, str]], fix: str) -> None:
    """The folder on disk must be exactly what the manifest recorded."""
    root = manifest.parent
    if rec_folders != folders:
        raise TrainingError(f"{root} now has folders {list(folders)}, split.json recorded {list(rec_folders)}; "
                            f"restore them, or {fix}")
    for name in sorted(set(recorded) - set(hashes)):
        raise TrainingError(f"'{name}' ({where[name]} part of {manifest}) is missing from {root / 'images'}; "
                            f"restore it, or {fix}")
    by_content = {h["images"]: n for n, h in recorded.items()}
    for name in sorted(set(hashes) - set(recorded)):
        twin = by_content.get(hashes[name]["images"])
        also = f" (same content as '{twin}' in the {where[twin]} part: a copy or a rename)" if twin else ""
        raise TrainingError(f"'{name}' in {root / 'images'} is not in {manifest}{also}; new files are never added "
                            f"to an existing split silently: remove it, or {fix}")
    for name in sorted(recorded):
        for folder in folders:
            if hashes[name][folder] != recorded[name][folder]:
                raise TrainingError(f"{root / folder / name} ({where[name]} part) changed since the split was made "
                                    f"(sha256 {hashes[name][folder][:12]}..., recorded {recorded[name][folder][:12]}...); "
                                    f"restore the original file, or {fix}")


def tile_dataset(src_dir: PathLike, dst_dir: PathLike, tile: int = 128) -> Path:
    """Cut every image (and its mask/target) into disjoint tile x tile pieces in YX, one file each, in `dst_dir`.

    Why: a single 512x512 image cannot be split into train/val/test by file; tiles can, and since they do not
    overlap, no test pixel is ever seen in training. Edge remainders narrower than a tile are dropped (recorded in
    tiles.json). Idempotent: an existing `dst_dir` made from the same sources with the same tile size is reused.
    """
    import numpy as np
    import tifffile

    src, dst = Path(src_dir), Path(dst_dir)
    folders, hashes = list_files(src)
    info = {"tile": int(tile), "source": str(src.resolve()), "source_sha256": hashes}
    if (dst / "tiles.json").is_file():
        old = json.loads((dst / "tiles.json").read_text())
        if old.get("tile") == info["tile"] and old.get("source_sha256") == hashes:
            return dst
        raise TrainingError(f"{dst} holds tiles of other source files or another tile size; delete {dst} to re-tile "
                            f"(its split.json goes with it, which changes the test set)")
    if dst.exists() and any(dst.iterdir()):
        raise TrainingError(f"{dst} exists and is not a tile folder (no tiles.json); choose an empty folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tiles: list[str] = []
    dropped: dict[str, list[int]] = {}
    for name in sorted(hashes):
        arrays = {f: np.asarray(tifffile.imread(src / f / name)) for f in folders}
        shape = arrays["images"].shape
        if any(a.shape[-2:] != shape[-2:] for a in arrays.values()) or len(shape) not in (2, 3):
            raise TrainingError(f"{name}: shapes {({f: a.shape for f, a in arrays.items()})} differ or are not "
                                f"(Y, X) / (Z, Y, X); expected one grayscale 2D or 3D image and same-sized partners")
        ny, nx = shape[-2] // tile, shape[-1] // tile
        if ny == 0 or nx == 0:
            raise TrainingError(f"{name} is {shape[-2]}x{shape[-1]} in YX, smaller than tile {tile}; lower data.tile")
        dropped[name] = [shape[-2] - ny * tile, shape[-1] - nx * tile]
        stem = Path(name).stem
        for iy in range(ny):
            for ix in range(nx):
                out = f"{stem}_y{iy:02d}_x{ix:02d}.tif"
                for f, a in arrays.items():
                    (staging / f).mkdir(exist_ok=True)
                    piece = a[..., iy * tile:(iy + 1) * tile, ix * tile:(ix + 1) * tile]
                    tifffile.imwrite(staging / f / out, np.ascontiguousarray(piece), compression=None)
                tiles.append(out)
    info.update(tiles=tiles, dropped_remainder_yx=dropped)
    (staging / "tiles.json").write_text(json.dumps(info, indent=1) + "\n")
    if dst.exists():
        dst.rmdir()
    os.replace(staging, dst)
    return dst
