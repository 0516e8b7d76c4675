"""`biozoo predict`: files in, files out, one session for all inputs.

Every input is read and checked before its prediction; each output is written atomically, so a failure leaves
no half-written file, and the pixel-size check (the one check that refuses) runs on every file's metadata before
any prediction, so a refusal writes nothing. When the model's preprocessing uses dataset statistics, they are
accumulated over all inputs first (one extra read per file, masks and --rescale applied), as the spec defines them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from . import detections, input_checks
from .checks import CheckReport, parse_no_check, training_conditions
from .conditions import InputOptions, prepare
from .errors import InputError
from .imageio import WRITE_SUFFIXES, read_image, write_image
from .input_checks import batch_effects, dataset_normalized, intensity_summary
from .model import Model, load
from .pixelsize import parse_pixel_size, read_pixel_size
from .progress import ProgressBar
from .stats import DatasetStatistics


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
    pixel_size: Optional[str] = None,
    rescale: bool = False,
    mask: Optional[str] = None,
    ignore_value: Optional[float] = None,
    no_check: Sequence[str] = (),
) -> dict[str, Any]:
    """Predict every input file and write its outputs; returns a summary with `checks` (one list for all files,
    each result naming its input). Refusing checks (pixel size) run on every file before anything is computed."""
    skip = parse_no_check(no_check)
    model = load(package, device=device)
    samples = _samples(model, inputs)
    for sample in samples:  # fail fast, before any work, on files that are not there
        for path in sample.values():
            if not path.is_file():
                raise InputError(f"input file '{path}' does not exist")
    space = "".join(a.letter for a in model.description.inputs[0].axes if a.type == "space")
    tile_sizes = parse_tile(tile, space)
    mask_array = read_image(Path(mask))[0] if mask else None
    primary = model.description.inputs[0].id

    def options(sample: dict[str, Path]) -> InputOptions:
        return InputOptions(pixel_size=pixel_size, file_pixel_size=read_pixel_size(sample[primary]), rescale=rescale,
                            mask=mask_array, ignore_value=ignore_value, skip=skip)

    def read(sample: dict[str, Path]):
        arrays, file_axes = {}, {}
        for tid, path in sample.items():
            arrays[tid], found = read_image(path)
            file_axes[tid] = axes or found
        return arrays, {k: v for k, v in file_axes.items() if v}

    _refuse_early(model, samples, options)
    boxes = detections.detection_outputs(model.description)  # box-list outputs go to YOLO txt + CSV + JSON
    report = CheckReport(skip)
    dataset_stats = None
    if len(samples) > 1 and dataset_normalized(model):
        dataset_stats = _dataset_pass(model, samples, read, options, report)
    firsts = [next(iter(s.values())) for s in samples]
    plain = [p.stem for p in firsts]
    stems = [p.name.replace(".", "_") if plain.count(p.stem) > 1 else p.stem for p in firsts]  # img.tif + img.npy
    if len(set(stems)) < len(stems):
        raise InputError(f"several inputs would write the same output name ({sorted(stems)}); rename them")
    items = []
    for sample, stem in zip(samples, stems):
        arrays, sample_axes = read(sample)
        targets = _output_paths(model, sample, output, len(samples) > 1, suffix, stem)
        opts = options(sample)
        prediction = model.predict_with_report(
            arrays, sample_axes or None, tile=tile_sizes, dataset_stats=dataset_stats,
            progress=ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet),
            pixel_size=opts.pixel_size, file_pixel_size=opts.file_pixel_size, rescale=rescale, mask=mask_array,
            ignore_value=ignore_value, skip_checks=skip, batch_effects=dataset_stats is None,
        )
        results = prediction.outputs
        written, found = {}, {}
        if boxes is not None:
            height, width = detections.image_size(arrays[primary], sample_axes.get(primary))
            # with --rescale, predict has already mapped the boxes back onto the input's grid
            written, found = detections.write_prediction(output, stem, results, boxes, height, width, str(sample[primary]))
        for tid, (data, out_axes) in results.items() if boxes is None else ():
            write_image(targets[tid], data, out_axes)
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


def _refuse_early(model: Model, samples, options) -> None:
    """The pixel-size check of every file (metadata only), so that a refusal leaves no output file at all."""
    desc = model.description
    space = [a for a in desc.inputs[0].axes if a.type == "space"]
    training = training_conditions(desc.config)
    for sample in samples:
        opts = options(sample)
        given = parse_pixel_size(opts.pixel_size, [a.id for a in space])
        source = "--pixel-size" if given is not None else "TIFF metadata"
        try:
            input_checks.pixel_size(CheckReport(opts.skip), training, space, given or opts.file_pixel_size, source,
                                    opts.rescale)
        except InputError as e:
            raise InputError(f"{sample[desc.inputs[0].id]}: {e}") from None


def _dataset_pass(model: Model, samples, read, options, report: CheckReport) -> DatasetStatistics:
    """Dataset statistics over all files (masked and resampled as they will be predicted) and the batch-effects
    check across the files."""
    inputs = {t.id for t in model.description.inputs}
    stats = DatasetStatistics(m for m in model.required_measures() if m.tensor_id in inputs)
    summaries = []
    primary = model.description.inputs[0].id
    for sample in samples:
        arrays, sample_axes = read(sample)
        prepared = prepare(model, arrays, sample_axes or None, options(sample), CheckReport(options(sample).skip))
        stats.update({tid: (x, model._axis_ids(tid)) for tid, x in prepared.arrays.items()}, prepared.masks)
        summaries.append((str(sample[primary]), intensity_summary(prepared.raw, prepared.valid)))
    batch_effects(report, summaries, True)
    return stats
