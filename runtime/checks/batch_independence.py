"""Batch independence, for any package: a sample's output must not change when another sample shares its batch.

A network that still runs batch normalization in training mode, or normalizes across the batch axis inside the
graph, gives outputs that depend on whatever else is in the batch: tiled or batched prediction then returns garbage
that looks plausible. We run one valid input (the test tensor, else random data of a valid size) alone and again in
a batch of two with a very different second sample (noise, shifted and scaled), on the preprocessed inputs (so the
runtime's own dataset statistics cannot couple them), and compare sample 0 with the package's reproducibility
tolerance.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from ..engine.test_tensors import NO_TILING, compare, load_test_tensors
from ..engine.tiling import output_shapes, resolve_size
from ..errors import BiozooError
from ..format.description import ParameterizedSize, SizeReference
from .report import CheckResult

if TYPE_CHECKING:
    from ..engine.engine import Engine

NAME = "batch-independence"
CAUSES = ("likely causes: batch normalization exported in training mode (call model.eval() before exporting), or "
          "a normalization across the batch axis inside the graph (e.g. ReduceMean over axis 0). Predictions then "
          "depend on what else is in the batch; re-export the model, or predict one sample at a time")


def _batch_index(tensor) -> Optional[int]:
    return next((i for i, a in enumerate(tensor.axes) if a.type == "batch"), None)


def _random_inputs(engine: "Engine") -> dict[str, np.ndarray]:
    """Random data of a small valid size (min + 2 steps) for packages without test tensors."""
    rng = np.random.default_rng(0)
    desc, known, arrays = engine.description, {}, {}
    for t in desc.inputs:
        dims = []
        for a in t.axes:
            if a.type == "batch":
                n = 1
            elif isinstance(a.size, int):
                n = a.size
            elif isinstance(a.size, ParameterizedSize):
                n = a.size.min + 2 * a.size.step
            elif isinstance(a.size, SizeReference):
                n = resolve_size(desc, a, known) or 1
            else:
                n = 1
            known[(t.id, a.id)] = n
            dims.append(n)
        arrays[t.id] = rng.random(dims, dtype=np.float32)
    return arrays


def check_batch_independence(engine: "Engine", test_inputs: Optional[Mapping[str, np.ndarray]] = None) -> CheckResult:

    desc = engine.description
    for t in desc.inputs:
        b = _batch_index(t)
        if b is None:
            return CheckResult(NAME, "skipped", f"input '{t.id}' has no batch axis: one sample per call")
        if t.axes[b].size is not None and t.axes[b].size == 1:
            return CheckResult(NAME, "skipped", f"input '{t.id}' takes batch size 1: one sample per call")
    source = "the test input"
    if test_inputs is None:
        try:
            test_inputs = load_test_tensors(engine, "inputs")
        except BiozooError:
            test_inputs = None
        if not test_inputs:
            test_inputs, source = _random_inputs(engine), "a random input"
    alone = {tid: np.take(x, [0], axis=_batch_index(desc.input(tid))).astype(np.float32)
             for tid, x in test_inputs.items()}
    rng = np.random.default_rng(12345)
    try:
        processed = engine.preprocess(alone)
        paired = {}
        for tid, x in processed.items():
            mean, std = float(np.mean(x)), float(np.std(x)) or 1.0
            other = rng.normal(mean + 3 * std + 1.0, 4 * std + 1.0, size=x.shape).astype(np.float32)
            paired[tid] = np.concatenate([x, other], axis=_batch_index(desc.input(tid)))
        first = engine.run_processed(processed, alone, tile_budget=NO_TILING, postprocess=False)
        both = engine.run_processed(paired, alone, tile_budget=NO_TILING, postprocess=False)
    except BiozooError as e:
        return CheckResult(NAME, "error", f"the model could not run {source} in a batch of two: {e}")
    results: dict[str, dict[str, Any]] = {}
    for t in desc.outputs:
        b = _batch_index(t)
        if b is None or output_shapes(desc, {k: v.shape for k, v in alone.items()}).get(t.id) is None:
            continue  # no batch axis, or a data-dependent size: nothing to compare sample-wise
        results[t.id] = compare(np.take(both[t.id], [0], axis=b), first[t.id], desc.tolerance_for(t.id))
    numbers: dict[str, Any] = {
        "probe": source,
        "max_abs_difference": {k: r.get("max_abs_error") for k, r in results.items()},
        "mismatched_per_million": {k: r.get("mismatched_per_million") for k, r in results.items()},
    }
    if not results:
        return CheckResult(NAME, "skipped", "no output has a batch axis and a known size to compare", numbers)
    failed = {k: r for k, r in results.items() if not r["passed"]}
    if failed:
        tid, r = next(iter(failed.items()))
        tol = r["tolerance"]
        return CheckResult(
            NAME, "error",
            f"output '{tid}' of a sample changes when another sample is in the same batch ({source} alone vs with a "
            f"different second sample: max abs difference {r.get('max_abs_error', float('nan')):.3g}, "
            f"{r.get('mismatched_per_million', 0):.0f} per million elements beyond the tolerance (abs "
            f"{tol['absolute']:g} + rel {tol['relative']:g}; {tol['mismatched_per_million']:g} per million "
            f"allowed)): the network mixes the samples of a batch; {CAUSES}", numbers)
    return CheckResult(NAME, "ok", f"outputs {sorted(results)} for {source} are the same alone and in a batch of two "
                                   "with a very different sample (within the package's reproducibility tolerance)",
                       numbers)
