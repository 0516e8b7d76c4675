"""`biozoo predict --workers N` (a LocalCluster of N worker processes) or `--scheduler ADDRESS` (an existing
dask.distributed cluster): an image predicted block by block on Dask workers.

The driver opens the inputs lazily, computes the whole-image statistics once (the streamed pre-pass), runs the
input checks on what it can read without the image (as the streamed path does), plans blocks of one fixed shape
whose cores lie on the outputs' chunk grid (engine/blocks.block_plan), creates the outputs' temporaries, and hands
one task per block to the workers (commands/block_worker.py), which write their results straight into them. Every
finished block is recorded in a journal beside the output (run_journal.py); `--resume` after a crash skips the
recorded blocks (when the package, inputs, plan and statistics are the same). A killed worker's blocks are re-run
by Dask on the others. The outputs appear at the end by a rename, as everywhere else.

Same arithmetic as the streamed path with the same plan, so the distributed result is bit-identical to it.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..checks import input_checks
from ..checks.report import CheckReport
from ..engine.blocks import block_plan, output_chunks, output_dtypes, tile_combos
from ..engine.instance_blocks import Objects, stardist_step, why_not_blockwise
from ..engine.streaming import CallerSink, caller_layout
from ..engine.tiling import output_shapes
from ..errors import BiozooError, InputError
from ..model import Model
from ..ops.stats import DatasetStatistics
from .instance_output import check_one_sample, labels_dtype, stardist_context, write_labels
from .block_worker import DONE, BlockJob, objects_file, run_block, run_objects, warm
from .lazyio import create_output, open_image
from .omezarr import is_zarr
from .run_journal import Journal, fingerprint, journal_folder
from .predict_streamed import (STREAMED_INPUTS, STREAMED_OUTPUTS, flip_check_streamed, input_checks_streamed,
                               open_sample)
from .masked_outputs import masked_sink
from .streamed_masks import MaskSpec, masks_outputs, run_of
from .streamed_masks import fingerprint as mask_fingerprint

log = logging.getLogger("biozoo")
QUIET_CLUSTER = {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s",
                 "distributed.admin.tick.limit": "10s", "distributed.admin.system-monitor.interval": "5s",
                 "distributed.worker.memory.monitor-interval": "5s"}


def why_not_distributable(model: Model, sample: Mapping[str, Path], targets: Mapping[str, Path]) -> Optional[str]:
    """None when the sample can be predicted block by block on Dask, else the reason: dense packages whose
    post-processing is elementwise (engine/streaming.py), StarDist packages (engine/instance_blocks.py) and box
    lists (engine/box_blocks.py: their box files are written whole at the end, by commands/box_distributed.py)."""
    why = why_not_blockwise(model.engine)
    if why:
        return why
    for path in sample.values():
        if path.suffix.lower() not in STREAMED_INPUTS:
            return (f"input '{path.name}' cannot be read block by block (expected one of {', '.join(STREAMED_INPUTS)}; "
                    "convert it, e.g. to OME-Zarr)")
    for path in targets.values() if model.engine.box_lists is None else ():
        if path.suffix.lower() not in STREAMED_OUTPUTS:
            return (f"output '{path.name}' cannot be written block by block (expected one of "
                    f"{', '.join(STREAMED_OUTPUTS)})")
    return None


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError("--workers/--scheduler need dask.distributed: pip install 'biozoo[distributed]'") from None
    return distributed


def worker_threads(workers: Optional[int], scheduler: Optional[str], threads: Optional[int]) -> int:
    """onnxruntime threads per worker: a local cluster shares this machine's cores, a remote worker knows its own
    (0: onnxruntime's default)."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, workers or 1)) if scheduler is None else 0


class Cluster:
    """What start_client returns. Calling it waits for the client; `last_blocks()` marks the next blocks as the
    last this command runs there, and `blocks_done()` after them starts closing a local cluster in the background
    (its nannies take ~0.5 s to stop the workers, which then overlaps the checks on the output and the pyramid
    levels); the ExitStack waits for the close either way."""

    def __init__(self, wait: Callable[[], Any], close: Optional[Callable[[], None]] = None):
        self._wait, self._close, self._last = wait, close, False
        self._closing: Any = None

    def __call__(self) -> Any:
        return self._wait()

    def last_blocks(self) -> None:
        self._last = True

    def blocks_done(self) -> None:
        if self._last and self._close is not None and self._closing is None:
            self._closing = ThreadPoolExecutor(1, thread_name_prefix="biozoo-cluster-close").submit(self._close)

    def finish(self) -> None:
        if self._closing is not None:
            self._closing.result()
        elif self._close is not None:
            self._close()


def start_client(workers: Optional[int], scheduler: Optional[str], stack: ExitStack,
                 preload: Optional[tuple] = None) -> Cluster:
    """A dask.distributed Client, closed with `stack`: of the cluster at `scheduler` (connected now, so that a
    wrong address fails before any work), or of a LocalCluster of `workers` processes with one thread each (no
    dashboard) whose workers then load the package (`preload`: block_worker.preload's arguments), all in a thread
    while the caller goes on (the statistics pre-pass); that thread imports dask.distributed too (~0.7 s of
    Python, beside the pre-pass's numpy and codecs, which release the GIL)."""
    if scheduler:
        distributed = _distributed()
        try:
            client = distributed.Client(scheduler, set_as_default=False)  # timeout: distributed.comm.timeouts.connect
        except (OSError, TimeoutError) as e:
            raise InputError(f"cannot reach the Dask scheduler at '{scheduler}': {e}; check the address "
                             "(e.g. tcp://host:8786) and that the scheduler runs") from None
        stack.callback(client.close)
        return Cluster(lambda: client)
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        _distributed()  # its message

    def start() -> tuple[Any, Any]:
        import dask

        distributed = _distributed()  # its import sets its loggers' levels from dask's config: quieted after
        for name in ("distributed", "tornado"):  # their info lines (nannies closing...) are not the user's business
            logging.getLogger(name).setLevel(logging.WARNING)
        # no statistical profiler in the workers: it samples every thread's stack every 10 ms, which cost 9% of
        # each block's time with 2 workers on 2 cores (measured). Fewer event-loop wake-ups (the tick monitor every
        # 20 ms, the system and memory monitors): each takes the GIL from the block's thread; on 2 cores with 2
        # workers the blocks ran 1.80-1.83x faster than on 1 worker with them against 1.71-1.72x without (two runs
        # each, 8192^2). The nannies hand this config to the workers.
        with dask.config.set(QUIET_CLUSTER):
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, memory_limit=0, silence_logs=logging.ERROR)
            client = distributed.Client(cluster, set_as_default=False)
        if preload:
            try:
                client.run(warm, *preload)
            except Exception:  # e.g. a broken package: the first block raises it with the driver's message
                pass
        return cluster, client

    pool = ThreadPoolExecutor(1, thread_name_prefix="biozoo-cluster")
    starting = pool.submit(start)

    def close() -> None:
        try:
            cluster, client = starting.result()
        except Exception:  # it did not start: nothing to close (its error was raised where it was waited for)
            return
        client.close()
        cluster.close()

    def wait() -> Any:
        try:
            return starting.result()[1]
        except (OSError, TimeoutError, RuntimeError) as e:
            raise InputError(f"the local Dask cluster of {workers} worker(s) did not start: {e}") from None

    handle = Cluster(wait, close)
    stack.callback(pool.shutdown)
    stack.callback(handle.finish)
    return handle


