"""Bounded memory: tiles from a byte budget (--memory / Model.predict(memory=)), the measured activation memory
and its cache, .npy images streamed through memory maps, whole-image statistics computed by streaming.

The budgets here are computed from the model's own per-pixel figures with the process's resident size pinned to 0
(monkeypatched), so that the tests do not depend on how much memory pytest happens to hold; small images only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from typing import Optional

import numpy as np
import pytest

from biozoo.runtime.engine import memory
from biozoo.runtime.ops.stats import Measure
from biozoo.runtime.ops.streamed_stats import streamed_measures


def _image(n: int = 200, m: int = 230, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, m)) * 200 + 10).astype(np.float32)


def _per_pixel(model) -> int:
    return memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine))


def test_a_budget_forces_tiling_and_the_output_equals_the_untiled_prediction(models, no_baseline):
    model = models("unet2d")
    x = _image()
    whole = model.predict(x, axes="yx")
    held = memory.whole_image_bytes(model.engine, {"raw": (1, 1, *x.shape)})
    budget = held + 96 * 96 * _per_pixel(model)
    calls = []
    tiled = model.predict(x, axes="yx", memory=budget, progress=lambda done, total: calls.append(total))
    assert calls and calls[-1] > 1, "the budget should have split the image into several tiles"
    np.testing.assert_array_equal(tiled, whole)
    assert model.predict(x, axes="yx", memory=f"{budget}B", tile={"y": 256, "x": 256}).shape == x.shape  # --tile wins


def test_the_activation_measurement_is_cached_and_reused(models, rdf, monkeypatch, tmp_path):
    monkeypatch.setenv("BIOZOO_CACHE_DIR", str(tmp_path / "cache"))
    first = memory.activation_profile(models("unet2d").engine)
    assert first["source"] in ("measured", "estimated")
    if first["source"] == "estimated":
        pytest.skip("no /proc on this system: the activation memory is estimated, not measured")
    assert first["bytes_per_pixel"] > 0 and os.path.isfile(first["cache"])

    def boom(*_):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(memory, "_measure", boom)
    from biozoo.runtime import load

    again = memory.activation_profile(load(rdf("unet2d"), device="cpu").engine)  # a second load of the package
    assert again["source"] == "cached" and again["bytes_per_pixel"] == first["bytes_per_pixel"]


def _streamed_budget(model, x) -> int:
    """A budget below the in-memory need of x but with room for ~96x96 tiles when streamed."""
    from biozoo.runtime.commands.memory_plan import streamed_held

    return 96 * 96 * _per_pixel(model) + streamed_held(x.size)


def test_npy_streams_through_memmaps_and_equals_the_in_memory_prediction(models, rdf, no_baseline, tmp_path,
                                                                          monkeypatch):
    from biozoo.runtime.commands import predict_files as pf

    model = models("unet2d")
    x = _image(300, 280)
    np.save(tmp_path / "in.npy", x)
    out = tmp_path / "out" / "pred.npy"
    seen = []

    class Watch:  # the progress bar, called after every tile: the output must not exist before the end
        def __init__(self, *a, **k):
            pass

        def __call__(self, done, total):
            seen.append((done, total, out.exists(), sorted(p.name for p in out.parent.iterdir())))

    monkeypatch.setattr(pf, "ProgressBar", Watch)
    loads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(k.get("mmap_mode")) or real_load(*a, **k))
    budget = _streamed_budget(model, x)
    summary = pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], out, device="cpu", quiet=True,
                               memory=str(budget))
    item = summary["items"][0]
    assert item.get("streamed") is True and "r" in loads
    assert len(seen) > 1 and not any(exists for _, _, exists, _ in seen)
    assert all(any(name.startswith(".pred.npy.") for name in names) for *_, names in seen)  # a temporary memmap
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.npy"]
    np.testing.assert_array_equal(np.load(out), model.predict(x, axes="yx"))
    names = {c["name"]: c["status"] for c in summary["checks"]}
    assert names["masked-normalization"] == "skipped"


def test_a_failure_midway_leaves_no_output(models, rdf, no_baseline, tmp_path, monkeypatch):
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.engine.session import OnnxSession
    from biozoo.runtime.errors import InputError

    x = _image(300, 280, seed=1)
    np.save(tmp_path / "in.npy", x)
    out = tmp_path / "out"
    out.mkdir()
    real_run, count = OnnxSession.run, []

    def failing(self, feeds):
        count.append(1)
        if len(count) == 3:
            raise InputError("simulated failure on the third tile")
        return real_run(self, feeds)

    monkeypatch.setattr(OnnxSession, "run", failing)
    with pytest.raises(InputError, match="third tile"):
        pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], out / "pred.npy", device="cpu", quiet=True,
                         memory=str(_streamed_budget(models("unet2d"), x)))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_streamed_input_with_nan_is_refused_with_the_count(models, rdf, no_baseline, tmp_path, dtype):
    """float32 inputs are checked in the statistics' first pass, float64 (range check too) in a pass of their
    own: the same error either way, and nothing written."""
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.errors import InputError

    x = _image(300, 280, seed=2).astype(dtype)
    x[7, 9] = x[250, 3] = np.nan
    x[100, 100] = np.inf
    np.save(tmp_path / "in.npy", x)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"contains 3 NaN/Inf value\(s\) out of 84000"):
        pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], out / "pred.npy", device="cpu", quiet=True,
                         memory=str(_streamed_budget(models("unet2d"), x.astype(np.float32))))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("value", ["lots", "0", "-1GB", "2 parsecs"])
def test_memory_parsing_errors_exit_2_with_a_clear_message(rdf, tmp_path, value):
    np.save(tmp_path / "in.npy", _image(64, 64))
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "predict", str(rdf("unet2d")),
                           str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--device", "cpu",
                           f"--memory={value}"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"--memory is '{value}'" in proc.stderr and "expected" in proc.stderr and "2GB" in proc.stderr
    assert not (tmp_path / "o.npy").exists()


def test_a_budget_too_small_for_any_tile_exits_2(rdf, tmp_path):
    np.save(tmp_path / "in.npy", _image(64, 64))
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "predict", str(rdf("unet2d")),
                           str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--device", "cpu",
                           "--memory", "1MB"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--memory" in proc.stderr and "MiB" in proc.stderr


@pytest.mark.parametrize("method", ["linear", "inverted_cdf"])
def test_streamed_percentiles_equal_numpy_exactly(method):
    """The documented bound is zero: the histogram only locates the rank, the value is the exact order statistic
    (chunk=1000 forces several chunks and the refinement of crowded bins)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(100, 20, 30000), np.full(5000, 7.0), rng.integers(0, 4, 5000)]).astype(np.float32)
    x = rng.permutation(x).reshape(1, 2, 200, 100)
    axes = ("batch", "channel", "y", "x")
    qs = (0.0, 0.003, 0.01, 0.25, 0.5, 0.9, 0.998, 1.0)
    ms = [Measure("raw", "quantile", ("y", "x"), q, method) for q in qs]
    got = streamed_measures(ms, {"raw": (x, axes)}, chunk=1000)
    for m in ms:
        want = np.quantile(x, [m.q], axis=(2, 3), keepdims=True, method=method)[0]  # as the in-memory path
        np.testing.assert_array_equal(got[m], want)


