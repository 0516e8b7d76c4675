"""Plan and run a model over an input of any size: pad to a valid shape, split into equal tiles, stitch.

Tiles start at multiples of the axis step (so pooling grids line up with a whole-image run), all tiles have the
SAME shape, and each output tile is cut where its neighbours' halo-wide margins end. Hence a tiled prediction
equals the whole-image prediction whenever the halo covers the receptive field. A fixed-size model's tiles start
on a grid too (see `fixed_size_grid`): its last tile is padded, never shifted off the grid. Padding is added at the
high end of each axis only, with the description's pad mode or 'reflect', and cropped from the outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, PackageError
from ..format.description import Axis, DataDependentSize, ModelDescription, ParameterizedSize, SizeReference, Tensor

DEFAULT_TILE_BUDGET = 2**22  # input elements per tile (spatial x batch x channels): 2048x2048 single channel


@dataclass(frozen=True)
class AxisPlan:
    """How one axis of the primary input is covered: padded length, tile length, tile starts and cuts."""

    axis_id: str
    length: int
    padded: int
    tile: int
    starts: tuple[int, ...]
    cuts: tuple[int, ...]  # len(starts) + 1 boundaries in input pixels: tile k keeps [cuts[k], cuts[k+1])


@dataclass(frozen=True)
class Plan:
    input_shapes: Mapping[str, tuple[int, ...]]  # padded whole-image shape per input
    tiled: tuple[AxisPlan, ...]

    @property
    def n_tiles(self) -> int:
        return math.prod(len(a.starts) for a in self.tiled) if self.tiled else 1


def _ratio(model: ModelDescription, out_axis: Axis, ref: SizeReference) -> float:
    ref_axis = model.tensor(ref.tensor_id).axis(ref.axis_id)
    return ref_axis.scale / out_axis.scale


def resolve_size(model: ModelDescription, axis: Axis, known: Mapping[tuple[str, str], int]) -> Optional[int]:
    """The length of an axis given lengths already known for (tensor_id, axis_id); None when data dependent."""
    size = axis.size
    if isinstance(size, int):
        return size
    if isinstance(size, SizeReference):
        ref = known.get((size.tensor_id, size.axis_id))
        if ref is None:
            return None
        n = ref * _ratio(model, axis, size) + size.offset
        return math.ceil(n) if axis.round_up else int(n)
    return None


def output_shapes(model: ModelDescription, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, Optional[tuple]]:
    """Expected output shapes for the given input shapes (None where an axis is data dependent)."""
    known = {(t.id, a.id): n for t in model.inputs if t.id in input_shapes for a, n in zip(t.axes, input_shapes[t.id])}
    batch = next((n for (tid, aid), n in known.items() if model.input(tid).axis(aid).type == "batch"), 1)
    shapes: dict[str, Optional[tuple]] = {}
    for out in model.outputs:
        dims = []
        for a in out.axes:
            n = batch if a.type == "batch" else resolve_size(model, a, known)
            dims.append(n)
        shapes[out.id] = None if any(d is None for d in dims) else tuple(dims)
    return shapes


def _tileable_axes(model: ModelDescription, primary: Tensor) -> list[Axis]:
    """Space axes of the primary input that every other tensor follows 1:1 (offset 0) or not at all."""
    if any(isinstance(b.size, DataDependentSize) for t in model.outputs for b in t.axes):
        return []  # outputs of data-dependent size (e.g. box lists) cannot be stitched
    axes = [a for a in primary.axes if a.type == "space" and isinstance(a.size, (int, ParameterizedSize))]
    ok = []
    for a in axes:
        refs = [
            b.size
            for t in (*model.inputs, *model.outputs)
            for b in t.axes
            if isinstance(b.size, SizeReference) and (b.size.tensor_id, b.size.axis_id) == (primary.id, a.id)
        ]
        if any(r.offset != 0 for r in refs):
            continue
        others = [t for t in model.inputs if t.id != primary.id]
        if any(a.id in [b.id for b in t.axes] and not isinstance(t.axis(a.id).size, SizeReference) for t in others):
            continue
        if any(_follower_index(t, primary, a.id) is None for t in model.outputs):
            continue  # an output that does not run along this axis (e.g. a fixed-capacity list) cannot be stitched
        ok.append(a)
    return ok


def halo_in_input_pixels(model: ModelDescription, primary: Tensor, axis: Axis) -> int:
    halo = 0
    for out in model.outputs:
        i = _follower_index(out, primary, axis.id)
        if i is not None and out.axes[i].halo:
            halo = max(halo, math.ceil(out.axes[i].halo / _follower_ratio(model, out.axes[i])))
    return halo


def fixed_size_grid(size: int, halo: int) -> int:
    """Where a fixed-size model's tiles may start: multiples of the largest power of two that divides `size` (a
    network that accepts `size` has a total stride dividing it, so its pooling grid lines up), lowered until the
    stride between tiles keeps at least 3/4 of the halo-free tile length (deeper pooling than that is implausible)."""
    free = size - 2 * halo
    grid = size & -size if size > 0 else 1
    while grid > 1 and (free // grid) * grid * 4 < free * 3:
        grid //= 2
    return grid


def plan_tiles(
    model: ModelDescription,
    shapes: Mapping[str, tuple[int, ...]],
    tile: Optional[Mapping[str, int]] = None,
    budget: int = DEFAULT_TILE_BUDGET,
) -> Plan:
    """Decide padded shapes and tiles for inputs of `shapes` (model layout, before padding)."""
    primary = model.inputs[0]
    lists = [t.id for t in model.outputs if any(isinstance(b.size, DataDependentSize) for b in t.axes)
             or not any(b.type == "space" for b in t.axes)]
    if tile and lists:
        raise InputError(f"this model's output(s) {lists} have no space axes (e.g. lists of detected boxes), so they "
                         "cannot be stitched from tiles: it runs on whole images; drop --tile / tile=")
    tileable = {a.id: a for a in _tileable_axes(model, primary)}
    pshape = shapes[primary.id]
    per_tile_other = math.prod(n for a, n in zip(primary.axes, pshape) if a.id not in tileable)
    axis_plans = []
    lengths = {a.id: n for a, n in zip(primary.axes, pshape)}
    tile_len: dict[str, int] = {}
    for a in tileable.values():
        n = lengths[a.id]
        if isinstance(a.size, int):
            tile_len[a.id] = a.size
        else:
            tile_len[a.id] = a.size.valid_at_least(n if not tile or a.id not in tile else tile[a.id])
    if not tile:  # split the axis with the longest tile into one more tile until a tile fits the budget
        pieces = {a.id: 1 for a in tileable.values()}
        while per_tile_other * math.prod(tile_len.values()) > budget:
            param = [a for a in tileable.values() if isinstance(a.size, ParameterizedSize)]
            longest = max(param, key=lambda a: tile_len[a.id], default=None)
            if longest is None:
                break
            smaller = _split_length(longest, lengths[longest.id], pieces[longest.id] + 1,
                                    halo_in_input_pixels(model, primary, longest))
            if smaller >= tile_len[longest.id]:
                break
            pieces[longest.id] += 1
            tile_len[longest.id] = smaller
    for a in tileable.values():
        axis_plans.append(_plan_axis(a, lengths[a.id], tile_len[a.id], halo_in_input_pixels(model, primary, a)))
    padded = {}
    planned = {p.axis_id: p.padded for p in axis_plans}
    known: dict[tuple[str, str], int] = {}
    for t in model.inputs:
        if t.id not in shapes:
            continue
        dims = []
        for a, n in zip(t.axes, shapes[t.id]):
            if t.id == primary.id and a.id in planned:
                n = planned[a.id]
            elif isinstance(a.size, ParameterizedSize):
                n = a.size.valid_at_least(n)
            elif isinstance(a.size, SizeReference):
                n = resolve_size(model, a, known) or n
            dims.append(n)
            known[(t.id, a.id)] = n
        padded[t.id] = tuple(dims)
    return Plan(input_shapes=padded, tiled=tuple(axis_plans))


def _split_length(axis: Axis, length: int, pieces: int, halo: int) -> int:
    """The valid tile length that covers `length` with `pieces` tiles overlapping by their halos (tiles start on
    the axis step, so each may lose up to one step of its core), never below the smallest useful tile: n tiles
    of about (length + 2 halo (n-1)) / n compute little more than the image, where halving the tile would
    compute up to 2x more for a length just above a power of two."""
    step = max(axis.size.step, 1)
    padded = axis.size.valid_at_least(length)
    want = math.ceil((padded + (2 * halo + step) * (pieces - 1)) / pieces)
    floor = axis.size.valid_at_least(2 * halo + step)
    return max(axis.size.valid_at_least(want), floor)


def _plan_axis(axis: Axis, length: int, tile: int, halo: int) -> AxisPlan:
    fixed = not isinstance(axis.size, ParameterizedSize)
    if fixed:  # the last tile is padded up to the fixed size, never shifted off the grid
        padded, align = max(length, tile), fixed_size_grid(tile, halo)
    else:  # valid sizes differ by steps, so the last tile, flush with the padded end, is on the grid too
        padded, align = axis.size.valid_at_least(length), max(axis.size.step, 1)
    tile = min(tile, padded)
    if tile >= padded:
        return AxisPlan(axis.id, length, padded, padded, (0,), (0, padded))
    if tile - 2 * halo < align:
        raise InputError(
            f"tile size {tile} along '{axis.id}' is too small for the model's halo of {halo} pixels on each side; "
            f"use a tile of at least {2 * halo + align} (e.g. a larger --tile)"
        )
    starts, cuts = [0], [0]
    while starts[-1] + tile < padded:
        cut = starts[-1] + tile - halo
        nxt = (cut - halo) // align * align
        starts.append(nxt if fixed else min(nxt, padded - tile))
        cuts.append(cut)
    if fixed:
        padded = starts[-1] + tile
    cuts.append(padded)
    return AxisPlan(axis.id, length, padded, tile, tuple(starts), tuple(cuts))


def pad_to(data: np.ndarray, shape: Sequence[int], mode: str) -> np.ndarray:
    widths = [(0, max(0, want - have)) for have, want in zip(data.shape, shape)]
    if not any(w for _, w in widths):
        return data
    if mode == "reflect" and any(w >= have for (_, w), have in zip(widths, data.shape)):
        mode = "symmetric" if all(have > 1 for have in data.shape) else "edge"
    try:
        return np.pad(data, widths, mode=mode)
    except ValueError:  # reflect/symmetric of a length-1 axis
        return np.pad(data, widths, mode="edge")


Runner = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def run_tiled(
    model: ModelDescription,
    inputs: Mapping[str, np.ndarray],
    run: Runner,
    plan: Plan,
    pad_mode: str = "reflect",
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, np.ndarray]:
    """Run `run` over the plan's tiles and return outputs cropped to the unpadded input extent."""
    padded = {tid: pad_to(x, plan.input_shapes[tid], pad_mode) for tid, x in inputs.items()}
    primary = model.inputs[0]
    if plan.n_tiles == 1:
        return _crop_outputs(model, _checked(model, run, padded), inputs)
    stitched: dict[str, np.ndarray] = {}
    per_axis = [[(s, lo, hi) for s, lo, hi in zip(p.starts, p.cuts[:-1], p.cuts[1:])] for p in plan.tiled]
    for done, combo in enumerate(product(*per_axis)):
        feeds = {}
        for t in model.inputs:
            if t.id not in padded:
                continue
            index = [slice(None)] * len(t.axes)
            for p, (start, _, _) in zip(plan.tiled, combo):
                i = _follower_index(t, primary, p.axis_id)
                if i is not None:
                    index[i] = slice(start, start + p.tile)
            feeds[t.id] = padded[t.id][tuple(index)]
        results = _checked(model, run, feeds)
        for out in model.outputs:
            tile_out = results[out.id]
            if out.id not in stitched:
                shape = list(tile_out.shape)
                for p in plan.tiled:
                    i = _follower_index(out, primary, p.axis_id)
                    if i is not None:
                        shape[i] = round(p.padded * _follower_ratio(model, out.axes[i]))
                stitched[out.id] = np.empty(shape, dtype=tile_out.dtype)
            src = [slice(None)] * tile_out.ndim
            dst = [slice(None)] * tile_out.ndim
            for p, (start, lo, hi) in zip(plan.tiled, combo):
                i = _follower_index(out, primary, p.axis_id)
                if i is None:
                    continue
                f = _follower_ratio(model, out.axes[i])
                src[i] = slice(round((lo - start) * f), round((hi - start) * f))
                dst[i] = slice(round(lo * f), round(hi * f))
            stitched[out.id][tuple(dst)] = tile_out[tuple(src)]
        if progress:
            progress(done + 1, plan.n_tiles)
    return _crop_outputs(model, stitched, inputs)


