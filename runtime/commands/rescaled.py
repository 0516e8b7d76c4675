"""`biozoo predict --rescale` for an image predicted streamed (larger than the memory budget) or on Dask: two
streamed resampling passes around the unchanged streamed / distributed prediction.

1. Every input is resampled to the training pixel size band by band (bands of rows of the first space axis, each
   reading only the input rows its output rows need: checks/resample.resample_window) into a float32 .npy beside
   the output, in a hidden folder `.NAME.biozoo-rescale` (Dask workers open it by path, as they open any input).
   With --mask/--ignore-value the valid mask of the original input (streamed_masks.valid_mask, read lazily) goes
   there too, resampled nearest to the model's resolution as conditions._valid_mask resamples the whole mask
   (uint8 0/1; refused there, before the input's pass, when a sample keeps no valid pixel).
2. predict_streamed.predict_sample_streamed, or the Dask one, predicts that temporary image into temporary .npy
   outputs at the model's resolution; the input checks (distribution shift, receptive field, flips) run there,
   as in memory; the pixel-size entry says that the image was resampled. Under a mask the run takes that file as
   its --mask (statistics over its valid pixels, the fill, the outputs masked at the model's resolution, the
   workers reading it by path); the report names the user's --mask / --ignore-value V.
3. Every output is resampled back onto the input's grid (nearest neighbour for integer and boolean outputs,
   linear for the others: resample.order_for), window by window (bands of rows; an OME-Zarr's chunks, each then
   written once, with its pyramid levels), into the real targets through create_output (TIFF, .npy, OME-Zarr
   with the input's pixel size and translation), which appear at the end by a rename. A detector's box files are
   written by the run itself, its merged corners scaled onto the input's grid (box_output.write_boxes' `back`).

The arithmetic is conditions.predict_checked's (the input cast to float32, then resample's coordinates, steps
and axis order), so with the same tiles the result is bit-identical to the in-memory --rescale. The temporary
folder costs disk (the input at the training resolution, float32, a mask's byte a pixel, and the outputs there),
never memory; it is removed at the end, on failure and on Ctrl-C, except after a Dask run that finished blocks: it
then holds what `--resume` continues (the resampled input and mask, the journal), as the journal alone does without
--rescale.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from contextlib import ExitStack
from itertools import product
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..checks import input_checks
from ..checks.pixelsize import parse_pixel_size
from ..checks.report import CheckReport, training_conditions
from ..checks.resample import band_rows, order_for, resample_window
from ..engine.streaming import caller_layout, model_view, release
from ..engine.tiling import output_shapes
from ..errors import InputError
from ..model import Model
from .box_output import BoxesBack, image_size
from .lazyio import create_output, open_image
from .omezarr import is_zarr
from .omezarr_output import _default_chunk
from .streamed_masks import MaskSpec

log = logging.getLogger("biozoo")
SUFFIX = ".biozoo-rescale"
BAND_ELEMENTS = 1 << 21  # input + output elements of one band (rows of the first space axis), at most
RECORD = "input.json"  # written once the resampled inputs are complete: what --resume may take up again
MASK = "mask.npy"  # --mask/--ignore-value: the valid mask at the model's resolution


def band_bytes(elements: int) -> int:
    """Bytes a resampling band holds at its peak (the rows read, their float32 copy, resample's intermediate
    arrays), for an image of `elements` input plus output elements."""
    return 24 * min(BAND_ELEMENTS, elements)


def temp_folder(targets: Mapping[str, Path]) -> Path:
    first = Path(next(iter(targets.values())))
    return first.parent / f".{first.name}{SUFFIX}"


def predict_rescaled(run: Callable[..., dict], model: Model, sample: Mapping[str, Path], axes: Optional[str],
                     targets: Mapping[str, Path], *, report: CheckReport, pixel_size: Any = None,
                     progress: Optional[Callable[[int, int], None]] = None,
                     level_target: Optional[Mapping[str, float]] = None,
                     output_placement: Callable[[str], Mapping[str, Any]] = lambda tid: {},
                     masking: Optional[MaskSpec] = None, **rest: Any) -> dict[str, Any]:
    """`run` (predict_sample_streamed, predict_sample_distributed) with --rescale: the same arguments, returning
    what it returns, with the written paths, shapes and axes of the outputs on the input's grid, and `rescaled`
    (factors, the shapes at the model's resolution). `masking` (--mask/--ignore-value) is decided on the original
    input and handed to `run` as the mask at the model's resolution."""
    from .predict_streamed import _model_view

    desc = model.description
    primary = desc.inputs[0].id
    folder = temp_folder(targets)
    distributed = "client" in rest
    keep = False
    with ExitStack() as stack:
        views, callers, raw, image = {}, {}, {}, None
        for tid, path in sample.items():
            opened = stack.enter_context(open_image(path, level_target))
            views[tid], callers[tid] = _model_view(model, tid, path, opened, axes)
            raw[tid] = opened.data
            image = opened if tid == primary else image
        factors = _pixel_size_entry(model, report, pixel_size, image.pixel_size)
        lengths = {tid: _lengths(desc.input(tid), v.shape, factors) for tid, v in views.items()}
        shapes = {t: tuple(v.shape) for t, v in views.items()}  # model layout: on the input's grid, at the model's
        small = {t: tuple(lengths[t].get(i, n) for i, n in enumerate(s)) for t, s in shapes.items()}
        inner = {tid: folder / f"input-{tid}.npy" for tid in sample}
        boxes = model.engine.box_lists is not None  # box files: written by the run, the corners mapped back
        outputs = dict(targets) if boxes else {tid: folder / f"output-{tid}.npy" for tid in targets}
        if boxes:
            (height, width), (y, x) = image_size(model, shapes[primary]), image_size(model, small[primary])
            rest["boxes_back"] = BoxesBack((height, width), (height / y, width / x), str(sample[primary]))
        mask = folder / MASK if masking is not None else None
        record = _record(sample, lengths, level_target, masking)
        resumed = rest.get("resume") and _taken_up(folder, record)  # refused when left by another run
        try:
            if not (resumed and all(p.is_file() for p in [*inner.values(), *([mask] if mask else [])])):
                _check_disk(model, folder, shapes, small, factors, mask is not None)
                _fresh(folder)
                if mask is not None:  # first: an empty mask is refused before the input's pass
                    _resample_mask(masking, views[primary], desc.inputs[0], callers[primary], small[primary], mask,
                                   stack, progress)
                for tid, view in views.items():
                    _resample_input(view, raw[tid], tid, lengths[tid], inner[tid], progress)
                (folder / RECORD).write_text(json.dumps(record))
            checks = CheckReport(report.skip | {"pixel-size"})  # the resampled image is at the training size
            at_model = None if mask is None else MaskSpec(str(mask.resolve()), None, masking.source)
            done = run(model, inner, None, outputs, report=checks, pixel_size=None, progress=progress,
                       level_target=None, output_placement=lambda tid: {}, masking=at_model, **rest)
            report.extend(checks)
            written = {} if boxes else _resample_outputs(model, done, outputs, targets, shapes, small,
                                                         callers[primary], image, output_placement, progress)
        except OSError as e:
            raise InputError(f"cannot write beside the output ('{folder}'): {e.strerror or e}; --rescale keeps the "
                             "image at the training resolution there while it predicts: choose an output folder "
                             "with write access and free space") from None
        except BaseException:
            from .run_journal import journal_folder

            keep = distributed and journal_folder(outputs).exists()  # finished blocks: --resume continues them
            if keep:
                log.info("--rescale: the resampled image and the finished blocks are kept in '%s' for --resume",
                         folder)
            raise
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
    return {**done, **written, "rescaled": {"factors": factors, "model_shapes": done.get("shapes")}}


def _pixel_size_entry(model: Model, report: CheckReport, pixel_size: Any, file_size: Any) -> dict[str, float]:
    """The pixel-size check with --rescale (the report's entry says the image was resampled); the factors."""
    desc = model.description
    space = input_checks.tensor_space_axes(desc.inputs[0])
    given = parse_pixel_size(pixel_size, [a.id for a in space])
    factors = input_checks.pixel_size(report, training_conditions(desc.config), space, given or file_size,
                                      "--pixel-size" if given else "the file's metadata", True)
    if not factors:  # predict_files routes only mismatching samples here (the same metadata, read again)
        raise InputError("--rescale: the input's pixel size matches the training one here, but did not when the "
                         "command started; was the file replaced meanwhile? Run it again")
    return factors


def _lengths(tensor, shape: tuple[int, ...], factors: Mapping[str, float]) -> dict[int, int]:
    """conditions._rescale's lengths: each space axis named by the factors, times its factor, rounded."""
    return {i: max(1, round(shape[i] * factors[a.id])) for i, a in enumerate(tensor.axes)
            if a.type == "space" and a.id in factors}


def _record(sample: Mapping[str, Path], lengths: Mapping, level_target: Any, masking: Optional[MaskSpec]) -> dict:
    from .run_journal import stamp

    mask = {} if masking is None else {"mask": [masking.ignore_value] if masking.path is None else
                                       [masking.path, stamp(Path(masking.path))]}
    return {"inputs": {tid: [str(Path(p).resolve()), stamp(Path(p))] for tid, p in sample.items()},
            "lengths": {tid: sorted(v.items()) for tid, v in lengths.items()}, "level": level_target, **mask}


def _taken_up(folder: Path, record: dict) -> bool:
    """Whether --resume takes up `folder`'s resampled inputs: False when there are none; refused (as the journal
    refuses another run's blocks) when they are of other inputs, pixel sizes or resolution levels."""
    try:
        previous = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if previous != json.loads(json.dumps(record)):
        raise InputError(f"cannot resume from '{folder}': it was left by a --rescale run of other inputs, pixel "
                         "sizes or masks; run again without --resume to start over")
    return True


def _check_disk(model: Model, folder: Path, shapes: Mapping[str, tuple], small: Mapping[str, tuple],
                factors: Mapping[str, float], masked: bool = False) -> None:
    """Refuse before the first pass when the output's file system cannot hold the temporaries: the inputs at the
    model's resolution (float32), the mask there (`masked`: at most a byte per element of the primary input) and
    the outputs there (at most 4 bytes per element: float32, int32 labels). The message names the resampling (a
    wrong pixel size in a file's metadata asks for absurd factors)."""
    primary = model.description.inputs[0].id
    need = 4 * sum(math.prod(s) for s in small.values()) + (math.prod(small[primary]) if masked else 0)
    need += 4 * sum(math.prod(s) for s in output_shapes(model.description, small).values() if s)
    try:
        free = shutil.disk_usage(folder.parent).free
    except OSError:
        return  # the folder is created, or refused, later
    if need > free:
        from ..checks.input_checks import format_bytes

        grow = math.prod(small[primary]) / max(1, math.prod(shapes[primary]))
        raise InputError(f"--rescale needs {format_bytes(need)} of disk beside the output ('{folder}': the image "
                         f"{'x'.join(map(str, shapes[primary]))} resampled {grow:.3g}x to the training resolution "
                         f"({', '.join(f'{a} x{f:.3g}' for a, f in factors.items())}) and the outputs there, while "
                         f"it predicts), but {format_bytes(free)} are free; nothing was computed. If the file's "
                         "pixel size is wrong, give the right one with --pixel-size; else choose an output folder "
                         "on a disk with more free space")


def _fresh(folder: Path) -> None:
    if folder.exists():
        log.info("removing the temporary folder '%s' of an earlier --rescale run", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _rows(n_in: int, n_out: int, per_in: int, per_out: int) -> int:
    """Output rows per band: the input rows they read plus the output rows within BAND_ELEMENTS (at least 1)."""
    return max(1, int(BAND_ELEMENTS // max(1.0, per_out + per_in * n_in / n_out)))


def _resample_input(view, raw: Any, tid: str, lengths: Mapping[int, int], path: Path,
                    progress: Optional[Callable[[int, int], None]]) -> None:
    """Input `tid` (model layout, read lazily) at the training resolution into the .npy `path`, band by band:
    as conditions.prepare does, cast to float32 first, then linear. NaN/Inf and values beyond float32 are refused
    with predict_streamed's message (the count over the original image)."""
    from .predict_streamed import _check_finite

    shape = tuple(view.shape)
    out_shape = tuple(lengths.get(i, n) for i, n in enumerate(shape))
    axis = next(iter(lengths), 0)  # the first space axis (tensor order); 0 for an input without factors
    n_in, n_out = shape[axis], out_shape[axis]
    per_in, per_out = math.prod(shape) // n_in, math.prod(out_shape) // n_out
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=out_shape)
    floating = np.dtype(view.dtype).kind == "f"
    wide = floating and np.dtype(view.dtype).itemsize > 4
    rows = _rows(n_in, n_out, per_in, per_out)
    bands = [(start, min(n_out, start + rows)) for start in range(0, n_out, rows)]
    for done, (start, stop) in enumerate(bands):
        lo, hi = band_rows(n_in, n_out, "linear", start, stop)
        block = np.asarray(view[(slice(None),) * axis + (slice(lo, hi),)])
        if floating and (not np.isfinite(block).all() or (wide and np.abs(block).max() > np.finfo(np.float32).max)):
            _check_finite(raw, tid)  # raises, counting every bad value of the image
        block = block.astype(np.float32, copy=False)
        target[(slice(None),) * axis + (slice(start, stop),)] = resample_window(
            block, lengths, "linear", {axis: (n_in, start, stop, lo)})
        release(target)
        if progress:
            progress(done + 1, len(bands))
    target.flush()
    del target


def _resample_mask(spec: MaskSpec, view, tensor, caller: str, small: tuple, path: Path, stack: ExitStack,
                   progress: Optional[Callable[[int, int], None]]) -> None:
    """The valid mask of the primary input (`view`: its original, model layout; masking's shape errors) at the
    model's shape `small` into the uint8 0/1 .npy `path`, band by band, nearest neighbour: what
    conditions._valid_mask resamples on the whole mask. A mask of the space axes only when every other axis is 1
    (else the input's own shape, its channels alike). Refused (masking.check_not_empty) when a sample keeps none."""
    from ..checks.masking import check_not_empty
    from .streamed_masks import valid_mask

    valid = valid_mask(spec, view, tensor, caller, stack)
    shape, batch = valid.root_shape, valid.batch
    space = [i for i, a in enumerate(tensor.axes) if a.type == "space"]
    lengths = {i: small[i] for i in space}
    flat = all(n == 1 for i, n in enumerate(shape) if i not in space)
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                       shape=tuple(small[i] for i in space) if flat else tuple(small))
    axis = space[0]
    n_in, n_out = shape[axis], small[axis]
    rows = _rows(n_in, n_out, math.prod(view.shape) // n_in, math.prod(small) // n_out)  # the input's rows read
    bands = [(start, min(n_out, start + rows)) for start in range(0, n_out, rows)]
    counts = np.zeros([shape[i] if i == batch else 1 for i in range(len(shape))], np.int64)
    for done, (start, stop) in enumerate(bands):
        lo, hi = band_rows(n_in, n_out, "nearest", start, stop)
        block = np.asarray(valid[(slice(None),) * axis + (slice(lo, hi),)]).astype(np.uint8)
        part = resample_window(block, lengths, "nearest", {axis: (n_in, start, stop, lo)})
        counts += np.count_nonzero(part, axis=tuple(i for i in range(part.ndim) if i != batch), keepdims=True)
        if flat:
            target[start:stop] = part.reshape([part.shape[i] for i in space])
        else:
            band = (slice(None),) * axis + (slice(start, stop),)
            target[band] = np.broadcast_to(part, target[band].shape)
        release(target)
        if progress:
            progress(done + 1, len(bands))
    target.flush()
    del target
    check_not_empty(counts > 0, tensor, spec.source)


def _resample_outputs(model: Model, done: Mapping[str, Any], outputs: Mapping[str, Path],
                      targets: Mapping[str, Path], shapes: Mapping[str, tuple], small: Mapping[str, tuple],
                      caller: Optional[str], image: Any, output_placement: Callable[[str], Mapping[str, Any]], progress
                      ) -> dict[str, Any]:
    """Every output at the model's resolution (`outputs`, .npy in the layouts done['axes']) onto the input's grid
    into `targets`, band by band; `shapes`, `small`: the inputs' model-layout shapes on the input's grid and at the
    model's resolution. All outputs appear at the end, none on failure."""
    desc = model.description
    wanted, at_model = output_shapes(desc, shapes), output_shapes(desc, small)
    finish, written, sizes, layouts = {}, {}, {}, {}
    try:
        for tid in outputs:
            tensor = desc.output(tid)
            saved = np.load(outputs[tid], mmap_mode="r")
            source = model_view(saved, done["axes"][tid], tensor, at_model[tid])
            final, order = caller_layout(wanted[tid], tensor, caller)
            zarr = is_zarr(targets[tid])
            labels = zarr and np.issubdtype(saved.dtype, np.integer)
            finish[tid] = create_output(targets[tid], final, saved.dtype, order,
                                        output_placement(tid).get("pixel_size"), labels=labels,
                                        image=image if labels else None,
                                        origin=image.origin if zarr else None)  # on the input's grid
            sink = model_view(finish[tid], order, tensor, wanted[tid])
            _resample_back(source, sink, tensor, tuple(wanted[tid]), saved, finish[tid], zarr, progress)
            sizes[tid], layouts[tid], written[tid] = list(final), order, str(targets[tid])
            del source, saved
        for tid in list(finish):
            finish.pop(tid).close()
    finally:
        for out in finish.values():
            out.abort()
    return {"written": written, "shapes": sizes, "axes": layouts}


def _resample_back(source: np.ndarray, sink: Any, tensor, wanted: tuple, saved: np.ndarray, target: Any,
                   zarr: bool, progress) -> None:
    """conditions._resample_back for one output, window by window: bands of rows of its first space axis into
    memory-mapped TIFF/.npy, the chunks of an OME-Zarr (each written once, its pyramid levels with it). The pages
    of `saved` (read) and of `target` (written, flushed) are dropped after each window: RSS stays at a window."""
    order = order_for(source)
    lengths = {i: wanted[i] for i, a in enumerate(tensor.axes) if a.type == "space" and wanted[i] != source.shape[i]}
    space = [i for i, a in enumerate(tensor.axes) if a.type == "space"]
    if not space:
        sink[...] = np.asarray(source)
        return
    if zarr:  # chunks of y and x (512, pyramid-aligned); z planes as many as a band holds, up to a chunk's 64
        steps = {i: _default_chunk(tensor.axes[i].letter) for i in space}
        plane = math.prod(min(steps[i], n) if i in space and tensor.axes[i].letter in "yx" else 1 if i in space
                          else n for i, n in enumerate(wanted))
        for i in space:
            if tensor.axes[i].letter not in "yx":
                steps[i] = max(1, min(steps[i], BAND_ELEMENTS // max(1, plane)))
    else:
        first = space[0]
        steps = {i: wanted[i] for i in space}
        steps[first] = _rows(source.shape[first], wanted[first], math.prod(source.shape) // source.shape[first],
                             math.prod(wanted) // wanted[first])
    grid = list(product(*[range(0, wanted[i], steps[i]) for i in space]))
    for done, starts in enumerate(grid):
        window, read, write = {}, [slice(None)] * len(wanted), [slice(None)] * len(wanted)
        for i, start in zip(space, starts):
            stop = min(wanted[i], start + steps[i])
            lo, hi = band_rows(source.shape[i], wanted[i], order, start, stop)
            window[i], read[i], write[i] = (source.shape[i], start, stop, lo), slice(lo, hi), slice(start, stop)
        block = np.array(source[tuple(read)])
        release(saved)
        sink[tuple(write)] = resample_window(block, lengths, order, window)
        target.flush()
        if progress:
            progress(done + 1, len(grid))