class _CountingReads:
    """A lazily read array that counts the elements read: a key of ints and whole axes is a view (as for a
    memory map), any other key reads."""

    def __init__(self, data: np.ndarray, counter: Optional[list] = None):
        self.data, self.shape, self.ndim, self.size = data, data.shape, data.ndim, data.size
        self.counter = counter if counter is not None else [0]

    def __getitem__(self, key):
        if all(isinstance(k, int) or k == slice(None) for k in key):
            return _CountingReads(self.data[key], self.counter)
        self.counter[0] += np.size(self.data[key])
        return self.data[key]


def test_streamed_quantiles_share_their_passes_over_the_image():
    """Eight quantiles (16 order statistics), a mean and a std read the image three times (mean, minimum and
    maximum; std and histogram; the values of the wanted bins), where one search per order statistic and a pass per
    moment read it 50 times: the pre-pass of a huge image is bound by reading it."""
    x = (np.random.default_rng(5).random((1, 1, 300, 200)) * 1e3).astype(np.float32)
    axes = ("batch", "channel", "y", "x")
    qs = (0.0, 0.003, 0.01, 0.25, 0.5, 0.9, 0.998, 1.0)
    ms = [Measure("raw", "quantile", ("y", "x"), q) for q in qs] + [Measure("raw", "mean", ("y", "x")),
                                                                     Measure("raw", "std", ("y", "x"))]
    counted = _CountingReads(x)
    got = streamed_measures(ms, {"raw": (counted, axes)}, chunk=7000)
    for m in ms[:len(qs)]:
        assert got[m].item() == np.quantile(x, [m.q], method="linear")[0]
    assert 3 * x.size <= counted.counter[0] < 4 * x.size  # partial rows at the pairwise leaves' ends


