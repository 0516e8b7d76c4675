"""`--mask FILE` / `--ignore-value V` on the streamed path and on Dask: conditions.prepare's masked normalization
for an image that is never held whole, with the same values.

The valid mask (checks/masking.py: per pixel of the primary input's batch and space axes, every other axis of
length 1) is read lazily, slab by slab: from the mask file (.npy memory map, TIFF, Zarr, opened like an input) or
from the input itself (pixels equal to V in every channel are invalid). The driver checks it (shape, not empty:
masking's own errors), counts it, and computes the whole-image statistics over the valid pixels only in the same
passes as the fill of masked pixels (the median of the valid ones per sample and channel, np.median's value):
ops/streamed_stats.py with `masks`. Tiles then read the input through `FilledInput` (masked pixels set to the fill
before padding, preprocessing and the network, as masking.fill_masked does to the whole image) and write their
outputs through masked_outputs.MaskedSink (the input's mask mapped onto the output's grid, nearest neighbour as
masking.output_mask, set to 0 or NaN as masking.fill_value_for says). StarDist labels are masked the same way
(in memory the labels are masked after stardist_postprocessing: objects are cut at the mask, not removed). A Dask
worker rebuilds the mask from `MaskedRun` (the spec and the driver's fill values, a few floats) in its BlockJob.

As in memory, a mask that excludes nothing changes nothing (no fill, no output masking), and the flip check
(reliability) predicts its own unmasked crops instead of reading the masked outputs.
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..checks import masking
from ..checks.report import CheckReport
from ..engine.streaming import LazyView, lazy_model_layout, whole_image_statistics
from ..ops.stats import Measure
from ..ops.streamed_stats import STREAM_CHUNK, slabs

NAME = "masked-normalization"


@dataclass(frozen=True)
class MaskSpec:
    """What the user said: a mask file (non-zero = use; an absolute path, read by the workers too) or a value.
    `label`: the user's source when the file is one biozoo wrote (--rescale: the mask at the model's resolution)."""
    path: Optional[str] = None
    ignore_value: Optional[float] = None
    label: Optional[str] = None

    @property
    def source(self) -> str:
        if self.label:
            return self.label
        return "--mask" if self.path is not None else f"--ignore-value {self.ignore_value:g}"


@dataclass(frozen=True)
class MaskedRun:
    """What the driver decided for one sample (pickled to the workers; no pixels): the spec, the fill values
    (float32, the input's shape with its space axes 1; None when nothing is excluded) and the excluded share."""
    spec: MaskSpec
    fill: Optional[np.ndarray]
    excluded: float


def mask_spec(mask: Optional[str], ignore_value: Optional[float]) -> Optional[MaskSpec]:
    if mask is None and ignore_value is None:
        return None
    return MaskSpec(str(Path(mask).resolve()), None) if mask is not None else MaskSpec(None, float(ignore_value))


class _Region:
    """A basic-index view (ints, slices with positive steps) of a lazily read array of shape `root_shape`."""

    def __init__(self, root_shape: Sequence[int], select: Optional[tuple] = None):
        self.root_shape = tuple(int(n) for n in root_shape)
        self.select = select if select is not None else tuple(range(n) for n in self.root_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.select if isinstance(r, range))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any):
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        visible = iter(key)
        select = []
        for r in self.select:
            k = next(visible, slice(None)) if isinstance(r, range) else None
            if k is None:
                select.append(r)
            elif isinstance(k, slice):
                if k.step is not None and k.step <= 0:
                    raise IndexError("a lazily read view takes slices with positive steps only")
                select.append(r[k])
            else:
                select.append(r[int(k)])
        return self._view(tuple(select))

    def _view(self, select: tuple):
        raise NotImplementedError

    def _index(self, whole: Sequence[int] = ()) -> tuple:
        """The base index of this region; the axes in `whole` are taken whole."""
        return tuple(slice(None) if i in whole else slice(r.start, r.start + len(r) * r.step, r.step)
                     if isinstance(r, range) else r for i, r in enumerate(self.select))


