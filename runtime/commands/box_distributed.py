"""`biozoo predict --workers N / --scheduler ADDRESS` for a box-list (detector) package: one Dask task per block.

The driver does what it does for every package (commands/predict_distributed.py): opens the inputs lazily,
computes the whole-image statistics once, runs the input checks, records the run in a journal beside the output.
It plans the detector's blocks (engine/box_blocks.py: one fixed shape, overlapping by the margin); each worker
finds the boxes whose centres lie in its block's core and saves them in the journal as N.npz
(block_worker.run_boxes), so that `--resume` skips the finished blocks; the driver then merges every block's
boxes (NMS across block borders, sort by score) and writes the box files, as the streamed path does with the same
plan: the result is identical to it.
"""
from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..checks.report import CheckReport
from ..engine.blocks import tile_combos
from ..model import Model
from ..ops.stats import DatasetStatistics
from .block_worker import BlockJob, objects_file, run_boxes
from .box_output import image_size, load_boxes, plan_boxes, write_boxes
from .predict_distributed import Cluster, _Phases, _run_blocks, _summary, open_distributed
from .run_journal import Journal, fingerprint, journal_folder
from .streamed_masks import MaskSpec, run_of
from .streamed_masks import fingerprint as mask_fingerprint


def predict_boxes_distributed(model: Model, sample: Mapping[str, Path], axes: Optional[str],
                              targets: Mapping[str, Path], *, workers: Optional[int], scheduler: Optional[str],
                              resume: bool, tile: Optional[Mapping[str, int]], tile_budget: int, device: str,
                              threads: Optional[int] = None, report: CheckReport, pixel_size: Any = None,
                              progress: Optional[Callable[[int, int], None]] = None,
                              level_target: Optional[Mapping[str, float]] = None,
                              output_placement: Callable[[str], Mapping[str, Any]] = lambda tid: {},
                              client: Optional[Cluster] = None,
                              dataset_stats: Optional[DatasetStatistics] = None,
                              masking: Optional[MaskSpec] = None, boxes_back: Any = None
                              ) -> dict[str, Any]:
    """predict_distributed.predict_sample_distributed for a box-list package (the same arguments; the outputs'
    pixel size is unused: box files hold pixel coordinates; with `masking` the blocks see the filled image, as in
    memory, and the boxes are not masked; `boxes_back`: box_output.write_boxes' `back`, for --rescale); returns the
    written box files, the detections and the run's summary."""
    primary = model.description.inputs[0].id
    phases = _Phases()
    with ExitStack() as stack:
        threads, package, client, arrays, caller, stats = open_distributed(
            model, sample, axes, targets, stack, phases, workers=workers, scheduler=scheduler, device=device,
            threads=threads, client=client, level_target=level_target, dataset_stats=dataset_stats,
            masking=masking, report=report, pixel_size=pixel_size)
        shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
        plan, settings = plan_boxes(model, shapes, tile, tile_budget)
        kinds = {kind: "box file" for kind in targets}  # what the fingerprint records of each output
        journal = Journal(journal_folder(targets), {**fingerprint(model, sample, targets, plan, stats, kinds),
                                                    **mask_fingerprint(arrays[primary])}, resume)
        try:
            combos = tile_combos(plan)
            finished = journal.done() if journal.resumed else set()
            todo = [i for i in range(len(combos)) if i not in finished]
            job = BlockJob(uuid.uuid4().hex, package, device, threads,
                           {tid: str(p.resolve()) for tid, p in sample.items()}, caller, level_target, plan, stats,
                           {}, str(journal.folder), masking=run_of(arrays[primary]))
            ready = client()
            phases.mark("waiting for the workers")
            results = _run_blocks(ready, run_boxes, job, todo, len(combos), progress, journal.folder)
            client.blocks_done()
            seconds = phases.mark("blocks")
            parts = [load_boxes(objects_file(str(journal.folder), i)) for i in range(len(combos))]
            done = write_boxes(model, plan, settings, parts, targets, sample[primary], report,
                               image_size(model, shapes[primary]), boxes_back)
            phases.mark("boxes merged, box files written")
        except BaseException:
            if not journal.done():  # nothing to resume: nothing stays behind
                journal.finish()
            raise
        journal.finish()
    phases.mark("cluster closed")
    summary = _summary(results, len(combos), len(finished), seconds, scheduler or f"{workers} local worker(s)")
    summary["driver_seconds"] = phases.seconds
    return {**done, "distributed": summary}


__all__ = ["predict_boxes_distributed"]
