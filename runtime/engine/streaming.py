"""Predict an image that is read lazily (np.load(mmap_mode="r"), a zarr array, tifffile's zarr store: wrapped in a
LazyView) into outputs written tile by tile (e.g. np.lib.format.open_memmap), so that memory does not grow with
the image.

Same arithmetic as the in-memory path (Engine.run_processed): the same tile plan, the same whole-image statistics
(ops.stats.streamed_measures: identical values to numpy's on the whole float32 image), the same pad values (the
padding is an index map built by np.pad itself on index vectors), preprocessing applied per tile (every
bioimage.io pre-op is elementwise once its statistics are known), the session per tile, post-ops per tile (only
elementwise ones: `streamable` refuses post-ops that need the whole output, such as stardist_postprocessing, box
lists, or statistics of an output; those keep the whole-image path). Hence the outputs are bit-identical to the
in-memory prediction with the same tiles.
"""
from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..format.description import DataDependentSize
from ..ops import run_chain
from ..ops.stats import DatasetStatistics, StatsContext, streamed_measures
from .tiling import _checked, _follower_index, _follower_ratio, output_shapes, plan_tiles

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
                           dataset_stats: Optional[DatasetStatistics] = None) -> dict:
    """Every statistic the processing needs, computed once per input by streaming over the lazily read arrays
    (model layout); dataset measures come from `dataset_stats` when given."""
    measures = list(engine.required_measures())
    known = {}
    if dataset_stats is not None:
        for m in measures:
            value = dataset_stats.value(m) if m.is_dataset else None
            if value is not None:
                known[m] = value
    tensors = {tid: (x, engine.axis_ids(tid)) for tid, x in arrays.items()}
    known.update(streamed_measures([m for m in measures if m not in known], tensors))
    return known


def _index_map(length: int, padded: int, mode: str, shape: Sequence[int], widths: Sequence[int]) -> np.ndarray:
    """Source index of every padded position along one axis (-1: a constant pad value), as pad_to would pad:
    np.pad is applied to the index vector, with pad_to's own choice of mode for the whole array's shape."""
    index = np.arange(length)
    if padded <= length:
        return index
    if mode == "constant":
        return np.concatenate([index, np.full(padded - length, -1)])
    effective = mode
    if mode == "reflect" and any(w >= have for w, have in zip(widths, shape)):
        effective = "symmetric" if all(have > 1 for have in shape) else "edge"
    try:
        return np.pad(index, (0, padded - length), mode=effective)
    except ValueError:
        return np.pad(index, (0, padded - length), mode="edge")


def _read_block(x: np.ndarray, maps: Sequence[Optional[np.ndarray]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """x at the given source indices per axis (None: whole axis) as float32, and a mask of constant-pad cells."""
    bounds, local, pad = [], [], None
    for n, m in zip(x.shape, maps):
        if m is None:
            bounds.append(slice(None))
            local.append(slice(None))
            continue
        valid = m[m >= 0]
        lo, hi = int(valid.min()), int(valid.max()) + 1
        bounds.append(slice(lo, hi))
        rel = np.where(m >= 0, m - lo, 0)
        local.append(slice(0, hi - lo) if np.array_equal(rel, np.arange(len(m))) else rel)
    block = np.asarray(x[tuple(bounds)], dtype=np.float32)
    fancy = [i for i, s in enumerate(local) if not isinstance(s, slice)]
    if fancy:
        block = block[np.ix_(*[s if not isinstance(s, slice) else np.arange(block.shape[i])[s]
                               for i, s in enumerate(local)])]
    if any(m is not None and (m < 0).any() for m in maps):
        pad = np.zeros(block.shape, dtype=bool)
        for i, m in enumerate(maps):
            if m is not None and (m < 0).any():
                sel = [slice(None)] * block.ndim
                sel[i] = m < 0
                pad[tuple(sel)] = True
    return block, pad


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
                     progress: Optional[Callable[[int, int], None]] = None) -> dict[str, np.ndarray]:
    """Run the package over lazily read `arrays` (model layout, any dtype) tile by tile into the arrays `out`
    creates (model layout); returns them. `stats`: whole_image_statistics of the same arrays."""
    desc = engine.description
    primary = desc.inputs[0]
    shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
    plan = plan_tiles(desc, shapes, tile, tile_budget)
    maps = {}
    for tid, x in arrays.items():
        want = plan.input_shapes[tid]
        widths = [max(0, w - h) for h, w in zip(x.shape, want)]
        maps[tid] = [_index_map(h, w, engine.pad_mode, x.shape, widths) for h, w in zip(x.shape, want)]
    wanted = output_shapes(desc, shapes)
    per_axis = [[(s, lo, hi) for s, lo, hi in zip(p.starts, p.cuts[:-1], p.cuts[1:])] for p in plan.tiled] or [[]]
    written: dict[str, np.ndarray] = {}
    combos = list(product(*per_axis)) if plan.tiled else [()]
    for done, combo in enumerate(combos):
        feeds, raw = {}, {}
        for t in desc.inputs:
            if t.id not in arrays:
                continue
            tile_maps: list[Optional[np.ndarray]] = [m if len(m) != n or not np.array_equal(m, np.arange(n)) else None
                                                     for m, n in zip(maps[t.id], arrays[t.id].shape)]
            for p, (start, _, _) in zip(plan.tiled, combo):
                i = _follower_index(t, primary, p.axis_id)
                if i is not None:
                    tile_maps[i] = maps[t.id][i][start:start + p.tile]
            block, pad = _read_block(arrays[t.id], tile_maps)
            raw[t.id] = block
            ctx = StatsContext({t.id: (block, engine.axis_ids(t.id))}).seed(stats)
            x = run_chain(engine.preprocessing[t.id], block, engine.axis_ids(t.id), ctx)
            if pad is not None:  # constant padding pads the preprocessed image with zeros
                x = np.where(pad, np.zeros((), x.dtype), x)
            feeds[t.id] = x
        results = _checked(desc, engine.session.run, feeds)
        post = StatsContext({tid: (b, engine.axis_ids(tid)) for tid, b in raw.items()}).seed(stats)
        for o in desc.outputs:
            y = results[o.id]
            full = wanted.get(o.id) or tuple(y.shape)
            src = [slice(0, n) for n in full]  # axes not tiled: cropped to the unpadded extent
            dst = [slice(None)] * y.ndim
            for p, (start, lo, hi) in zip(plan.tiled, combo):
                i = _follower_index(o, primary, p.axis_id)
                if i is None:
                    continue
                f = _follower_ratio(desc, o.axes[i])
                end = min(round(hi * f), wanted[o.id][i]) if wanted.get(o.id) else round(hi * f)
                src[i] = slice(round((lo - start) * f), round((lo - start) * f) + max(0, end - round(lo * f)))
                dst[i] = slice(round(lo * f), max(round(lo * f), end))
            piece = y[tuple(src)]
            if piece.size == 0:
                continue
            piece = run_chain(engine.postprocessing[o.id], piece, engine.axis_ids(o.id), post)
            if o.id not in written:
                written[o.id] = out(o.id, tuple(full), piece.dtype)
            written[o.id][tuple(dst)] = piece
            release(written[o.id])
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
