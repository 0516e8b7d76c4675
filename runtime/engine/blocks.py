"""One tile of a lazily read image, end to end: read (padding by index maps, as np.pad would pad the whole image),
preprocess with whole-image statistics, run the session, post-process, cut to the tile's core. Shared by the
streamed path (engine/streaming.py, tiles in a loop) and the distributed one (commands/distributed.py, a tile per
Dask task), so that both compute the same bytes.

`block_plan` is the tile plan of the distributed path: tiles of one fixed shape (GPU workers never re-tune) whose
cores are cut on a regular grid of `core` input pixels, so that every tile writes whole chunks of an output Zarr
chunked by `output_chunks` and no two workers ever write the same chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..format.description import ModelDescription, ParameterizedSize
from ..ops import run_chain
from ..ops.stats import StatsContext
from .tiling import (AxisPlan, Plan, _checked, _follower_index, _follower_ratio, fixed_size_grid, halo_in_input_pixels,
                     plan_tiles)

if TYPE_CHECKING:
    from .engine import Engine

# y/x block cores are multiples of 2^4 where the tile allows: the four halved levels of an OME-Zarr output then lie
# inside each block, so the workers write them (commands/omezarr_output.py)
PYRAMID = 16


@dataclass(frozen=True)
class Piece:
    """What one tile contributes to one output: `value` goes to `output[index]` (model layout) of an output whose
    whole shape is `shape`."""
    tensor_id: str
    shape: tuple[int, ...]
    index: tuple[slice, ...]
    value: np.ndarray


def tile_combos(plan: Plan) -> list[tuple]:
    """Every tile of the plan as (start, cut_lo, cut_hi) per tiled axis, in C order."""
    per_axis = [[(s, lo, hi) for s, lo, hi in zip(p.starts, p.cuts[:-1], p.cuts[1:])] for p in plan.tiled]
    return list(product(*per_axis)) if plan.tiled else [()]


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


def index_maps(engine: "Engine", shapes: Mapping[str, tuple[int, ...]], plan: Plan) -> dict[str, list[np.ndarray]]:
    """Per input and axis, the source index of every position of the padded image the plan covers."""
    maps = {}
    for tid, shape in shapes.items():
        want = plan.input_shapes[tid]
        widths = [max(0, w - h) for h, w in zip(shape, want)]
        maps[tid] = [_index_map(h, w, engine.pad_mode, shape, widths) for h, w in zip(shape, want)]
    return maps


def read_block(x, maps: Sequence[Optional[np.ndarray]]) -> tuple[np.ndarray, Optional[np.ndarray]]:
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


def run_tile(engine: "Engine", arrays: Mapping, maps: Mapping[str, list[np.ndarray]], plan: Plan, combo: tuple,
             stats: Mapping, wanted: Mapping[str, Optional[tuple]], *, description: Optional[ModelDescription] = None,
             post: Optional[Mapping[str, Sequence]] = None, margin: int = 0) -> list[Piece]:
    """The pieces one tile (`combo`, from tile_combos) writes into the outputs; `arrays`: the lazily read inputs
    (model layout), `maps`: index_maps, `stats`: whole-image statistics, `wanted`: output_shapes of the inputs.
    `description` and `post`: the outputs and post-processing to produce (default: the package's; e.g. the
    network's maps and the ops before stardist_postprocessing); `margin`: input pixels past the core on each side
    that the pieces include too (the tile must reach that far past its core plus the halo)."""
    desc = description or engine.description
    post_ops = post if post is not None else engine.postprocessing
    primary = desc.inputs[0]
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
        block, pad = read_block(arrays[t.id], tile_maps)
        raw[t.id] = block
        ctx = StatsContext({t.id: (block, engine.axis_ids(t.id))}).seed(stats)
        x = run_chain(engine.preprocessing[t.id], block, engine.axis_ids(t.id), ctx)
        if pad is not None:  # constant padding pads the preprocessed image with zeros
            x = np.where(pad, np.zeros((), x.dtype), x)
        feeds[t.id] = x
    results = _checked(desc, engine.session.run, feeds)
    ctx_post = StatsContext({tid: (b, engine.axis_ids(tid)) for tid, b in raw.items()}).seed(stats)
    pieces = []
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
            lo, hi = max(lo - margin, 0), hi + margin
            end = min(round(hi * f), wanted[o.id][i]) if wanted.get(o.id) else round(hi * f)
            src[i] = slice(round((lo - start) * f), round((lo - start) * f) + max(0, end - round(lo * f)))
            dst[i] = slice(round(lo * f), max(round(lo * f), end))
        piece = y[tuple(src)]
        if piece.size == 0:
            continue
        piece = run_chain(post_ops.get(o.id, ()), piece, tuple(a.id for a in o.axes), ctx_post)
        pieces.append(Piece(o.id, tuple(full), tuple(dst), piece))
    return pieces


def output_dtypes(engine: "Engine", plan: Plan, stats: Mapping) -> dict[str, np.dtype]:
    """The dtype of every output after post-processing, known before any tile runs (so that outputs can be created
    up front): the post-processing applied to zeros of the graph's output type and one tile's output shape."""
    from .tiling import output_shapes

    desc = engine.description
    tile_in = {}
    for tid, shape in plan.input_shapes.items():
        dims = list(shape)
        for p in plan.tiled:
            i = _follower_index(desc.input(tid), desc.inputs[0], p.axis_id)
            if i is not None:
                dims[i] = p.tile
        tile_in[tid] = tuple(dims)
    shapes = output_shapes(desc, tile_in)
    raw = {tid: (np.zeros([1] * len(s), np.float32), engine.axis_ids(tid)) for tid, s in tile_in.items()}
    dtypes = {}
    for o in desc.outputs:
        shape = shapes.get(o.id) or (1,) * len(o.axes)
        y = np.zeros(shape, engine.session.output_types.get(o.id, np.float32))
        y = run_chain(engine.postprocessing[o.id], y, engine.axis_ids(o.id), StatsContext(raw).seed(stats))
        dtypes[o.id] = np.dtype(np.uint8 if y.dtype == np.bool_ else y.dtype)
    return dtypes


def block_plan(engine: "Engine", shapes: Mapping[str, tuple[int, ...]], tile: Optional[Mapping[str, int]],
               budget: int, *, description: Optional[ModelDescription] = None, margin: int = 0) -> Plan:
    """plan_tiles' tile shape, with tile cores cut every `core` pixels (a multiple of the axis step, and of PYRAMID
    on y and x where the tile allows) so that they line up with output chunks; each tile reaches at least the halo
    past its core (rounded up to the step) on both sides, except at the image's ends. The padded length stays
    plan_tiles' (padding more would change the outputs near the image's end, where the network then sees reflected
    pixels instead of its own zero padding): the tile that reaches it is placed flush with it and keeps the rest of
    the axis as its core. `description`: the outputs the tiles produce (default: the package's); `margin`: input
    pixels the tiles reach past the halo."""
    desc = description or engine.description
    primary = desc.inputs[0]
    base = plan_tiles(desc, shapes, tile, budget)
    axes = []
    for p in base.tiled:
        if len(p.starts) == 1:
            axes.append(p)
            continue
        axis = primary.axis(p.axis_id)
        halo = halo_in_input_pixels(desc, primary, axis) + margin
        align = max(axis.size.step, 1) if isinstance(axis.size, ParameterizedSize) else fixed_size_grid(p.tile, halo)
        reach = math.ceil(halo / align) * align
        core = _core(p.tile - halo - reach, align, PYRAMID if axis.letter in "yx" else 1)
        if core < align:
            raise InputError(f"tile size {p.tile} along '{axis.id}' leaves no core for blocks with the model's halo "
                             f"of {halo} pixels on each side; use a tile of at least {halo + reach + align} "
                             "(--tile)")
        fixed = not isinstance(axis.size, ParameterizedSize)
        starts, cuts, padded = [], [], p.padded
        while True:  # a tile that reaches the padded end takes the rest as its core (the chunks up to the end)
            start = max(0, len(cuts) * core - reach)
            if not fixed and start + p.tile >= padded:
                starts.append(padded - p.tile)
                cuts.append(len(cuts) * core)
                break
            starts.append(start)
            cuts.append(len(cuts) * core)
            if len(cuts) * core >= p.length:  # the core reaches the image's end: the rest is padding
                padded = max(padded, start + p.tile) if fixed else padded
                break
        cuts.append(padded)
        axes.append(AxisPlan(p.axis_id, p.length, padded, p.tile, tuple(starts), tuple(cuts)))
    if any(q.padded != p.padded for p, q in zip(base.tiled, axes)):
        grown = dict(base.input_shapes)
        lengths = {q.axis_id: q.padded for q in axes}
        grown[primary.id] = tuple(lengths.get(a.id, n) for a, n in zip(primary.axes, grown[primary.id]))
        base = Plan(grown, base.tiled)
    return Plan(base.input_shapes, tuple(axes))


def _core(room: int, align: int, multiple: int) -> int:
    """The longest core within `room` pixels that is a multiple of `align`, and of `multiple` too where that
    leaves a core (at most multiple - 1 pixels shorter)."""
    both = align * multiple // math.gcd(align, multiple)
    return room // both * both if room >= both else room // align * align


def output_chunks(engine: "Engine", plan: Plan) -> dict[str, dict[str, int]]:
    """Per output, the chunk length (model-layout axis id -> output pixels) along each axis tiled in more than one
    tile: the core length, so that a tile writes whole chunks."""
    desc = engine.description
    primary = desc.inputs[0]
    chunks: dict[str, dict[str, int]] = {}
    for o in desc.outputs:
        chunks[o.id] = {}
        for p in plan.tiled:
            i = _follower_index(o, primary, p.axis_id)
            if i is not None and len(p.starts) > 1:
                chunks[o.id][o.axes[i].id] = max(1, round((p.cuts[1] - p.cuts[0]) * _follower_ratio(desc, o.axes[i])))
    return chunks


__all__ = ["Piece", "block_plan", "index_maps", "output_chunks", "output_dtypes", "read_block", "run_tile",
           "tile_combos"]
