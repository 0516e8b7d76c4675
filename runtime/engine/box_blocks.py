"""Box-list (detector) packages block by block: an image of any size in bounded memory, in one process or on Dask.

A detector gives one list of boxes per run, which cannot be stitched like an image's tiles. Instead the image is
cut into blocks of one fixed input shape the network accepts (the tile plan of the inputs alone, its cores cut by
blocks.block_plan) that overlap by a ``margin`` of input pixels on each side; each block is read, preprocessed with
the whole image's statistics (the streamed pre-pass) and run, its padding rows dropped, its boxes shifted into
image coordinates and kept when their centre lies in the block's core: each centre lies in one core, so no box is
counted twice, and a box whose centre lies in a core was found with the margin's context around it.

The margin must cover the network's context of a box's centre plus the largest object the detector finds (so
that the box and every box that could suppress it in the network's own NMS were seen as the whole image sees
them): the halo (or half the receptive field) recorded in ``config.biozoo.training`` plus twice the 95th percentile
diameter of the training objects (or the receptive field: a network cannot see larger objects whole); without
any of those DEFAULT_MARGIN. Boxes whose centres lie in different cores can still overlap where the margin was
too small: the merge runs a class-wise greedy NMS over pairs of boxes from *different* blocks only (within a block
the network's own NMS stands), with the package's ``iou_threshold`` (``config.biozoo.<lists' index axis>``, what
biozoo's exporter records) or DEFAULT_IOU, suppressing at IoU > threshold as ONNX NonMaxSuppression does. Then the
boxes are sorted by decreasing score (ties in block order) and clipped to the image, as box_files.to_detections
does in memory: with one block the result is the in-memory prediction's, box for box.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, PackageError
from ..format.description import ParameterizedSize
from .blocks import block_plan, run_tile, tile_combos
from .outputs import DetectionOutputs, lists_config
from .tiling import Plan, fixed_size_grid, plan_tiles

if TYPE_CHECKING:
    from .engine import Engine

DEFAULT_MARGIN = 128  # input pixels when a package records neither its context nor its objects' size
DEFAULT_IOU = 0.5  # biozoo's DetectorWithNMS default (and torchvision's) when a package records no iou_threshold


@dataclass(frozen=True)
class BoxSettings:
    """How a package's box lists are blocked and merged, and where each number comes from (for messages)."""
    margin: int
    margin_source: str
    iou: float
    iou_source: str


def box_settings(description) -> BoxSettings:
    """The margin and the merge's IoU threshold of a box-list package (see the module's docstring)."""
    config = description.config.get("biozoo") if isinstance(description.config, Mapping) else None
    training = config.get("training") if isinstance(config, Mapping) else None
    training = training if isinstance(training, Mapping) else {}
    rf, halo = _number(training.get("receptive_field")), _number(training.get("halo"))
    size = training.get("object_size")
    p95 = _number(size.get("p95_diameter_px")) if isinstance(size, Mapping) else None
    context = math.ceil(halo) if halo else math.ceil(rf / 2) if rf else 0
    largest = math.ceil(2 * p95) if p95 else math.ceil(rf) if rf else 0
    if context or largest:
        names = [n for n, v in (("halo", halo), ("receptive_field", rf), ("object_size", p95)) if v]
        margin, source = context + largest, "config.biozoo.training " + ", ".join(names)
    else:
        margin, source = DEFAULT_MARGIN, "biozoo's default: the package records no receptive field or object size"
    block, where = lists_config(description)
    iou = block.get("iou_threshold")
    if iou is None:
        return BoxSettings(margin, source, DEFAULT_IOU, "biozoo's default")
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
        raise PackageError(f"{where}.iou_threshold is {iou!r}; expected a number in (0, 1]: fix the package's "
                           "config")
    return BoxSettings(margin, source, float(iou), f"{where}.iou_threshold")


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def why_not_box_blocks(engine: "Engine") -> Optional[str]:
    """None when a box-list package can run block by block, else the reason."""
    from .streaming import PAD_MODES

    desc = engine.description
    if engine.network is not desc:
        return "its post-processing changes the output's shape and needs it whole"
    inputs = {t.id for t in desc.inputs}
    if any(m.tensor_id not in inputs for ops in engine.postprocessing.values() for op in ops for m in op.measures):
        return "its post-processing uses statistics of a whole output"
    if engine.pad_mode not in PAD_MODES:
        return f"its pad mode '{engine.pad_mode}' is not one of {PAD_MODES}"
    space = sorted(a.id for a in desc.inputs[0].axes if a.type == "space")
    if space != ["x", "y"]:
        return f"its box lists are blocked along y and x, but its input's space axes are {space}"
    return None


