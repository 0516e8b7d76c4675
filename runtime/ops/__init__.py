"""Pre/post-processing ops: one dict from op id to class, and the builders the engine uses.

Each op is built once from its rdf entry (`build_op`, which hands the kwargs to the op's own `from_kwargs`) and
applied to a numpy array whose axes are the tensor's axis ids. The spec's ops live in basic.py; StarDist's
post-processing is an op like any other (stardist.py), and `stardist_instances` is the public face of its NMS,
shared with training so that the thresholds chosen there are the package's.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from ..format.description import ModelDescription, Processing, Tensor
from ..errors import PackageError
from .stats import StatsContext
from .base import Axes, Op
from .basic import (Binarize, Clip, EnsureDtype, FixedZeroMeanUnitVariance, ScaleLinear, ScaleMeanVariance,
                    ScaleRange, Sigmoid, Softmax, ZeroMeanUnitVariance)
from .stardist import StardistPostprocessing
from .stardist import instances as stardist_instances

__all__ = ["OPS", "Axes", "Op", "build_chain", "build_op", "network_description", "run_chain", "stardist_instances"]

OPS: dict[str, type[Op]] = {
    cls.op_id: cls
    for cls in (
        Binarize, Clip, EnsureDtype, FixedZeroMeanUnitVariance, ScaleLinear, ScaleRange, Sigmoid, Softmax,
        ZeroMeanUnitVariance, ScaleMeanVariance, StardistPostprocessing,
    )
}


def build_op(proc: Processing, tensor: Tensor, where: str) -> Op:
    """Build one op from its rdf entry; unknown ids and bad kwargs are PackageErrors naming the entry."""
    cls = OPS.get(proc.id)
    if cls is None:
        raise PackageError(
            f"{where}: processing op '{proc.id}' is not supported by this biozoo version; supported: "
            f"{', '.join(sorted(OPS))}. Upgrade biozoo or use a package without this op"
        )
    return cls.from_kwargs(proc.kwargs, tensor, where)


def build_chain(tensor: Tensor, where: str) -> tuple[Op, ...]:
    return tuple(build_op(p, tensor, f"{where}[{i}]") for i, p in enumerate(tensor.processing))


def network_description(description: ModelDescription, chains: Mapping[str, Sequence[Op]]) -> ModelDescription:
    """What the network itself outputs: outputs whose post-processing changes their shape (e.g.
    stardist_postprocessing: 1 + n_rays channels on a subsampled grid -> one label image) described as before it,
    each op's `network_axes` applied from the last op back. Tiling, stitching and the raw-output checks work on
    this one."""
    outputs = []
    for t in description.outputs:
        axes = t.axes
        for op in reversed(tuple(chains.get(t.id, ()))):
            axes = op.network_axes(axes)
        outputs.append(t if axes == t.axes else dataclasses.replace(t, axes=axes))
    if all(a is b for a, b in zip(outputs, description.outputs)):
        return description
    return dataclasses.replace(description, outputs=tuple(outputs))


def run_chain(ops: Sequence[Op], x: np.ndarray, axes: Axes, stats: StatsContext) -> np.ndarray:
    for op in ops:
        stats.prefetch(op.measures)
        x = op(x, axes, stats)
    return x
