"""The out-of-distribution check: does the prediction survive a flip of its input, as well as it does on data of the
training distribution?

A network on data like its training data predicts nearly the same objects for an image and its mirror image; out of
its depth (another microscope, texture, density) its prediction turns arbitrary and the two disagree, while the
checks on the input see nothing wrong. Measured with the HeLa-trained StarDist package (one run, see the README):
0.915-0.948 on held-out HeLa frames, 0.843 on the DSB nuclei image where its accuracy@0.5 falls from 0.85 to 0.62.

How: the normalized input is flipped along y and x (3D: z kept), predicted, flipped back and compared with the
prediction (agreement.py: instance F1 + foreground IoU for labels, foreground IoU for masks and probabilities,
1 - normalized error for images). Up to MIN_RUN_PIXELS the whole image is flipped (one extra run); above, crops
of CROP_SIDE plus the halo on each side are predicted flipped (one run each), and their central CROP_SIDE region,
where the network saw all it needs, is compared with the prediction there: COST_FRACTION of the image, at least
two crops, at most MAX_CROPS. Where that crop costs more than two of CROP_SIDE (a large halo), or the prediction
cannot stand for the crop (changed after the network by a mask, or post-processed with statistics of the whole
batch), each crop of CROP_SIDE is predicted as it is and flipped (two runs). Streamed images give their
crops read lazily and normalized with the whole image's statistics, as their tiles were. The reference is the
same measure on training-like data: recorded by biozoo's exporter over the held-out test images
(``config.biozoo.training.out_of_distribution``), otherwise taken once per loaded package on its own test tensors
(which its authors published as what it handles). A warning when the disagreement (1 - agreement) is more than
DISAGREEMENT_RATIO times the reference's and DISAGREEMENT_MARGIN above it; never an error, and it never raises.
"""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

from . import agreement as A
from .objects import segmentation_like
from .report import CheckReport, training_conditions

if TYPE_CHECKING:
    from ..engine.engine import Engine

NAME = "out-of-distribution"
CROP_SIDE = 256  # crop length per flipped axis (~30 nuclei of 24 px in a 256x256 crop)
MAX_CROPS = 4
DEPTH = 32  # streamed volumes: central z positions a crop keeps (the in-memory check flips the whole depth)
COST_FRACTION = 0.02  # pixels run for the check / image pixels, above MIN_RUN_PIXELS
MIN_RUN_PIXELS = 512 * 512  # up to this the whole image is flipped: fewer pixels hold too few objects to measure
DISAGREEMENT_RATIO = 1.8
DISAGREEMENT_MARGIN = 0.05
_references: "weakref.WeakKeyDictionary[Engine, dict]" = weakref.WeakKeyDictionary()


def why_not(engine: "Engine") -> Optional[str]:
    """Why the check cannot run on this package (None: it can)."""
    if engine.box_lists is not None:
        return "the outputs are box lists, not images"
    if not any(a.type == "space" for a in engine.description.inputs[0].axes):
        return "the input has no space axes to flip"
    return None


def _flip_axes(engine: "Engine") -> list[int]:
    """Primary-input axis indices flipped: y and x (or the last two space axes; a single one alone)."""
    axes = engine.description.inputs[0].axes
    space = [i for i, a in enumerate(axes) if a.type == "space"]
    named = [i for i in space if axes[i].id in ("y", "x")]
    return named if named else space[-2:]


def _step(axis: Any) -> int:
    step = getattr(axis.size, "step", 0) or 0
    return int(step) if step > 1 else 1


def crop_margins(engine: "Engine", shape: tuple[int, ...]) -> Optional[dict[int, int]]:
    """margins() when a crop with them costs less than CROP_SIDE crops run twice (as they are and flipped), else
    None: a halo of 56 px makes a 368^2 crop, more than two of 256^2."""
    margin = margins(engine)
    side = {i: min(shape[i], CROP_SIDE) for i in _flip_axes(engine)}
    grown = math.prod(min(shape[i], n + 2 * margin.get(i, 0)) for i, n in side.items())
    return margin if grown < 2 * math.prod(side.values()) else None