def box_plan(engine: "Engine", shapes: Mapping[str, tuple[int, ...]], tile: Optional[Mapping[str, int]],
             budget: int, settings: BoxSettings) -> Plan:
    """Blocks of one input shape the network accepts (`tile`, else from `budget`, else the model's fixed size)
    whose cores are cut so that each block reaches `settings.margin` past its core (blocks.block_plan)."""
    desc = engine.description
    primary = desc.inputs[0]
    batch = [n for a, n in zip(primary.axes, shapes[primary.id]) if a.type == "batch"]
    if batch and batch[0] > 1:
        raise InputError(f"input '{primary.id}' holds {batch[0]} samples; box lists are predicted one image at a "
                         "time: split the batch into files")
    images = dataclasses.replace(desc, outputs=())  # the inputs alone: box lists run along no image axis
    base = plan_tiles(images, shapes, tile, budget)  # the tiles, before block_plan cuts cores with the margin
    margin = settings.margin
    for p in base.tiled:
        if len(p.starts) == 1:
            continue
        axis = primary.axis(p.axis_id)
        fixed = not isinstance(axis.size, ParameterizedSize)
        align = fixed_size_grid(p.tile, margin) if fixed else max(axis.size.step, 1)
        need = margin + math.ceil(margin / align) * align + align
        if p.tile < need:
            why, fix = (("the model's fixed input size", f"predict images of at most {p.tile} px along '{axis.id}' "
                         "(crop the image)") if fixed else
                        ("--tile", "give a larger --tile") if tile and axis.id in tile else
                        ("what the memory budget allows", "raise --memory, or give --tile"))
            raise InputError(f"blocks of {p.tile} px along '{axis.id}' ({why}) leave no core between the margins "
                             f"of {margin} px that detector blocks overlap by ({settings.margin_source}); blocks of "
                             f"at least {need} px are needed: {fix}")
    return block_plan(engine, shapes, tile, budget, description=images, margin=margin)


