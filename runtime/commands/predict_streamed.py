"""`biozoo predict` for an image larger than the memory budget, read lazily and written tile by tile: inputs
through imageio.open_image (.npy: np.load(mmap_mode="r"); TIFF: a memory map or tifffile's zarr store; Zarr /
OME-Zarr: the zarr array), .npy outputs through np.lib.format.open_memmap into a temporary file in the output's
folder, other outputs through imageio.create_output (TIFF memory-mapped, OME-Zarr); every output appears at the
end by a rename, so a failure leaves none. Tiles come from engine/streaming.py, statistics from the whole image;
StarDist objects and detector boxes are found block by block (engine/instance_blocks.py, engine/box_blocks.py).

The input checks that need the whole image in memory run on what can be had without it: the pixel size (metadata),
distribution shift and batch effects on a strided subsample of at most SUBSAMPLE pixels (normalized with the
whole image's statistics), the receptive field on a central crop of the output (input_checks.central_crops);
masked-normalization uses --mask/--ignore-value as in memory (commands/streamed_masks.py: statistics over the
valid pixels, masked pixels filled, outputs masked tile by tile); without them constant regions are not looked
for, and it says so.
"""
from __future__ import annotations

import math
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..checks import input_checks, reliability
from ..checks.pixelsize import parse_pixel_size
from ..checks.report import CheckReport, training_conditions
from ..engine.engine import _check_fixed_sizes, guess_axes
from ..engine.blocks import block_plan, index_maps, tile_combos
from ..engine.instance_blocks import Objects, block_objects, stardist_step
from ..engine.streaming import (CallerSink, LazyView, caller_layout, foldable_finite_check, lazy_model_layout,
                                model_view, predict_streamed, release, whole_image_statistics)
from ..engine.tiling import output_shapes
from ..format.permissions import plain_permissions
from ..errors import InputError
from ..model import Model
from ..ops import run_chain
from ..ops.stats import DatasetStatistics, StatsContext
from ..ops.streamed_stats import STREAM_CHUNK, NotFinite, streamed_dataset_update
from .imageio import create_output, open_image
from .instance_output import check_one_sample, labels_dtype, stardist_context, write_labels
from .omezarr import is_zarr
from .masked_outputs import masked_sink
from .streamed_masks import MaskSpec, masked_statistics, masks_outputs, report_mask, sample_masks, subsampled_valid

SUBSAMPLE = 1 << 21
STREAMED_INPUTS = (".npy", ".tif", ".tiff", ".zarr")  # what open_image reads lazily (PNG: read whole, small)
STREAMED_OUTPUTS = (".npy", ".tif", ".tiff", ".zarr")