def predict_sample_distributed(model: Model, sample: Mapping[str, Path], axes: Optional[str],
                               targets: Mapping[str, Path], *, workers: Optional[int], scheduler: Optional[str],
                               resume: bool, tile: Optional[Mapping[str, int]], tile_budget: int, device: str,
                               threads: Optional[int] = None,
                               report: CheckReport, pixel_size: Any = None,
                               progress: Optional[Callable[[int, int], None]] = None,
                               level_target: Optional[Mapping[str, float]] = None,
                               output_placement: Callable[[str], Mapping[str, Any]] = lambda tid: {},
                               client: Optional[Cluster] = None,
                               dataset_stats: Optional[DatasetStatistics] = None,
                               masking: Optional[MaskSpec] = None) -> dict[str, Any]:
    """Predict one sample on Dask workers into `targets`; returns the written paths, shapes, axes and the run's
    summary (blocks, skipped, MPx/s, peak memory per worker). `client`: what start_client returned, for several
    samples on one cluster (by default the cluster is started for this sample and closed after it);
    `dataset_stats`: dataset measures over several files (predict_streamed.dataset_statistics_streamed);
    `masking`: --mask/--ignore-value (commands/streamed_masks.py; the fill values go to the workers in the job)."""
    engine, desc = model.engine, model.description
    primary = desc.inputs[0].id
    phases = _Phases()
    with ExitStack() as stack:
        threads, package, client, arrays, caller, stats = open_distributed(
            model, sample, axes, targets, stack, phases, workers=workers, scheduler=scheduler, device=device,
            threads=threads, client=client, level_target=level_target, dataset_stats=dataset_stats,
            masking=masking, report=report, pixel_size=pixel_size)
        shapes = {tid: tuple(x.shape) for tid, x in arrays.items()}
        step = stardist_step(engine)
        context = stardist_context(model) if step else 0
        if step:
            check_one_sample(model, shapes, sample[primary])
        plan = block_plan(engine, shapes, tile, tile_budget, description=engine.network, margin=context)
        wanted = output_shapes(desc, shapes)
        if step:  # the driver renders the labels from the blocks' objects: any chunking will do
            dtypes = {step.tensor_id: labels_dtype(model, step)}
            chunks = {step.tensor_id: {}}
        else:
            dtypes, chunks = output_dtypes(engine, plan, stats), output_chunks(engine, plan)
        journal = Journal(journal_folder(targets), {**fingerprint(model, sample, targets, plan, stats, dtypes),
                                                    **mask_fingerprint(arrays[primary])}, resume)
        try:
            outputs, sinks, layouts = _create_outputs(model, targets, wanted, dtypes, chunks, caller.get(primary),
                                                      journal, output_placement,
                                                      lambda: stack.enter_context(open_image(sample[primary],
                                                                                             level_target)))
            combos = tile_combos(plan)
            finished = journal.done() if journal.resumed else set()
            todo = [i for i in range(len(combos)) if i not in finished]
            job = BlockJob(uuid.uuid4().hex, package, device, threads,
                           {tid: str(p.resolve()) for tid, p in sample.items()}, caller, level_target, plan, stats,
                           {} if step else sinks, str(journal.folder), context, masking=run_of(arrays[primary]))
            phases.mark("outputs created")
            ready = client()  # the cluster, started while the statistics were computed
            phases.mark("waiting for the workers")
            results = _run_blocks(ready, run_objects if step else run_block, job, todo, len(combos), progress,
                                  journal.folder)
            client.blocks_done()
            seconds = phases.mark("blocks")
            found = _render_objects(model, step, masked_sink(model, arrays[primary], step.tensor_id,
                                                             sinks[step.tensor_id]), wanted[step.tensor_id], journal,
                                    len(combos), context) if step else None
            input_checks.receptive_field(report, engine, sinks)
            flip_check_streamed(report, engine, arrays, stats, {"tile": tile, "tile_budget": tile_budget},
                                None if masks_outputs(arrays[primary]) else sinks)  # masked: its own crops
            phases.mark("labels and checks on the output" if step else "checks on the output")
        except BaseException:
            if not journal.done():  # nothing to resume: nothing stays behind
                journal.finish()
            raise
        for tid, out in outputs.items():
            out.close()
        journal.finish()
        phases.mark("outputs written (pyramid levels)")
    phases.mark("cluster closed")
    summary = _summary(results, len(combos), len(finished), seconds, scheduler or f"{workers} local worker(s)")
    summary["driver_seconds"] = phases.seconds
    return {"written": {tid: str(targets[tid]) for tid in outputs},
            "shapes": {tid: list(out.shape) for tid, out in outputs.items()}, "axes": layouts,
            "distributed": {**summary, **(found or {})}}