def test_streamed_mean_and_std_have_numpys_bits():
    x = (np.random.default_rng(4).random((1, 3, 333, 301)) * 1e4).astype(np.float32)
    axes = ("batch", "channel", "y", "x")
    for red, ax in ((("channel", "y", "x"), (1, 2, 3)), (("y", "x"), (2, 3))):
        got = streamed_measures([Measure("raw", "mean", red), Measure("raw", "std", red)], {"raw": (x, axes)},
                                chunk=4096)
        assert np.array_equal(got[Measure("raw", "mean", red)].astype(np.float32), np.mean(x, axis=ax, keepdims=True))
        assert np.array_equal(got[Measure("raw", "std", red)].astype(np.float32), np.std(x, axis=ax, keepdims=True))


@pytest.mark.parametrize("src,dst", [("tif", "tif"), ("npy", "ome.zarr"), ("ome.zarr", "npy")])
def test_tiff_and_ome_zarr_stream_too(models, rdf, no_baseline, tmp_path, src, dst):
    """Inputs through imageio.open_image (TIFF memory map, OME-Zarr array), outputs through create_output."""
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.commands.imageio import create_output, open_image

    if "zarr" in (src + dst):
        pytest.importorskip("ome_zarr")
    model = models("unet2d")
    x = _image(260, 250, seed=2)
    path = tmp_path / f"in.{src}"
    if src == "npy":
        np.save(path, x)
    else:
        writer = create_output(path, x.shape, x.dtype, "yx")
        writer[:, :] = x
        writer.close()
    out = tmp_path / "out" / f"pred.{dst}"
    summary = pf.predict_files(str(rdf("unet2d")), [str(path)], out, device="cpu", quiet=True,
                               memory=str(_streamed_budget(model, x)))
    assert summary["items"][0].get("streamed") is True
    with open_image(out) as image:
        got = np.asarray(image.data[...])
    np.testing.assert_array_equal(got.reshape(x.shape), model.predict(x, axes="yx"))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_streamed_statistics_read_bounded_blocks():
    """Leading axes of size 1 (batch, channel) must not make one read the whole image."""
    from biozoo.runtime.engine.streaming import LazyView

    class Counting:  # an array-like that records the largest block read from it
        def __init__(self, a):
            self.a, self.shape, self.dtype, self.largest = a, a.shape, a.dtype, 0

        def __getitem__(self, key):
            block = self.a[key]
            self.largest = max(self.largest, block.size)
            return block

    x = (np.random.default_rng(5).random((1, 1, 400, 300)) * 50).astype(np.float32)
    source = Counting(x)
    red = ("channel", "y", "x")
    ms = [Measure("raw", "mean", red), Measure("raw", "std", red), Measure("raw", "quantile", red, 0.99)]
    got = streamed_measures(ms, {"raw": (LazyView(source), ("batch", "channel", "y", "x"))}, chunk=5000)
    assert source.largest <= 5000 + 2 * 300
    assert np.array_equal(got[ms[0]].astype(np.float32), np.mean(x, axis=(1, 2, 3), keepdims=True))
    assert np.array_equal(got[ms[1]].astype(np.float32), np.std(x, axis=(1, 2, 3), keepdims=True))
    assert np.array_equal(got[ms[2]].astype(np.float32),
                          np.quantile(x, [0.99], axis=(1, 2, 3), keepdims=True)[0].astype(np.float32))


