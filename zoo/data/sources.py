"""Datasets mixed from several real sources: `data.dataset: mix:hela-nuclei-2d+stardist-nuclei-2d+nuclei-3d`.

Each source is first brought into 2D images with instance masks the way it must be to split it without leakage
(`PREPARATION`: the one 512x512 DSB image cut into 128x128 tiles, the 3D nuclei volume cut into z slices
`SLICE_STEP` apart, each thin CHO stack of 5 slices 1 um apart reduced to its fullest slice (its slices share every
nucleus: more than one per time point would repeat the same objects) and binned 3x3, from its published 0.202 um to
0.606 um, near the HeLa frames' 0.645 um, as `--rescale` brings a user's image to a model's pixel size: at 0.202 um
its nuclei span 73 px, 3x the others, and a mix with them at that size lost accuracy on every other source), then
copied into one folder as SOURCE@@NAME. The split module splits such a folder source by
source, exactly as each source's own folder: a frame or tile is in the same part (train/val/test) in every mix,
so a model trained on one mix is never tested on what another mix trained on, and leave-one-dataset-out runs
(benchmarks/lodo.py) hold a whole source out. The folder is built once (atomically), recorded in `sources.json`
(the source files' sha256), and reused while the sources are unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from biozoo.runtime import TrainingError

from .fetch import DATASETS, default_data_dir, fetch_dataset
from .split import SOURCE_SEPARATOR, list_files, tile_dataset

MIX = "mix:"
SLICE_STEP = 6  # z slices of a volume 6 apart (nuclei span ~20: neighbouring slices still share objects)
FULLEST = 0  # a `slices` step of 0: only the z slice with the most labelled pixels of each stack
PREPARATION: dict[str, dict[str, int]] = {"stardist-nuclei-2d": {"tile": 128}, "nuclei-3d": {"slices": SLICE_STEP},
                                          "cho-nuclei-3d": {"slices": FULLEST, "bin": 3}}


def is_mix(dataset: str) -> bool:
    return dataset.startswith(MIX)


def mix_sources(dataset: str) -> list[str]:
    names = [n.strip() for n in dataset[len(MIX):].split("+") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if len(names) < 2 or unknown or len(set(names)) != len(names):
        raise TrainingError(f"data.dataset '{dataset}': expected mix:NAME+NAME[+...] of two or more different "
                            f"datasets from `biozoo data list` ({', '.join(sorted(DATASETS))}); unknown: {unknown}")
    return names


def prepared_source(name: str, root: Optional[Path] = None) -> Path:
    """The folder of 2D images + masks that source `name` contributes (tiled or sliced as PREPARATION says)."""
    folder = fetch_dataset(name, root)
    how = PREPARATION.get(name, {})
    if "tile" in how:
        return tile_dataset(folder, folder / "derived" / f"tiles-{how['tile']}", how["tile"])
    if "slices" in how:
        step = how["slices"]
        folder = _slices(folder, folder / "derived" / (f"slices-{step}" if step else "fullest-slice"), step)
    if "bin" in how:
        folder = _binned(folder, folder.parent / f"{folder.name}-bin{how['bin']}", how["bin"])
    return folder


def mixed_folder(dataset: str, root: Optional[Path] = None) -> Path:
    """The folder of a `mix:` dataset, built on first use (see the module docstring)."""
    names = mix_sources(dataset)
    base = Path(root) if root is not None else default_data_dir()
    sources = {n: prepared_source(n, root) for n in names}
    record = {n: {"folder": str(f), "files": list_files(f)[1]} for n, f in sources.items()}
    target = base / ("mix-" + "+".join(names))
    if (target / "sources.json").is_file():
        if json.loads((target / "sources.json").read_text()) == record:
            return target
        raise TrainingError(f"{target} was mixed from other source files than today's; delete {target} to mix "
                            "again (its split.json goes with it, which changes the test set)")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    for n, folder in sources.items():
        for sub in ("images", "masks"):
            (staging / sub).mkdir(exist_ok=True)
            for path in sorted((folder / sub).glob("*.tif")):
                shutil.copyfile(path, staging / sub / f"{n}{SOURCE_SEPARATOR}{path.name}")
    (staging / "sources.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "sources.json").is_file():
            raise
    return target


def _derived(src: Path, dst: Path, record: str, settings: dict, what: str,
             pairs: Callable[[str, np.ndarray, np.ndarray], Iterator[tuple[str, np.ndarray, np.ndarray]]]) -> Path:
    """The folder `dst` of the (name, image, mask) pairs that `pairs` makes of each pair of `src`, written once
    (atomically) and reused while its `record` file matches `settings` and the sources' sha256."""
    import tifffile

    _, hashes = list_files(src)
    info = {**settings, "source_sha256": hashes}
    if (dst / record).is_file():
        if json.loads((dst / record).read_text()) == info:
            return dst
        raise TrainingError(f"{dst} holds {what} of other source files or another {', '.join(settings)}; delete "
                            f"{dst} to make them again")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    for name in sorted(hashes):
        image, labels = (np.asarray(tifffile.imread(src / f / name)) for f in ("images", "masks"))
        for out, a, b in pairs(name, image, labels):
            for f, x in (("images", a), ("masks", b)):
                (staging / f).mkdir(exist_ok=True)
                tifffile.imwrite(staging / f / out, np.ascontiguousarray(x), compression=None)
    (staging / record).write_text(json.dumps(info, indent=1) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(staging, dst)
    return dst


def _slices(src: Path, dst: Path, step: int) -> Path:
    """Every `step`-th z slice of each (Z, Y, X) image and mask as its own 2D pair (slices without objects
    dropped), or with `step` FULLEST the one slice with the most labelled pixels (the first of equals); reused while
    `slices.json` matches the sources."""
    def pairs(name: str, image: np.ndarray, labels: np.ndarray):
        if image.ndim != 3 or image.shape != labels.shape:
            raise TrainingError(f"{name}: image {image.shape} and mask {labels.shape}: expected one (Z, Y, X) pair")
        chosen = range(0, image.shape[0], step) if step else [int(np.argmax((labels != 0).sum(axis=(1, 2))))]
        for z in chosen:
            if labels[z].any():
                yield f"{Path(name).stem}_z{z:03d}.tif", image[z], labels[z]

    return _derived(src, dst, "slices.json", {"step": step}, "slices", pairs)


def _binned(src: Path, dst: Path, factor: int) -> Path:
    """Each 2D image averaged over `factor` x `factor` pixels (float32; the rows and columns past the last whole
    bin dropped) and its mask's label at each bin's centre pixel (nearest: no label is mixed); reused while
    `binned.json` matches the sources."""
    def pairs(name: str, image: np.ndarray, labels: np.ndarray):
        if image.ndim != 2 or image.shape != labels.shape or min(image.shape) < factor:
            raise TrainingError(f"{name}: image {image.shape} and mask {labels.shape}: expected one 2D pair of at "
                                f"least {factor} pixels a side")
        h, w = (n // factor * factor for n in image.shape)
        binned = image[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        yield name, binned.astype(np.float32), labels[factor // 2:h:factor, factor // 2:w:factor]

    return _derived(src, dst, "binned.json", {"bin": factor}, "bins", pairs)


def source_files(name: str, root: Optional[Path] = None) -> tuple[Path, list[str]]:
    """(folder, file names) of what a leave-one-dataset-out run tests on: the source's own 2D images (whole: tiles
    exist only to split them), its z slices for a volume."""
    how = PREPARATION.get(name, {})
    folder = fetch_dataset(name, root) if "tile" in how else prepared_source(name, root)
    return folder, sorted(p.name for p in (folder / "images").glob("*.tif"))


__all__ = ["MIX", "is_mix", "mix_sources", "mixed_folder", "prepared_source", "source_files"]