def open_distributed(model: Model, sample: Mapping[str, Path], axes: Optional[str], targets: Mapping[str, Path],
                     stack: ExitStack, phases: "_Phases", *, workers: Optional[int], scheduler: Optional[str],
                     device: str, threads: Optional[int], client: Optional[Cluster],
                     level_target: Optional[Mapping[str, float]], dataset_stats: Optional[DatasetStatistics],
                     masking: Optional[MaskSpec], report: CheckReport, pixel_size: Any) -> tuple:
    """What every Dask driver does first: refuse what cannot go block by block, start (or take) the cluster, open
    the inputs with their whole-image statistics and run the input checks; returns (onnxruntime threads per worker,
    the package's path, the client's waiter, the input views, their caller axes, the statistics)."""
    why = why_not_distributable(model, sample, targets)
    if why:
        raise InputError(f"--workers/--scheduler predict block by block, but {why}; run without them")
    threads = worker_threads(workers, scheduler, threads)
    package = str(Path(model.package.source).resolve())
    if client is None:
        client = start_client(workers, scheduler, stack, preload=(package, device, threads))
        client.last_blocks()
    arrays, caller, file_size, stats = open_sample(model, sample, axes, level_target, stack, dataset_stats, masking)
    phases.mark("inputs opened, statistics")
    input_checks_streamed(model.engine, arrays[model.description.inputs[0].id], stats, report, pixel_size,
                          file_size, batch_effects=dataset_stats is None)
    phases.mark("input checks")
    return threads, package, client, arrays, caller, stats