@dataclass(frozen=True)
class Boxes:
    """Boxes in image pixels (xyxy [N, 4] float32, not clipped), scores [N] float32, 0-based classes [N] int64;
    `full`: the block returned the package's whole capacity (objects there may be missing)."""
    xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    full: bool = False

    @staticmethod
    def empty() -> "Boxes":
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (np.savez, read back without pickle by from_arrays)."""
        return {"xyxy": self.xyxy, "scores": self.scores, "classes": self.classes, "full": np.asarray(self.full)}

    @staticmethod
    def from_arrays(saved: Mapping[str, np.ndarray]) -> "Boxes":
        return Boxes(np.asarray(saved["xyxy"], np.float32).reshape(-1, 4), np.asarray(saved["scores"], np.float32),
                     np.asarray(saved["classes"], np.int64), bool(saved["full"]))


def _yx(engine: "Engine", plan: Plan, combo: tuple, shape: Sequence[int]) -> dict[str, tuple[int, int, int, int]]:
    """Per y and x: (block origin, core start, core end, image length) in input pixels."""
    primary = engine.description.inputs[0]
    out = {a.id: (0, 0, n, n) for a, n in zip(primary.axes, shape) if a.id in ("y", "x")}
    for p, (start, lo, hi) in zip(plan.tiled, combo):
        if p.axis_id in out:
            out[p.axis_id] = (start, lo, hi, p.length)
    return out


def block_boxes(engine: "Engine", arrays: Mapping, maps: Mapping, plan: Plan, combo: tuple, stats: Mapping,
                wanted: Mapping) -> Boxes:
    """The boxes whose centres lie in the core of block `combo` (plan: box_plan; `maps`: blocks.index_maps;
    `wanted`: tiling.output_shapes of the inputs), in image coordinates."""
    which = engine.box_lists
    got = {p.tensor_id: p.value for p in run_tile(engine, arrays, maps, plan, combo, stats, wanted)}
    xyxy, scores, classes = _rows(engine.description, which, got)
    full = which.capacity is not None and len(scores) >= which.capacity
    where = _yx(engine, plan, combo, arrays[engine.description.inputs[0].id].shape)
    (oy, y_lo, y_hi, height), (ox, x_lo, x_hi, width) = where["y"], where["x"]
    if ox or oy:
        xyxy = xyxy + np.array([ox, oy, ox, oy], np.float32)
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    keep = ((centre[:, 0] >= x_lo) & (centre[:, 0] < min(x_hi, width)) & (centre[:, 1] >= y_lo)
            & (centre[:, 1] < min(y_hi, height)) & (classes >= 0))  # label 0 of torchvision-style lists: background
    return Boxes(xyxy[keep], scores[keep], classes[keep], full)


def _rows(desc, which: DetectionOutputs, got: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyxy, scores, 0-based classes) of one run's lists, padding rows dropped (as box_files.to_detections)."""
    if which.boxes not in got or which.scores not in got:  # an empty data-dependent list
        empty = Boxes.empty()
        return empty.xyxy, empty.scores, empty.classes
    boxes = np.asarray(got[which.boxes])
    channel = next((i for i, a in enumerate(desc.output(which.boxes).axes) if a.type == "channel"), None)
    if channel is not None:
        boxes = np.moveaxis(boxes, channel, -1)
    xyxy = boxes.astype(np.float32).reshape(-1, 4)[:, list(which.corner_order)]
    scores = np.asarray(got[which.scores]).astype(np.float32).reshape(-1)
    classes = (np.asarray(got[which.classes]).reshape(-1).astype(np.int64) - which.label_offset
               if which.classes and which.classes in got else np.zeros(len(scores), np.int64))
    if not len(xyxy) == len(scores) == len(classes):
        raise PackageError(f"detection outputs disagree in length: {len(xyxy)} boxes, {len(scores)} scores, "
                           f"{len(classes)} classes; the package's graph is broken")
    if which.padding is not None:
        real = scores != 0
        xyxy, scores, classes = xyxy[real], scores[real], classes[real]
    return xyxy, scores, classes


def block_cores(engine: "Engine", plan: Plan) -> np.ndarray:
    """Per block (in tile_combos order): its core x_lo, y_lo, x_hi, y_hi in image pixels, infinite at the
    image's edges (nothing lies beyond them)."""
    cores = []
    for combo in tile_combos(plan):
        where = {a: (-np.inf, np.inf) for a in ("y", "x")}
        for p, (_, lo, hi) in zip(plan.tiled, combo):
            if p.axis_id in where:
                where[p.axis_id] = (lo if lo > 0 else -np.inf, hi if hi < p.cuts[-1] else np.inf)
        cores.append([where["x"][0], where["y"][0], where["x"][1], where["y"][1]])
    return np.asarray(cores, np.float64).reshape(-1, 4)


def merge_boxes(parts: Sequence[Boxes], cores: np.ndarray, iou: float, height: int, width: int
                ) -> tuple[Boxes, dict[str, Any]]:
    """Every block's boxes (in block order) as one list: sorted by decreasing score (ties in block order), the
    lower-scored of two same-class boxes from different blocks with IoU > `iou` dropped, clipped to the image.
    Returns it and numbers for the run's summary (suppressed across borders, full blocks, largest box)."""
    parts = list(parts) or [Boxes.empty()]
    xyxy = np.concatenate([p.xyxy for p in parts]).astype(np.float32, copy=False)
    scores = np.concatenate([p.scores for p in parts]).astype(np.float32, copy=False)
    classes = np.concatenate([p.classes for p in parts]).astype(np.int64, copy=False)
    block = np.repeat(np.arange(len(parts)), [len(p.scores) for p in parts])
    order = np.argsort(-scores, kind="stable")
    xyxy, scores, classes, block = xyxy[order], scores[order], classes[order], block[order]
    drop = _suppressed_across_blocks(xyxy, classes, block, cores, iou) if len(parts) > 1 else np.zeros(len(scores),
                                                                                                        bool)
    xyxy, scores, classes = xyxy[~drop], scores[~drop], classes[~drop]
    extent = float(np.abs(xyxy[:, 2:] - xyxy[:, :2]).max()) if len(scores) else 0.0
    clipped = np.clip(xyxy, 0, np.array([width, height, width, height], np.float32))
    info = {"blocks": len(parts), "suppressed_across_blocks": int(drop.sum()),
            "full_blocks": sum(p.full for p in parts), "largest_box_px": round(extent, 1)}
    return Boxes(clipped, scores, classes), info


