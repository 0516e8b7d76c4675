"""The engine below the facade: a package's processing chains and its onnxruntime session, run as pre-ops ->
session (padded and tiled) -> post-ops on arrays in the model's layout.

`model.Model` (the public face) builds one per loaded package and delegates to it; the checks (conditions,
testing, batch_independence) are written against it and never import the facade that calls them.
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from ..errors import InputError
from ..format import axes as axes_mod
from ..format.description import ModelDescription, ParameterizedSize
from ..format.package import Package
from ..ops import Op, build_chain, network_description, run_chain
from ..ops.stats import DatasetStatistics, Measure, StatsContext
from .outputs import DetectionOutputs, detection_outputs
from .session import OnnxSession
from .tiling import DEFAULT_TILE_BUDGET, output_shapes, plan_tiles, run_tiled

ArrayInputs = Union[np.ndarray, Mapping[str, np.ndarray]]
AxesArg = Union[None, str, Mapping[str, str]]
Progress = Optional[Callable[[int, int], None]]


class Engine:
    """A package's description, processing chains, and one onnxruntime session reused for every call."""

    def __init__(self, package: Package, description: ModelDescription, session: OnnxSession):
        self.package = package
        self.description = description
        self.session = session
        session.bind([t.id for t in description.inputs], [t.id for t in description.outputs])
        self.preprocessing: dict[str, tuple[Op, ...]] = {
            t.id: build_chain(t, f"inputs[{i}].preprocessing") for i, t in enumerate(description.inputs)
        }
        self.postprocessing: dict[str, tuple[Op, ...]] = {
            t.id: build_chain(t, f"outputs[{i}].postprocessing") for i, t in enumerate(description.outputs)
        }
        # the network's own outputs (before shape-changing post-processing such as StarDist's): what is tiled
        self.network = network_description(description, self.postprocessing)
        biozoo_config = description.config.get("biozoo") or {}
        self.pad_mode = str(biozoo_config.get("pad_mode", "reflect"))

    @property
    def provider(self) -> str:
        return self.session.provider

    @cached_property
    def box_lists(self) -> Optional[DetectionOutputs]:
        """The outputs that are box lists (None: all are images), read from the description on first use."""
        return detection_outputs(self.description)

    def dataset_statistics(self, samples: Iterable[Any], axes: AxesArg = None) -> DatasetStatistics:
        """Accumulate the dataset statistics the preprocessing needs over many samples (one pass); each sample is
        what prepare_inputs takes, or a pair (sample, its axes)."""
        inputs = {t.id for t in self.description.inputs}
        stats = DatasetStatistics(m for m in self.required_measures() if m.tensor_id in inputs)
        for sample in samples:
            sample, sample_axes = sample if isinstance(sample, tuple) else (sample, axes)
            arrays, _ = self.prepare_inputs(sample, sample_axes or None)
            stats.update({tid: (x, self.axis_ids(tid)) for tid, x in arrays.items()})
        return stats

    def prepare_inputs(self, inputs: ArrayInputs, axes: AxesArg) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Check the caller's arrays and bring them into each input tensor's axis order (as float32)."""
        described = self.description.inputs
        if not isinstance(inputs, Mapping):
            required = [t for t in described if not t.optional]
            if len(required) != 1:
                raise InputError(
                    f"this model takes {len(described)} inputs {[t.id for t in described]}; pass a dict by tensor id"
                )
            inputs = {required[0].id: inputs}
        known = {t.id for t in described}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise InputError(f"unknown input tensor id(s) {unknown}; this model's inputs are {sorted(known)}")
        missing = [t.id for t in described if not t.optional and t.id not in inputs]
        if missing:
            raise InputError(f"missing input(s) {missing}; this model needs {[t.id for t in described]}")
        arrays, caller = {}, {}
        for t in described:
            if t.id not in inputs:
                continue
            data = _check_array(inputs[t.id], t.id)
            given = axes.get(t.id) if isinstance(axes, Mapping) else axes
            caller[t.id] = (axes_mod.check_axes_string(given, data.ndim, f"input '{t.id}'") if given else
                            guess_axes(data.shape, t))
            x = axes_mod.to_model_layout(data, caller[t.id], t)
            _check_fixed_sizes(x, t)
            arrays[t.id] = x.astype(np.float32, copy=False)
        return arrays, caller

    def run_model_layout(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        postprocess: bool = True,
    ) -> dict[str, np.ndarray]:
        """Preprocess, run (padded and tiled as needed), postprocess. Arrays are in model layout."""
        processed = self.preprocess(arrays, dataset_stats)
        return self.run_processed(processed, arrays, tile=tile, tile_budget=tile_budget, dataset_stats=dataset_stats,
                                  progress=progress, postprocess=postprocess)

    def run_processed(
        self,
        processed: Mapping[str, np.ndarray],
        raw_arrays: Mapping[str, np.ndarray],
        *,
        tile: Optional[Mapping[str, int]] = None,
        tile_budget: int = DEFAULT_TILE_BUDGET,
        dataset_stats: Optional[DatasetStatistics] = None,
        progress: Progress = None,
        postprocess: bool = True,
        masks: Optional[Mapping[str, np.ndarray]] = None,
    ) -> dict[str, np.ndarray]:
        """Run (padded and tiled) on preprocessed inputs, then postprocess (statistics also see the raw inputs)."""
        raw = {tid: (x, self.axis_ids(tid)) for tid, x in raw_arrays.items()}
        wanted = output_shapes(self.description, {k: v.shape for k, v in processed.items()})
        plan = plan_tiles(self.network, {k: v.shape for k, v in processed.items()}, tile, tile_budget)
        outputs = run_tiled(self.network, processed, self.session.run, plan, self.pad_mode, progress)
        if not postprocess:
            return outputs
        post_stats = StatsContext({**raw, **{tid: (y, self.axis_ids(tid)) for tid, y in outputs.items()}},
                                  dataset_stats, masks)
        final = {
            tid: run_chain(self.postprocessing[tid], y, self.axis_ids(tid), post_stats) for tid, y in outputs.items()
        }
        if self.network is not self.description:  # e.g. labels from a subsampled grid: back to the input's extent
            final = {tid: y[tuple(slice(0, n) for n in wanted[tid])] if wanted.get(tid) else y
                     for tid, y in final.items()}
        return final

    def preprocess(
        self,
        arrays: Mapping[str, np.ndarray],
        dataset_stats: Optional[DatasetStatistics] = None,
        masks: Optional[Mapping[str, np.ndarray]] = None,
    ) -> dict[str, np.ndarray]:
        """Run each input's preprocessing chain (statistics taken from the raw inputs, as the spec says;
        `masks`: bool arrays by tensor id, True = pixel used by the statistics)."""
        stats = StatsContext({tid: (x, self.axis_ids(tid)) for tid, x in arrays.items()}, dataset_stats, masks)
        return {tid: run_chain(self.preprocessing[tid], x, self.axis_ids(tid), stats) for tid, x in arrays.items()}

    def axis_ids(self, tensor_id: str) -> tuple[str, ...]:
        return tuple(a.id for a in self.description.tensor(tensor_id).axes)

    def required_measures(self) -> tuple[Measure, ...]:
        chains = (*self.preprocessing.values(), *self.postprocessing.values())
        return tuple(dict.fromkeys(m for ops in chains for op in ops for m in op.measures))


def _check_array(data: Any, tensor_id: str) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in "biuf":
        raise InputError(f"input '{tensor_id}' has dtype {array.dtype}; expected a numeric image (int or float)")
    if array.size == 0:
        raise InputError(f"input '{tensor_id}' is empty (shape {array.shape}); expected an image with pixels")
    if array.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise InputError(
                f"input '{tensor_id}' contains {bad} NaN/Inf value(s) out of {array.size}; the model needs finite "
                "values: replace them (e.g. np.nan_to_num) or mask them out"
            )
        limit = float(np.finfo(np.float32).max)  # the network runs in float32: larger values would become Inf
        if array.dtype.itemsize > 4 and (array.max() > limit or array.min() < -limit):
            big = np.count_nonzero((array > limit) | (array < -limit))
            raise InputError(
                f"input '{tensor_id}' ({array.dtype}) has {big} value(s) outside the float32 range (|x| > {limit:.4g}, "
                f"largest magnitude {max(abs(float(array.max())), abs(float(array.min()))):.4g}); the model computes "
                "in float32, where they would become Inf: rescale the image (e.g. divide by its maximum) or clip it"
            )
    return array


def guess_axes(shape: tuple[int, ...], tensor) -> str:
    """The axes of an array given without any: the model's letters, minus batch, minus a singleton channel,
    whichever matches the array's ndim (front ends prefill their axes field with it)."""
    letters = tensor.letters
    candidates = [letters, letters.replace("b", "")]
    channel = next((a for a in tensor.axes if a.type == "channel"), None)
    if channel is None or channel.size == 1:
        candidates.append(letters.replace("b", "").replace("c", ""))
    for c in candidates:
        if len(c) == len(shape):
            return c
    raise InputError(
        f"cannot tell the axes of input '{tensor.id}' with shape {tuple(shape)}: the model's axes are '{letters}'; "
        "pass axes explicitly (e.g. axes='yx' or --axes yx)"
    )


def _check_fixed_sizes(x: np.ndarray, tensor) -> None:
    for axis, n in zip(tensor.axes, x.shape):
        if axis.type in ("space",) or axis.size is None:
            continue
        if isinstance(axis.size, int) and n != axis.size and not (axis.type == "batch"):
            names = f" {list(axis.channel_names)}" if axis.channel_names else ""
            raise InputError(
                f"input '{tensor.id}' has {n} along axis '{axis.id}', but the model needs exactly {axis.size}{names}; "
                "check --axes, or select/convert channels to match"
            )
        if isinstance(axis.size, ParameterizedSize) and axis.type != "space" and n < axis.size.min:
            raise InputError(f"input '{tensor.id}' axis '{axis.id}' has {n}; the model needs at least {axis.size.min}")
    batch = next((a for a in tensor.axes if a.type == "batch"), None)
    if batch is not None and batch.size == 1 and x.shape[tensor.axes.index(batch)] != 1:
        raise InputError(
            f"input '{tensor.id}' has a batch of {x.shape[tensor.axes.index(batch)]}, but the model takes one sample "
            "at a time (batch size 1); pass the samples one by one"
        )
