"""Outputs and Dask workers under `--mask` / `--ignore-value` (streamed_masks.py decides the mask and the fill on
the driver): `MaskedSink` sets the input's masked pixels, mapped onto an output's grid, to the output's fill value
block by block (conditions._mask_outputs), and `worker_state` rebuilds a worker's filled input and masked sinks
from the driver's MaskedRun."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..checks import masking
from ..checks.objects import segmentation_like
from ..checks.resample import _coordinates
from .streamed_masks import FilledInput, MaskedRun, ValidMask, masks_outputs, valid_mask


class MaskedSink:
    """Writes model-layout blocks into `inner` with the input's masked pixels, mapped onto the output's grid, set
    to the output's fill value (conditions._mask_outputs, block by block); reads and attributes go to `inner`."""

    def __init__(self, inner: Any, valid: ValidMask, follow: list, shape: Sequence[int], value_for: Callable):
        self.inner, self.valid, self.follow, self.full, self.value_for = inner, valid, follow, tuple(shape), value_for

    @property
    def base(self) -> Any:  # engine.streaming.release walks .base to the memory map
        return self.inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getitem__(self, key: Any) -> Any:
        return self.inner[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        value = np.asarray(value)
        self.inner[key] = masking.apply_output_mask(value, self.mask(key), self.value_for(value.dtype))

    def mask(self, key: Any) -> np.ndarray:
        """The output's valid mask over `key` (slices per output axis), read from the input's mask."""
        key = (tuple(key) if isinstance(key, tuple) else (key,)) + (slice(None),) * len(self.full)
        valid = self.valid.root
        index, picks = [slice(None)] * len(valid.root_shape), {}
        for j, i, space in self.follow:
            n_in, n_out = valid.root_shape[i], self.full[j]
            positions = np.arange(*key[j].indices(n_out))
            if not space or n_in == n_out:
                source = positions if n_in == n_out else np.zeros_like(positions)
            else:  # resample(..., "nearest"): the input pixel covering each output pixel's centre
                source = np.floor(_coordinates(n_in, n_out)[positions] + 0.5).astype(np.intp).clip(0, n_in - 1)
            lo, hi = (int(source.min()), int(source.max()) + 1) if source.size else (0, 0)
            index[i], picks[i] = slice(lo, hi), source - lo
        block = np.asarray(valid[tuple(index)])
        for i, local in picks.items():
            block = np.take(block, local, axis=i)
        order = [i for _, i, _ in self.follow]
        rest = [i for i in range(block.ndim) if i not in order]
        m = block.transpose(order + rest).reshape([block.shape[i] for i in order])
        shape = [1] * len(self.full)
        for k, (j, _, _) in enumerate(self.follow):
            shape[j] = m.shape[k]
        return m.reshape(shape)


def masked_sink(model, x: Any, tid: str, sink: Any, shape: Optional[Sequence[int]] = None) -> Any:
    """`sink` (output `tid`, model layout, of `shape`) behind a MaskedSink when the input's mask applies to it
    (masking.output_mask's rules: the output's space axes follow the input's), else `sink` itself."""
    if not masks_outputs(x):
        return sink
    desc, valid = model.description, x.valid
    source, target = desc.inputs[0], desc.output(tid)
    shape = tuple(shape if shape is not None else sink.shape)
    src = {a.id: i for i, a in enumerate(source.axes) if a.type in ("space", "batch")}
    follow = [(j, src[a.id], a.type == "space") for j, a in enumerate(target.axes)
              if a.type in ("space", "batch") and a.id in src]
    if not any(space for _, _, space in follow) or any(a.type == "space" and a.id not in src for a in target.axes):
        return sink
    if any(valid.root_shape[i] != 1 for i in range(len(valid.root_shape)) if i not in [i for _, i, _ in follow]):
        return sink  # e.g. a batch the output does not have
    if any(not space and valid.root_shape[i] not in (1, shape[j]) for j, i, space in follow):
        return sink
    values: dict = {}

    def value_for(dtype: np.dtype) -> float:
        if dtype not in values:
            values[dtype] = masking.fill_value_for(target, segmentation_like(target, desc.config, dtype), dtype)
        return values[dtype]

    return MaskedSink(sink, valid, follow, shape, value_for)


def masked_sinks(model, x: Any, sinks: Mapping[str, Any]) -> dict:
    return {tid: masked_sink(model, x, tid, sink) for tid, sink in sinks.items()}


def worker_state(model, arrays: dict, caller_axes: Mapping[str, str], run: Optional[MaskedRun],
                 sinks: Mapping[str, Any], stack: ExitStack) -> tuple[dict, Mapping[str, Any]]:
    """A Dask worker's inputs and output writers under the driver's MaskedRun (unchanged without one)."""
    if run is None:
        return arrays, sinks
    t = model.description.inputs[0]
    valid = valid_mask(run.spec, arrays[t.id], t, caller_axes.get(t.id, t.letters), stack)
    arrays = {**arrays, t.id: FilledInput(arrays[t.id], valid, run, masking._space(t))}
    return arrays, masked_sinks(model, arrays[t.id], sinks)


__all__ = ["MaskedSink", "masked_sink", "masked_sinks", "worker_state"]
