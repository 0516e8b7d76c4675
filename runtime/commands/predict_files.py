"""`biozoo predict`: files in, files out, one session for all inputs.

Refuse before work: before any pixel is read, every path the command will write is computed (outputs, box files of
detection packages) and refused when it is an input, the mask, the package or a file of it (even with
--overwrite), when it exists (unless --overwrite), or when its folder cannot be written; the pixel-size check (the
one check that refuses) runs on every file's metadata; and the memory the prediction needs (from the file headers,
the model's output shapes and the --rescale factors) is compared with the memory available ($BIOZOO_MEMORY_LIMIT
overrides). Each output is written atomically (a temporary file in its folder, then a rename), so a failure leaves
no half-written file. When the model's preprocessing uses dataset statistics, they are accumulated over all inputs
first (one extra read per file, masks and --rescale applied), as the spec defines them.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..checks import input_checks
from ..checks.conditions import InputOptions, prepare
from ..checks.input_checks import (available_memory, batch_effects, dataset_normalized, format_bytes,
                                   intensity_summary, parse_bytes)
from ..checks.pixelsize import parse_pixel_size, training_pixel_size
from ..checks.report import CheckReport, parse_no_check, training_conditions
from ..engine.outputs import DetectionOutputs
from ..engine.tiling import output_shapes
from ..errors import InputError
from ..model import Model, load
from ..ops.stats import DatasetStatistics
from . import box_files
from .imageio import WRITE_SUFFIXES, image_info, open_image, read_image, read_pixel_size, write_image
from .omezarr import in_zarr, is_zarr
from .predict_streamed import predict_sample_streamed
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


def _level_target(model: Model) -> Optional[dict[str, float]]:
    """The pixel size an OME-Zarr input's resolution level is chosen by: the training one, when recorded."""
    space = [a for a in model.description.inputs[0].axes if a.type == "space"]
    return training_pixel_size(training_conditions(model.description.config), space)[0]


def _output_pixel_size(description, tid: str, pixel: Optional[Mapping[str, float]]) -> Optional[dict[str, float]]:
    """µm per space axis of output `tid`: the input's, times the output axis' scale over the input axis' one."""
    if not pixel:
        return None
    scales = {a.id: a.scale for a in description.inputs[0].axes if a.type == "space"}
    return {a.id: pixel[a.id] * a.scale / scales[a.id] for a in description.output(tid).axes
            if a.type == "space" and a.id in pixel and scales.get(a.id)} or None