class ValidMask(_Region):
    """The valid mask (True = used by the statistics), model layout, read lazily: `kind` "space" (a mask of the
    space axes, `source` shaped like the mask already), "full" (a mask of the input's own shape: any non-zero
    channel) or "value" (`source` is the input: invalid where every channel equals `value`)."""

    def __init__(self, source: Any, kind: str, collapsed: Sequence[int], batch: Optional[int],
                 value: Optional[float] = None, select: Optional[tuple] = None, root: Optional["ValidMask"] = None):
        self.source, self.kind, self.collapsed, self.batch, self.value = source, kind, tuple(collapsed), batch, value
        self.root = root or self
        shape = [1 if kind != "space" and i in self.collapsed else n for i, n in enumerate(source.shape)]
        super().__init__(shape, select)
        self._counts: Optional[list[int]] = None

    def _view(self, select: tuple) -> "ValidMask":
        return ValidMask(self.source, self.kind, self.collapsed, self.batch, self.value, select, self.root)

    def of_block(self, block: np.ndarray, axes: Sequence[int]) -> np.ndarray:
        """Validity (keepdims over the collapsed axes) of a block of the source whose axes are `axes`."""
        if self.kind == "space":
            return block != 0
        at = tuple(j for j, i in enumerate(axes) if i in self.collapsed)
        if self.kind == "full":
            return np.any(block != 0, axis=at, keepdims=True) if at else block != 0
        equal = np.asarray(block, dtype=np.float32) == np.float32(self.value)
        return ~np.all(equal, axis=at, keepdims=True) if at else ~equal

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.collapsed if self.kind != "space" else ()
        block = np.asarray(self.source[self._index(whole)])
        axes = [i for i, r in enumerate(self.select) if isinstance(r, range) or i in whole]
        valid = self.of_block(block, axes)
        drop = tuple(j for j, i in enumerate(axes) if not isinstance(self.select[i], range))
        valid = valid.reshape([n for j, n in enumerate(valid.shape) if j not in drop]) if drop else valid
        return valid if dtype is None else valid.astype(dtype)

    def derive(self, block: np.ndarray) -> Optional[np.ndarray]:
        """A slab's validity from the input's own slab of the same region (streamed_stats._Compacted): --ignore-value
        on an input whose collapsed axes have length 1 only (else the other channels would be needed)."""
        if self.kind != "value" or any(self.source.shape[i] != 1 for i in self.collapsed):
            return None
        return block != np.float32(self.value)

    def sample_counts(self) -> list[int]:
        """Valid pixels per sample of the whole mask (cached on the root: one read of the mask)."""
        root = self.root
        if root._counts is None:
            samples = root.root_shape[root.batch] if root.batch is not None else 1
            root._counts = []
            for b in range(samples):
                region = root[(slice(None),) * root.batch + (b,)] if root.batch is not None else root
                root._counts.append(region._count())
        return root._counts

    def _count(self) -> int:
        return sum(int(np.count_nonzero(np.asarray(self[key]))) for key in slabs(self.shape, STREAM_CHUNK))

    def valid_count(self) -> int:
        """Valid pixels of this region (the root's per-sample counts where it covers whole samples)."""
        whole = all(i == self.batch or n == 1 or (isinstance(r, range) and len(r) == n)
                    for i, (r, n) in enumerate(zip(self.select, self.root_shape)))
        if not whole:
            return self._count()
        counts = self.sample_counts()
        if self.batch is None:
            return counts[0]
        r = self.select[self.batch]
        return sum(counts[b] for b in r) if isinstance(r, range) else counts[r]


def valid_mask(spec: MaskSpec, x: Any, tensor, caller: str, stack: ExitStack) -> ValidMask:
    """The valid mask of `x` (the primary input, a model-layout view) from `spec`; masking's shape errors."""
    collapsed = masking._collapsed(tensor)
    batch = next((i for i, a in enumerate(tensor.axes) if a.type == "batch"), None)
    if spec.path is None:
        return ValidMask(x, "value", collapsed, batch, spec.ignore_value)
    from .imageio import open_image

    data = stack.enter_context(open_image(Path(spec.path))).data
    if masking.mask_layout(data.shape, x.shape, tensor, caller) == "full":
        return ValidMask(lazy_model_layout(data, caller, tensor), "full", collapsed, batch)
    space = masking._space(tensor)
    view = LazyView(data)[tuple(slice(None) if i in space else None for i in range(len(tensor.axes)))]
    return ValidMask(view, "space", collapsed, batch)


class FilledInput(_Region):
    """The primary input read lazily with its masked pixels set to the fill values (masking.fill_masked, region by
    region), as float32 (the in-memory input's dtype); `run`: what the driver decided (report, workers)."""

    def __init__(self, data: Any, valid: ValidMask, run: MaskedRun, space: Sequence[int],
                 select: Optional[tuple] = None):
        self.data, self.valid, self.run, self.space = data, valid, run, tuple(space)
        super().__init__(data.shape, select)

    @property
    def base(self) -> Any:  # engine.streaming.release drops the input's mapped pages through it
        return self.data

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32) if self.run.fill is not None else np.dtype(self.data.dtype)

    def _view(self, select: tuple) -> "FilledInput":
        return FilledInput(self.data, self.valid, self.run, self.space, select)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self.run.fill is None:
            block = np.asarray(self.data[self._index()])
            return block if dtype is None else block.astype(dtype, copy=False)
        collapsed = self.valid.collapsed
        block = np.asarray(self.data[self._index(collapsed)], dtype=np.float32)
        axes = [i for i, r in enumerate(self.select) if isinstance(r, range) or i in collapsed]
        if self.valid.kind == "value":  # from the block itself: it holds every channel
            ok = self.valid.of_block(block, axes)
        else:
            index, shape = self._index(), self.valid.root_shape
            key = tuple(slice(None) if i in collapsed or (shape[i] == 1 and isinstance(r, range))
                        else 0 if shape[i] == 1 else index[i] for i, r in enumerate(self.select))
            ok = np.asarray(self.valid[key])
        fill = self.run.fill[tuple((0 if not isinstance(self.select[i], range) else slice(None)) if i in self.space
                                   else slice(None) if i in collapsed else self._index()[i]
                                   for i in range(len(self.select)))]
        out = np.where(ok, block, fill)
        final = tuple(self._index()[i] if i in collapsed else slice(None) for i in axes)
        out = out[final]
        return out if dtype is None else out.astype(dtype, copy=False)


