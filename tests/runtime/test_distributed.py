"""Prediction on Dask (`biozoo predict --workers N / --scheduler ADDRESS / --resume`): real dask.distributed
schedulers and worker processes started here, real files, small images.

Equality is exact: with the halo covering the receptive field, the blocks give the same bytes as the in-memory
prediction; for a package whose halo does not (multi_io), the same block plan run in this process is the reference.
The fault and resume tests (slow) kill real processes mid-run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from biozoo.runtime.commands.run_journal import journal_folder
from biozoo.runtime.commands.predict_files import predict_files
from biozoo.runtime.engine.blocks import block_plan, output_chunks, tile_combos
from biozoo.runtime.engine.tiling import halo_in_input_pixels

distributed = pytest.importorskip("distributed")


def _image(n: int = 300, m: int = 280, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, m)) * 200 + 10).astype(np.float32)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  memory_limit=0) as local:
        yield local


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *args], capture_output=True, text=True, **kw)


def test_block_cores_lie_on_the_output_chunk_grid(models):
    model = models("unet2d")
    plan = block_plan(model.engine, {"raw": (1, 1, 1000, 900)}, {"y": 256, "x": 256}, 1 << 22)
    primary = model.description.inputs[0]
    for p in plan.tiled:
        halo = halo_in_input_pixels(model.description, primary, primary.axis(p.axis_id))
        core = p.cuts[1] - p.cuts[0]
        assert all(c % core == 0 for c in p.cuts[:-1]) and p.cuts[-1] == p.padded >= p.length
        for start, lo, hi in zip(p.starts, p.cuts[:-1], p.cuts[1:]):
            assert start % 8 == 0 and start + p.tile <= p.padded  # on the pooling grid, inside the padded image
            assert lo == 0 or lo - start >= halo, "a core must have the halo before it, except at the image's start"
            assert hi == p.padded or start + p.tile - hi >= halo, "... and after it, except at the image's end"
    assert len(tile_combos(plan)) == len(plan.tiled[0].starts) * len(plan.tiled[1].starts) > 4
    assert output_chunks(model.engine, plan)["prob"] == {p.axis_id: p.cuts[1] - p.cuts[0] for p in plan.tiled}


def test_two_local_workers_equal_the_in_memory_prediction(rdf, models, tmp_path):
    x = _image(300, 280)
    np.save(tmp_path / "in.npy", x)
    summary = predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "out.ome.zarr", device="cpu",
                            tile="96,96", workers=2, quiet=True)
    item = summary["items"][0]["distributed"]
    assert item["blocks"] > 4 and item["run"] == item["blocks"] and item["skipped"] == 0
    assert len(item["peak_memory_per_worker"]) == 2, "both workers should have run blocks"
    phases = item["driver_seconds"]
    assert list(phases)[:3] == ["inputs opened, statistics", "input checks", "outputs created"]
    assert phases["blocks"] == item["seconds"]
    assert all(v >= 0 for v in phases.values())
    import zarr

    written = np.asarray(zarr.open_group(tmp_path / "out.ome.zarr", mode="r")["s0"])
    whole = models("unet2d").predict(x, axes="yx")
    np.testing.assert_array_equal(written, whole)
    assert not journal_folder({"prob": tmp_path / "out.ome.zarr"}).exists(), "the journal goes once the run is done"


def test_several_files_run_on_one_local_cluster(rdf, models, tmp_path):
    """The cluster starts once for every file (its start-up costs seconds): the same worker ran both."""
    images = {"first": _image(200, 180, seed=1), "second": _image(160, 210, seed=2)}
    for name, x in images.items():
        np.save(tmp_path / f"{name}.npy", x)
    summary = predict_files(str(rdf("unet2d")), [str(tmp_path / f"{n}.npy") for n in images], tmp_path / "out",
                            device="cpu", suffix="npy", tile="96,96", workers=1, quiet=True)
    workers = [set(item["distributed"]["peak_memory_per_worker"]) for item in summary["items"]]
    assert len(workers) == 2 and len(workers[0]) == 1 and workers[0] == workers[1]
    for name, x in images.items():
        written = np.load(next((tmp_path / "out").glob(f"{name}*.npy")))
        np.testing.assert_array_equal(written, models("unet2d").predict(x, axes="yx"))


def test_dataset_normalized_files_on_dask_use_the_statistics_of_all_files(rdf, models, tmp_path, cluster):
    from biozoo.runtime.engine.streaming import predict_streamed, whole_image_statistics
    from biozoo.runtime.ops.stats import DatasetStatistics

    rng = np.random.default_rng(6)
    images = [(rng.gamma(2.0, 20.0 * (1 + 3 * i), (130, 150))).astype(np.float32) for i in range(2)]
    for i, x in enumerate(images):
        np.save(tmp_path / f"f{i}.npy", x)
    predict_files(str(rdf("dataset_stats")), [str(tmp_path / f"f{i}.npy") for i in range(2)], tmp_path / "out",
                  device="cpu", suffix="npy", tile="64,64", scheduler=cluster.scheduler_address, quiet=True)
    engine = models("dataset_stats").engine
    pooled = DatasetStatistics(engine.required_measures())
    for x in images:
        pooled.update({"raw": (x[None, None], engine.axis_ids("raw"))})
    for i, x in enumerate(images):
        arrays = {"raw": x[None, None]}
        plan = block_plan(engine, {"raw": arrays["raw"].shape}, {"y": 64, "x": 64}, 1 << 22)
        want = predict_streamed(engine, arrays, lambda tid, shape, dtype: np.zeros(shape, dtype), tile_budget=1 << 22,
                                stats=whole_image_statistics(engine, arrays, pooled), plan=plan)["out"][0, 0]
        np.testing.assert_allclose(np.load(next((tmp_path / "out").glob(f"f{i}*.npy"))), want, rtol=1e-5, atol=1e-6)


def _same_plan_in_process(model, arrays: dict, tile: dict) -> dict:
    """The reference: engine/streaming's loop over the distributed path's own block plan, in this process."""
    from biozoo.runtime.engine.streaming import predict_streamed, whole_image_statistics

    engine = model.engine
    stats = whole_image_statistics(engine, arrays)
    plan = block_plan(engine, {k: v.shape for k, v in arrays.items()}, tile, 1 << 22)
    return predict_streamed(engine, arrays, lambda tid, shape, dtype: np.zeros(shape, dtype), tile_budget=1 << 22,
                            stats=stats, plan=plan)


def test_several_inputs_and_a_bool_output_on_an_existing_scheduler(rdf, models, tmp_path, cluster):
    rng = np.random.default_rng(3)
    a = (rng.random((150, 130)) * 8 - 2).astype(np.float32)
    b = rng.random((150, 130)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    predict_files(str(rdf("multi_io")), [f"a={tmp_path / 'a.npy'}", f"b={tmp_path / 'b.npy'}"], tmp_path / "out",
                  device="cpu", suffix="npy", tile="48,48", scheduler=cluster.scheduler_address, quiet=True)
    ref = _same_plan_in_process(models("multi_io"), {"a": a[None, None], "b": b[None, None]}, {"y": 48, "x": 48})
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a_sum.npy"), ref["sum"][0, 0])
    prod = np.load(tmp_path / "out" / "a_prod.npy")
    assert prod.dtype == np.uint8 and prod.any()
    np.testing.assert_array_equal(prod, ref["prod"][0, 0].astype(np.uint8))


def test_refusals_say_what_to_do_and_write_nothing(rdf, tmp_path):
    np.save(tmp_path / "in.npy", _image(64, 64))
    package = str(rdf("unet2d"))
    cases = [(["--resume"], "--resume continues a run on Dask workers"),
             (["--workers", "0"], "expected at least 1 worker"),
             (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give one of them"),
             (["--workers", "1", "--rescale"], "no training pixel size"),  # --rescale runs on Dask, if it can
             (["--threads", "0"], "expected at least 1 onnxruntime thread"),
             (["--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler")]
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"}
    for extra, message in cases:
        done = _cli("predict", package, str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--device", "cpu",
                    *extra, env=env)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"], "a refusal leaves nothing behind"


def test_inputs_and_outputs_that_cannot_go_block_by_block_are_refused(rdf, tmp_path):
    from biozoo.runtime.commands.predict_distributed import why_not_distributable
    from biozoo.runtime import load

    np.save(tmp_path / "in.npy", _image(64, 64))
    model = load(rdf("unet2d"), device="cpu")
    assert why_not_distributable(model, {"raw": tmp_path / "in.npy"}, {"prob": tmp_path / "o.npy"}) is None
    assert "cannot be written block by block" in why_not_distributable(model, {"raw": tmp_path / "in.npy"},
                                                                        {"prob": tmp_path / "o.png"})
    assert "cannot be read block by block" in why_not_distributable(model, {"raw": tmp_path / "in.png"},
                                                                     {"prob": tmp_path / "o.npy"})


# ------------------------------------------------------------------------------------------------ StarDist
@pytest.fixture(scope="module")
def stardist_package(tmp_path_factory):
    """A StarDist package whose input is the probability and ray maps themselves (identity graph): the block
    logic (candidates of core + context, NMS, objects kept by centre, labels rendered by window) is what runs."""
    from tests import packages

    return packages.build_package("stardist_maps", tmp_path_factory.mktemp("stardist"))


@pytest.mark.slow
def test_stardist_on_dask_gives_the_whole_image_labels(stardist_package, tmp_path, cluster):
    from tests.packages import star_maps
    from biozoo.runtime import load

    maps = star_maps(600, 560, count=400, seed=3)  # probabilities without ties: one candidate order
    np.save(tmp_path / "maps.npy", maps)
    summary = predict_files(str(stardist_package), [str(tmp_path / "maps.npy")], tmp_path / "labels.npy",
                            axes="yxc", device="cpu", tile="320,320", scheduler=cluster.scheduler_address, quiet=True)
    whole = load(stardist_package, device="cpu").predict(maps, axes="yxc")
    labels = np.load(tmp_path / "labels.npy")
    item = summary["items"][0]["distributed"]
    assert item["blocks"] >= 9 and item["objects"] == whole.max() > 300
    np.testing.assert_array_equal(labels, whole)


@pytest.mark.parametrize("grid, shape", [(1, (600, 560)), (2, (601, 557))])
def test_stardist_streamed_in_one_process_gives_the_whole_image_labels(stardist_package, tmp_path, monkeypatch,
                                                                       grid, shape):
    """Above the memory budget a StarDist package is predicted block by block without Dask too; on a grid-2
    raster of an odd-sized image both keep the last partial raster cell (labels of the input's size)."""
    from tests import packages
    from tests.packages import star_maps
    from biozoo.runtime import load
    from biozoo.runtime.commands.memory_plan import streamed_held
    from biozoo.runtime.engine import memory

    if grid == 2:
        stardist_package = packages.build_package("stardist_grid2_maps", tmp_path / "grid2")
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # the budget counts tiles and held arrays only
    maps = star_maps(*shape, count=400, seed=3)
    np.save(tmp_path / "maps.npy", maps)
    model = load(stardist_package, device="cpu")
    budget = 400 * 400 * memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine)) \
        + streamed_held(maps.size)
    summary = predict_files(str(stardist_package), [str(tmp_path / "maps.npy")], tmp_path / "labels.ome.zarr",
                            axes="yxc", device="cpu", memory=f"{budget}B", quiet=True)
    item = summary["items"][0]
    assert item.get("streamed") and item["instances"]["objects"] > 300
    import zarr

    group = zarr.open_group(tmp_path / "labels.ome.zarr", mode="r")
    labels = np.asarray(group["labels"]["labels"]["s0"])[0]  # NGFF labels group (c, y, x) beside the image
    assert labels.shape == shape
    np.testing.assert_array_equal(labels, model.predict(maps, axes="yxc")[..., 0])