def predict_files(
    package: str,
    inputs: Sequence[str],
    output: Path,
    axes: Optional[str] = None,
    tile: Optional[str] = None,
    device: str = "auto",
    suffix: str = "tif",
    quiet: bool = False,
    pixel_size: Optional[str] = None,
    rescale: bool = False,
    mask: Optional[str] = None,
    ignore_value: Optional[float] = None,
    no_check: Sequence[str] = (),
    overwrite: bool = False,
    memory: Optional[str] = None,
) -> dict[str, Any]:
    """Predict every input file and write its outputs; returns a summary with `checks` (one list for all files,
    each result naming its input). Everything that can refuse (output paths, pixel size, memory) runs on every
    file before anything is computed; `overwrite` allows replacing existing outputs, never an input. `memory`
    (e.g. "2GB"; default: the memory available) bounds the process: tiles are sized from it (see memory_plan)."""
    skip = parse_no_check(no_check)
    output = Path(output)
    model = load(package, device=device)
    samples = _samples(model, inputs)
    for sample in samples:  # fail fast, before any work, on files that are not there
        for path in sample.values():
            if in_zarr(path) and not path.is_dir():
                raise InputError(f"input '{path}' does not exist; a Zarr / OME-Zarr image is a folder")
            if not in_zarr(path) and not path.is_file():
                raise InputError(f"input file '{path}' does not exist")
    level_target = _level_target(model)  # an OME-Zarr input is read at the level nearest the training pixel size
    for path in (p for sample in samples for p in sample.values() if in_zarr(p)):
        with open_image(path, level_target) as image:
            if image.note:
                logging.getLogger("biozoo").info("%s: reading %s", path, image.note)
    if mask and not Path(mask).is_file():
        raise InputError(f"--mask file '{mask}' does not exist")
    space = "".join(a.letter for a in model.description.inputs[0].axes if a.type == "space")
    tile_sizes = parse_tile(tile, space)
    primary = model.description.inputs[0].id
    stems = _stems(samples)
    boxes = model.engine.box_lists  # box-list outputs go to YOLO txt + CSV + JSON
    plans = [planned_outputs(model.description, output, len(samples) > 1, suffix, stem, boxes) for stem in stems]
    protected = {p: "an input" for sample in samples for p in sample.values()}
    if mask:
        protected[Path(mask)] = "the --mask file"
    protected[Path(package)] = "the package"
    protected[model.package.rdf_path] = "the package's description"
    check_output_paths([t for plan in plans for t in plan.values()], protected, model.package.root, overwrite)
    factors = _refuse_early(model, samples, pixel_size, rescale, skip)
    budget = memory_budget(memory)
    modes = [memory_plan(model, s, t, axes, f, bool(mask) or ignore_value is not None, budget, memory is not None,
                         len(samples) > 1 and dataset_normalized(model.engine), tile_sizes)
             for s, t, f in zip(samples, plans, factors)]
    check_memory(model, [s for s, m in zip(samples, modes) if not m[0]], axes,
                 [f for f, m in zip(factors, modes) if not m[0]], Path(mask) if mask else None, budget)
    mask_array = read_image(Path(mask))[0] if mask else None

    def options(sample: dict[str, Path]) -> InputOptions:
        return InputOptions(pixel_size=pixel_size, file_pixel_size=read_pixel_size(sample[primary], level_target),
                            rescale=rescale,
                            mask=mask_array, ignore_value=ignore_value, skip=skip)

    def read(sample: dict[str, Path]):
        arrays, file_axes = {}, {}
        for tid, path in sample.items():
            arrays[tid], found = read_image(path, level_target)
            file_axes[tid] = axes or found
        return arrays, {k: v for k, v in file_axes.items() if v}

    report = CheckReport(skip)
    dataset_stats = None
    if len(samples) > 1 and dataset_normalized(model.engine):
        dataset_stats = _dataset_pass(model, samples, read, options, report)
    items = []
    for sample, stem, targets, (streamed, sample_budget) in zip(samples, stems, plans, modes):
        if streamed:  # larger than the budget: read lazily, written tile by tile
            sample_report = CheckReport(skip)
            done = predict_sample_streamed(
                model, sample, axes, targets, tile=tile_sizes, tile_budget=sample_budget, report=sample_report,
                pixel_size=pixel_size, progress=ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet),
                level_target=level_target, output_pixel_size=lambda tid, sample=sample: _output_pixel_size(
                    model.description, tid, parse_pixel_size(pixel_size, list(space))
                    or read_pixel_size(sample[primary], level_target)))
            sample_report.disabled()
            report.extend(sample_report, str(sample[primary]))
            items.append({"input": ", ".join(str(p) for p in sample.values()), **done, "streamed": True})
            continue
        arrays, sample_axes = read(sample)
        opts = options(sample)
        prediction = model.predict_with_report(
            arrays, sample_axes or None, tile=tile_sizes, tile_budget=sample_budget, dataset_stats=dataset_stats,
            progress=ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet),
            pixel_size=opts.pixel_size, file_pixel_size=opts.file_pixel_size, rescale=rescale, mask=mask_array,
            ignore_value=ignore_value, skip_checks=skip, batch_effects=dataset_stats is None,
        )
        results = prediction.outputs
        written, found = {}, {}
        if boxes is not None:
            height, width = box_files.image_size(arrays[primary], sample_axes.get(primary))
            # with --rescale, predict has already mapped the boxes back onto the input's grid
            written, found = box_files.write_prediction(output, stem, results, boxes, height, width, str(sample[primary]))
        for tid, (data, out_axes) in results.items() if boxes is None else ():
            given = parse_pixel_size(opts.pixel_size, [a.id for a in model.description.inputs[0].axes
                                                       if a.type == "space"])
            labels = is_zarr(targets[tid]) and np.issubdtype(data.dtype, np.integer)
            with (open_image(sample[primary], level_target) if labels else nullcontext()) as image:
                write_image(targets[tid], data, out_axes, labels=labels, image=image,
                            pixel_size=_output_pixel_size(model.description, tid, given or opts.file_pixel_size))
            written[tid] = str(targets[tid])
        report.extend(prediction.report, str(sample[primary]))
        items.append({
            "input": ", ".join(str(p) for p in sample.values()),
            "written": written,
            "shapes": {tid: list(d.shape) for tid, (d, _) in results.items()},
            "axes": {tid: a for tid, (_, a) in results.items()},
            **({"detections": found} if boxes is not None else {}),
        })
    return {"model": model.name, "provider": model.provider, "items": items, "checks": report.as_list()}


def _stems(samples: Sequence[dict[str, Path]]) -> list[str]:
    firsts = [next(iter(s.values())) for s in samples]
    plain = [p.stem for p in firsts]
    stems = [p.name.replace(".", "_") if plain.count(p.stem) > 1 else p.stem for p in firsts]  # img.tif + img.npy
    if len(set(stems)) < len(stems):
        raise InputError(f"several inputs would write the same output name ({sorted(stems)}); rename them")
    return stems


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