def margins(engine: "Engine") -> dict[int, int]:
    """Per space axis of the primary input, the pixels a crop reaches past its compared region on each side: the
    halo, rounded up to the axis step (the network's output there depends on pixels the crop does not have)."""
    from ..engine.tiling import halo_in_input_pixels

    primary = engine.description.inputs[0]
    found = {}
    for i in (i for i, a in enumerate(primary.axes) if a.type == "space"):
        step = _step(primary.axes[i])
        found[i] = -(-halo_in_input_pixels(engine.description, primary, primary.axes[i]) // step) * step
    return found


def plan_crops(engine: "Engine", shape: tuple[int, ...], budget_fraction: Optional[float] = COST_FRACTION,
               margin: Optional[Mapping[int, int]] = None) -> list[tuple[slice, ...]]:
    """The crops of the primary input (model layout) to predict flipped, along the image's diagonal. [] means the
    whole image (flipped once, compared with the prediction itself). A crop is CROP_SIDE long plus `margin` on each
    side (margins(); none: the crop is predicted as it is too), and the budget counts two runs of CROP_SIDE per
    crop either way, so that both ways measure as many crops. `budget_fraction=None`: up to MAX_CROPS crops
    whatever they cost (test tensors)."""
    primary = engine.description.inputs[0]
    flipped = _flip_axes(engine)
    margin = margin or {}
    image = math.prod(shape[i] for i in flipped)
    budget = math.inf if budget_fraction is None else max(budget_fraction * image, MIN_RUN_PIXELS)
    side = {i: min(shape[i], CROP_SIDE + 2 * margin.get(i, 0)) for i in flipped}
    crop = math.prod(min(shape[i], CROP_SIDE) for i in flipped)
    if image <= budget or crop >= image:
        return []
    count = MAX_CROPS if budget == math.inf else max(1, min(MAX_CROPS, int(budget // (2 * crop))))
    crops = []
    for k in range(count):
        index = [slice(None)] * len(shape)
        for i in flipped:
            n, step = shape[i], _step(primary.axes[i])
            centre = round(n * (k + 1) / (count + 1))
            lo = min(max(0, centre - side[i] // 2) // step * step, (n - side[i]) // step * step)
            index[i] = slice(lo, lo + side[i])
        crops.append(tuple(index))
    return crops


def _matching_axes(engine: "Engine", tid: str, y: np.ndarray, shape: tuple[int, ...]) -> Optional[dict[int, int]]:
    """{primary input axis -> output axis} for an output on the input's grid (same ids, same lengths); else None."""
    primary = engine.description.inputs[0]
    out_axes = [a.id for a in engine.description.output(tid).axes]
    found = {}
    for i, a in enumerate(primary.axes):
        if a.type != "space":
            continue
        if a.id not in out_axes or y.shape[out_axes.index(a.id)] != shape[i]:
            return None
        found[i] = out_axes.index(a.id)
    return found


def measure(engine: "Engine", processed: Mapping[str, np.ndarray], raw: Mapping[str, np.ndarray],
            outputs: Optional[Mapping[str, np.ndarray]], budget_fraction: Optional[float] = COST_FRACTION,
            tiling: Optional[Mapping[str, Any]] = None) -> dict[str, dict[str, Any]]:
    """{output id: {"kind", "agreement", "crops", "pixels"}} for every output on the input's grid; {} when none is.
    `tiling`: the prediction's `tile` / `tile_budget`, so that the extra runs tile (and fit in memory) as it did;
    `outputs`: the prediction, or None when it was changed after the network (masked) and must be run again."""
    tiling = dict(tiling or {})
    primary = engine.description.inputs[0]
    shape = processed[primary.id].shape
    if any(x.shape != shape for x in processed.values()):
        return {}
    own = outputs is None or _needs_own_run(engine, shape)
    margin = None if own else crop_margins(engine, shape)
    crops = plan_crops(engine, shape, budget_fraction, margin)
    if crops:
        return measure_crops(engine, shape, crops, lambda index: ({t: x[index] for t, x in processed.items()},
                                                                 {t: x[index] for t, x in raw.items()
                                                                  if x.shape == shape}), tiling,
                             None if margin is None else (lambda tid, index: outputs[tid][index]), margin)
    first = _first_sample(engine, shape)
    one = {t: x[first] for t, x in processed.items()}
    one_raw = {t: x[first] for t, x in raw.items() if x.shape == shape}
    mirrored = engine.run_processed(*_mirrored(engine, one, one_raw), **tiling)
    if own:
        plain = engine.run_processed(one, one_raw, **tiling)
    else:
        plain = {tid: y[_first_sample_of_output(engine, tid, y)] for tid, y in outputs.items()}
    return _compare(engine, 0, [(mirrored, plain, one[primary.id].shape)])


def _needs_own_run(engine: "Engine", shape: tuple[int, ...]) -> bool:
    """Whether the prediction itself cannot stand for the unflipped run of sample 0: its post-processing took
    statistics (of the whole batch, or of the dataset) that one sample alone does not give."""
    batch = next((i for i, a in enumerate(engine.description.inputs[0].axes) if a.type == "batch"), None)
    post_stats = any(op.measures for ops in engine.postprocessing.values() for op in ops)
    return post_stats or (batch is not None and shape[batch] > 1)


def measure_crops(engine: "Engine", shape: tuple[int, ...], crops: list[tuple[slice, ...]],
                  read: Callable[[tuple[slice, ...]], tuple[dict, dict]], tiling: Optional[Mapping[str, Any]] = None,
                  prediction: Optional[Callable[[str, tuple[slice, ...]], Any]] = None,
                  margin: Optional[Mapping[int, int]] = None) -> dict[str, dict[str, Any]]:
    """The measure on crops: `read(index)` gives (processed, raw) arrays of one crop of every input (lazily read
    and normalized like the tiles when the image is streamed). With `prediction(output id, index)` (the
    prediction's output at an index of the output, in model layout) each crop is predicted flipped only and its
    region inside `margin` (crop_margins(); none at the image's ends) compared with the prediction there;
    without, each crop is predicted as it is and flipped."""
    first = _first_sample(engine, shape)
    margin = margin or {}
    tiling = dict(tiling or {})
    found = []
    for index in crops:
        index = tuple(f if f != slice(None) else c for c, f in zip(index, first))
        processed, raw = read(index)
        processed = {t: np.asarray(x, dtype=np.float32) for t, x in processed.items()}
        raw = {t: np.asarray(x, dtype=np.float32) for t, x in raw.items()}
        crop_shape = processed[engine.description.inputs[0].id].shape
        mirrored = engine.run_processed(*_mirrored(engine, processed, raw), **tiling)
        if prediction is None:
            found.append((mirrored, engine.run_processed(processed, raw, **tiling), crop_shape))
            continue
        starts = [s.indices(n)[0] for s, n in zip(index, shape)]
        found.append(_inner_pair(engine, mirrored, prediction, starts, _inner(index, shape, margin), crop_shape))
    return _compare(engine, len(crops), found)


def _inner(index: tuple[slice, ...], shape: tuple[int, ...], margin: Mapping[int, int]) -> tuple[slice, ...]:
    """The crop's compared region, relative to the crop: `margin` in from each side that is not an end of the
    image (there the prediction has no more context than the crop)."""
    out = []
    for i, (s, n) in enumerate(zip(index, shape)):
        lo, hi = s.indices(n)[:2]
        m = margin.get(i, 0)
        out.append(slice(m if lo > 0 else 0, (hi - lo) - (m if hi < n else 0)) if m else slice(0, hi - lo))
    return tuple(out)


def _inner_pair(engine: "Engine", mirrored: Mapping[str, np.ndarray], prediction: Callable, starts: list[int],
                inner: tuple[slice, ...], crop_shape: tuple[int, ...]) -> tuple[dict, dict, tuple[int, ...]]:
    """(the flipped crop's outputs cut to the compared region, as _compare flips them back; the prediction's outputs
    in that region; the region's input shape) for every output on the input's grid."""
    flipped = _flip_axes(engine)
    region = tuple(s.stop - s.start for s in inner)
    cut, plain = {}, {}
    for tid, y in mirrored.items():
        grid = _matching_axes(engine, tid, y, crop_shape)
        if grid is None:
            continue
        in_crop, in_image = [slice(None)] * y.ndim, [slice(None)] * y.ndim
        for i, k in grid.items():
            n, (lo, hi) = crop_shape[i], (inner[i].start, inner[i].stop)
            in_crop[k] = slice(n - hi, n - lo) if i in flipped else slice(lo, hi)  # the mirrored output is flipped
            in_image[k] = slice(starts[i] + lo, starts[i] + hi)
        batch = _first_sample_of_output(engine, tid, y)
        in_image = [b if b != slice(None) else a for a, b in zip(in_image, batch)]
        cut[tid] = y[tuple(in_crop)]
        plain[tid] = np.asarray(prediction(tid, tuple(in_image)))
    return cut, plain, region


def _first_sample(engine: "Engine", shape: tuple[int, ...]) -> tuple[slice, ...]:
    """One sample of a batch: the check is about the model and the kind of data, not about every sample."""
    axes = engine.description.inputs[0].axes
    return tuple(slice(0, 1) if a.type == "batch" else slice(None) for a in axes)


def _first_sample_of_output(engine: "Engine", tid: str, y: np.ndarray) -> tuple[slice, ...]:
    axes = engine.description.output(tid).axes
    return tuple(slice(0, 1) if a.type == "batch" else slice(None) for a in axes[:y.ndim])


def _mirrored(engine: "Engine", processed: Mapping[str, np.ndarray], raw: Mapping[str, np.ndarray]
              ) -> tuple[dict, dict]:
    flipped = _flip_axes(engine)
    return ({t: np.ascontiguousarray(np.flip(x, flipped)) for t, x in processed.items()},
            {t: np.ascontiguousarray(np.flip(x, flipped)) for t, x in raw.items()})


def _compare(engine: "Engine", crops: int, found: list[tuple[Mapping, Mapping, tuple[int, ...]]]
             ) -> dict[str, dict[str, Any]]:
    """Agreement per output on the input's grid between the flipped-back and the plain predictions; `found`:
    (mirrored outputs, plain outputs, the primary input's shape they were predicted from) per crop."""
    flipped = _flip_axes(engine)
    result = {}
    for t in engine.description.outputs:
        pairs, grid = [], None
        for mirrored, plain, shape in found:
            grid = _matching_axes(engine, t.id, plain[t.id], shape) if t.id in plain and t.id in mirrored else None
            if grid is None:
                break
            pairs.append((np.flip(mirrored[t.id], [grid[i] for i in flipped]), plain[t.id]))
        if grid is None or not pairs:
            continue
        y = pairs[0][1]
        kind = A.output_kind(y, segmentation_like(t, engine.description.config, y.dtype))
        result[t.id] = {"kind": kind, "agreement": round(A.pooled(kind, pairs), 4), "crops": crops,
                        "pixels": int(sum(math.prod(a.shape[grid[i]] for i in flipped) for a, _ in pairs))}
    return result


def reference(engine: "Engine") -> tuple[dict[str, dict[str, Any]], str]:
    """(the agreement on data of the training distribution per output id, where it comes from)."""
    recorded = training_conditions(engine.description.config).get("out_of_distribution")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("flip_agreement"), Mapping):
        return dict(recorded["flip_agreement"]), str(recorded.get("measured_on", "recorded at export"))
    if engine not in _references:
        from ..engine.test_tensors import load_test_tensors

        inputs = load_test_tensors(engine, "inputs")
        processed = engine.preprocess(inputs)
        outputs = engine.run_processed(processed, inputs)
        _references[engine] = measure(engine, processed, inputs, outputs, budget_fraction=None)
    return _references[engine], "measured on the package's test tensors"


def check(report: CheckReport, engine: "Engine", processed: Mapping[str, np.ndarray],
          raw: Mapping[str, np.ndarray], outputs: Optional[Mapping[str, np.ndarray]],
          tiling: Optional[Mapping[str, Any]] = None) -> None:
    """The check on an image predicted in memory (the whole image or its crops), tiled like the prediction."""
    _checked(report, engine, lambda: measure(engine, processed, raw, outputs, tiling=tiling))


def check_crops(report: CheckReport, engine: "Engine", shape: tuple[int, ...],
                read: Callable[[tuple[slice, ...]], tuple[dict, dict]],
                tiling: Optional[Mapping[str, Any]] = None,
                prediction: Optional[Callable[[str, tuple[slice, ...]], Any]] = None) -> None:
    """The check on an image streamed tile by tile: `read(index)` gives a crop's (processed, raw) arrays,
    normalized as the tiles were, `prediction(output id, index)` the written output there (model layout); small
    images are read whole (one crop)."""
    whole = [tuple(slice(None) for _ in shape)]
    own = prediction is None or _needs_own_run(engine, shape)
    margin = None if own else crop_margins(engine, shape)
    crops = [_thin(engine, shape, c, margin) for c in plan_crops(engine, shape, margin=margin) or whole]
    _checked(report, engine, lambda: measure_crops(engine, shape, crops, read, tiling,
                                                   None if margin is None else prediction, margin))


def _thin(engine: "Engine", shape: tuple[int, ...], index: tuple[slice, ...],
          margin: Optional[Mapping[int, int]] = None) -> tuple[slice, ...]:
    """A streamed crop keeps at most DEPTH central positions (plus `margin` on each side) along the space axes it
    does not flip (z of a volume), so that reading it stays bounded whatever the volume's depth."""
    axes, flipped = engine.description.inputs[0].axes, _flip_axes(engine)
    out = list(index)
    for i, a in enumerate(axes):
        keep = DEPTH + 2 * (margin or {}).get(i, 0)
        if a.type == "space" and i not in flipped and shape[i] > keep:
            lo = (shape[i] - keep) // 2 // _step(a) * _step(a)
            out[i] = slice(lo, lo + keep)
    return tuple(out)


def _checked(report: CheckReport, engine: "Engine", measured: Callable[[], dict]) -> None:
    """Runs after the prediction and never raises: a failure to measure is a skipped result, the outputs stay."""
    if not report.enabled(NAME):
        return
    reason = why_not(engine)
    if reason:
        report.add(NAME, "skipped", f"{reason}: nothing to compare under a flip")
        return
    before = len(report.results)
    try:
        _report(report, engine, measured())
    except Exception as e:  # MemoryError included: the prediction is done, a check must not lose it
        del report.results[before:]
        report.add(NAME, "skipped", f"the flipped prediction could not be measured ({type(e).__name__}: {e}); the "
                                    "outputs are kept, this check is not run")


def _report(report: CheckReport, engine: "Engine", got: dict[str, dict[str, Any]]) -> None:
    if not got:
        report.add(NAME, "skipped", "no output lies on the input's pixel grid (same axes and sizes), so a flipped "
                                    "prediction cannot be compared with it")
        return
    ref, source = reference(engine)
    for tid, m in got.items():
        r = ref.get(tid)
        value = m["agreement"]
        numbers = {"output": tid, "measure": _MEASURES[m["kind"]], "agreement": value, "crops": m["crops"],
                   "pixels": m["pixels"], "reference_source": source}
        recorded = r.get("agreement") if isinstance(r, Mapping) else None
        if not isinstance(recorded, (int, float)) or isinstance(recorded, bool) or not 0 <= recorded <= 1:
            report.add(NAME, "skipped", f"flipped crops of '{tid}' agree at {value:.3f} ({_MEASURES[m['kind']]}), "
                                        "but there is no reference on training-like data to compare with (or the "
                                        "package records one that is not a number from 0 to 1)", **numbers)
            continue
        expected = float(r["agreement"])
        numbers["reference_agreement"] = expected
        limit = max(0.0, 1.0 - max(DISAGREEMENT_RATIO * (1.0 - expected), (1.0 - expected) + DISAGREEMENT_MARGIN))
        numbers["limit"] = round(limit, 4)
        what = (f"the prediction of '{tid}' and the prediction of the flipped input agree at {value:.3f} "
                f"({_MEASURES[m['kind']]}, {_where(m['crops'])}), against "
                f"{expected:.3f} on training-like data ({source})")
        if value < limit:
            report.add(NAME, "warning", f"{what}: below {limit:.3f}. The model is probably out of its depth on this "
                                        "input (another kind of image than it was trained on): check the result "
                                        "by eye, or use a model trained on data like this", **numbers)
        else:
            report.add(NAME, "ok", f"{what}; limit {limit:.3f}", **numbers)


def _where(crops: int) -> str:
    return "whole image" if crops == 0 else f"{crops} crop{'s' if crops > 1 else ''} of up to {CROP_SIDE} px"


_MEASURES = {"labels": "mean of instance F1 at IoU 0.5 and foreground IoU", "mask": "foreground IoU", "image": "1 - normalized mean error"}