class _Phases:
    """Wall seconds of the driver's phases, in order (the run's summary): what the blocks wait for, and after."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        self.seconds[phase] = round(elapsed, 3)
        return elapsed


def _render_objects(model: Model, step, sink, shape, journal: Journal, total: int, context: int) -> dict:
    """The label image from every block's objects (saved in the journal by the workers)."""
    parts = []
    for index in range(total):
        with np.load(objects_file(str(journal.folder), index), allow_pickle=False) as saved:
            parts.append(Objects(saved["points"], saved["scores"], saved["dist"]))
    return write_labels(model, step, sink, shape, Objects.merged(parts, step.op.n_rays), context)


def _create_outputs(model: Model, targets: Mapping[str, Path], wanted: Mapping, dtypes: Mapping, chunks: Mapping,
                    caller: Optional[str], journal: Journal, output_placement: Callable[[str], Mapping[str, Any]],
                    input_image: Callable[[], Any]) -> tuple[dict, dict, dict]:
    """Every output's temporary in the journal folder (taken up again on --resume), chunked on the block grid,
    and a model-layout writer (CallerSink) for the workers; returns (outputs, sinks, caller layouts)."""
    outputs, sinks, layouts = {}, {}, {}
    for o in model.description.outputs:
        final, layouts[o.id] = caller_layout(wanted[o.id], o, caller)
        labels = is_zarr(targets[o.id]) and np.issubdtype(dtypes[o.id], np.integer)
        outputs[o.id] = create_output(targets[o.id], final, dtypes[o.id], layouts[o.id], **output_placement(o.id),
                                      labels=labels, image=input_image() if labels else None,
                                      chunks={o.axis(a).letter: n for a, n in chunks[o.id].items()},
                                      at=journal.folder, reopen=journal.resumed)
        sinks[o.id] = CallerSink(outputs[o.id], layouts[o.id], o, wanted[o.id])
    if journal.resumed and not all(out.reopened for out in outputs.values()):
        log.info("--resume: the unfinished outputs at '%s' are gone or changed; predicting every block again",
                 journal.folder)
        journal.forget_blocks()
    return outputs, sinks, layouts


