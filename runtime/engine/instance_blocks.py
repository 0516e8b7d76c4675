"""StarDist packages block by block: the network's maps per block, polygon NMS on the candidates a block sees,
the block's objects kept by their centres, then labels rendered for the whole image from every block's objects.

A block's tile reaches `context` input pixels past its core beyond the network's halo, so the maps over the core
plus the context are the whole image's (the halo covers the receptive field). The block runs stardist's greedy NMS
on the candidates of that region and keeps the objects whose centre lies in its core: each centre lies in one
core, so no object is found twice, and every polygon that could suppress or be suppressed by a kept one (centres
closer than two of the longest rays) is among the block's candidates when `context` exceeds that distance (the
run reports the longest ray it kept against the context). Labels are numbered by probability over all blocks
(1 = most probable, as stardist numbers them) and rendered window by window, each with the polygons that reach it,
vertices computed at their image positions: the pixels a render of the whole image gives.

Candidates with equal probability are ordered by image position in every block (stardist orders ties as its
argsort happens to): where no two candidates tie, the labels are bit-identical to the whole-image prediction
(tested); where they tie (probabilities saturated at 1.0), a tied object may be represented by another of its
pixels than the whole image's, and the objects equal a whole-image NMS in position order (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..ops.stardist import StardistPostprocessing, candidates, polygons_to_label, suppress
from .blocks import run_tile
from .tiling import Plan, _follower_index

if TYPE_CHECKING:
    from .engine import Engine

DEFAULT_CONTEXT = 96  # input pixels: two of the longest rays of nuclei at usual pixel sizes, with room to spare


@dataclass(frozen=True)
class StarDistStep:
    """The package's StarDist post-processing of output `tensor_id`: the ops before the StarDist op (on the maps),
    the op, the ops after it (on the labels: elementwise ones without statistics, e.g. ensure_dtype)."""
    tensor_id: str
    before: tuple
    op: StardistPostprocessing
    after: tuple


def stardist_step(engine: "Engine") -> Optional[StarDistStep]:
    """The StarDist step when the package's only output is made by stardist_postprocessing and the ops after it
    need no statistics, else None."""
    desc = engine.description
    if len(desc.outputs) != 1:
        return None
    tid = desc.outputs[0].id
    chain = tuple(engine.postprocessing[tid])
    at = [i for i, op in enumerate(chain) if isinstance(op, StardistPostprocessing)]
    if len(at) != 1 or any(op.measures for op in chain[at[0] + 1:]):
        return None
    return StarDistStep(tid, chain[:at[0]], chain[at[0]], chain[at[0] + 1:])


def why_not_blockwise(engine: "Engine") -> Optional[str]:
    """None when the package can run block by block into lazily written outputs (engine/streaming.py's dense
    packages, StarDist packages here, box lists in engine/box_blocks.py), else the reason."""
    from .streaming import why_not_streamable

    if engine.box_lists is not None:
        from .box_blocks import why_not_box_blocks

        return why_not_box_blocks(engine)
    return None if stardist_step(engine) is not None else why_not_streamable(engine)


@dataclass(frozen=True)
class Objects:
    """Star-convex polygons: centres (N, 2) in full-resolution image pixels, probabilities (N,), rays (N, n_rays)."""
    points: np.ndarray
    scores: np.ndarray
    dist: np.ndarray

    @staticmethod
    def empty(n_rays: int) -> "Objects":
        return Objects(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), np.zeros((0, n_rays), np.float32))

    @staticmethod
    def merged(parts: Sequence["Objects"], n_rays: int) -> "Objects":
        """All parts, most probable first (ties by image position)."""
        parts = [p for p in parts if len(p.scores)] or [Objects.empty(n_rays)]
        points = np.concatenate([p.points for p in parts])
        scores = np.concatenate([p.scores for p in parts])
        dist = np.concatenate([p.dist for p in parts])
        order = np.lexsort((points[:, 1], points[:, 0], -scores.astype(np.float64)))  # ties: as in every block
        return Objects(points[order], scores[order], dist[order])


def block_objects(engine: "Engine", step: StarDistStep, arrays: Mapping, maps: Mapping, plan: Plan, combo: tuple,
                  stats: Mapping, wanted_network: Mapping, context: int) -> Objects:
    """The objects whose centres lie in the core of block `combo` (plan: blocks.block_plan of the network's
    description with margin `context`)."""
    network = engine.network
    out = network.output(step.tensor_id)
    (piece,) = run_tile(engine, arrays, maps, plan, combo, stats, wanted_network, description=network,
                        post={step.tensor_id: step.before}, margin=context)
    axes = [a.id for a in out.axes]
    order = [a for a in ("batch", "y", "x", "channel") if a in axes]
    values = np.transpose(piece.value, [axes.index(a) for a in order]).astype(np.float32, copy=False)
    values = values[0] if "batch" in axes else values
    op, grid = step.op, step.op.grid
    origin = [piece.index[axes.index(a)].start or 0 for a in ("y", "x")]  # raster pixels
    size = [piece.shape[axes.index(a)] for a in ("y", "x")]
    border = _border(op.b, origin, values.shape[:2], size)
    points, scores, dist = candidates(values[..., 0], values[..., 1:], op.prob_threshold, border, grid)
    points = points + np.asarray(origin) * np.asarray(grid)  # image positions: vertices rounded as the whole image's
    # ties in probability (e.g. saturated at 1.0) broken by image position, the same in every block: with the
    # order of argsort over a block's own candidates, two blocks could each keep a tied candidate of one object
    # that lies in the other's core, and both drop it
    order = np.lexsort((points[:, 1], points[:, 0], -scores.astype(np.float64)))
    points, scores, dist = points[order], scores[order], dist[order]
    keep = suppress(points, dist, op.nms_threshold)
    points, scores, dist = points[keep], scores[keep], dist[keep]
    raster = points // np.asarray(grid)
    core = np.ones(len(points), bool)
    primary = network.inputs[0]
    for p, (_, lo, hi) in zip(plan.tiled, combo):
        i = _follower_index(out, primary, p.axis_id)
        if i is None or axes[i] not in ("y", "x"):
            continue
        k, g = ("y", "x").index(axes[i]), grid[("y", "x").index(axes[i])]
        core &= (raster[:, k] >= lo // g) & (raster[:, k] < hi // g)  # neighbours share the cut: floor on both
    return Objects(points[core].astype(np.int64), scores[core], dist[core])


def _border(b, origin: Sequence[int], shape: Sequence[int], size: Sequence[int]):
    """stardist's border `b` (raster pixels from the image's edges, not the block's) in the block's coordinates."""
    if b is None:
        return None
    pairs = ((b, b),) * 2 if np.isscalar(b) else b
    return tuple((max(0, lo - o), max(0, (o + n) - (s - hi))) for (lo, hi), o, n, s in zip(pairs, origin, shape, size))


def render_windows(objects: Objects, shape: Sequence[int], window: int = 2048
                   ) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """(y/x slices, int32 labels) for every window of the full-resolution label image of `shape`; labels are
    the objects' ranks + 1 (objects most probable first), the more probable painted on top."""
    count = len(objects.scores)
    reach = objects.dist.max(1) if count else np.zeros(0)
    lo = objects.points - np.ceil(reach)[:, None] - 1
    hi = objects.points + np.ceil(reach)[:, None] + 1
    for y in range(0, shape[0], window):
        for x in range(0, shape[1], window):
            h, w = min(window, shape[0] - y), min(window, shape[1] - x)
            near = np.flatnonzero((hi[:, 0] >= y) & (lo[:, 0] < y + h) & (hi[:, 1] >= x) & (lo[:, 1] < x + w))
            local = polygons_to_label(objects.dist[near], objects.points[near], (h, w), prob=objects.scores[near],
                                      origin=(y, x))
            labels = np.concatenate([[0], near + 1]).astype(np.int32)[local]  # local k + 1 -> global rank + 1
            yield (slice(y, y + h), slice(x, x + w)), labels


__all__ = ["DEFAULT_CONTEXT", "Objects", "StarDistStep", "block_objects", "render_windows", "stardist_step",
           "why_not_blockwise"]
