"""Checks an export must pass before a package is written: torch/onnxruntime parity and batch independence.

Parity compares the eval-mode torch model with the ONNX graph under onnxruntime (CPU) on the real test input and on
random valid sizes. Batch independence runs one sample alone and next to a very different sample, in torch and in
onnxruntime: any difference means the graph mixes samples (batch norm in training mode, normalization over the
batch), and a user's result would depend on what else was in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from biozoo.runtime import ExportError

PARITY_ABS = 1e-4
PARITY_REL = 1e-3
# Samples that differ this much from the test input must not change its output by more than float noise.
INDEPENDENCE_ABS = 1e-5

Forward = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ParityReport:
    max_abs_error: float
    max_rel_error: float
    shapes: tuple[tuple[int, ...], ...]
    abs_tolerance: float = PARITY_ABS
    rel_tolerance: float = PARITY_REL

    def as_dict(self) -> dict:
        return {"max_abs_error": self.max_abs_error, "max_rel_error": self.max_rel_error,
                "shapes": [list(s) for s in self.shapes], "abs_tolerance": self.abs_tolerance,
                "rel_tolerance": self.rel_tolerance, "passed": True}


def torch_forward(model: torch.nn.Module) -> Forward:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run


def onnx_forward(path: Path) -> Forward:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def check_parity(reference: Forward, candidate: Forward, inputs: Sequence[np.ndarray]) -> ParityReport:
    """Max abs / rel error of ``candidate`` against ``reference`` over ``inputs``; ExportError above tolerance."""
    worst_abs, worst_rel = 0.0, 0.0
    for x in inputs:
        want, got = reference(x), candidate(x)
        if want.shape != got.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} != torch output shape {want.shape} "
                              f"for input {x.shape}; the export traced a fixed size somewhere")
        diff = np.abs(want.astype(np.float64) - got)
        worst_abs = max(worst_abs, float(diff.max()))
        worst_rel = max(worst_rel, float((diff / np.maximum(np.abs(want), 1e-6)).max()))
        bad = diff > PARITY_ABS + PARITY_REL * np.abs(want)
        if bad.any():
            raise ExportError(
                f"torch vs onnxruntime parity failed for input {x.shape}: max abs error {diff.max():.3g}, "
                f"{int(bad.sum())} elements above {PARITY_ABS:g} + {PARITY_REL:g}*|torch|; the graph does not "
                "compute what the model does (unsupported op, randomness, or a size traced as a constant)"
            )
    return ParityReport(worst_abs, worst_rel, tuple(tuple(x.shape) for x in inputs))


def different_sample(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A sample of x's shape with a very different intensity distribution (bright, shifted noise)."""
    rng = np.random.default_rng(seed)
    scale = float(np.abs(x).max()) or 1.0
    return (rng.standard_normal(x.shape) * 3 * scale + 10 * scale).astype(np.float32)


def check_batch_independence(forward: Forward, sample: np.ndarray, where: str) -> float:
    """Max |out(sample alone) - out(sample in a batch with a different sample)|; ExportError if not ~0."""
    alone = forward(sample[None])[0]
    together = forward(np.stack([sample, different_sample(sample)]))[0]
    diff = float(np.abs(alone.astype(np.float64) - together).max())
    tol = INDEPENDENCE_ABS * max(1.0, float(np.abs(alone).max()))
    if not diff <= tol:
        raise ExportError(
            f"{where}: the output of a sample changes by {diff:.3g} (tolerance {tol:.1g}) when another, different "
            "sample is in the same batch. Likely cause: batch normalization in training mode (call model.eval(); "
            "no F.batch_norm(training=True)) or a normalization over the batch axis inside the model. A package "
            "like this gives results that depend on what else was predicted with it; fix the model and re-export"
        )
    return diff
