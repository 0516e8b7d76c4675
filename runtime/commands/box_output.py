"""Box files of a box-list (detector) package predicted block by block (engine/box_blocks.py), by the streamed path
and the Dask one alike: the blocks' boxes merged into one list, then the YOLO txt, CSV and JSON files that
box_files.write_prediction writes for an image predicted in memory (same names, same format)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ..checks import input_checks
from ..engine.blocks import index_maps, tile_combos
from ..engine.box_blocks import BoxSettings, Boxes, block_boxes, block_cores, box_plan, box_settings, merge_boxes
from ..engine.streaming import release
from ..engine.tiling import Plan, output_shapes
from ..model import Model
from .box_files import Detections, describe, write_detections

log = logging.getLogger("biozoo")


def plan_boxes(model: Model, shapes: Mapping[str, tuple[int, ...]], tile: Optional[Mapping[str, int]],
               tile_budget: int) -> tuple[Plan, BoxSettings]:
    """The block plan of a box-list package and the settings it was made with (margin, IoU threshold)."""
    settings = box_settings(model.description)
    return box_plan(model.engine, shapes, tile, tile_budget, settings), settings


def write_streamed_boxes(model: Model, arrays: Mapping[str, Any], targets: Mapping[str, Path], stats: Mapping,
                         report, source: Path, *, tile: Optional[Mapping[str, int]], tile_budget: int,
                         progress: Optional[Callable[[int, int], None]] = None,
                         back: Optional["BoxesBack"] = None) -> dict[str, Any]:
    """Predict lazily read `arrays` (model layout) block by block in this process and write the box files;
    `stats`: whole_image_statistics of the same arrays; `back`: see write_boxes. The same blocks and boxes as on
    Dask."""
    engine = model.engine
    shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
    plan, settings = plan_boxes(model, shapes, tile, tile_budget)
    maps, wanted = index_maps(engine, shapes, plan), output_shapes(model.description, shapes)
    combos, parts = tile_combos(plan), []
    for done, combo in enumerate(combos):
        parts.append(block_boxes(engine, arrays, maps, plan, combo, stats, wanted))
        for x in arrays.values():
            release(x)
        if progress:
            progress(done + 1, len(combos))
    primary = shapes[model.description.inputs[0].id]
    return write_boxes(model, plan, settings, parts, targets, source, report, image_size(model, primary), back)


def image_size(model: Model, shape: Sequence[int]) -> tuple[int, int]:
    """(height, width) of the primary input of model-layout `shape`."""
    axes = [a.id for a in model.description.inputs[0].axes]
    return int(shape[axes.index("y")]), int(shape[axes.index("x")])


def write_boxes(model: Model, plan: Plan, settings: BoxSettings, parts: Sequence[Boxes], targets: Mapping[str, Path],
                source: Path, report, size: tuple[int, int], back: Optional["BoxesBack"] = None) -> dict[str, Any]:
    """The blocks' boxes (in tile_combos order) merged and written as `targets` (output_paths.planned_outputs of a
    detection package: yolo, csv, json); `size`: the image's (height, width); `back`: --rescale's mapping onto the
    input's grid, after the merge. Returns the prediction's summary item (written, shapes, axes, detections, and
    `boxes`: how the blocks were merged)."""
    engine, desc = model.engine, model.description
    which = engine.box_lists
    height, width = size
    merged, info = merge_boxes(parts, block_cores(engine, plan), settings.iou, height, width)
    info.update(margin_px=settings.margin, margin_source=settings.margin_source, iou_threshold=settings.iou,
                iou_source=settings.iou_source)
    _warn(info, which.capacity)
    det = Detections(merged.xyxy, merged.scores, merged.classes, which.class_names)
    if back is not None:
        det, (height, width), source = back.scaled(det), back.size, back.source
    yolo = Path(targets["yolo"])
    written = write_detections(yolo.parent, yolo.name.removesuffix(".txt"), det, height, width, str(source))
    lists = {which.boxes: merged.xyxy, which.scores: merged.scores}
    if which.classes:
        lists[which.classes] = merged.classes + which.label_offset
    input_checks.receptive_field(report, engine, lists)  # what the in-memory path reports for box lists
    return {"written": written, "shapes": {tid: list(v.shape) for tid, v in lists.items()},
            "axes": {tid: desc.output(tid).letters for tid in lists}, "detections": describe(det), "boxes": info}


@dataclass(frozen=True)
class BoxesBack:
    """--rescale (commands/rescaled.py): boxes merged on the resampled image's grid, mapped onto the input's: the
    corners scaled by `ratio` (y, x: the input's lengths over the resampled ones) and clipped to `size` (the input's
    height, width), as conditions._boxes_back and box_files.to_detections do in memory; `source`: the input file
    the box files name."""
    size: tuple[int, int]
    ratio: tuple[float, float]
    source: str

    def scaled(self, det: Detections) -> Detections:
        import numpy as np

        (height, width), (y, x) = self.size, self.ratio
        xyxy = det.xyxy * np.array([x, y, x, y], np.float32)
        return Detections(np.clip(xyxy, 0, np.array([width, height, width, height], np.float32)), det.scores,
                          det.classes, det.class_names)


def _warn(info: Mapping[str, Any], capacity: Optional[int]) -> None:
    if info["full_blocks"]:
        log.warning("%d of %d blocks returned the package's full capacity of %s boxes: objects in them may be "
                    "missing; use smaller blocks (--tile)", info["full_blocks"], info["blocks"], capacity)
    if info["blocks"] > 1 and info["largest_box_px"] > info["margin_px"]:
        log.warning("a box of %.0f px was found, but detector blocks overlap by %d px (%s): objects that large may "
                    "be cut or doubled at block borders; predict with larger blocks (--tile), or a package that "
                    "records its objects' size", info["largest_box_px"], info["margin_px"], info["margin_source"])
    if info["suppressed_across_blocks"]:
        log.info("%d box(es) found by two blocks were merged (NMS across block borders)",
                 info["suppressed_across_blocks"])


def load_boxes(path: Path) -> Boxes:
    import numpy as np

    with np.load(path, allow_pickle=False) as saved:
        return Boxes.from_arrays(saved)


__all__ = ["BoxesBack", "image_size", "load_boxes", "plan_boxes", "write_boxes", "write_streamed_boxes"]
