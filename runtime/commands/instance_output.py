"""StarDist labels written from objects found block by block (engine/instance_blocks.py), by the Dask path and
the streamed one alike: the context blocks look past their cores, and the labels rendered window by window into
an output (an array-like in model layout), the ops after stardist_postprocessing applied per window."""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..engine.instance_blocks import DEFAULT_CONTEXT, Objects, StarDistStep, render_windows
from ..engine.streaming import release
from ..errors import InputError
from ..model import Model
from ..ops import run_chain
from ..ops.stats import StatsContext

log = logging.getLogger("biozoo")


def stardist_context(model: Model) -> int:
    """Input pixels past each block's core whose StarDist candidates the block sees: DEFAULT_CONTEXT, or three
    median training-object diameters when the package records them (larger objects need more)."""
    from ..checks.report import training_conditions

    size = training_conditions(model.description.config).get("object_size")
    diameter = size.get("median_diameter_px") if isinstance(size, Mapping) else None
    return max(DEFAULT_CONTEXT, math.ceil(3 * float(diameter))) if diameter else DEFAULT_CONTEXT


def check_one_sample(model: Model, shapes: Mapping[str, Sequence[int]], source: Any) -> None:
    """StarDist block by block renders one label image: refuse an input that holds a batch of samples."""
    primary = model.description.inputs[0]
    batch = [n for a, n in zip(primary.axes, shapes[primary.id]) if a.type == "batch"]
    if batch and batch[0] > 1:
        raise InputError(f"input '{source}' holds {batch[0]} samples; StarDist block by block (on Dask, or above the "
                         "memory budget) predicts one sample per file: split the batch into files")


def labels_dtype(model: Model, step: StarDistStep) -> np.dtype:
    """The labels' dtype after the ops that follow stardist_postprocessing (int32 from the op itself)."""
    axes = tuple(a.id for a in model.description.output(step.tensor_id).axes)
    return run_chain(step.after, np.zeros((1,) * len(axes), np.int32), axes, StatsContext({})).dtype


def write_labels(model: Model, step: StarDistStep, sink: Any, shape: Sequence[int], objects: Objects,
                 context: int) -> dict:
    """Render `objects` into `sink` (model layout, of `shape`) window by window; returns the object count and the
    longest ray against the context (a warning when objects may reach past it)."""
    axes = [a.id for a in model.description.output(step.tensor_id).axes]
    size = (shape[axes.index("y")], shape[axes.index("x")])
    for (ys, xs), labels in render_windows(objects, size):
        key = tuple(ys if a == "y" else xs if a == "x" else slice(None) for a in axes)
        block = labels if axes.index("y") < axes.index("x") else labels.T
        sides = iter(block.shape)
        block = block.reshape([next(sides) if a in ("y", "x") else 1 for a in axes])
        sink[key] = run_chain(step.after, block, tuple(axes), StatsContext({}))
        release(sink)  # a memory-mapped output's written pages leave the resident set window by window
    longest = float(objects.dist.max()) if len(objects.scores) else 0.0
    if 2 * longest > context:
        log.warning("StarDist objects reach %.0f px from their centres, but blocks see candidates only %d px past "
                    "their cores: objects at block borders may be split or doubled; predict a smaller image "
                    "in memory, or with a package that records its objects' size", longest, context)
    return {"objects": len(objects.scores), "longest_ray_px": round(longest, 1), "context_px": context}
