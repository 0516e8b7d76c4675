"""`biozoo test`: reproduce a package's test tensors, probe other valid sizes and batch 2, check batch independence,
and report the input checks on the test tensors (see report.py).

Tolerances come from config.bioimageio.reproducibility_tolerance (defaults rtol 1e-3, atol 1e-3, 100 mismatched
elements per million): an element mismatches when |out - expected| > atol + rtol * |expected|.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from ..engine.test_tensors import NO_TILING, compare, load_test_tensors
from ..engine.tiling import output_shapes, pad_to, resolve_size
from ..errors import BiozooError
from ..format.description import ParameterizedSize, SizeReference
from .batch_independence import check_batch_independence
from .conditions import check_test_tensors
from .report import CheckReport

if TYPE_CHECKING:
    from ..engine.engine import Engine


def _probe_shapes(engine: "Engine", test_inputs: Mapping[str, np.ndarray]) -> list[dict[str, tuple[int, ...]]]:
    """Two other valid sizes for the parameterized axes, and the test size with batch 2."""
    desc = engine.description
    probes = []
    for k in (1, 2):
        shapes: dict[str, tuple[int, ...]] = {}
        known: dict[tuple[str, str], int] = {}
        changed = False
        for t in desc.inputs:
            if t.id not in test_inputs:
                continue
            dims = []
            for a, n in zip(t.axes, test_inputs[t.id].shape):
                if isinstance(a.size, ParameterizedSize) and a.size.step > 0:
                    n = n + k * a.size.step if k == 1 or n - a.size.step < a.size.min else n - a.size.step
                    changed = True
                elif isinstance(a.size, SizeReference):
                    n = resolve_size(desc, a, known) or n
                known[(t.id, a.id)] = n
                dims.append(n)
            shapes[t.id] = tuple(dims)
        if changed:
            probes.append(shapes)
    batched = {}
    for t in desc.inputs:
        if t.id in test_inputs:
            shape = list(test_inputs[t.id].shape)
            for i, a in enumerate(t.axes):
                if a.type == "batch" and a.size is None:
                    shape[i] = 2
            batched[t.id] = tuple(shape)
    if batched and any(batched[tid] != test_inputs[tid].shape for tid in batched):
        probes.append(batched)
    return probes


def _check_probe(engine: "Engine", test_inputs, shapes) -> dict[str, Any]:
    arrays = {}
    for tid, shape in shapes.items():
        x = test_inputs[tid][tuple(slice(0, n) for n in shape)]
        arrays[tid] = pad_to(x, shape, "reflect")
    check: dict[str, Any] = {"input_shapes": {k: list(v) for k, v in shapes.items()}}
    try:
        outputs = engine.run_model_layout(arrays, tile_budget=NO_TILING, postprocess=False)
    except BiozooError as e:
        check.update(passed=False, reason=str(e))
        return check
    expected = output_shapes(engine.network, shapes)  # raw network outputs (before shape-changing post-ops)
    got = {k: list(v.shape) for k, v in outputs.items()}
    wrong = {k: (got[k], list(s)) for k, s in expected.items() if s is not None and got[k] != list(s)}
    check.update(output_shapes=got, passed=not wrong)
    if wrong:
        check["reason"] = "; ".join(f"'{k}' is {g}, the description says {e}" for k, (g, e) in wrong.items())
    return check


def run_model_test(engine: "Engine", check_sizes: bool = True, skip_checks: Iterable[str] = ()) -> dict[str, Any]:
    """Reproduce the test outputs, probe sizes, and run the checks: batch independence (a failure fails the test)
    and the input checks on the test tensors (reported only; `skip_checks` names checks to leave out)."""
    desc = engine.description
    checks = CheckReport(skip_checks)
    report: dict[str, Any] = {"name": desc.name, "provider": engine.provider, "outputs": {}, "size_checks": []}
    inputs = {tid: x.astype(np.float32) for tid, x in load_test_tensors(engine, "inputs").items()}
    expected = load_test_tensors(engine, "outputs")
    try:
        actual = engine.run_model_layout(inputs, tile_budget=NO_TILING)
    except BiozooError as e:  # the package cannot run its own test input: a failed test, not bad usage
        report.update(status="failed", error=str(e))
        return report
    for t in desc.outputs:
        if t.id in expected:
            report["outputs"][t.id] = compare(actual[t.id], expected[t.id], desc.tolerance_for(t.id))
    if check_sizes:
        for shapes in _probe_shapes(engine, inputs):
            report["size_checks"].append(_check_probe(engine, inputs, shapes))
    if checks.enabled("batch-independence"):
        checks.results.append(check_batch_independence(engine, inputs))
    try:
        check_test_tensors(engine, inputs, actual, checks)
    except BiozooError as e:  # e.g. statistics the test input cannot provide: the reproduction above decides
        report["checks_error"] = str(e)
    checks.disabled()
    report["checks"] = checks.as_list()
    results = [*report["outputs"].values(), *report["size_checks"]]
    independent = all(c.status != "error" for c in checks.results if c.name == "batch-independence")
    report["status"] = "passed" if all(c["passed"] for c in results) and independent else "failed"
    return report
