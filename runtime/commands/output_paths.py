"""Where `biozoo predict` writes: output names (one input or many, one output or several, .tif/.npy/.ome.zarr) and
the refusals made before any pixel is read (an input, the mask, the package or a file of it, an existing output
without --overwrite, a folder that cannot be written, a path inside or around an input Zarr)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..engine.outputs import DetectionOutputs
from ..errors import InputError
from .imageio import WRITE_SUFFIXES
from .omezarr import is_zarr


def _split_name(path: Path) -> tuple[str, str]:
    """('out', '.ome.zarr') for out.ome.zarr, ('out', '.tif') for out.tif: the name and its (compound) type."""
    name = path.name
    for compound in (".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(compound) and len(name) > len(compound):
            return name[: -len(compound)], name[-len(compound):]
    return path.stem, path.suffix


def _output_paths(description, out: Path, many: bool, suffix: str, stem: str) -> dict[str, Path]:
    """Output files by output id: -o itself (one output), -o's name + _ID (several), or folder/STEM[_ID].SUFFIX;
    .zarr / .ome.zarr outputs are OME-Zarr folders (out.ome.zarr -> out_ID.ome.zarr)."""
    out_ids = [t.id for t in description.outputs]
    stem = stem.removesuffix(".ome")  # in.ome.zarr -> in.tif, not in.ome.tif
    if not many and out.suffix.lower() in WRITE_SUFFIXES:
        if len(out_ids) == 1:
            return {out_ids[0]: out}
        name, kind = _split_name(out)
        return {tid: out.with_name(f"{name}_{tid}{kind}") for tid in out_ids}
    if out.suffix and out.suffix.lower() not in WRITE_SUFFIXES:
        raise InputError(f"output '{out}' has an unsupported type '{out.suffix}'; use .tif, .npy, .ome.zarr, or a "
                         "folder")
    if many and out.suffix:
        raise InputError(f"several inputs need a folder for -o, got the file name '{out}'")
    if suffix.lstrip(".").lower() not in ("tif", "tiff", "npy", "zarr", "ome.zarr"):
        raise InputError(f"output format '{suffix}' is not supported; expected tif, npy or ome.zarr")
    suffix = suffix.lstrip(".")
    names = {tid: f"{stem}.{suffix}" if len(out_ids) == 1 else f"{stem}_{tid}.{suffix}" for tid in out_ids}
    return {tid: out / name for tid, name in names.items()}


def planned_outputs(description, output: Path, many: bool, suffix: str, stem: str,
                    boxes: Optional[DetectionOutputs]) -> dict[str, Path]:
    """Every file one sample's prediction writes, by output id (or by box-file kind for detection packages: the
    names `box_files.write_prediction` gives them, folder/STEM.txt, .csv, .json)."""
    if boxes is not None:
        if output.suffix:
            raise InputError(f"output '{output}': a detection package writes box files (YOLO .txt, .csv, .json) per "
                             "input; give -o a folder")
        return {kind: output / f"{stem}.{ext}" for kind, ext in (("yolo", "txt"), ("csv", "csv"), ("json", "json"))}
    return _output_paths(description, output, many, suffix, stem)


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _nested(target: Path, path: Path) -> bool:
    """Either lies inside the other: an output inside an input Zarr folder (or replacing the folder around an
    input) would change the input."""
    try:
        a, b = target.resolve(), path.resolve()
    except OSError:
        return False
    return (is_zarr(path) and a.is_relative_to(b)) or (is_zarr(target) and b.is_relative_to(a))


def _zarr_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


def check_output_paths(targets: Sequence[Path], protected: Mapping[Path, str], package_root: Optional[Path],
                       overwrite: bool) -> None:
    """Refuse (InputError, nothing written yet) outputs that would replace an input, the mask, the package or a
    file of it (also with --overwrite), that exist (without --overwrite), that collide, or whose folder cannot
    be written (read-only, under a file, not creatable)."""
    seen: dict[Path, Path] = {}
    for target in targets:
        key = target.absolute()
        if key in seen:
            raise InputError(f"two outputs of this command would both be written to '{target}'; rename the inputs")
        seen[key] = target
        for path, role in protected.items():
            if _same(target, path) or _nested(target, path):
                raise InputError(f"output '{target}' is {role} ('{path}')" + (" or lies inside it or around it"
                                 if not _same(target, path) else "") + ": predict never writes over its inputs, "
                                 "not even with --overwrite; choose another -o (e.g. a new folder)")
        if target.is_dir() and not (is_zarr(target) and _zarr_folder(target)):
            raise InputError(f"output '{target}' is an existing folder" + (" that is not a Zarr image (nothing "
                             "would be replaced)" if is_zarr(target) else "") + "; choose another -o")
        if target.exists() and package_root is not None and target.resolve().is_relative_to(package_root.resolve()):
            raise InputError(f"output '{target}' is a file of the package ({package_root}); predict never writes "
                             "over it: choose another -o")
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(f"output '{existing[0]}' already exists{more}; pass --overwrite to replace it, or choose "
                         "another -o")
    probed: dict[Path, Optional[str]] = {}
    for target in targets:
        folder = target.parent.absolute()
        ancestor = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if ancestor is None or ancestor in probed:
            problem = probed.get(ancestor) if ancestor is not None else None
        else:
            problem = probed[ancestor] = _unwritable(ancestor)
        if problem:
            raise InputError(f"output '{target}' cannot be written: {problem}; choose a writable -o")


def _unwritable(folder: Path) -> Optional[str]:
    """Why nothing can be created in `folder` (probed with a temporary file, removed at once), or None."""
    if not folder.is_dir():
        return f"'{folder}' is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".biozoo-probe-", dir=folder)
    except OSError as e:
        return f"'{folder}' is not writable ({e.strerror or type(e).__name__})"
    os.close(fd)
    os.unlink(tmp)
    return None
