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
from contextlib import ExitStack, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..checks import input_checks
from ..checks.conditions import InputOptions, prepare
from ..checks.input_checks import batch_effects, dataset_normalized, intensity_summary
from ..checks.pixelsize import parse_pixel_size, training_pixel_size
from ..checks.report import CheckReport, parse_no_check, training_conditions
from ..errors import InputError
from ..format.description import SizeReference
from ..model import Model, load
from ..ops.stats import DatasetStatistics
from . import box_files
from .imageio import open_image, read_image, read_pixel_size, write_image
from .memory_plan import check_memory, distributed_tile_budget, memory_budget, memory_plan
from .output_paths import check_output_paths, planned_outputs
from .omezarr import in_zarr, is_zarr
from .predict_streamed import dataset_statistics_streamed, predict_sample_streamed
from .streamed_masks import mask_spec
from .progress import ProgressBar
from .rescaled import predict_rescaled


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


def _output_origin(description, tid: str, pixel: Optional[Mapping[str, float]],
                   input_origin: Optional[Mapping[str, float]] = None) -> Optional[dict[str, float]]:
    """Where output `tid`'s first pixel's centre lies, per space axis, on the input's grid (OME-Zarr translation):
    a size offset crops (or pads) both ends alike, as format 0.4's per-side offset did (0.5 records their sum), and
    an output pixel of scale r input pixels is centred at (j + 1/2) r - 1/2. In µm from the input's own origin when
    the pixel size is known; else in input pixels, only where the output's grid is the input's (scale 1)."""
    inputs = {t.id: t for t in description.inputs}
    origin = {}
    for a in description.output(tid).axes:
        ref = a.size
        if a.type != "space" or not isinstance(ref, SizeReference) or ref.tensor_id not in inputs:
            continue
        ratio = a.scale / inputs[ref.tensor_id].axis(ref.axis_id).scale
        if not pixel and ratio != 1:
            return None  # written with scale 1 on unknown pixels: a translation would not match it
        step = pixel.get(ref.axis_id, 1.0) if pixel else 1.0
        origin[a.id] = (input_origin or {}).get(ref.axis_id, 0.0) + step * ((0.5 - ref.offset / 2) * ratio - 0.5)
    return origin if any(origin.values()) else None