def _suppressed_across_blocks(xyxy: np.ndarray, classes: np.ndarray, block: np.ndarray, cores: np.ndarray,
                              iou: float) -> np.ndarray:
    """Greedy NMS (rows in decreasing score) over pairs from different blocks: True where a row is dropped.

    Only boxes within the largest box size of their core's edge can overlap a box of another block (the
    other's centre lies outside this core): those are bucketed on a grid of about one box size, and the pairs
    sharing a cell are the candidates."""
    lo = np.minimum(xyxy[:, :2], xyxy[:, 2:]).astype(np.float64)
    hi = np.maximum(xyxy[:, :2], xyxy[:, 2:]).astype(np.float64)
    drop = np.zeros(len(xyxy), bool)
    if not len(xyxy):
        return drop
    size = hi - lo
    reach = float(size.max())
    core = cores[block]
    near = np.flatnonzero(((lo - reach) < core[:, :2]).any(1) | ((hi + reach) > core[:, 2:]).any(1))
    if len(near) < 2:
        return drop
    first, second = _pairs(lo[near], hi[near], max(1.0, float(np.median(size[near].max(1)))))
    first, second = near[first], near[second]  # rows, first < second: the first scores higher (or ties earlier)
    same = (block[first] != block[second]) & (classes[first] == classes[second])
    first, second = first[same], second[same]
    inter = np.clip(np.minimum(hi[first], hi[second]) - np.maximum(lo[first], lo[second]), 0, None).prod(1)
    union = size[first].prod(1) + size[second].prod(1) - inter
    over = inter > iou * np.maximum(union, 1e-12)  # IoU > threshold, as ONNX NonMaxSuppression suppresses
    first, second = first[over], second[over]
    by = np.argsort(first, kind="stable")
    first, second = first[by], second[by]
    starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]]) if len(first) else np.zeros(0, int)
    for a, b in zip(starts, np.r_[starts[1:], len(first)]):  # in decreasing score: a kept row drops its partners
        if not drop[first[a]]:
            drop[second[a:b]] = True
    return drop


def _pairs(lo: np.ndarray, hi: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of boxes that share a grid cell of side `cell` (all overlapping pairs among them)."""
    g_lo = np.floor(lo / cell).astype(np.int64)
    span = np.floor(hi / cell).astype(np.int64) - g_lo + 1
    count = span[:, 0] * span[:, 1]
    owner = np.repeat(np.arange(len(lo)), count)
    k = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    gx = g_lo[owner, 0] + k % span[owner, 0]
    gy = g_lo[owner, 1] + k // span[owner, 0]
    key = (gy - gy.min()) * (int(gx.max() - gx.min()) + 1) + (gx - gx.min())
    by = np.argsort(key, kind="stable")
    key, owner = key[by], owner[by]
    edges = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    firsts, seconds = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if b - a > 1:
            i, j = np.triu_indices(b - a, 1)
            firsts.append(owner[a:b][i])
            seconds.append(owner[a:b][j])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], 1), axis=0)
    return pairs[:, 0], pairs[:, 1]


__all__ = ["DEFAULT_IOU", "DEFAULT_MARGIN", "BoxSettings", "Boxes", "block_boxes", "block_cores", "box_plan",
           "box_settings", "merge_boxes", "why_not_box_blocks"]