def _check_finite(data: Any, tid: str) -> None:
    if np.dtype(data.dtype).kind != "f":
        return
    x = LazyView(data)  # reads block by block, a memory map's pages dropped after each
    rows = max(1, STREAM_CHUNK // max(1, math.prod(x.shape[1:])))
    bad = 0
    for r in range(0, x.shape[0], rows):
        block = np.asarray(x[r:r + rows])
        bad += int(np.count_nonzero(~np.isfinite(block)))
        if np.dtype(x.dtype).itemsize > 4 and np.abs(block).max() > np.finfo(np.float32).max:
            raise InputError(f"input '{tid}' ({data.dtype}) has values outside the float32 range; the model computes "
                             "in float32, where they would become Inf: rescale the image or clip it")
    release(x)
    if bad:
        raise InputError(f"input '{tid}' contains {bad} NaN/Inf value(s) out of {math.prod(x.shape)}; the model needs "
                         "finite values: replace them (e.g. np.nan_to_num) or mask them out")


def _subsample(x: Any, space: list[int], shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Every step-th pixel along the space axes, read in bands of whole rows (first space axis) of at most
    STREAM_CHUNK elements: one strided read of a memory map would map nearly the whole file (the kernel maps
    whole folios around each touched element), and one read per sampled row of a chunked Zarr would decompress
    every chunk step-fold; each band is copied out and its pages dropped (LazyView), so the peak stays at a band.
    `shape`: the array whose step to use (a valid mask subsampled at its input's pixels)."""
    step = max(1, math.ceil((math.prod(shape or x.shape) / SUBSAMPLE) ** (1 / max(1, len(space)))))
    first = space[0] if space else 0
    per_row = math.prod(x.shape) // max(1, x.shape[first])
    band = max(step, STREAM_CHUNK // max(1, per_row) // step * step)
    index = tuple(slice(None, None, step) if i in space else slice(None) for i in range(x.ndim))
    rows, select = [], [slice(None)] * x.ndim
    for r in range(0, x.shape[first], band):
        select[first] = slice(r, r + band)
        rows.append(np.asarray(x[tuple(select)])[index].astype(np.float32))
    return np.concatenate(rows, axis=first)


def flip_check_streamed(report: CheckReport, engine, arrays: Mapping[str, Any], stats: Mapping,
                        tiling: Optional[Mapping[str, Any]] = None,
                        outputs: Optional[Mapping[str, Any]] = None) -> None:
    """The out-of-distribution check on crops of a streamed image, read lazily and normalized as its tiles are
    (the whole image's statistics from the pre-pass); `tiling`: the prediction's tile / tile_budget; `outputs`: the
    written outputs (model layout, read back where the flipped crops are compared with them)."""
    shape = tuple(arrays[engine.description.inputs[0].id].shape)

    def read(index):
        raw = {tid: np.asarray(x[index], dtype=np.float32) for tid, x in arrays.items() if tuple(x.shape) == shape}
        processed = {tid: run_chain(engine.preprocessing[tid], b, engine.axis_ids(tid),
                                    StatsContext({tid: (b, engine.axis_ids(tid))}).seed(stats))
                     for tid, b in raw.items()}
        return processed, raw

    reliability.check_crops(report, engine, shape, read, tiling,
                            None if outputs is None else (lambda tid, index: np.asarray(outputs[tid][index])))


def predict_sample_streamed(model: Model, sample: Mapping[str, Path], axes: Optional[str],
                            targets: Mapping[str, Path], *, tile: Optional[Mapping[str, int]], tile_budget: int,
                            report: CheckReport, pixel_size: Any = None,
                            progress: Optional[Callable[[int, int], None]] = None,
                            level_target: Optional[Mapping[str, float]] = None,
                            output_placement: Callable[[str], Mapping[str, Any]] = lambda tid: {},
                            dataset_stats: Optional[DatasetStatistics] = None,
                            masking: Optional[MaskSpec] = None, boxes_back: Any = None) -> dict[str, Any]:
    """Predict one sample of image files into `targets` without holding the image; returns the written paths,
    shapes and axes by output id (the files are in place when it returns, and none is when it raises).
    `level_target`: the pixel size an OME-Zarr level is chosen by; `output_placement(tid)`: create_output's
    pixel_size and origin of an output (OME-Zarr scale and translation, µm per space axis); `dataset_stats`:
    dataset measures over several files; `masking`: --mask/--ignore-value (commands/streamed_masks.py);
    `boxes_back`: a detector's boxes onto the input's grid (--rescale: box_output.write_boxes' `back`)."""
    with ExitStack() as stack:
        arrays, caller, file_size, stats = open_sample(model, sample, axes, level_target, stack, dataset_stats,
                                                       masking)
        input_checks_streamed(model.engine, arrays[model.description.inputs[0].id], stats, report, pixel_size,
                              file_size, batch_effects=dataset_stats is None)
        if model.engine.box_lists is not None:  # detectors: boxes found block by block, then merged
            from .box_output import write_streamed_boxes

            return write_streamed_boxes(model, arrays, targets, stats, report, sample[model.description.inputs[0].id],
                                        tile=tile, tile_budget=tile_budget, progress=progress, back=boxes_back)
        step = stardist_step(model.engine)
        if step is not None:
            check_one_sample(model, {tid: x.shape for tid, x in arrays.items()},
                             sample[model.description.inputs[0].id])
            return _write_streamed_objects(
                model, step, arrays, caller.get(model.description.inputs[0].id), targets, stats, report, tile=tile,
                tile_budget=tile_budget, progress=progress, output_placement=output_placement,
                input_image=lambda: stack.enter_context(open_image(sample[model.description.inputs[0].id],
                                                                   level_target)))
        return _write_streamed(model, arrays, caller.get(model.description.inputs[0].id), targets, stats, report,
                               tile=tile, tile_budget=tile_budget, progress=progress,
                               output_placement=output_placement,
                               input_image=lambda: stack.enter_context(open_image(
                                   sample[model.description.inputs[0].id], level_target)))


def open_sample(model: Model, sample: Mapping[str, Path], axes: Optional[str],
                level_target: Optional[Mapping[str, float]], stack: ExitStack,
                dataset_stats: Optional[DatasetStatistics] = None, masking: Optional[MaskSpec] = None
                ) -> tuple[dict[str, LazyView], dict[str, str], Any, dict]:
    """The sample's images opened lazily (closed with `stack`) as model-layout views, validated (dtype, empty,
    fixed sizes, finite values); returns (views, caller axes, the primary file's pixel size) by input id and the
    whole-image statistics (the finite check rides on their first pass where it can: a read of a huge image less;
    `dataset_stats`: dataset measures over several files, from dataset_statistics_streamed). `masking`: the
    statistics over the valid pixels, and the primary input's view a streamed_masks.FilledInput."""
    desc = model.description
    arrays, caller, file_size, raw = {}, {}, None, {}
    for tid, path in sample.items():
        image = stack.enter_context(open_image(path, level_target))
        arrays[tid], caller[tid] = _model_view(model, tid, path, image, axes)
        raw[tid] = image.data
        file_size = image.pixel_size if tid == desc.inputs[0].id else file_size
    if masking is not None:
        stats = masked_statistics(model, arrays, caller, masking, stack, dataset_stats,
                                  lambda tid: _check_finite(raw[tid], tid))
        return arrays, caller, file_size, stats
    stats = whole_image_statistics(model.engine, arrays, dataset_stats,
                                   finite_check=lambda tid: _check_finite(raw[tid], tid))
    return arrays, caller, file_size, stats


def _model_view(model: Model, tid: str, path: Path, image: Any, axes: Optional[str]) -> tuple[LazyView, str]:
    """An opened input file as a validated model-layout view, and its caller axes."""
    data, t = image.data, model.description.input(tid)
    if np.dtype(data.dtype).kind not in "biuf":
        raise InputError(f"input '{tid}' ('{path}') has dtype {data.dtype}; expected a numeric image (int or float)")
    if math.prod(data.shape) == 0:
        raise InputError(f"input '{tid}' ('{path}') is empty (shape {tuple(data.shape)}); expected an image with "
                         "pixels")
    caller = axes.lower() if axes else image.axes or guess_axes(tuple(data.shape), t)
    view = lazy_model_layout(data, caller, t)
    _check_fixed_sizes(view, t)
    return view, caller


def dataset_statistics_streamed(model: Model, samples: Sequence[Mapping[str, Path]], axes: Optional[str],
                                level_target: Optional[Mapping[str, float]], report: CheckReport,
                                masking: Optional[MaskSpec] = None) -> DatasetStatistics:
    """Dataset statistics over every file, each read lazily in turn (three reads, the NaN/Inf check in the first),
    and the batch-effects check across the files on a strided subsample of each: what predict_files' in-memory
    pass computes, for files larger than memory (`masking`: over each file's valid pixels, as there)."""
    engine, desc = model.engine, model.description
    stats = DatasetStatistics(m for m in engine.required_measures() if m.tensor_id in {t.id for t in desc.inputs})
    primary = desc.inputs[0]
    space = [i for i, a in enumerate(primary.axes) if a.type == "space"]
    summaries = []
    for sample in samples:
        with ExitStack() as stack:
            arrays, raw, caller = {}, {}, {}
            for tid, path in sample.items():
                image = stack.enter_context(open_image(path, level_target))
                arrays[tid], caller[tid] = _model_view(model, tid, path, image, axes)
                raw[tid] = image.data
            masks = sample_masks(masking, arrays[primary.id], primary, caller[primary.id], stack)
            folded = foldable_finite_check(arrays, {m.tensor_id for m in stats.measures})
            for tid in set(arrays) - folded:
                _check_finite(raw[tid], tid)
            try:
                streamed_dataset_update(stats, {tid: (x, engine.axis_ids(tid)) for tid, x in arrays.items()},
                                        finite=folded, masks=masks)
            except NotFinite as e:
                _check_finite(raw[e.tensor_id], e.tensor_id)  # the user's error, with the count of bad values
                raise InputError(f"input '{e.tensor_id}' ('{sample[e.tensor_id]}') contains NaN/Inf values; the "
                                 "model needs finite values: replace them (e.g. np.nan_to_num) or mask them "
                                 "out") from None
            summaries.append((str(sample[primary.id]), input_checks.intensity_summary(
                _subsample(arrays[primary.id], space), masks and _subsample(masks[primary.id], space,
                                                                            arrays[primary.id].shape) > 0)))
            for x in arrays.values():
                release(x)
    input_checks.batch_effects(report, summaries, True)
    return stats


def _write_streamed(model: Model, arrays, caller: Optional[str], targets: Mapping[str, Path], stats, report, *,
                    tile, tile_budget, progress, output_placement, input_image) -> dict[str, Any]:
    engine = model.engine
    desc = engine.description
    temps: dict[str, Path] = {}
    finish: dict[str, Any] = {}  # output id -> memmap (.npy) or create_output's object
    layouts: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    x = arrays[desc.inputs[0].id]  # under --mask: outputs masked block by block (streamed_masks.MaskedSink)

    def out(tid: str, shape: tuple, dtype: np.dtype):
        target = targets[tid]
        final, order = caller_layout(shape, desc.output(tid), caller)
        layouts[tid], shapes[tid] = order, list(final)
        dtype = np.dtype(np.uint8 if dtype == np.bool_ else dtype)
        if target.suffix.lower() != ".npy":
            labels = is_zarr(target) and np.issubdtype(dtype, np.integer)
            finish[tid] = create_output(target, final, dtype, order, labels=labels, **output_placement(tid),
                                        image=input_image() if labels else None)
            return masked_sink(model, x, tid, model_view(finish[tid], order, desc.output(tid), shape), shape)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npy", dir=target.parent)
            os.close(fd)
            temps[tid] = Path(tmp)
            finish[tid] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=final)
        except OSError as e:
            raise InputError(f"cannot write '{target}': {e.strerror or e}; choose a writable output location with "
                             "free space for the whole output") from None
        return masked_sink(model, x, tid, model_view(finish[tid], order, desc.output(tid), shape), shape)

    try:
        written = predict_streamed(engine, arrays, out, tile=tile, tile_budget=tile_budget, stats=stats,
                                   progress=progress)
        input_checks.receptive_field(report, engine, written)
        flip_check_streamed(report, engine, arrays, stats, {"tile": tile, "tile_budget": tile_budget},
                            None if masks_outputs(x) else written)  # masked outputs: its own unmasked crops
        written.clear()
        for tid in list(finish):
            done = finish.pop(tid)
            if isinstance(done, np.ndarray):
                done.flush()
                release(done)
                del done
                plain_permissions(temps[tid])
                os.replace(temps.pop(tid), targets[tid])
            else:
                done.close()
    except OSError as e:
        raise InputError(f"cannot write the outputs to '{next(iter(targets.values())).parent}': {e.strerror or e}; "
                         "nothing was written (check the free space and permissions of the output folder)") from None
    finally:
        for done in finish.values():
            if not isinstance(done, np.ndarray):
                done.abort()
        finish.clear()
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {"written": {tid: str(targets[tid]) for tid in shapes}, "shapes": shapes, "axes": dict(layouts)}


def _write_streamed_objects(model: Model, step, arrays, caller: Optional[str], targets: Mapping[str, Path], stats,
                            report, *, tile, tile_budget, progress, output_placement, input_image) -> dict[str, Any]:
    """StarDist packages: objects found block by block (engine/instance_blocks.py), labels rendered window by
    window into the output; the same blocks and objects as on Dask (commands/predict_distributed.py)."""
    engine, desc = model.engine, model.description
    shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
    context = stardist_context(model)
    plan = block_plan(engine, shapes, tile, tile_budget, description=engine.network, margin=context)
    maps, network_shapes = index_maps(engine, shapes, plan), output_shapes(engine.network, shapes)
    combos, parts = tile_combos(plan), []
    for done, combo in enumerate(combos):
        parts.append(block_objects(engine, step, arrays, maps, plan, combo, stats, network_shapes, context))
        for x in arrays.values():
            release(x)
        if progress:
            progress(done + 1, len(combos))
    tid, tensor = step.tensor_id, desc.output(step.tensor_id)
    wanted = output_shapes(desc, shapes)[tid]
    final, order = caller_layout(wanted, tensor, caller)
    labels = is_zarr(targets[tid])
    out = create_output(targets[tid], final, labels_dtype(model, step), order, **output_placement(tid),
                        labels=labels, image=input_image() if labels else None)
    try:
        x = arrays[desc.inputs[0].id]  # under --mask: the labels masked window by window
        sink = masked_sink(model, x, tid, CallerSink(out, order, tensor, wanted), wanted)
        found = write_labels(model, step, sink, wanted, Objects.merged(parts, step.op.n_rays), context)
        input_checks.receptive_field(report, engine, {tid: sink})
        flip_check_streamed(report, engine, arrays, stats, {"tile": tile, "tile_budget": tile_budget},
                            None if masks_outputs(x) else {tid: sink})
        out.close()
    except BaseException:
        out.abort()
        raise
    return {"written": {tid: str(targets[tid])}, "shapes": {tid: list(final)}, "axes": {tid: order},
            "instances": found}


def input_checks_streamed(engine, x, stats: Mapping, report: CheckReport, pixel_size: Any, file_size: Any,
                          batch_effects: bool = True) -> None:
    """The input checks of one streamed sample; `batch_effects=False` when the files were compared already
    (dataset_statistics_streamed)."""
    desc = engine.description
    t = desc.inputs[0]
    training = training_conditions(desc.config)
    space = input_checks.tensor_space_axes(t)
    given = parse_pixel_size(pixel_size, [a.id for a in space])
    input_checks.pixel_size(report, training, space, given or file_size,
                            "--pixel-size" if given else "the file's metadata", False)
    if not report_mask(report, x) and report.enabled("masked-normalization"):
        report.add("masked-normalization", "skipped", "the image is predicted tile by tile (it exceeds the memory "
                                                      "budget): constant regions are not looked for, every pixel "
                                                      "is used by the statistics")
    sub = _subsample(x, [i for i, a in enumerate(t.axes) if a.type == "space"])
    valid = subsampled_valid(x, _subsample, [i for i, a in enumerate(t.axes) if a.type == "space"])  # --mask
    release(x)
    processed = run_chain(engine.preprocessing[t.id], sub, engine.axis_ids(t.id),
                          StatsContext({t.id: (sub, engine.axis_ids(t.id))}).seed(stats))
    input_checks.distribution_shift(report, training, processed, valid)
    if batch_effects:
        input_checks.batch_effects(report, [("sample 0", input_checks.intensity_summary(sub, valid))],
                                   input_checks.dataset_normalized(engine))
