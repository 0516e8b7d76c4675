"""A package's test tensors and how outputs are compared with them (the spec's tolerance rule): the reference that
`biozoo test` and the batch-independence check both run against."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import PackageError
from ..format.npy import load_npy

if TYPE_CHECKING:
    from .engine import Engine

NO_TILING = 2**62  # a tile budget no input reaches: the reference runs see the whole input at once


def load_test_tensors(engine: "Engine", kind: str) -> dict[str, np.ndarray]:
    tensors = engine.description.inputs if kind == "inputs" else engine.description.outputs
    arrays = {}
    for i, t in enumerate(tensors):
        if t.test_tensor is None:
            if t.optional:
                continue
            raise PackageError(f"{kind}[{i}] ('{t.id}') has no test_tensor; every tensor of a package needs one")
        path = engine.package.file(t.test_tensor, f"{kind}[{i}].test_tensor")
        arrays[t.id] = load_npy(path, f"{kind}[{i}].test_tensor")  # header checked before any allocation
        if arrays[t.id].ndim != len(t.axes):
            raise PackageError(
                f"{kind}[{i}].test_tensor has shape {arrays[t.id].shape}, but '{t.id}' has axes {t.letters}"
            )
    return arrays


def compare(actual: np.ndarray, expected: np.ndarray, tol) -> dict[str, Any]:
    result: dict[str, Any] = {
        "shape": list(actual.shape),
        "expected_shape": list(expected.shape),
        "tolerance": {
            "relative": tol.relative, "absolute": tol.absolute, "mismatched_per_million": tol.mismatched_per_million,
        },
    }
    if actual.shape != expected.shape:
        result.update(passed=False, reason=f"shape {actual.shape} != expected {expected.shape}")
        return result
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    diff = np.abs(a - e)
    mismatched = np.count_nonzero(diff > tol.absolute + tol.relative * np.abs(e))
    nonzero = np.abs(e) > 0
    ppm = mismatched / max(e.size, 1) * 1e6
    result.update(
        max_abs_error=float(diff.max(initial=0.0)),
        max_rel_error=float((diff[nonzero] / np.abs(e[nonzero])).max(initial=0.0)),
        mismatched_elements=int(mismatched),
        mismatched_per_million=float(ppm),
        passed=bool(ppm <= tol.mismatched_per_million),
    )
    return result