_GROWING_RUNS = """
import json, sys
from pathlib import Path
import numpy as np
from biozoo.runtime.engine.session import OnnxSession

session = OnnxSession(Path(sys.argv[1]), device="cpu", threads=1)
name = session.input_names[0]
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
start = hwm()
for side in map(int, sys.argv[2:]):
    session.run({name: np.zeros((1, 1, side, side), np.float32)})
print(json.dumps({"growth": hwm() - start}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak resident memory is read from /proc")
def test_runs_of_growing_size_peak_as_the_largest_alone(tmp_path):
    """onnxruntime's arena, grown run after run by larger tiles, would keep the smaller runs' regions beside the
    largest (a byte budget is planned for the largest alone): a larger run gets a fresh session."""
    from tests import packages

    onnx = next(packages.build_package("unet2d_wide", tmp_path).parent.rglob("*.onnx"))

    def growth(*sides: int) -> int:
        done = subprocess.run([sys.executable, "-c", _GROWING_RUNS, str(onnx), *map(str, sides)],
                              capture_output=True, text=True, check=True)
        return int(json.loads(done.stdout.strip().splitlines()[-1])["growth"])

    alone, growing = growth(1024), growth(256, 512, 768, 1024, 512)
    assert alone > 200 * 2**20, alone  # the activations of a 1024^2 tile, not noise
    assert growing < 1.15 * alone, (growing, alone)


def test_dataset_statistics_streamed_file_by_file_equal_the_in_memory_ones():
    """Mean/std pooled over samples and linear quantiles averaged over samples, from lazily read samples (the
    multi-file pre-pass of huge images): the in-memory values to float64 rounding, the quantiles exactly."""
    from biozoo.runtime.ops.stats import DatasetStatistics
    from biozoo.runtime.ops.streamed_stats import streamed_dataset_update

    rng = np.random.default_rng(8)
    axes = ("batch", "channel", "y", "x")
    ms = [Measure("raw", kind, ("batch", "y", "x"), q) for kind, q in (("mean", 0), ("std", 0), ("quantile", 0.01),
                                                                      ("quantile", 0.998))]
    in_memory, streamed = DatasetStatistics(ms), DatasetStatistics(ms)
    for i, shape in enumerate([(1, 2, 130, 170), (1, 2, 90, 211), (1, 2, 64, 64)]):
        x = (rng.gamma(2.0, 30.0 * (i + 1), shape)).astype(np.float32)
        in_memory.update({"raw": (x, axes)})
        streamed_dataset_update(streamed, {"raw": (_CountingReads(x), axes)}, chunk=3000)
    for m in ms:
        want, got = in_memory.value(m), streamed.value(m)
        assert got.shape == want.shape == (1, 2, 1, 1)
        if m.kind == "quantile":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_dataset_statistics_over_several_files_stream_too(models, rdf, no_baseline, tmp_path, monkeypatch):
    """A model normalized over the whole dataset, given files above the budget: every file is read lazily for the
    dataset statistics, then each is predicted tile by tile with them. The outputs equal those of the same tiles
    normalized with the in-memory pass's statistics (to float64 rounding), and the batch-effects check still
    compares the files."""
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.ops.stats import DatasetStatistics

    rng = np.random.default_rng(12)
    files = []
    for i, (h, w) in enumerate([(260, 240), (200, 290)]):
        files.append(tmp_path / f"in{i}.npy")
        np.save(files[-1], (rng.gamma(2.0, 20.0 * (1 + 3 * i), (h, w))).astype(np.float32))
    model = models("dataset_stats")
    args = dict(device="cpu", quiet=True, suffix="npy", axes="yx", memory=str(_streamed_budget(model, np.load(files[0]))))
    lazy = pf.predict_files(str(rdf("dataset_stats")), [str(f) for f in files], tmp_path / "lazy", **args)
    assert [item.get("streamed") for item in lazy["items"]] == [True, True]
    assert {c["name"]: c["status"] for c in lazy["checks"]}["batch-effects"] == "warning"  # 4x the intensity

    def in_memory(model, samples, axes, level_target, report, masking=None):
        stats = DatasetStatistics(model.engine.required_measures())
        for sample in samples:
            x = np.load(next(iter(sample.values())))[None, None]
            stats.update({"raw": (x, model.engine.axis_ids("raw"))})
        return stats

    monkeypatch.setattr(pf, "dataset_statistics_streamed", in_memory)
    pf.predict_files(str(rdf("dataset_stats")), [str(f) for f in files], tmp_path / "reference", **args)
    for f in files:
        got = np.load(next((tmp_path / "lazy").glob(f"{f.stem}*.npy")))
        want = np.load(next((tmp_path / "reference").glob(f"{f.stem}*.npy")))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_tiles_written_to_a_mapped_output_leave_the_resident_set(tmp_path, suffix):
    """A TIFF or .npy output written tile by tile through a CallerSink (as streamed predictions write it) keeps
    the resident set flat: release() reaches the memory map behind the sink and drops the written pages. Without
    it, 256 MiB written stayed resident."""
    from biozoo.runtime.commands.imageio import create_output
    from biozoo.runtime.engine.streaming import CallerSink, release

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    class Tensor:
        letters = "yx"

    out = create_output(tmp_path / f"big{suffix}", (8192, 8192), np.float32, "yx")
    sink = CallerSink(out, "yx", Tensor(), (8192, 8192))
    band = np.ones((256, 8192), np.float32)
    before = rss()
    for y in range(0, 8192, 256):
        sink[y:y + 256, :] = band * y
        release(sink)
    grown = rss() - before
    out.close()
    assert grown < 64 * 2 ** 20, f"resident set grew by {grown / 2 ** 20:.0f} MiB for 256 MiB written"
    written = np.load(tmp_path / "big.npy", mmap_mode="r") if suffix == ".npy" else None
    if written is not None:
        assert written[8191, 5] == 8192 - 256 and written[0, 0] == 0