@pytest.mark.slow
def test_stardist_blocks_keep_the_objects_of_the_whole_image_when_probabilities_tie(stardist_package):
    """Probabilities clipped at 1 tie at many pixels. Blocks break ties by image position, the same in every
    block (with each block's own argsort order, two blocks each kept a tied candidate lying in the other's core
    and both dropped it: 9 of 422 objects were lost); the whole image's NMS in that order is the reference."""
    from tests.packages import star_maps
    from biozoo.runtime import load
    from biozoo.runtime.engine.blocks import index_maps
    from biozoo.runtime.engine.instance_blocks import Objects, block_objects, stardist_step
    from biozoo.runtime.engine.streaming import whole_image_statistics
    from biozoo.runtime.engine.tiling import output_shapes
    from biozoo.runtime.ops import stardist as SP

    maps = star_maps(600, 560, count=400, seed=4)
    maps[..., 0] = np.clip(maps[..., 0] * 1.3, 0, 1)
    assert (maps[..., 0] == 1).sum() > 100
    engine, x = load(stardist_package, device="cpu").engine, maps[None]
    plan = block_plan(engine, {"maps": x.shape}, {"y": 320, "x": 320}, 1 << 22, description=engine.network,
                      margin=96)
    found = Objects.merged([block_objects(engine, stardist_step(engine), {"maps": x}, index_maps(
        engine, {"maps": x.shape}, plan), plan, combo, whole_image_statistics(engine, {"maps": x}),
        output_shapes(engine.network, {"maps": x.shape}), 96) for combo in tile_combos(plan)], 32)
    points, scores, dist = SP.candidates(maps[..., 0], maps[..., 1:], 0.5, 2)
    order = np.lexsort((points[:, 1], points[:, 0], -scores.astype(np.float64)))
    keep = SP.suppress(points[order], dist[order], 0.4)
    np.testing.assert_array_equal(found.points, points[order][keep])
    assert len(found.points) > 300 and len(np.unique(found.points, axis=0)) == len(found.points)