def _layout(shape: tuple[int, ...], letters: Optional[str], tensor) -> Optional[list[int]]:
    """The file's shape in the tensor's axis order (1 where the file lacks an axis), without touching pixels;
    None when the axes cannot be told (then only the element count is used)."""
    model = tensor.letters
    if letters is None or len(letters) != len(shape):
        for candidate in (model, model.replace("b", ""), model.replace("b", "").replace("c", "")):
            if len(candidate) == len(shape):
                letters = candidate
                break
        else:
            return None
    return [shape[letters.index(letter)] if letter in letters else 1 for letter in model]


def estimate_memory(model: Model, sample: dict[str, Path], axes: Optional[str],
                    factors: Optional[Mapping[str, float]]) -> tuple[int, list[str]]:
    """Bytes one sample's prediction holds at its peak (a lower bound: the raw file, its float32 copy, the
    resampled, preprocessed and padded copies, the network's and the final outputs) and the parts, for messages."""
    desc = model.description
    total, parts = 0, []
    layouts, scaled = {}, {}
    for tid, path in sample.items():
        shape, dtype, found = image_info(path)
        tensor = desc.input(tid)
        n = math.prod(shape)
        layout = _layout(shape, axes or found, tensor)
        factor = 1.0
        if factors and layout is not None:
            layouts[tid] = layout
            scaled[tid] = [max(1, round(n_ * factors[a.id])) if a.type == "space" and a.id in factors else n_
                           for a, n_ in zip(tensor.axes, layout)]
            factor = math.prod(scaled[tid]) / max(1, math.prod(layout))
        elif factors:
            factor = math.prod(factors.values())
        elif layout is not None:
            layouts[tid] = scaled[tid] = layout
        m = int(n * factor)
        copies = 3 + (1 if factors else 0)  # float32, (resampled,) preprocessed, padded
        total += n * dtype.itemsize + (n + m * (copies - 1)) * 4
        parts.append(f"'{path.name}' {'x'.join(map(str, shape))} {dtype}" + (f", resampled {factor:.3g}x" if factors
                                                                             else ""))
    if len(scaled) == len(sample):
        try:
            held = [(desc, scaled)]  # the outputs at the model's resolution, ...
            if model.network is not desc:
                held.append((model.network, scaled))  # ... the network's before shape-changing post-processing ...
            if factors:
                held.append((desc, layouts))  # ... and resampled back onto the input's grid
            out_bytes = 0
            for description, shapes_in in held:
                shapes = output_shapes(description, shapes_in)
                for t in description.outputs:
                    if shapes.get(t.id):
                        out_bytes += math.prod(shapes[t.id]) * _itemsize(t.dtype)
            total += out_bytes
            parts.append(f"outputs {format_bytes(out_bytes)}")
        except Exception:  # an unusual description: the inputs alone still bound the need from below
            pass
    return total, parts


def _itemsize(dtype: str) -> int:
    try:
        return max(np.dtype(dtype).itemsize, 4)  # outputs are computed in float32 before any cast
    except TypeError:
        return 4


def check_memory(model: Model, samples: Sequence[dict[str, Path]], axes: Optional[str],
                 factors: Sequence[Optional[Mapping[str, float]]], mask: Optional[Path],
                 budget: Optional[tuple[Optional[int], str]] = None) -> None:
    """Refuse, before any pixel is read, a prediction held in memory that needs more than is available (or than
    the --memory budget)."""
    limit, source = budget or available_memory()
    if limit is None:
        return
    extra = 0
    if mask is not None:
        shape, dtype, _ = image_info(mask)
        extra = math.prod(shape) * (dtype.itemsize + 1)
    for sample, f in zip(samples, factors):
        need, parts = estimate_memory(model, sample, axes, f)
        need += extra
        if need > limit:
            hint = ("predict a crop or a downsampled copy of the image, or use a machine with more memory")
            if f and math.prod(f.values()) > 4:
                hint = (f"--rescale resamples the image by {' x '.join(f'{v:.3g}' for v in f.values())} (its pixel "
                        "size vs the training one): check the file's pixel size (--pixel-size overrides wrong "
                        "metadata), or " + hint)
            raise InputError(f"{next(iter(sample.values()))}: the prediction needs at least {format_bytes(need)} of "
                             f"memory ({', '.join(parts)}), but {format_bytes(limit)} are available ({source}); "
                             f"nothing was computed. {hint[0].upper()}{hint[1:]}")


def _refuse_early(model: Model, samples, pixel_size, rescale: bool, skip) -> list[Optional[dict[str, float]]]:
    """The pixel-size check of every file (metadata only), so that a refusal leaves no output file at all; returns
    each sample's --rescale factors (input/training pixel size per axis id), or None."""
    desc = model.description
    space = [a for a in desc.inputs[0].axes if a.type == "space"]
    training = training_conditions(desc.config)
    factors = []
    for sample in samples:
        path = sample[desc.inputs[0].id]
        given = parse_pixel_size(pixel_size, [a.id for a in space])
        source = "--pixel-size" if given is not None else "TIFF metadata"
        try:
            file_size = read_pixel_size(path, training_pixel_size(training, space)[0])  # OME-Zarr: level as read
            factors.append(input_checks.pixel_size(CheckReport(skip), training, space, given or file_size, source,
                                                   rescale))
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    return factors


