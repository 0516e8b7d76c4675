"""The out-of-distribution check: does the prediction survive a flip of its input, as well as it does on data of the
training distribution?

A network on data like its training data predicts nearly the same objects for an image and its mirror image; out of
its depth (another modality, texture, density) its prediction turns arbitrary and the two disagree. Measured on the
HeLa-trained StarDist package: instance F1 between the prediction and the prediction of the flipped input, on
256 px crops, 0.93-0.97 on held-out HeLa frames, 0.59-0.92 on the DSB nuclei image (where accuracy@0.5 drops from
0.85 to 0.62). The input checks before it cannot see this: the intensities after normalization look alike.

How: the input is already normalized (with the whole image's statistics); up to `MAX_CROPS` crops, each an interior
plus a margin of context on every side, are flipped along y and x (in 3D: z untouched), predicted, flipped back and
compared with the prediction of the whole image on the interior (agreement.py: instance F1, foreground IoU, or
1 - normalized error). The flipped pixels are at most `COST_FRACTION` of the image's (at least one crop), so the
check costs about that fraction of the network's time. The reference is the same measure on data of the training
distribution: recorded by biozoo's exporter on the held-out test images (``config.biozoo.training.
out_of_distribution``), otherwise measured once per loaded package on the package's own test tensors (which the
model was published to handle). It warns when the disagreement is more than `DISAGREEMENT_RATIO` times the
reference's and at least `DISAGREEMENT_MARGIN` larger; it never raises (the prediction is kept).
"""
from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from . import agreement as A
from .objects import segmentation_like
from .report import CheckReport, training_conditions

if TYPE_CHECKING:
    from ..engine.engine import Engine

NAME = "out-of-distribution"
CROP_SIDE = 256  # interior length per flipped axis
MAX_CROPS = 4
COST_FRACTION = 0.02  # pixels run for the check / image pixels, above MIN_RUN_PIXELS
MIN_RUN_PIXELS = 512 * 512  # up to this the whole image is flipped: fewer pixels hold too few objects to measure
DISAGREEMENT_RATIO = 2.0
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


def plan_crops(engine: "Engine", shape: tuple[int, ...], budget_fraction: Optional[float] = COST_FRACTION
               ) -> list[tuple[slice, ...]]:
    """The crops of the primary input (model layout) to predict flipped, along the image's diagonal. [] means the
    whole image (flipped once, compared with the prediction itself). A crop costs two runs (as it is and flipped),
    the whole image one. `budget_fraction=None`: up to MAX_CROPS crops whatever they cost (test tensors)."""
    primary = engine.description.inputs[0]
    flipped = _flip_axes(engine)
    image = math.prod(shape[i] for i in flipped)
    budget = math.inf if budget_fraction is None else max(budget_fraction * image, MIN_RUN_PIXELS)
    side = {i: min(shape[i], CROP_SIDE) for i in flipped}
    crop = math.prod(side.values())
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
            outputs: Mapping[str, np.ndarray], budget_fraction: Optional[float] = COST_FRACTION
            ) -> dict[str, dict[str, Any]]:
    """{output id: {"kind", "agreement", "crops", "pixels"}} for every output on the input's grid; {} when none is."""
    desc = engine.description
    primary = desc.inputs[0]
    shape = processed[primary.id].shape
    batch = next((i for i, a in enumerate(primary.axes) if a.type == "batch"), None)
    grids = {tid: _matching_axes(engine, tid, y, shape) for tid, y in outputs.items()}
    grids = {tid: g for tid, g in grids.items() if g is not None}
    if not grids or any(x.shape != shape for x in processed.values()):
        return {}
    flipped = _flip_axes(engine)
    first = [slice(None)] * len(shape)
    if batch is not None:
        first[batch] = slice(0, 1)  # one sample: the check is about the model and the kind of data
    crops = plan_crops(engine, shape, budget_fraction)
    pairs: dict[str, list] = {tid: [] for tid in grids}
    for index in crops or [tuple(first)]:
        index = tuple(f if i == batch else c for i, (c, f) in enumerate(zip(index, first)))
        def cut(arrays, flip):
            return {tid: np.ascontiguousarray(np.flip(x[index], flipped) if flip else x[index])
                    for tid, x in arrays.items() if x.shape == shape}
        mirrored = engine.run_processed(cut(processed, True), cut(raw, True))
        plain = engine.run_processed(cut(processed, False), cut(raw, False)) if crops else None
        for tid, axes_map in grids.items():
            back = np.flip(mirrored[tid], [axes_map[i] for i in flipped])
            if plain is not None:
                pairs[tid].append((back, plain[tid]))
                continue
            whole = [slice(None)] * outputs[tid].ndim
            out_batch = next((j for j, a in enumerate(desc.output(tid).axes) if a.type == "batch"), None)
            if out_batch is not None:
                whole[out_batch] = slice(0, 1)
            pairs[tid].append((back, outputs[tid][tuple(whole)]))
    result = {}
    for tid, found in pairs.items():
        t = desc.output(tid)
        kind = A.output_kind(outputs[tid], segmentation_like(t, desc.config, outputs[tid].dtype))
        result[tid] = {"kind": kind, "agreement": round(A.pooled(kind, found), 4), "crops": len(crops),
                       "pixels": int(sum(math.prod(a.shape[grids[tid][i]] for i in flipped) for a, _ in found))}
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
          raw: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Runs after the prediction and never raises: a failure to measure is a skipped result, the outputs stay."""
    if not report.enabled(NAME):
        return
    before = len(report.results)
    try:
        _check(report, engine, processed, raw, outputs)
    except Exception as e:  # MemoryError included: the prediction is done, a check must not lose it
        del report.results[before:]
        report.add(NAME, "skipped", f"the flipped prediction could not be measured ({type(e).__name__}: {e}); the "
                                    "outputs are kept, this check is not run")


def _check(report: CheckReport, engine: "Engine", processed, raw, outputs) -> None:
    reason = why_not(engine)
    if reason:
        report.add(NAME, "skipped", f"{reason}: nothing to compare under a flip")
        return
    got = measure(engine, processed, raw, outputs)
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
        if not isinstance(r, Mapping) or not isinstance(r.get("agreement"), (int, float)):
            report.add(NAME, "skipped", f"flipped crops of '{tid}' agree at {value:.3f} ({_MEASURES[m['kind']]}), "
                                        "but there is no reference on training-like data to compare with", **numbers)
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
