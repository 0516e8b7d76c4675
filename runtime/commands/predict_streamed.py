"""`biozoo predict` for an image larger than the memory budget: .npy in (np.load(mmap_mode="r")), .npy out
(np.lib.format.open_memmap into a temporary file in the output's folder, renamed into place at the end, so a
failure leaves no half-written output), tile by tile (engine/streaming.py), statistics of the whole image.

The input checks that need the whole image in memory run on what can be had without it: the pixel size (metadata),
distribution shift and batch effects on a strided subsample of at most SUBSAMPLE pixels (normalized with the
whole image's statistics), the receptive field on a central crop of at most CROP pixels a side of the output;
masked-normalization (constant regions) is not looked for, and says so.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..checks import input_checks
from ..checks.pixelsize import parse_pixel_size
from ..checks.report import CheckReport, training_conditions
from ..engine.engine import _check_fixed_sizes, _guess_axes
from ..engine.streaming import caller_layout, lazy_model_layout, model_view, predict_streamed, release, \
    whole_image_statistics
from ..errors import InputError
from ..model import Model
from ..ops import run_chain
from ..ops.stats import STREAM_CHUNK, StatsContext

SUBSAMPLE = 1 << 21
CROP = 1024
STREAMED_INPUTS = (".npy",)
STREAMED_OUTPUTS = (".npy",)


def open_npy(path: Path, tid: str) -> np.ndarray:
    """A read-only memory map of a numeric .npy file (its header checked: dtype numeric, size as declared)."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"cannot read '{path}': {e}; is it a complete .npy file saved with numpy.save?") from None
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf" or data.dtype.fields is not None:
        raise InputError(f"input '{tid}' ('{path}') has dtype {getattr(data, 'dtype', '?')}; expected a numeric "
                         "image (int or float)")
    if data.size == 0:
        raise InputError(f"input '{tid}' ('{path}') is empty (shape {data.shape}); expected an image with pixels")
    return data


def _check_finite(x: np.ndarray, tid: str) -> None:
    if x.dtype.kind != "f":
        return
    rows = max(1, STREAM_CHUNK // max(1, math.prod(x.shape[1:])))
    bad = 0
    for r in range(0, x.shape[0], rows):
        block = np.asarray(x[r:r + rows])
        bad += int(np.count_nonzero(~np.isfinite(block)))
        if x.dtype.itemsize > 4 and np.abs(block).max() > np.finfo(np.float32).max:
            raise InputError(f"input '{tid}' ({x.dtype}) has values outside the float32 range; the model computes "
                             "in float32, where they would become Inf: rescale the image or clip it")
    release(x)
    if bad:
        raise InputError(f"input '{tid}' contains {bad} NaN/Inf value(s) out of {x.size}; the model needs finite "
                         "values: replace them (e.g. np.nan_to_num) or mask them out")


def _subsample(x: np.ndarray, space: list[int]) -> np.ndarray:
    step = max(1, math.ceil((x.size / SUBSAMPLE) ** (1 / max(1, len(space)))))
    index = [slice(None, None, step) if i in space else slice(None) for i in range(x.ndim)]
    return np.asarray(x[tuple(index)], dtype=np.float32)


def _crop(y: np.ndarray, space: list[int]) -> np.ndarray:
    index = [slice(max(0, (n - CROP) // 2), max(0, (n - CROP) // 2) + CROP) if i in space else slice(None)
             for i, n in enumerate(y.shape)]
    return np.asarray(y[tuple(index)])


def predict_sample_streamed(model: Model, sample: Mapping[str, Path], axes: Optional[str],
                            targets: Mapping[str, Path], *, tile: Optional[Mapping[str, int]], tile_budget: int,
                            report: CheckReport, pixel_size: Any = None,
                            progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Predict one sample of .npy files into .npy targets without holding the image; returns shapes and axes
    by output id (the files are in place when it returns, and none is when it raises)."""
    engine = model.engine
    desc = engine.description
    primary = desc.inputs[0]
    arrays, caller = {}, {}
    for tid, path in sample.items():
        data = open_npy(path, tid)
        t = desc.input(tid)
        caller[tid] = axes.lower() if axes else _guess_axes(data, t)
        arrays[tid] = lazy_model_layout(data, caller[tid], t)
        _check_fixed_sizes(arrays[tid], t)
        _check_finite(data, tid)
    stats = whole_image_statistics(engine, arrays)
    _input_checks(engine, arrays[primary.id], stats, report, pixel_size)
    temps: dict[str, Path] = {}
    maps: dict[str, np.memmap] = {}
    layouts: dict[str, str] = {}

    def out(tid: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        target = targets[tid]
        final, order = caller_layout(shape, desc.output(tid), caller.get(primary.id))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".npy", dir=target.parent)
            os.close(fd)
            temps[tid] = Path(tmp)
            maps[tid] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8 if dtype == np.bool_ else dtype,
                                                  shape=final)
        except OSError as e:
            raise InputError(f"cannot write '{target}': {e.strerror or e}; choose a writable output location with "
                             "free space for the whole output") from None
        layouts[tid] = order
        return model_view(maps[tid], order, desc.output(tid))

    try:
        written = predict_streamed(engine, arrays, out, tile=tile, tile_budget=tile_budget, stats=stats,
                                   progress=progress)
        space_out = {tid: [i for i, a in enumerate(desc.output(tid).axes) if a.type == "space"] for tid in written}
        input_checks.receptive_field(report, engine, {tid: _crop(y, space_out[tid]) for tid, y in written.items()})
        for tid, m in maps.items():
            m.flush()
            release(m)
        shapes = {tid: list(m.shape) for tid, m in maps.items()}
        maps.clear()
        written.clear()
        for tid, tmp in temps.items():
            os.replace(tmp, targets[tid])
        temps.clear()
    except OSError as e:
        raise InputError(f"cannot write the outputs of '{sample[primary.id]}': {e.strerror or e}; nothing was "
                         "written (check the free space and permissions of the output folder)") from None
    finally:
        maps.clear()
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {"written": {tid: str(targets[tid]) for tid in shapes}, "shapes": shapes, "axes": dict(layouts)}


def _input_checks(engine, x: np.ndarray, stats: Mapping, report: CheckReport, pixel_size: Any) -> None:
    desc = engine.description
    t = desc.inputs[0]
    training = training_conditions(desc.config)
    space = input_checks.tensor_space_axes(t)
    given = parse_pixel_size(pixel_size, [a.id for a in space])
    input_checks.pixel_size(report, training, space, given, "--pixel-size" if given else "the .npy file (none)",
                            False)
    if report.enabled("masked-normalization"):
        report.add("masked-normalization", "skipped", "the image is predicted tile by tile (it exceeds the memory "
                                                      "budget): constant regions are not looked for, every pixel "
                                                      "is used by the statistics")
    sub = _subsample(x, [i for i, a in enumerate(t.axes) if a.type == "space"])
    release(x)
    processed = run_chain(engine.preprocessing[t.id], sub, engine.axis_ids(t.id),
                          StatsContext({t.id: (sub, engine.axis_ids(t.id))}).seed(stats))
    input_checks.distribution_shift(report, training, processed, None)
    input_checks.batch_effects(report, [("sample 0", input_checks.intensity_summary(sub, None))],
                               input_checks.dataset_normalized(engine))