def _dataset_pass(model: Model, samples, read, options, report: CheckReport) -> DatasetStatistics:
    """Dataset statistics over all files (masked and resampled as they will be predicted) and the batch-effects
    check across the files."""
    engine = model.engine
    inputs = {t.id for t in engine.description.inputs}
    stats = DatasetStatistics(m for m in engine.required_measures() if m.tensor_id in inputs)
    summaries = []
    primary = engine.description.inputs[0].id
    for sample in samples:
        arrays, sample_axes = read(sample)
        prepared = prepare(engine, arrays, sample_axes or None, options(sample), CheckReport(options(sample).skip))
        stats.update({tid: (x, engine.axis_ids(tid)) for tid, x in prepared.arrays.items()}, prepared.masks)
        summaries.append((str(sample[primary]), intensity_summary(prepared.raw, prepared.valid)))
    batch_effects(report, summaries, True)
    return stats


QUICK_BYTES_PER_PIXEL = 4096  # no activation measurement when even this (8x a 32-channel U-Net's) fits


def memory_budget(memory: Optional[str]) -> tuple[Optional[int], str]:
    """(bytes, where from): --memory when given, else what available_memory() reports ($BIOZOO_MEMORY_LIMIT)."""
    if memory is None:
        return available_memory()
    return parse_bytes(memory, "--memory"), "--memory"


def memory_plan(model: Model, sample: dict[str, Path], targets: Mapping[str, Path], axes: Optional[str],
                factors: Optional[Mapping[str, float]], masked: bool, budget: tuple[Optional[int], str],
                explicit: bool, dataset: bool, tile: Optional[Mapping[str, int]]) -> tuple[bool, int]:
    """(streamed, tile budget in input elements) for one sample.

    In memory, unchanged, when the whole-image arrays (estimate_memory) plus one tile of the default tile budget
    fit the budget at a generous QUICK_BYTES_PER_PIXEL (no measurement then). Otherwise the network's activation
    memory is measured (engine/memory.py, cached) and the tile is the largest the budget leaves after the
    whole-image arrays (capped at the default tile budget unless --memory is given). When even that does not fit
    and the sample can be streamed (.npy/TIFF/Zarr in and out, no --mask/--ignore-value/--rescale, one file or
    per-sample statistics, a dense model: see engine/streaming.py), it is streamed with the tile the whole budget
    allows; when not even that fits, the budget's error (--memory) or check_memory (the memory available)
    refuses it. An explicit --tile wins."""
    from ..engine.memory import tile_budget
    from ..engine.streaming import why_not_streamable
    from ..engine.tiling import DEFAULT_TILE_BUDGET
    from .predict_streamed import STREAMED_INPUTS, STREAMED_OUTPUTS

    limit, _ = budget
    if limit is None:
        return False, DEFAULT_TILE_BUDGET
    need, _ = estimate_memory(model, sample, axes, factors)
    primary = model.description.inputs[0]
    shape, _, _ = image_info(sample[primary.id])
    tile_elements = min(math.prod(shape), DEFAULT_TILE_BUDGET)
    if not explicit and need + tile_elements * QUICK_BYTES_PER_PIXEL <= limit:
        return False, DEFAULT_TILE_BUDGET
    streamable = (not masked and not factors and not dataset and why_not_streamable(model.engine) is None
                  and all(p.suffix.lower() in STREAMED_INPUTS for p in sample.values())
                  and all(p.suffix.lower() in STREAMED_OUTPUTS for p in targets.values()))
    try:
        elements, _ = tile_budget(model.engine, limit, held=need)
        if elements >= math.prod(shape) or not streamable or tile:
            return False, elements if explicit else min(elements, DEFAULT_TILE_BUDGET)
    except InputError:
        if not streamable and explicit:
            raise
        if not streamable:
            return False, DEFAULT_TILE_BUDGET  # check_memory refuses it with the whole-image numbers
    try:
        return True, tile_budget(model.engine, limit, held=streamed_held(math.prod(shape)))[0]
    except InputError:  # not even streamed: --memory says why, else check_memory refuses with whole-image numbers
        if explicit:
            raise
        return False, DEFAULT_TILE_BUDGET


def streamed_held(elements: int) -> int:
    """Bytes a streamed prediction holds besides its tiles: the statistics' read blocks and their float copies."""
    from ..ops.stats import STREAM_CHUNK

    return 16 * min(elements, STREAM_CHUNK)
