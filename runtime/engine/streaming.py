"""Predict an image that is read lazily (np.load(mmap_mode="r"), a zarr array, tifffile's zarr store: wrapped in a
LazyView) into outputs written tile by tile (e.g. np.lib.format.open_memmap), so that memory does not grow with
the image.

Same arithmetic as the in-memory path (Engine.run_processed): the same tile plan, the same whole-image statistics
(ops.streamed_stats.streamed_measures: identical values to numpy's on the whole float32 image), the same pad values
(the padding is an index map built by np.pad itself on index vectors), preprocessing applied per tile (every
bioimage.io pre-op is elementwise once its statistics are known), the session per tile, post-ops per tile (only
elementwise ones: `streamable` refuses post-ops that need the whole output, such as stardist_postprocessing, box
lists, or statistics of an output; StarDist and box lists run block by block instead, in engine/instance_blocks.py
and engine/box_blocks.py, statistics of an output keep the whole-image path). Hence the outputs are bit-identical
to the in-memory prediction with the same tiles.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..format.description import DataDependentSize
from ..ops.stats import DatasetStatistics
from ..ops.streamed_stats import NotFinite, streamed_measures
from .blocks import index_maps, run_tile, tile_combos
from .tiling import Plan, output_shapes, plan_tiles

if TYPE_CHECKING:
    from .engine import Engine

PAD_MODES = ("reflect", "symmetric", "edge", "constant")
# out(tensor id, shape in model layout, dtype) -> a writable array in model layout (e.g. a view of a memmap)
OutputFactory = Callable[[str, tuple, np.dtype], np.ndarray]


class LazyView:
    """A view of an array-like read only when converted (np.asarray): an np.memmap, a zarr array, tifffile's
    zarr store. Basic indexing (ints, slices with positive steps, None, Ellipsis), transpose and squeeze compose
    without reading; np.asarray(view) reads the selected block with one basic index into the base."""

    def __init__(self, base: Any, select: Optional[tuple] = None, axes: Optional[tuple] = None):
        self.base = base
        self.select = select if select is not None else tuple(range(n) for n in base.shape)
        self.axes = axes if axes is not None else tuple(range(len(base.shape)))  # base axis per view axis, or None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(1 if b is None else len(self.select[b]) for b in self.axes)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.base.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> "LazyView":
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            named = sum(1 for k in key if k is not None and k is not Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - named) + key[i + 1:]
        select, axes, i = list(self.select), [], 0
        for k in key:
            if k is None:
                axes.append(None)
                continue
            b = self.axes[i]
            i += 1
            if isinstance(k, slice):
                if k.step is not None and k.step <= 0:
                    raise IndexError("a lazily read view takes slices with positive steps only")
                if b is None:
                    if len(range(1)[k]) != 1:
                        raise IndexError("empty selection of a new axis")
                    axes.append(None)
                else:
                    select[b] = select[b][k]
                    axes.append(b)
            else:
                if b is not None:
                    select[b] = select[b][int(k)]
                elif int(k) not in (0, -1):
                    raise IndexError(f"index {k} out of range for an axis of size 1")
        axes.extend(self.axes[i:])
        return LazyView(self.base, tuple(select), tuple(axes))

    def transpose(self, order) -> "LazyView":
        return LazyView(self.base, self.select, tuple(self.axes[o] for o in order))

    def squeeze(self, axis) -> "LazyView":
        axis = (axis,) if isinstance(axis, int) else tuple(axis)
        return self[tuple(0 if i in axis else slice(None) for i in range(self.ndim))]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        key = tuple(slice(r.start, r.stop if r.stop >= 0 else None, r.step) if isinstance(r, range) else r
                    for r in self.select)
        if any(isinstance(r, range) and len(r) == 0 for r in self.select):
            block = np.empty([len(r) for r in self.select if isinstance(r, range)], dtype=self.dtype)
        elif isinstance(self.base, np.memmap):  # copied out, then the mapped pages dropped: RSS stays flat
            block = np.array(self.base[key])
            release(self.base)
        else:
            block = np.asarray(self.base[key])
        kept = [b for b, r in enumerate(self.select) if isinstance(r, range)]
        block = block.transpose([kept.index(b) for b in self.axes if b is not None])
        for i, b in enumerate(self.axes):
            if b is None:
                block = np.expand_dims(block, i)
        return block if dtype is None else block.astype(dtype, copy=False)


def why_not_streamable(engine: "Engine") -> Optional[str]:
    """None when the package can be predicted tile by tile into lazily written outputs, else the reason."""
    desc = engine.description
    if engine.network is not desc:
        return "its post-processing changes the output's shape (e.g. stardist_postprocessing) and needs it whole"
    if engine.box_lists is not None or any(isinstance(a.size, DataDependentSize) for t in desc.outputs
                                           for a in t.axes):
        return "its outputs are lists (e.g. boxes), not images"
    inputs = {t.id for t in desc.inputs}
    for ops in engine.postprocessing.values():
        for op in ops:
            if any(m.tensor_id not in inputs for m in op.measures):
                return "its post-processing uses statistics of a whole output"
    if engine.pad_mode not in PAD_MODES:
        return f"its pad mode '{engine.pad_mode}' is not one of {PAD_MODES}"
    return None


def whole_image_statistics(engine: "Engine", arrays: Mapping[str, np.ndarray],
                           dataset_stats: Optional[DatasetStatistics] = None,
                           finite_check: Optional[Callable[[str], None]] = None,
                           masks: Optional[Mapping[str, Any]] = None, extra: Sequence = ()) -> dict:
    """Every statistic the processing needs, computed once per input by streaming over the lazily read arrays
    (model layout); dataset measures come from `dataset_stats` when given. `finite_check(tid)` raises for an input
    with NaN/Inf: inputs of float32 or narrower whose statistics are streamed are checked in the statistics' first
    pass instead (one read of a huge image less), and `finite_check` runs on the rest and on any found bad.
    `masks`: lazily read valid masks by input id (masked normalization: statistics over the valid pixels only);
    `extra`: measures computed in the same passes besides the processing's (e.g. the fill of masked pixels)."""
    measures = list(dict.fromkeys([*engine.required_measures(), *extra]))
    known = {}
    if dataset_stats is not None:
        for m in measures:
            value = dataset_stats.value(m) if m.is_dataset else None
            if value is not None:
                known[m] = value
    tensors = {tid: (x, engine.axis_ids(tid)) for tid, x in arrays.items()}
    streamed = [m for m in measures if m not in known]
    folded = set() if finite_check is None else foldable_finite_check(arrays, {m.tensor_id for m in streamed})
    for tid in arrays:
        if finite_check is not None and tid not in folded:
            finite_check(tid)
    try:
        known.update(streamed_measures(streamed, tensors, finite=folded, masks=masks))
    except NotFinite as e:
        finite_check(e.tensor_id)  # the user's error, with the count of bad values
        raise InputError(f"input '{e.tensor_id}' contains NaN/Inf values; the model needs finite values: replace "
                         "them (e.g. np.nan_to_num) or mask them out") from None
    return known