def _run_blocks(client: Any, task: Callable, job: BlockJob, todo: list[int], total: int,
                progress: Optional[Callable[[int, int], None]], folder: Path) -> list[dict]:
    from distributed import as_completed

    results: list[dict] = []
    futures = client.map(task, [job] * len(todo), todo, pure=False,
                         key=[f"biozoo-block-{job.key}-{i}" for i in todo])
    try:
        for future in as_completed(futures, loop=client.loop):
            results.append(_result(future, folder))
            if progress:
                progress(total - len(todo) + len(results), total)
    except BaseException:
        client.cancel(futures)
        raise
    return results


def _result(future: Any, folder: Path) -> dict:
    from distributed import KilledWorker

    def keep() -> str:
        done = folder / DONE
        if done.is_dir() and any(done.iterdir()):
            return f"the finished blocks are kept in '{folder}': run the same command with --resume to continue"
        return "no block had finished, nothing was kept"

    try:
        return future.result()
    except BiozooError as e:
        raise type(e)(f"{e} ({keep()})") from None
    except KilledWorker as e:
        raise InputError(f"a block killed every worker that ran it ({e}); a worker may have run out of memory: "
                         f"lower --memory or --tile, or give the workers more memory; {keep()}") from None
    except (OSError, MemoryError) as e:
        raise InputError(f"a block failed on a worker: {type(e).__name__}: {e}; the workers must see the package, "
                         f"the input and the output folder at the same paths as this machine; {keep()}") from None
    except Exception as e:  # e.g. a worker without biozoo (ModuleNotFoundError) or with another version
        raise InputError(f"a worker could not run a block: {type(e).__name__}: {e}; every worker needs biozoo "
                         f"(the same version as here) and dask.distributed installed; {keep()}") from None


def _summary(results: list[dict], total: int, skipped: int, seconds: float, where: str) -> dict:
    pixels = sum(r["pixels"] for r in results)
    peaks: dict[str, int] = {}
    for r in results:
        peaks[r["worker"]] = max(peaks.get(r["worker"], 0), r["peak_rss"])
    busy = sum(r["seconds"] for r in results)  # in the tasks, per worker: what idle workers or scheduling cost
    return {"cluster": where, "blocks": total, "skipped": skipped, "run": len(results),
            "seconds": round(seconds, 3), "mpx_per_s": round(pixels / 1e6 / seconds, 3) if seconds > 0 else None,
            "block_seconds_mean": round(busy / len(results), 3) if results else None,
            "busy_fraction": round(busy / (seconds * len(peaks)), 3) if results and seconds > 0 else None,
            "peak_memory_per_worker": dict(sorted(peaks.items()))}


def format_summary(summary: Mapping[str, Any]) -> str:
    from ..checks.input_checks import format_bytes

    peaks = ", ".join(format_bytes(v) for v in summary["peak_memory_per_worker"].values()) or "n/a"
    rate = f"{summary['mpx_per_s']} MPx/s" if summary["mpx_per_s"] is not None else "no blocks run"
    phases = ", ".join(f"{k} {v:g} s" for k, v in summary.get("driver_seconds", {}).items() if k != "blocks")
    return (f"  {summary['blocks']} blocks on {summary['cluster']}: {summary['run']} run, {summary['skipped']} "
            f"skipped (--resume), {summary['seconds']} s, {rate}; peak memory per worker: {peaks}"
            + (f"\n  around the blocks: {phases}" if phases else ""))


__all__ = ["format_summary", "journal_folder", "predict_sample_distributed", "start_client", "why_not_distributable",
           "worker_threads"]
