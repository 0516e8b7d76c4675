"""`biozoo predict`: files in, files out, one session for all inputs.

Every input is read and checked before its prediction; each output is written atomically, so a failure leaves
no half-written file. When the model's preprocessing uses dataset statistics, they are accumulated over all
inputs first (one extra read per file), as the spec defines them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import InputError
from .imageio import WRITE_SUFFIXES, read_image, write_image
from .model import Model, load
from .progress import ProgressBar


def parse_tile(text: Optional[str], axes_hint: str = "yx") -> Optional[dict[str, int]]:
    if not text:
        return None
    parts = text.split(",")
    ids = axes_hint[-len(parts):] if len(parts) <= len(axes_hint) else ""
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if not ids or not sizes or any(s <= 0 for s in sizes):
        raise InputError(f"--tile '{text}' is not valid; expected positive integers per space axis, e.g. --tile 512,512")
    return dict(zip(ids, sizes))


def _samples(model: Model, inputs: Sequence[str]) -> list[dict[str, Path]]:
    """Group INPUT arguments into samples: one file per sample, or ID=FILE pairs for multi-input models."""
    ids = [t.id for t in model.description.inputs]
    if len(ids) == 1:
        return [{ids[0]: Path(i.split("=", 1)[1] if i.startswith(f"{ids[0]}=") else i)} for i in inputs]
    sample = {}
    for item in inputs:
        tid, sep, path = item.partition("=")
        if not sep or tid not in ids:
            raise InputError(
                f"'{item}': this model has several inputs {ids}; give each as ID=FILE, e.g. {ids[0]}=image.tif"
            )
        sample[tid] = Path(path)
    return [sample]


def _output_paths(model: Model, sample: dict[str, Path], out: Path, many: bool, suffix: str, stem: str) -> dict[str, Path]:
    out_ids = [t.id for t in model.description.outputs]
    if not many and out.suffix.lower() in WRITE_SUFFIXES:
        if len(out_ids) == 1:
            return {out_ids[0]: out}
        return {tid: out.with_name(f"{out.stem}_{tid}{out.suffix}") for tid in out_ids}
    if out.suffix and out.suffix.lower() not in WRITE_SUFFIXES:
        raise InputError(f"output '{out}' has an unsupported type '{out.suffix}'; use .tif, .npy, or a folder")
    if many and out.suffix:
        raise InputError(f"several inputs need a folder for -o, got the file name '{out}'")
    names = {tid: f"{stem}.{suffix}" if len(out_ids) == 1 else f"{stem}_{tid}.{suffix}" for tid in out_ids}
    return {tid: out / name for tid, name in names.items()}


def predict_files(
    package: str,
    inputs: Sequence[str],
    output: Path,
    axes: Optional[str] = None,
    tile: Optional[str] = None,
    device: str = "auto",
    suffix: str = "tif",
    quiet: bool = False,
) -> dict[str, Any]:
    model = load(package, device=device)
    samples = _samples(model, inputs)
    for sample in samples:  # fail fast, before any work, on files that are not there
        for path in sample.values():
            if not path.is_file():
                raise InputError(f"input file '{path}' does not exist")
    space = "".join(a.letter for a in model.description.inputs[0].axes if a.type == "space")
    tile_sizes = parse_tile(tile, space)

    def read(sample: dict[str, Path]):
        arrays, file_axes = {}, {}
        for tid, path in sample.items():
            arrays[tid], found = read_image(path)
            file_axes[tid] = axes or found
        return arrays, {k: v for k, v in file_axes.items() if v}

    dataset_stats = None
    if len(samples) > 1 and any(m.is_dataset for ops in model.preprocessing.values() for op in ops for m in op.measures):
        dataset_stats = model.dataset_statistics(read(s) for s in samples)
    firsts = [next(iter(s.values())) for s in samples]
    plain = [p.stem for p in firsts]
    stems = [p.name.replace(".", "_") if plain.count(p.stem) > 1 else p.stem for p in firsts]  # img.tif + img.npy
    if len(set(stems)) < len(stems):
        raise InputError(f"several inputs would write the same output name ({sorted(stems)}); rename them")
    items = []
    for sample, stem in zip(samples, stems):
        arrays, sample_axes = read(sample)
        targets = _output_paths(model, sample, output, len(samples) > 1, suffix, stem)
        results = model.predict_with_axes(
            arrays, sample_axes or None, tile=tile_sizes, dataset_stats=dataset_stats,
            progress=ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet),
        )
        written = {}
        for tid, (data, out_axes) in results.items():
            write_image(targets[tid], data, out_axes)
            written[tid] = str(targets[tid])
        items.append({
            "input": ", ".join(str(p) for p in sample.values()),
            "written": written,
            "shapes": {tid: list(d.shape) for tid, (d, _) in results.items()},
            "axes": {tid: a for tid, (_, a) in results.items()},
        })
    return {"model": model.name, "provider": model.provider, "items": items}