def foldable_finite_check(arrays: Mapping[str, Any], measured: set) -> set:
    """The inputs whose NaN/Inf check can ride on a statistics pass: measured there, float32 or narrower (a wider
    float needs the range check of its own pass)."""
    return {tid for tid in measured if tid in arrays and np.dtype(arrays[tid].dtype).kind == "f"
            and np.dtype(arrays[tid].dtype).itemsize <= 4}


def release(array: np.ndarray) -> None:
    """Drop the pages of a memory-mapped array from this process's resident set (written ones flushed first):
    without it every page ever touched stays resident and RSS grows with the image."""
    base = array
    while base is not None and not hasattr(base, "_mmap"):
        base = getattr(base, "base", None)
    mm = getattr(base, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise"):
        return
    import mmap

    try:
        if getattr(base, "mode", "r") != "r" and getattr(base, "mode", "c") != "c":
            mm.flush()
        mm.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError, AttributeError):
        pass


def predict_streamed(engine: "Engine", arrays: Mapping[str, np.ndarray], out: OutputFactory, *,
                     tile: Optional[Mapping[str, int]] = None, tile_budget: int, stats: Mapping,
                     progress: Optional[Callable[[int, int], None]] = None,
                     plan: Optional[Plan] = None) -> dict[str, np.ndarray]:
    """Run the package over lazily read `arrays` (model layout, any dtype) tile by tile into the arrays `out`
    creates (model layout); returns them. `stats`: whole_image_statistics of the same arrays; `plan`: a tile plan
    (e.g. blocks.block_plan) instead of plan_tiles'."""
    desc = engine.description
    shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
    plan = plan if plan is not None else plan_tiles(desc, shapes, tile, tile_budget)
    maps = index_maps(engine, shapes, plan)
    wanted = output_shapes(desc, shapes)
    written: dict[str, np.ndarray] = {}
    combos = tile_combos(plan)
    for done, combo in enumerate(combos):
        for piece in run_tile(engine, arrays, maps, plan, combo, stats, wanted):
            if piece.tensor_id not in written:
                written[piece.tensor_id] = out(piece.tensor_id, piece.shape, piece.value.dtype)
            written[piece.tensor_id][piece.index] = piece.value
            release(written[piece.tensor_id])
        for x in arrays.values():
            release(x)
        if progress:
            progress(done + 1, len(combos))
    return written