def fill_measure(tensor) -> Measure:
    """The fill of masked pixels: the median of the valid ones per sample and channel (over the space axes)."""
    return Measure(tensor.id, "quantile", tuple(a.id for a in tensor.axes if a.type == "space"), 0.5, "median")


def checked_mask(spec: MaskSpec, x: Any, tensor, caller: str, stack: ExitStack) -> tuple[ValidMask, float]:
    """The valid mask and the share of excluded pixels, refused (masking.check_not_empty) when a sample has no
    valid pixel."""
    valid = valid_mask(spec, x, tensor, caller, stack)
    counts = valid.sample_counts()
    per_sample = np.zeros([len(counts) if i == valid.batch else 1 for i in range(len(valid.root_shape))], bool)
    per_sample.reshape(-1)[:] = np.asarray(counts) > 0
    masking.check_not_empty(per_sample, tensor, spec.source)
    return valid, 1.0 - sum(counts) / max(1, math.prod(valid.root_shape))


def sample_masks(spec: Optional[MaskSpec], x: Any, tensor, caller: str, stack: ExitStack) -> Optional[dict]:
    """{input id: valid mask} of one sample for the streamed dataset statistics (None: unmasked, or nothing
    excluded, as conditions.prepare decides)."""
    if spec is None:
        return None
    valid, excluded = checked_mask(spec, x, tensor, caller, stack)
    return {tensor.id: valid} if excluded > 0 else None


def masked_statistics(model, arrays: dict, caller: Mapping[str, str], spec: MaskSpec, stack: ExitStack,
                      dataset_stats=None, finite_check: Optional[Callable[[str], None]] = None) -> dict:
    """predict_streamed.open_sample under a mask: the statistics over the valid pixels (and the fill values, in
    the same passes); the primary input in `arrays` is replaced by its FilledInput."""
    t = model.description.inputs[0]
    x = arrays[t.id]
    valid, excluded = checked_mask(spec, x, t, caller.get(t.id, t.letters), stack)
    fill = None
    if excluded > 0:
        extra = fill_measure(t)
        stats = whole_image_statistics(model.engine, arrays, dataset_stats, finite_check, masks={t.id: valid},
                                       extra=[extra])
        fill = np.asarray(stats.pop(extra), dtype=np.float32)
    else:
        stats = whole_image_statistics(model.engine, arrays, dataset_stats, finite_check)
    arrays[t.id] = FilledInput(x, valid, MaskedRun(spec, fill, excluded), masking._space(t))
    return stats


def run_of(x: Any) -> Optional[MaskedRun]:
    """The MaskedRun of a primary input (None: no --mask/--ignore-value)."""
    return x.run if isinstance(x, FilledInput) else None


def masks_outputs(x: Any) -> bool:
    """Whether the outputs of this primary input are masked (then the flip check predicts its own crops)."""
    run = run_of(x)
    return run is not None and run.fill is not None


def fingerprint(x: Any) -> dict:
    """The mask's part of a Dask run's journal fingerprint (nothing without a mask, so other runs keep theirs)."""
    run = run_of(x)
    if run is None:
        return {}
    path = run.spec.path
    stamp = [path, Path(path).stat().st_size, Path(path).stat().st_mtime_ns] if path and Path(path).is_file() \
        else [path]
    return {"mask": [stamp, run.spec.ignore_value, None if run.fill is None else run.fill.ravel().tolist()]}


def report_mask(report: CheckReport, x: Any) -> bool:
    """The masked-normalization entry of a masked input (as conditions._valid_mask words it); False unmasked."""
    run = run_of(x)
    if run is None:
        return False
    source = run.spec.source
    report.add(NAME, "ok", f"{source}: {run.excluded:.1%} of the pixels excluded from the normalization statistics; "
                           "outputs there are background (0) or NaN", source=source,
               excluded_fraction=round(run.excluded, 4))
    return True


def subsampled_valid(x: Any, subsample: Callable, space: list[int]) -> Optional[np.ndarray]:
    """The valid mask at the pixels predict_streamed._subsample reads of the input (None: unmasked)."""
    if not masks_outputs(x):
        return None
    return subsample(x.valid, space, shape=x.shape) > 0


__all__ = ["FilledInput", "MaskSpec", "MaskedRun", "ValidMask", "checked_mask", "fill_measure", "fingerprint",
           "mask_spec", "masked_statistics", "masks_outputs", "report_mask", "run_of", "sample_masks",
           "subsampled_valid", "valid_mask"]
