"""What a Dask worker runs for `biozoo predict --workers/--scheduler`: one block (a tile of blocks.block_plan) per
task, read from the input files, predicted, written straight into the outputs' temporaries, then marked done in
the run's journal (so that a resumed run skips it).

A worker process loads the package once per run (hashes checked there too: a worker trusts no more than the
driver) and keeps its onnxruntime session, opened inputs and reopened outputs for the following blocks. A block
written twice (its worker was killed after writing, before reporting) writes the same bytes: tasks are idempotent.
"""
from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..engine.blocks import index_maps, run_tile, tile_combos
from ..engine.memory import peak_resident_bytes
from ..engine.streaming import lazy_model_layout, release
from ..engine.tiling import Plan, output_shapes
from .lazyio import open_image
from .masked_outputs import worker_state

DONE = "done"


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for any block of one run (pickled to the workers; small: no pixels)."""
    key: str  # unique per run: a worker's cached state belongs to one run
    package: str
    device: str
    threads: int  # onnxruntime intra-op threads per worker (0: onnxruntime's default)
    inputs: Mapping[str, str]  # input id -> file
    caller_axes: Mapping[str, str]
    level_target: Optional[Mapping[str, float]]
    plan: Plan
    stats: Mapping  # whole-image statistics from the driver's pre-pass
    sinks: Mapping[str, Any]  # output id -> streaming.CallerSink around a picklable output (lazyio.create_output)
    journal: str  # folder of the run's journal: one file per finished block under done/
    context: int = 0  # StarDist packages: input pixels of candidates past each core (instance_blocks.py)
    masking: Any = None  # streamed_masks.MaskedRun: --mask/--ignore-value and the driver's fill values


@dataclass
class _State:
    model: Any
    arrays: dict
    maps: dict
    wanted: dict
    combos: list
    sinks: Mapping[str, Any]
    stack: ExitStack = field(default_factory=ExitStack)


_STATES: dict[str, _State] = {}


def _state(job: BlockJob) -> _State:
    state = _STATES.get(job.key)
    if state is not None:
        return state
    for old in list(_STATES):  # one run at a time per worker: the previous run's files are let go
        _STATES.pop(old).stack.close()
    model = preload(job.package, job.device, job.threads)
    stack = ExitStack()
    arrays = {}
    for tid, path in job.inputs.items():
        image = stack.enter_context(open_image(Path(path), job.level_target))
        arrays[tid] = lazy_model_layout(image.data, job.caller_axes[tid], model.description.input(tid))
    arrays, sinks = worker_state(model, arrays, job.caller_axes, job.masking, job.sinks, stack)
    shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
    described = model.engine.network if job.context else model.description  # StarDist: the network's maps
    state = _State(model, arrays, index_maps(model.engine, shapes, job.plan), output_shapes(described, shapes),
                   tile_combos(job.plan), sinks, stack)
    _STATES[job.key] = state
    return state


_MODELS: dict[tuple, Any] = {}


def preload(package: str, device: str, threads: int) -> Any:
    """The package loaded once per worker process (the driver asks for it while it computes the statistics)."""
    key = (package, device, threads)
    if key not in _MODELS:
        from ..model import load

        _MODELS.clear()  # one package at a time per worker
        _MODELS[key] = load(package, device=device, threads=threads)
    return _MODELS[key]


def warm(package: str, device: str, threads: int) -> None:
    """preload, returning nothing (what a worker returns is sent to the driver; a Model does not pickle)."""
    preload(package, device, threads)


def done_marker(journal: str, index: int) -> Path:
    return Path(journal) / DONE / str(index)


def objects_file(journal: str, index: int) -> Path:
    """A StarDist block's objects or a detector block's boxes (no pickle: np.savez of plain arrays), its done
    marker at the same time."""
    return Path(journal) / DONE / f"{index}.npz"


def run_objects(job: BlockJob, index: int) -> dict[str, Any]:
    """StarDist packages: the objects whose centres lie in block `index`'s core, saved in the journal (the driver
    renders the labels from all blocks' objects)."""
    from ..engine.instance_blocks import block_objects, stardist_step

    started = time.perf_counter()
    state = _state(job)
    step = stardist_step(state.model.engine)
    found = block_objects(state.model.engine, step, state.arrays, state.maps, job.plan, state.combos[index],
                          job.stats, state.wanted, job.context)
    return _journal_found(job, state, index, started, dict(points=found.points, scores=found.scores,
                                                           dist=found.dist))


def run_boxes(job: BlockJob, index: int) -> dict[str, Any]:
    """Box-list packages: the boxes whose centres lie in block `index`'s core (engine/box_blocks.py), saved in
    the journal as N.npz (the driver merges every block's boxes into the box files)."""
    from ..engine.box_blocks import block_boxes

    started = time.perf_counter()
    state = _state(job)
    found = block_boxes(state.model.engine, state.arrays, state.maps, job.plan, state.combos[index], job.stats,
                        state.wanted)
    return _journal_found(job, state, index, started, found.arrays())


def _journal_found(job: BlockJob, state: _State, index: int, started: float, found: Mapping[str, np.ndarray]
                   ) -> dict[str, Any]:
    """What block `index` found (plain arrays, with `scores`) saved as the journal's N.npz (no pickle), its done
    marker at the same time, after the block's reads are dropped; returns what the run's summary needs."""
    for x in state.arrays.values():
        release(x)
    target = objects_file(job.journal, index)
    partial = target.with_name(f".{target.name}.{os.getpid()}.npz")
    np.savez(partial, **found)
    os.replace(partial, target)  # whole or absent: a killed worker leaves no half-written block
    return {"block": index, "worker": _worker_name(), "seconds": time.perf_counter() - started,
            "peak_rss": peak_resident_bytes() or 0, "pixels": _core_pixels(job.plan, state.combos[index]),
            "objects": len(found["scores"])}


def run_block(job: BlockJob, index: int) -> dict[str, Any]:
    """Predict block `index` into the outputs and mark it done; returns what the run's summary needs."""
    started = time.perf_counter()
    state = _state(job)
    pieces = run_tile(state.model.engine, state.arrays, state.maps, job.plan, state.combos[index], job.stats,
                      state.wanted)
    for piece in pieces:
        state.sinks[piece.tensor_id][piece.index] = piece.value
    for sink in state.sinks.values():
        sink.target.flush()  # on disk before the block counts as done
    for x in state.arrays.values():
        release(x)
    done_marker(job.journal, index).touch()
    return {"block": index, "worker": _worker_name(), "seconds": time.perf_counter() - started,
            "peak_rss": peak_resident_bytes() or 0, "pixels": _core_pixels(job.plan, state.combos[index])}


def _core_pixels(plan: Plan, combo: tuple) -> int:
    n = 1
    for p, (_, lo, hi) in zip(plan.tiled, combo):
        n *= max(0, min(hi, p.length) - lo)
    return n


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def worker_pid() -> int:
    """For tests and diagnostics: the pid of the worker process that runs this."""
    return os.getpid()


__all__ = ["BlockJob", "done_marker", "objects_file", "preload", "run_block", "run_boxes", "warm", "run_objects",
           "worker_pid"]