__all__ = ["predict_streamed", "whole_image_statistics", "why_not_streamable", "release"]


def lazy_model_layout(data: Any, axes: str, tensor) -> LazyView:
    """`data` (an array-like in caller axes) as a LazyView in the tensor's axis order, never read here
    (axes.to_model_layout makes its result contiguous, which would read a memory-mapped image whole); validated
    as to_model_layout validates."""
    from ..format import axes as axes_mod

    axes = axes_mod.check_axes_string(axes, len(data.shape), f"input '{tensor.id}'")
    probe = np.empty([1 if n == 1 else 2 for n in data.shape], dtype=np.int8)
    axes_mod.to_model_layout(probe, axes, tensor)  # the same checks and messages on a tiny stand-in
    keep = [i for i, letter in enumerate(axes) if letter in tensor.letters]
    view = LazyView(data)
    if len(keep) < view.ndim:
        view = view.squeeze(tuple(i for i in range(view.ndim) if i not in keep))
    letters = "".join(axes[i] for i in keep)
    for letter in tensor.letters:
        if letter not in letters:
            view = view[..., None]
            letters += letter
    return view.transpose([letters.index(letter) for letter in tensor.letters])


def caller_layout(shape: Sequence[int], tensor, caller: Optional[str]) -> tuple[tuple[int, ...], str]:
    """The shape and axes axes.from_model_layout gives an output of model-layout `shape` (no data touched)."""
    from ..format import axes as axes_mod

    stand_in = np.lib.stride_tricks.as_strided(np.zeros(1, np.int8), shape=tuple(shape), strides=(0,) * len(shape))
    view, order = axes_mod.from_model_layout(stand_in, tensor, caller)
    return tuple(view.shape), order


def model_view(target: Any, order: str, tensor, shape: Sequence[int]) -> Any:
    """Something to write output tiles to in model layout (`view[key] = tile`, `view[key]` reads back) for
    `target`, an array-like of the caller's layout `order` (see caller_layout) and model-layout `shape`: a numpy
    view when `target` is an ndarray (e.g. a memmap), else a CallerSink."""
    if not isinstance(target, np.ndarray):
        return CallerSink(target, order, tensor, shape)
    kept = [letter for letter in tensor.letters if letter in order]
    view = target.transpose([order.index(letter) for letter in kept])
    for i, letter in enumerate(tensor.letters):
        if letter not in order:
            view = np.expand_dims(view, i)
    return view


class CallerSink:
    """Model-layout writes into an array-like in the caller's layout (e.g. an OME-Zarr or TIFF output)."""

    def __init__(self, target: Any, order: str, tensor, shape: Sequence[int]):
        self.target, self.order, self.letters, self.shape = target, order, tensor.letters, tuple(shape)
        self.kept = [letter for letter in self.letters if letter in order]
        self.dropped = tuple(i for i, letter in enumerate(self.letters) if letter not in order)

    @property
    def base(self) -> Any:  # release() walks .base to a memory map (a TIFF or .npy output's) to drop its pages
        return self.target

    def _key(self, key: Any) -> tuple:
        key = (tuple(key) if isinstance(key, tuple) else (key,)) + (slice(None),) * len(self.letters)
        return tuple(key[self.letters.index(letter)] for letter in self.order)

    def __setitem__(self, key: Any, value: Any) -> None:
        value = np.asarray(value)
        value = value.squeeze(axis=self.dropped) if self.dropped else value
        self.target[self._key(key)] = value.transpose([self.kept.index(letter) for letter in self.order])

    def __getitem__(self, key: Any) -> np.ndarray:
        block = np.asarray(self.target[self._key(key)]).transpose([self.order.index(k) for k in self.kept])
        for i in self.dropped:
            block = np.expand_dims(block, i)
        return block