# ------------------------------------------------------------------------------------------------ faults (slow)
def _wait_for_blocks(folder: Path, count: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list((folder / "done").glob("*"))) if (folder / "done").is_dir() else 0
        if done >= count:
            return done
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} blocks finished in {timeout} s")


def _crash_after_blocks(args: list[str], folder: Path, blocks: int) -> None:
    """Run `biozoo ARGS` and kill it, the driver and its cluster as a crash or a power cut would, once `blocks`
    blocks are in the journal at `folder`."""
    crashed = subprocess.Popen([sys.executable, "-m", "biozoo.runtime.cli", *args], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_blocks(folder, blocks)
    finally:
        os.killpg(crashed.pid, signal.SIGKILL)
        crashed.wait()
    time.sleep(0.5)


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(rdf, models, tmp_path, cluster):
    from biozoo.runtime.commands.block_worker import worker_pid

    x = _image(400, 360, seed=5)
    np.save(tmp_path / "in.npy", x)
    target = tmp_path / "out.npy"
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], target, device="cpu",
                                               tile="64,64", scheduler=cluster.scheduler_address, quiet=True)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    before = client.run(worker_pid)
    thread = threading.Thread(target=run)
    thread.start()
    _wait_for_blocks(journal_folder({"prob": target}), 5)
    victim = sorted(before.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(300)
    assert "error" not in outcome, outcome.get("error")
    assert victim not in client.run(worker_pid).values(), "the killed worker should have been replaced"
    client.close()
    summary = outcome["summary"]["items"][0]["distributed"]
    assert summary["run"] == summary["blocks"] > 50
    np.testing.assert_array_equal(np.load(target), models("unet2d").predict(x, axes="yx"))


@pytest.mark.slow
def test_a_crashed_run_resumes_where_it_stopped(rdf, models, tmp_path):
    x = _image(400, 360, seed=6)
    np.save(tmp_path / "in.npy", x)
    target = tmp_path / "out.tif"
    args = ["predict", str(rdf("unet2d")), str(tmp_path / "in.npy"), "-o", str(target), "--device", "cpu",
            "--tile", "64,64", "--workers", "1", "--threads", "1", "-q"]
    folder = journal_folder({"prob": target})
    _crash_after_blocks(args, folder, 8)
    kept = len(list((folder / "done").iterdir()))
    assert not target.exists() and kept >= 8

    retiled = _cli(*[("96,96" if a == "64,64" else a) for a in args], "--resume")  # the journal is of this run
    assert retiled.returncode == 2 and "cannot resume" in retiled.stderr and "plan" in retiled.stderr
    os.replace(tmp_path / "in.npy", tmp_path / "kept.npy")  # same name, other pixels
    np.save(tmp_path / "in.npy", _image(400, 360, seed=7))
    refused = _cli(*args, "--resume")
    assert refused.returncode == 2 and "cannot resume" in refused.stderr and "statistics" in refused.stderr
    os.replace(tmp_path / "kept.npy", tmp_path / "in.npy")  # the original file back, modification time included

    import shutil

    shutil.copytree(folder, tmp_path / "journal-copy")
    resumed = _cli(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)["items"][0]["distributed"]
    assert summary["skipped"] >= kept and summary["run"] == summary["blocks"] - summary["skipped"]
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(target), models("unet2d").predict(x, axes="yx"))
    assert not folder.exists()

    shutil.copytree(tmp_path / "journal-copy", folder)  # the journal without its output: every block again
    (folder / "out.tif.partial.tif").unlink()
    again = _cli(*args, "--resume", "--overwrite", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["items"][0]["distributed"]["skipped"] == 0
    np.testing.assert_array_equal(tifffile.imread(target), models("unet2d").predict(x, axes="yx"))


@pytest.mark.slow
def test_a_crashed_stardist_run_resumes_from_the_saved_objects(stardist_package, tmp_path):
    """StarDist blocks save their objects in the journal (.npz, read without pickle): a resumed run renders the
    labels of the whole image from the kept blocks' objects and the blocks it runs again."""
    from tests.packages import star_maps
    from biozoo.runtime import load

    maps = star_maps(900, 840, count=700, seed=4)
    np.save(tmp_path / "maps.npy", maps)
    target = tmp_path / "labels.npy"
    args = ["predict", str(stardist_package), str(tmp_path / "maps.npy"), "-o", str(target), "--axes", "yxc",
            "--device", "cpu", "--tile", "320,320", "--workers", "1", "--threads", "1", "-q"]
    folder = journal_folder({"labels": target})
    _crash_after_blocks(args, folder, 3)
    kept = len(list((folder / "done").glob("*.npz")))
    assert not target.exists() and kept >= 3
    resumed = _cli(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)["items"][0]["distributed"]
    assert summary["skipped"] >= kept and summary["run"] == summary["blocks"] - summary["skipped"] > 0
    whole = load(stardist_package, device="cpu").predict(maps, axes="yxc")
    np.testing.assert_array_equal(np.load(target), whole)
    assert summary["objects"] == whole.max() > 500 and not folder.exists()


GUARD = '''
import os, sys
def _guard(event, args):
    if event == "socket.connect":
        host = args[1][0] if isinstance(args[1], tuple) else str(args[1])
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            with open(os.environ["BIOZOO_TEST_GUARD_LOG"], "a") as f:
                f.write(f"{os.getpid()} {event} {args[1]}\\n")
            raise RuntimeError("network use: " + str(args[1]))
    elif event in ("socket.getaddrinfo", "socket.gethostbyname") and args[0] not in ("127.0.0.1", "::1", "localhost"):
        with open(os.environ["BIOZOO_TEST_GUARD_LOG"], "a") as f:
            f.write(f"{os.getpid()} {event} {args[:2]}\\n")
sys.addaudithook(_guard)
'''


def test_a_local_cluster_connects_nowhere_beyond_this_machine(rdf, tmp_path):
    """Every process of the run (driver, scheduler, nannies, workers) loads an audit hook (sitecustomize) that
    records and refuses any connection or name lookup other than loopback."""
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    np.save(tmp_path / "in.npy", _image(200, 200))
    log = tmp_path / "network.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "guard"), os.environ.get("PYTHONPATH", "")]),
           "BIOZOO_TEST_GUARD_LOG": str(log)}
    subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('example.org', 80)"], env=env,
                           capture_output=True, text=True)
    assert "example.org" in log.read_text(), "the guard must be active in child processes"
    log.unlink()
    done = _cli("predict", str(rdf("unet2d")), str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--device",
                "cpu", "--tile", "96,96", "--workers", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert not log.exists(), log.read_text()
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr  # workers say nothing
    assert "Nanny" not in done.stderr and "Scheduler at" not in done.stderr, done.stderr  # nor does Dask's start

