"""A prediction under the input checks: pixel size (and --rescale), masked normalization, distribution shift,
batch effects, receptive field. Model.predict / predict_with_report call `predict_checked`.

Order matters: the pixel-size check runs first and raises before any compute (so `biozoo predict` writes nothing);
masks are decided at the resolution the network sees; distribution shift looks at the normalized input that goes
into the network; the receptive-field check measures objects at the model's resolution, before resampling back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from ..engine.outputs import drop_padding, unpadded_tensor
from ..format import axes as axes_mod
from . import input_checks, masking, pixelsize, reliability
from .estimates import SAMPLE_SIZE, PixelSample
from .objects import segmentation_like
from .report import CheckReport, training_conditions
from .resample import order_for, resample

if TYPE_CHECKING:
    from ..engine.engine import Engine


@dataclass(frozen=True)
class InputOptions:
    """What the caller says about an input beyond its pixels (CLI flags / predict keyword arguments)."""

    pixel_size: pixelsize.PixelSizeArg = None  # overrides the file's metadata
    file_pixel_size: Optional[pixelsize.PixelSize] = None  # read from the file by predict_files
    rescale: bool = False
    mask: Optional[np.ndarray] = None  # non-zero = valid; space axes only, or the input's own shape
    ignore_value: Optional[float] = None
    skip: frozenset[str] = frozenset()


@dataclass
class Prediction:
    """Outputs (with their axes, in the caller's conventions) and the check report of one call."""

    outputs: dict[str, tuple[np.ndarray, str]]
    report: CheckReport


def _rescale(arrays: dict[str, np.ndarray], engine: "Engine", factors: Mapping[str, float]) -> dict[str, np.ndarray]:
    out = {}
    for tid, x in arrays.items():
        t = engine.description.input(tid)
        lengths = {i: max(1, round(x.shape[i] * factors[a.id])) for i, a in enumerate(t.axes)
                   if a.type == "space" and a.id in factors}
        out[tid] = resample(x, lengths, "linear")
    return out


def _valid_mask(engine: "Engine", x: np.ndarray, caller: str, opts: InputOptions, report: CheckReport,
                factors: Optional[Mapping[str, float]], original: np.ndarray,
                sample: Optional[PixelSample] = None) -> Optional[np.ndarray]:
    """The primary input's valid mask at the model's resolution, or None (all valid); adds the report entry."""
    name, t = "masked-normalization", engine.description.inputs[0]
    if opts.mask is not None or opts.ignore_value is not None:
        if opts.mask is not None:
            valid, source = masking.mask_from_array(opts.mask, original, t, caller), "--mask"
        else:
            valid = masking.mask_from_value(original, t, opts.ignore_value)
            source = f"--ignore-value {opts.ignore_value:g}"
        if factors:
            valid = resample(valid.astype(np.uint8), {i: x.shape[i] for i, a in enumerate(t.axes) if a.type == "space"},
                             "nearest").astype(bool)
        masking.check_not_empty(valid, t, source)
        excluded = 1.0 - float(valid.mean())
        report.add(name, "ok", f"{source}: {excluded:.1%} of the pixels excluded from the normalization statistics; "
                               "outputs there are background (0) or NaN", source=source,
                   excluded_fraction=round(excluded, 4))
        return valid if excluded > 0 else None
    if not report.enabled(name):
        return None
    valid, numbers = masking.detect_constant_regions(x, t, sample)
    if valid is None:
        report.add(name, "ok", "no large constant (blacked-out or saturated) regions; all pixels used")
        return None
    excluded = 1.0 - float(valid.mean())
    kinds = ", ".join(sorted({f"{r['kind']} ({r['value']:g})" for r in numbers["regions"]}))
    report.add(name, "warning", f"{excluded:.1%} of the pixels lie in large constant regions ({kinds}); they are "
                                "excluded from the normalization statistics and the outputs there are background "
                                "(0) or NaN. Pass --mask/--ignore-value to say so explicitly, or --no-check "
                                "masked-normalization to use every pixel", excluded_fraction=round(excluded, 4),
               **numbers)
    return valid


@dataclass
class Prepared:
    """One call's inputs at the model's resolution, masked pixels filled, with what is needed to finish."""

    primary: str
    arrays: dict[str, np.ndarray]
    caller: dict[str, str]
    valid: Optional[np.ndarray]  # primary input, True = used by the statistics
    factors: Optional[dict[str, float]]  # pixel-size resampling, input/training size per axis id
    original_shapes: dict[str, tuple[int, ...]]
    raw: np.ndarray  # primary input at the model's resolution, before filling (for intensity summaries)
    sample: Optional[PixelSample] = None  # pixel positions of raw (and of the normalized input) the checks read

    @property
    def masks(self) -> Optional[dict[str, np.ndarray]]:
        return None if self.valid is None else {self.primary: self.valid}


def prepare(engine: "Engine", inputs: Any, axes: Any, opts: InputOptions, report: CheckReport) -> Prepared:
    """Check the pixel size (raising on a mismatch without --rescale), resample, decide and apply the mask."""
    desc = engine.description
    primary = desc.inputs[0]
    with report.timed("preprocessing"):
        arrays, caller = engine.prepare_inputs(inputs, axes)
    with report.timed("checks"):
        space = input_checks.tensor_space_axes(primary)
        given = pixelsize.parse_pixel_size(opts.pixel_size, [a.id for a in space])
        source = "--pixel-size" if given is not None else "TIFF metadata"
        factors = input_checks.pixel_size(report, training_conditions(desc.config), space,
                                          given or opts.file_pixel_size, source, opts.rescale)
    original_shapes = {tid: x.shape for tid, x in arrays.items()}
    original = arrays[primary.id]
    if factors:
        with report.timed("resampling"):
            arrays = _rescale(arrays, engine, factors)
    x = arrays[primary.id]
    with report.timed("checks"):
        sample = _input_sample(engine, x, None)  # one draw for every check of this input (redrawn under a mask)
        valid = _valid_mask(engine, x, caller.get(primary.id, primary.letters), opts, report, factors, original,
                            sample)
        if valid is not None:
            arrays[primary.id] = masking.fill_masked(x, valid, primary)
            sample = _input_sample(engine, x, valid)
    return Prepared(primary.id, arrays, caller, valid, factors, original_shapes, x, sample)


def predict_checked(engine: "Engine", inputs: Any, axes: Any, opts: InputOptions, *, tile=None, tile_budget: int,
                    dataset_stats=None, progress=None, batch_effects: bool = True) -> Prediction:
    desc = engine.description
    primary = desc.inputs[0]
    report = CheckReport(opts.skip)
    p = prepare(engine, inputs, axes, opts, report)
    if batch_effects:
        with report.timed("checks"):
            _batch_effects_in_call(engine, report, p.raw, p.valid, p.sample)
    with report.timed("preprocessing"):
        processed = engine.preprocess(p.arrays, dataset_stats, p.masks)
    with report.timed("checks"):
        input_checks.distribution_shift(report, training_conditions(desc.config), processed[primary.id], p.valid,
                                        p.sample)
    with report.timed("network and postprocessing"):
        outputs = engine.run_processed(processed, p.arrays, tile=tile, tile_budget=tile_budget,
                                      dataset_stats=dataset_stats, progress=progress, masks=p.masks)
        boxes = engine.box_lists
        outputs = drop_padding(desc, outputs, boxes)  # fixed-capacity box lists: only real rows from here
    with report.timed("checks"):
        if p.valid is not None:
            outputs = _mask_outputs(engine, outputs, p.valid)
        input_checks.receptive_field(report, engine, outputs)
        if not boxes:
            # masked outputs were filled after the network: the unflipped image is then run again, unmasked
            reliability.check(report, engine, processed, p.arrays, outputs if p.valid is None else None,
                              {"tile": tile, "tile_budget": tile_budget})
    if p.factors:
        with report.timed("resampling"):
            outputs = _resample_back(engine, outputs, p.original_shapes, p.arrays[primary.id].shape)
    report.disabled()
    caller = p.caller.get(primary.id)
    result = {tid: axes_mod.from_model_layout(y, unpadded_tensor(desc, tid, boxes), caller)
              for tid, y in outputs.items()}
    return Prediction(result, report)


def _batch_axis(engine: "Engine") -> Optional[int]:
    return next((i for i, a in enumerate(engine.description.inputs[0].axes) if a.type == "batch"), None)


def _input_sample(engine: "Engine", x: np.ndarray, valid: Optional[np.ndarray]) -> PixelSample:
    """The pixel positions the checks of this input read (the raw input for the constant-region screen and batch
    effects, the same positions of the normalized input for distribution shift): SAMPLE_SIZE per batch sample;
    drawing costs a fraction of a millisecond, reading them a few."""
    batch = _batch_axis(engine)
    n = x.shape[batch] if batch is not None else 1
    return PixelSample(x.shape, valid, SAMPLE_SIZE * n)


def _batch_effects_in_call(engine: "Engine", report: CheckReport, x: np.ndarray, valid: Optional[np.ndarray],
                           sample: Optional[PixelSample] = None) -> None:
    batch = _batch_axis(engine)
    n = x.shape[batch] if batch is not None else 1
    normalized = input_checks.dataset_normalized(engine)
    if not report.enabled("batch-effects") or not normalized or n < 2:
        input_checks.batch_effects(report, [("sample 0", (0.0, 0.0, 0.0))] * n, normalized)  # decided unread
        return
    if sample is None or sample.shape != x.shape:
        sample = PixelSample(x.shape, valid, SAMPLE_SIZE * n)
    summaries = []
    for b in range(n):
        p1, p50, p99 = sample.percentiles(x, [1, 50, 99], where=(batch, b) if batch is not None else None)
        summaries.append((f"sample {b}", (float(p1), float(p50), float(p99))))
    input_checks.batch_effects(report, summaries, normalized)


def _mask_outputs(engine: "Engine", outputs: dict[str, np.ndarray], valid: np.ndarray) -> dict[str, np.ndarray]:
    desc = engine.description
    masked = {}
    for tid, y in outputs.items():
        t = desc.output(tid)
        m = masking.output_mask(valid, desc.inputs[0], t, y.shape)
        if m is None:
            masked[tid] = y
            continue
        value = masking.fill_value_for(t, segmentation_like(t, desc.config, y.dtype), y.dtype)
        masked[tid] = masking.apply_output_mask(y, m, value)
    return masked


def _resample_back(engine: "Engine", outputs: dict[str, np.ndarray], original_shapes, resampled_shape
                   ) -> dict[str, np.ndarray]:
    """Outputs back onto the input's original grid: lengths from the description for the original input shape;
    box lists (not images; data-dependent or fixed-capacity lengths) get their corner coordinates scaled instead."""
    from ..engine.tiling import output_shapes

    desc = engine.description
    wanted = output_shapes(desc, original_shapes)
    boxes = engine.box_lists
    back = {}
    for tid, y in outputs.items():
        t, shape = desc.output(tid), wanted.get(tid)
        if boxes and tid == boxes.boxes:
            back[tid] = _boxes_back(engine, y, boxes, original_shapes, resampled_shape)
            continue
        if shape is None:
            back[tid] = y
            continue
        lengths = {i: shape[i] for i, a in enumerate(t.axes) if a.type == "space" and shape[i] != y.shape[i]}
        back[tid] = resample(y, lengths, order_for(y)) if lengths else y
    return back


def _boxes_back(engine: "Engine", xyxy: np.ndarray, which, original_shapes, resampled_shape) -> np.ndarray:
    """Box corners from the resampled grid onto the original one (x columns by the x ratio, y by the y ratio)."""
    primary = engine.description.inputs[0]
    original = original_shapes[primary.id]
    ratio = {a.id: original[i] / resampled_shape[i] for i, a in enumerate(primary.axes) if a.type == "space"}
    scale = np.ones(xyxy.shape[-1], np.float32)
    for corner, column in zip(("x", "y", "x", "y"), which.corner_order):
        scale[column] = ratio.get(corner, 1.0)
    return (xyxy * scale).astype(xyxy.dtype, copy=False)


def check_test_tensors(engine: "Engine", inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray],
                       report: CheckReport) -> None:
    """The input checks on a package's own test tensors (`biozoo test`): they report, never mask or resample, so
    that the test reproduces the package's outputs exactly as the package defines them."""
    desc = engine.description
    primary = desc.inputs[0]
    training = training_conditions(desc.config)
    x = inputs[primary.id]
    if report.enabled("pixel-size"):
        report.add("pixel-size", "skipped", "test tensors are at the training resolution by definition")
    sample = _input_sample(engine, x, None)
    if report.enabled("masked-normalization"):
        valid, numbers = masking.detect_constant_regions(x, primary, sample)
        if valid is None:
            report.add("masked-normalization", "ok", "no large constant regions in the test input")
        else:
            report.add("masked-normalization", "warning", f"the test input has large constant regions "
                       f"({1 - float(valid.mean()):.1%} of its pixels): `biozoo predict` would exclude them from the "
                       "normalization statistics; `biozoo test` reproduces the outputs without masking", **numbers)
    _batch_effects_in_call(engine, report, x, None, sample)
    processed = engine.preprocess(inputs)
    input_checks.distribution_shift(report, training, processed[primary.id], None, sample)
    input_checks.receptive_field(report, engine, outputs)
    if not engine.box_lists:  # on the test tensors themselves: the reference of third-party packages
        reliability.check(report, engine, processed, inputs, outputs)