def _checked(model: ModelDescription, run: Runner, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Run, then hold the graph to the description's promised output shapes."""
    results = run(feeds)
    expected = output_shapes(model, {k: v.shape for k, v in feeds.items()})
    for tid, shape in expected.items():
        if shape is not None and tuple(results[tid].shape) != shape:
            raise PackageError(
                f"for inputs of shapes { {k: v.shape for k, v in feeds.items()} } the ONNX graph returned output "
                f"'{tid}' of shape {results[tid].shape}, but the description promises {shape}: the package's "
                "rdf.yaml sizes (size references, offsets, scales, halo) do not match its weights"
            )
    return results


def _follower_index(t: Tensor, primary: Tensor, axis_id: str) -> Optional[int]:
    """Index of the axis of `t` that follows the primary input's `axis_id`: itself, a size reference to it, or
    (fixed-size models) an output axis with the same id and the same fixed size."""
    p_axis = primary.axis(axis_id)
    for i, a in enumerate(t.axes):
        if t.id == primary.id and a.id == axis_id:
            return i
        if isinstance(a.size, SizeReference) and (a.size.tensor_id, a.size.axis_id) == (primary.id, axis_id):
            return i
        if t is not primary and isinstance(a.size, int) and a.id == axis_id and a.size == p_axis.size:
            return i
    return None


def _follower_ratio(model: ModelDescription, axis: Axis) -> float:
    return _ratio(model, axis, axis.size) if isinstance(axis.size, SizeReference) else 1.0


def _crop_outputs(model: ModelDescription, results, inputs) -> dict[str, np.ndarray]:
    """Cut the padding back off: outputs following the primary input shrink to the unpadded extent."""
    primary = model.inputs[0]
    wanted = output_shapes(model, {tid: x.shape for tid, x in inputs.items()})
    lengths = dict(zip([a.id for a in primary.axes], inputs[primary.id].shape))
    cropped = {}
    for out in model.outputs:
        data = results[out.id]
        index = [slice(None)] * data.ndim
        for i, a in enumerate(out.axes):
            shape = wanted.get(out.id)
            if isinstance(a.size, SizeReference) and shape is not None:
                index[i] = slice(0, shape[i])
            elif isinstance(a.size, int) and a.id in lengths and _follower_index(out, primary, a.id) == i:
                index[i] = slice(0, lengths[a.id])
        cropped[out.id] = data[tuple(index)]
    return cropped