def _placement(description, tid: str, pixel: Optional[Mapping[str, float]], path: Path,
               level_target: Optional[Mapping[str, float]], rescaled: bool) -> dict[str, Any]:
    """create_output's `pixel_size` and `origin` of output `tid` of the input at `path` (an OME-Zarr's own
    translation carried over): on the input's grid as the package places it, or, resampled back (--rescale), the
    input's origin itself."""
    origin = None
    if in_zarr(path):
        with open_image(path, level_target) as image:
            origin = image.origin
    return {"pixel_size": _output_pixel_size(description, tid, pixel),
            "origin": origin if rescaled else _output_origin(description, tid, pixel, origin)}


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
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    resume: bool = False,
    threads: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """Predict every input file and write its outputs; returns a summary with `checks` (one list for all files,
    each result naming its input). Everything that can refuse (output paths, pixel size, memory) runs on every
    file before anything is computed; `overwrite` allows replacing existing outputs, never an input. `memory`
    (e.g. "2GB"; default: the memory available) bounds the process: tiles are sized from it (see memory_plan).
    `workers` (a LocalCluster of that many processes) or `scheduler` (a dask.distributed address) predict block by
    block on Dask (commands/predict_distributed.py); `resume` continues such a run that did not finish; `threads`:
    onnxruntime threads (of each worker on Dask); `progress(done, total)`: called per tile or block instead of the
    terminal's progress bar (front ends; an exception raised there stops the run, leaving no output)."""
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: expected at least 1 onnxruntime thread")
    distributed = _check_distributed(workers, scheduler, resume)
    skip = parse_no_check(no_check)
    output = Path(output)
    model = load(package, device=device, threads=threads or 0)
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
    modes = [(True, distributed_tile_budget(model, budget, memory is not None, workers)) if distributed else
             memory_plan(model, s, t, axes, f, bool(mask) or ignore_value is not None, budget, memory is not None,
                         tile_sizes)
             for s, t, f in zip(samples, plans, factors)]
    check_memory(model, [s for s, m in zip(samples, modes) if not m[0]], axes,
                 [f for f, m in zip(factors, modes) if not m[0]], Path(mask) if mask else None, budget)
    mask_array = read_image(Path(mask))[0] if mask and not all(m[0] for m in modes) else None  # streamed: lazily
    masking = mask_spec(mask, ignore_value)  # the streamed and Dask paths' (commands/streamed_masks.py)

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
        if any(streamed for streamed, _ in modes):  # a file larger than memory: every file read lazily in turn
            dataset_stats = dataset_statistics_streamed(model, samples, axes, level_target, report,
                                                        masking=masking)
        else:
            dataset_stats = _dataset_pass(model, samples, read, options, report)
    items = []
    clients: list = []  # one Dask cluster for every file, started with the first

    def client() -> Any:  # predict_distributed.Cluster
        if not clients:
            from .predict_distributed import start_client, worker_threads

            clients.append(start_client(workers, scheduler, cluster, preload=(
                str(Path(model.package.source).resolve()), device, worker_threads(workers, scheduler, threads))))
        return clients[0]

    with ExitStack() as cluster:
        for k, (sample, stem, targets, (streamed, sample_budget), f) in enumerate(zip(samples, stems, plans, modes,
                                                                                        factors)):
            if streamed:  # larger than the budget (or on Dask): read lazily, written tile by tile
                sample_report = CheckReport(skip)
                bar = progress or ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet)
                common = dict(tile=tile_sizes, tile_budget=sample_budget, report=sample_report, pixel_size=pixel_size,
                              progress=bar, level_target=level_target, masking=masking,
                              output_placement=lambda tid, sample=sample, f=f: _placement(
                                  model.description, tid, parse_pixel_size(pixel_size, list(space))
                                  or read_pixel_size(sample[primary], level_target), sample[primary], level_target,
                                  bool(f)))
                if distributed:
                    from .box_distributed import predict_boxes_distributed
                    from .predict_distributed import predict_sample_distributed

                    on_dask = predict_sample_distributed if boxes is None else predict_boxes_distributed
                    if not any(later for later, _ in modes[k + 1:]):  # no other file needs the cluster
                        client().last_blocks()
                    done = _rescaled(on_dask, f)(model, sample, axes, targets, workers=workers, scheduler=scheduler,
                                                 resume=resume, device=device, threads=threads, client=client(),
                                                 dataset_stats=dataset_stats, **common)
                else:
                    done = _rescaled(predict_sample_streamed, f)(model, sample, axes, targets,
                                                                 dataset_stats=dataset_stats, **common)
                sample_report.disabled()
                report.extend(sample_report, str(sample[primary]))
                items.append({"input": ", ".join(str(p) for p in sample.values()), **done, "streamed": True})
                continue
            arrays, sample_axes = read(sample)
            opts = options(sample)
            prediction = model.predict_with_report(
                arrays, sample_axes or None, tile=tile_sizes, tile_budget=sample_budget, dataset_stats=dataset_stats,
                progress=progress or ProgressBar(f"{next(iter(sample.values())).name}", enabled=not quiet),
                pixel_size=opts.pixel_size, file_pixel_size=opts.file_pixel_size, rescale=rescale, mask=mask_array,
                ignore_value=ignore_value, skip_checks=skip, batch_effects=dataset_stats is None,
            )
            results = prediction.outputs
            written, found = {}, {}
            if boxes is not None:
                height, width = box_files.image_size(arrays[primary], sample_axes.get(primary))
                # with --rescale, predict has already mapped the boxes back onto the input's grid
                written, found = box_files.write_prediction(output, stem, results, boxes, height, width,
                                                            str(sample[primary]))
            for tid, (data, out_axes) in results.items() if boxes is None else ():
                given = parse_pixel_size(opts.pixel_size, [a.id for a in model.description.inputs[0].axes
                                                           if a.type == "space"])
                labels = is_zarr(targets[tid]) and np.issubdtype(data.dtype, np.integer)
                with (open_image(sample[primary], level_target) if labels else nullcontext()) as image:
                    write_image(targets[tid], data, out_axes, labels=labels, image=image, **_placement(
                        model.description, tid, given or opts.file_pixel_size, sample[primary], level_target,
                        bool(f)))
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


def _check_distributed(workers: Optional[int], scheduler: Optional[str], resume: bool) -> bool:
    """Whether the prediction runs on Dask; refuses options that do not go with it (--mask, --ignore-value and
    --rescale run there, together too: commands/streamed_masks.py, commands/rescaled.py)."""
    if workers is None and not scheduler:
        if resume:
            raise InputError("--resume continues a run on Dask workers; give --workers N or --scheduler ADDRESS as "
                             "the interrupted run did")
        return False
    if workers is not None and scheduler:
        raise InputError("--workers starts a local cluster and --scheduler uses an existing one; give one of them")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: expected at least 1 worker process")
    return True


def _rescaled(run: Callable[..., dict], factors: Optional[Mapping[str, float]]) -> Callable[..., dict]:
    """`run` (the streamed or the Dask prediction of one sample) between two resampling passes, to the training
    pixel size and back (commands/rescaled.py), when the sample has --rescale factors."""
    return partial(predict_rescaled, run) if factors else run


def _stems(samples: Sequence[dict[str, Path]]) -> list[str]:
    firsts = [next(iter(s.values())) for s in samples]
    plain = [p.stem for p in firsts]
    stems = [p.name.replace(".", "_") if plain.count(p.stem) > 1 else p.stem for p in firsts]  # img.tif + img.npy
    if len(set(stems)) < len(stems):
        raise InputError(f"several inputs would write the same output name ({sorted(stems)}); rename them")
    return stems


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


