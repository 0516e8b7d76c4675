"""`--rescale` for images predicted streamed (above the memory budget) and on Dask (commands/rescaled.py): the
input resampled band by band into a temporary beside the output, predicted there, the outputs resampled back band
by band. Real packages, files and worker processes, small images; resampling bands made small (BAND_ELEMENTS) so
that every pass runs over many of them.

Equality is exact: the band resampler is resample's arithmetic on fewer rows, and the streamed / Dask predictions
give the in-memory bytes for packages whose halo covers the receptive field.
"""
from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import yaml

from biozoo.runtime import load
from biozoo.runtime.checks.resample import band_rows, resample, resample_window
from biozoo.runtime.commands import rescaled
from biozoo.runtime.commands.memory_plan import streamed_held
from biozoo.runtime.commands.predict_files import predict_files
from biozoo.runtime.engine import memory
from tests import packages


# ---------------------------------------------------------------- the band resampler
def _windows_of(x: np.ndarray, lengths: dict, order: str, steps: dict) -> np.ndarray:
    """resample(x, lengths, order) assembled window by window (`steps`: window length per axis), each window
    computed from the input indices between its coordinates only."""
    out = None
    grid = [range(0, lengths.get(a, x.shape[a]), k) for a, k in steps.items()]
    for starts in product(*grid):
        window, read, write = {}, [slice(None)] * x.ndim, [slice(None)] * x.ndim
        for (axis, k), start in zip(steps.items(), starts):
            n_in, n_out = x.shape[axis], lengths.get(axis, x.shape[axis])
            stop = min(n_out, start + k)
            lo, hi = band_rows(n_in, n_out, order, start, stop)
            window[axis], read[axis], write[axis] = (n_in, start, stop, lo), slice(lo, hi), slice(start, stop)
        part = resample_window(x[tuple(read)].copy(), lengths, order, window)
        if out is None:
            out = np.empty([lengths.get(i, n) for i, n in enumerate(x.shape)], part.dtype)
        out[tuple(write)] = part
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16, np.int32])
@pytest.mark.parametrize("order", ["linear", "nearest"])
def test_windows_equal_resample_on_the_whole_array(dtype, order):
    rng = np.random.default_rng(1)
    cases = [((1, 2, 37, 41), {2: 83, 3: 19}),  # up along y, down along x
             ((1, 1, 61, 29), {2: 17, 3: 71}),  # down along y, up along x
             ((3, 13, 29, 31), {1: 9, 2: 70, 3: 30}),  # 3D, every axis
             ((1, 1, 1, 9), {2: 4, 3: 5}),  # a single input row
             ((1, 1, 15, 9), {3: 22})]  # the first space axis unchanged
    for shape, lengths in cases:
        x = (rng.random(shape) * 1000).astype(dtype)
        whole = resample(x, lengths, order)
        space = [i for i in range(2 if len(shape) == 4 else 1, len(shape))]
        for steps in [{space[0]: 1}, {space[0]: 2}, {space[0]: 7}, {space[-1]: 3}, {space[0]: 5, space[-1]: 4},
                      {a: 6 for a in space}, {space[0]: 1000}]:
            got = _windows_of(x, lengths, order, steps)
            assert got.dtype == whole.dtype
            np.testing.assert_array_equal(got, whole, err_msg=f"{shape} {lengths} windows {steps}")


def test_a_band_reads_only_the_rows_between_its_coordinates():
    # 10 rows to 4: output centres at input 0.75, 3.25, 5.75, 8.25; linear needs floor..floor+1, nearest rounds
    assert band_rows(10, 4, "linear", 1, 3) == (3, 7)
    assert band_rows(10, 4, "nearest", 1, 3) == (3, 7)
    assert band_rows(10, 4, "nearest", 0, 1) == (1, 2)
    assert band_rows(4, 10, "linear", 9, 10) == (3, 4)  # clipped at the last row
    assert band_rows(7, 7, "linear", 2, 5) == (2, 5)


# ---------------------------------------------------------------- predict_files, streamed and on Dask
@pytest.fixture(autouse=True)
def _small_bands(monkeypatch):
    """Bands of a few rows (the images are small), and the process's resident memory counted as 0, so that the
    budgets below mean bytes for tiles, bands and held arrays only."""
    monkeypatch.setattr(rescaled, "BAND_ELEMENTS", 6000)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)


@pytest.fixture(scope="module")
def blobseg(tmp_path_factory) -> Path:
    """A dense package with a recorded training pixel size (0.5 um)."""
    return packages.build_package("blobseg", tmp_path_factory.mktemp("blobseg"))


@pytest.fixture(scope="module")
def stardist(tmp_path_factory) -> Path:
    """The StarDist maps package of tests/runtime/test_distributed.py, trained (so the package says) at 0.5 um."""
    rdf = packages.build_package("stardist_maps", tmp_path_factory.mktemp("stardist"))
    spec = yaml.safe_load(rdf.read_text())
    spec["config"] = {**(spec.get("config") or {}), "biozoo": {"training": {"pixel_size": {"y": 0.5, "x": 0.5}}}}
    rdf.write_text(yaml.safe_dump(spec, sort_keys=False))
    return rdf


def _budget(rdf: Path, x: np.ndarray, tile: int = 96, masked: bool = False) -> str:
    """Below the in-memory need of x, with room for ~tile x tile tiles and a resampling band when streamed."""
    model = load(rdf, device="cpu")
    per = memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine))
    return f"{tile * tile * per + streamed_held(x.size, masked) + rescaled.band_bytes(2 * x.size)}B"


def _image(n: int, m: int, seed: int = 0) -> np.ndarray:
    return packages.blob_image(np.random.default_rng(seed), max(n, m), 40, 4)[0, 0, :n, :m] * 1.5


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _pixel_entry(summary: dict) -> dict:
    return next(c for c in summary["checks"] if c["name"] == "pixel-size")


@pytest.mark.parametrize("dst, shape, small", [("npy", (301, 257), (181, 180)),
                                               ("ome.zarr", (1100, 700), (660, 490))])  # 3 x 2 chunks of 512
def test_streamed_rescale_equals_the_in_memory_one(blobseg, tmp_path, dst, shape, small):
    if dst == "ome.zarr":
        pytest.importorskip("ome_zarr")
    x = _image(*shape)
    np.save(tmp_path / "in.npy", x)
    kw = dict(device="cpu", pixel_size="0.3,0.35", rescale=True, quiet=True)
    memory_run = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "mem" / f"p.{dst}", **kw)
    assert not memory_run["items"][0].get("streamed")
    calls = []
    summary = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "out" / f"p.{dst}",
                            memory=_budget(blobseg, x), progress=lambda done, total: calls.append(total), **kw)
    item = summary["items"][0]
    assert item["streamed"] and item["rescaled"]["factors"] == {"y": 0.6, "x": 0.7}
    assert item["rescaled"]["model_shapes"]["prob"] == [1, 1, *small] and item["shapes"]["prob"] == list(shape)
    assert len(set(calls)) == 3 and min(calls) > 1, "resampling in, tiles, resampling back: each in several steps"
    entry = _pixel_entry(summary)
    assert entry["status"] == "ok" and entry["rescaled"] and "resampled to the training resolution" in entry["message"]
    assert entry == _pixel_entry(memory_run)  # the same check, numbers and message as in memory
    statuses = [{c["name"]: c["status"] for c in run["checks"]} for run in (summary, memory_run)]
    assert statuses[0].pop("masked-normalization") == "skipped"  # not looked for in a streamed image
    assert statuses[0] == {k: v for k, v in statuses[1].items() if k != "masked-normalization"}
    if dst == "npy":
        np.testing.assert_array_equal(np.load(tmp_path / "out" / "p.npy"), np.load(tmp_path / "mem" / "p.npy"))
    else:
        import zarr

        got, want = (zarr.open_group(tmp_path / d / "p.ome.zarr", mode="r") for d in ("out", "mem"))
        assert sorted(got) == sorted(want) and len(list(got)) > 1  # the same pyramid levels
        for level in want:
            np.testing.assert_array_equal(np.asarray(got[level]), np.asarray(want[level]))
        assert got.attrs["ome"]["multiscales"] == want.attrs["ome"]["multiscales"]  # pixel size of the input
    assert _leftovers(tmp_path / "out") == []


def test_outputs_of_other_grids_come_back_like_in_memory(models, rdf, tmp_path):
    """`scaled`: a stride-2 output and a cropped one, the input's pixel size from its axes (0.5 um), a TIFF in."""
    import tifffile

    x = _image(203, 187, seed=2)
    tifffile.imwrite(tmp_path / "in.tif", x, metadata={"axes": "YX"})
    kw = dict(device="cpu", pixel_size="0.8", rescale=True, quiet=True, suffix="npy")
    memory_run = predict_files(str(rdf("scaled")), [str(tmp_path / "in.tif")], tmp_path / "mem", **kw)
    summary = predict_files(str(rdf("scaled")), [str(tmp_path / "in.tif")], tmp_path / "out",
                            memory=_budget(rdf("scaled"), x), **kw)
    assert summary["items"][0]["streamed"] and summary["items"][0]["shapes"] == memory_run["items"][0]["shapes"]
    for name in ("in_down.npy", "in_inner.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / name), np.load(tmp_path / "mem" / name))
    assert _leftovers(tmp_path / "out") == []


def test_stardist_streamed_rescale_equals_the_in_memory_labels(stardist, tmp_path):
    maps = packages.star_maps(600, 560, count=300, seed=3)
    np.save(tmp_path / "maps.npy", maps)
    whole = load(stardist, device="cpu").predict(maps, axes="yxc", pixel_size=0.4, rescale=True)
    summary = predict_files(str(stardist), [str(tmp_path / "maps.npy")], tmp_path / "labels.npy", axes="yxc",
                            device="cpu", pixel_size="0.4", rescale=True, quiet=True,
                            memory=_budget(stardist, maps, 400))
    item = summary["items"][0]
    assert item["streamed"] and item["rescaled"]["model_shapes"]["labels"] == [1, 480, 448, 1]
    assert item["instances"]["objects"] == whole.max() > 200
    labels = np.load(tmp_path / "labels.npy")
    assert labels.dtype == whole.dtype
    np.testing.assert_array_equal(labels, whole)
    assert _leftovers(tmp_path) == []


def test_dask_rescale_equals_the_in_memory_one(blobseg, tmp_path):
    pytest.importorskip("distributed")
    x = _image(260, 230, seed=4)
    np.save(tmp_path / "in.npy", x)
    kw = dict(device="cpu", pixel_size="0.3", rescale=True, quiet=True, tile="96,96")
    memory_run = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "mem.npy", **kw)
    summary = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "out" / "p.tif", workers=1,
                            threads=1, **kw)
    item = summary["items"][0]
    assert item["distributed"]["blocks"] > 1 and item["rescaled"]["factors"] == {"y": 0.6, "x": 0.6}
    assert _pixel_entry(summary)["rescaled"]
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "p.tif"), np.load(tmp_path / "mem.npy"))
    assert _leftovers(tmp_path / "out") == []


class Stop(Exception):
    pass


@pytest.mark.parametrize("phase", ["resampling in", "tiles", "resampling back"])
@pytest.mark.parametrize("error", [Stop, KeyboardInterrupt])
def test_a_failure_in_any_phase_leaves_nothing_behind(blobseg, tmp_path, phase, error):
    x = _image(200, 190, seed=5)
    np.save(tmp_path / "in.npy", x)
    out = tmp_path / "out"
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        if not seen or seen[-1] != total:
            seen.append(total)  # a new phase
        if len(seen) == ["resampling in", "tiles", "resampling back"].index(phase) + 1 and done == 1:
            raise error("stopped by the progress callback")

    back = phase == "resampling back"
    if back:
        pytest.importorskip("ome_zarr")  # an OME-Zarr output half written when it stops
    with pytest.raises(error, match="progress callback"):
        predict_files(str(blobseg), [str(tmp_path / "in.npy")], out / ("p.ome.zarr" if back else "p.tif"),
                      device="cpu", pixel_size="0.3", rescale=True, quiet=True, memory=_budget(blobseg, x),
                      progress=progress)
    assert list(out.iterdir()) == [], "no output, no temporary"


def test_a_folder_that_cannot_hold_the_temporary_is_refused_clearly(blobseg, tmp_path):
    from biozoo.runtime.errors import InputError

    x = _image(200, 190, seed=6)
    np.save(tmp_path / "in.npy", x)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".p.npy.biozoo-rescale").write_text("a file where the temporary folder goes")
    with pytest.raises(InputError, match="cannot write beside the output.*biozoo-rescale"):
        predict_files(str(blobseg), [str(tmp_path / "in.npy")], out / "p.npy", device="cpu", pixel_size="0.3",
                      rescale=True, quiet=True, memory=_budget(blobseg, x))
    assert not (out / "p.npy").exists()


def _holes(shape, seed: int = 0) -> np.ndarray:
    """A valid mask with random holes (30%) and a big masked rectangle."""
    valid = np.random.default_rng(seed).random(shape) > 0.3
    valid[shape[0] // 6: shape[0] * 2 // 3, shape[1] // 10: shape[1] * 4 // 5] = False
    return valid


def _masked_input(tmp_path: Path, how: str, shape=(301, 257), seed: int = 9) -> tuple[np.ndarray, dict]:
    """in.npy, and predict_files' mask options: a TIFF / .npy mask file, or --ignore-value -1 (the holes set to -1
    in the image, so that the mask is computed from the original pixels)."""
    x, valid = _image(*shape, seed=seed), _holes(shape, seed)
    if how == "ignore":
        x[~valid] = -1.0
    elif how.endswith(".npy"):
        np.save(tmp_path / how, valid.astype(np.uint8))
    else:
        import tifffile

        tifffile.imwrite(tmp_path / how, (valid * 255).astype(np.uint8))
    np.save(tmp_path / "in.npy", x)
    return x, {"ignore_value": -1.0} if how == "ignore" else {"mask": str(tmp_path / how)}


def _mask_entry(summary: dict) -> dict:
    return next(c for c in summary["checks"] if c["name"] == "masked-normalization")


@pytest.mark.parametrize("how", ["mask.tif", "mask.npy", "ignore"])
def test_streamed_rescale_with_a_mask_equals_the_in_memory_one(blobseg, tmp_path, how):
    """The mask decided on the original image, resampled nearest to the model's resolution (a temporary), the
    masked prediction there, the outputs resampled back: the in-memory bytes and report entry (blobseg's halo
    covers its receptive field, so the streamed tiles give the whole image's bytes)."""
    x, options = _masked_input(tmp_path, how)
    kw = dict(device="cpu", pixel_size="0.3,0.35", rescale=True, quiet=True, **options)
    memory_run = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "mem" / "p.npy", **kw)
    summary = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "out" / "p.npy",
                            memory=_budget(blobseg, x, masked=True), **kw)
    item = summary["items"][0]
    assert item["streamed"] and item["rescaled"]["factors"] == {"y": 0.6, "x": 0.7}
    got, want = np.load(tmp_path / "out" / "p.npy"), np.load(tmp_path / "mem" / "p.npy")
    np.testing.assert_array_equal(got, want)
    assert (want == 0).mean() > 0.3 and (want > 0).mean() > 0.2  # masked: background (0), a probability elsewhere
    entry, memory_entry = _mask_entry(summary), _mask_entry(memory_run)
    source = "--ignore-value -1" if how == "ignore" else "--mask"
    assert entry == memory_entry and entry["source"] == source and entry["message"].startswith(f"{source}: ")
    assert 0.3 < entry["excluded_fraction"] < 0.9 and "biozoo-rescale" not in json.dumps(summary)
    statuses = [{c["name"]: c["status"] for c in run["checks"]} for run in (summary, memory_run)]
    assert statuses[0] == statuses[1]
    assert _leftovers(tmp_path / "out") == []


def test_dask_rescale_with_a_mask_equals_the_in_memory_one(blobseg, tmp_path):
    """One worker reads the mask at the model's resolution from the temporary folder, as any --mask file."""
    pytest.importorskip("distributed")
    x, options = _masked_input(tmp_path, "mask.tif", (260, 230), seed=10)
    kw = dict(device="cpu", pixel_size="0.3", rescale=True, quiet=True, tile="96,96", **options)
    memory_run = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "mem.npy", **kw)
    summary = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "out" / "p.npy", workers=1,
                            threads=1, **kw)
    item = summary["items"][0]
    assert item["distributed"]["blocks"] > 1 and item["rescaled"]["factors"] == {"y": 0.6, "x": 0.6}
    assert _mask_entry(summary) == _mask_entry(memory_run) and _mask_entry(summary)["source"] == "--mask"
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "p.npy"), np.load(tmp_path / "mem.npy"))
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("samples", [1, 2])
def test_the_mask_at_the_models_resolution_is_the_whole_masks_resample(models, tmp_path, samples):
    """rescaled._resample_mask, band by band, against conditions._valid_mask's resample of the whole mask: a mask
    of the space axes (one sample), of the input's own shape (two samples: one mask each)."""
    from contextlib import ExitStack

    from biozoo.runtime.checks import masking
    from biozoo.runtime.commands.streamed_masks import MaskSpec
    from biozoo.runtime.engine.streaming import LazyView

    tensor = models("unet2d").description.inputs[0]  # b, c, y, x
    x = (np.random.default_rng(12).random((samples, 3, 97, 83)) * 10).astype(np.float32)
    x[:, :, 20:60, 10:50] = 7.0
    x[-1, :, 70:, :] = 7.0
    small = (samples, 3, 61, 140)
    want = resample(masking.mask_from_value(x, tensor, 7.0).astype(np.uint8), {2: 61, 3: 140}, "nearest")
    with ExitStack() as stack:
        rescaled._resample_mask(MaskSpec(None, 7.0), LazyView(x), tensor, "bcyx", small, tmp_path / "m.npy", stack,
                                None)
    got = np.load(tmp_path / "m.npy")
    assert got.dtype == np.uint8 and got.shape == ((61, 140) if samples == 1 else small)
    np.testing.assert_array_equal(got, want[0, 0] if samples == 1 else np.broadcast_to(want, small))


@pytest.mark.parametrize("how", ["mask", "ignore"])
def test_a_mask_empty_at_the_models_resolution_is_refused_as_in_memory(blobseg, tmp_path, how):
    """--mask: valid pixels on rows and columns that nearest neighbour skips at 0.6x (none left at the model's
    resolution, some in the file); --ignore-value: an image of that value only. Nothing is left behind."""
    from biozoo.runtime.checks.resample import _coordinates
    from biozoo.runtime.errors import InputError

    x = _image(200, 190, seed=11)
    options: dict = {"ignore_value": 7.0}
    if how == "mask":
        rows, cols = (set(np.floor(_coordinates(n, round(n * 0.6)) + 0.5).astype(int)) for n in x.shape)
        valid = np.zeros(x.shape, np.uint8)
        valid[np.ix_(sorted(set(range(200)) - rows), sorted(set(range(190)) - cols))] = 1
        assert valid.sum() > 1000
        np.save(tmp_path / "mask.npy", valid)
        options = {"mask": str(tmp_path / "mask.npy")}
    else:
        x[:] = 7.0
    np.save(tmp_path / "in.npy", x)
    messages = []
    for where in ("mem", "out"):
        (tmp_path / where).mkdir()
        with pytest.raises(InputError) as e:
            predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / where / "p.npy", device="cpu",
                          pixel_size="0.3", rescale=True, quiet=True,
                          memory=_budget(blobseg, x, masked=True) if where == "out" else None, **options)
        messages.append(str(e.value))
        assert list((tmp_path / where).iterdir()) == [], "no output, no temporary"
    assert messages[0] == messages[1] and "leaves no valid pixel in sample(s) [0]" in messages[0]
    assert messages[0].startswith("--mask" if how == "mask" else "--ignore-value 7")


@pytest.mark.parametrize("masked", [False, True])
def test_a_failed_dask_rescale_run_resumes_from_its_finished_blocks(blobseg, tmp_path, masked):
    """`masked`: the mask at the model's resolution is kept with the resampled image and taken up unchanged (the
    journal's fingerprint stamps it); another mask is refused like other pixel sizes."""
    pytest.importorskip("distributed")
    if masked:
        x, options = _masked_input(tmp_path, "mask.npy", (300, 280), seed=8)
    else:
        x, options = _image(300, 280, seed=8), {}
        np.save(tmp_path / "in.npy", x)
    target = tmp_path / "out" / "p.npy"
    kw = dict(device="cpu", pixel_size="0.3", rescale=True, quiet=True, tile="64,64", workers=1, threads=1,
              **options)
    phases: list[int] = []

    def stop_in_the_blocks(done: int, total: int) -> None:
        if done == 1 or not phases or phases[-1] != total:
            phases.append(total)  # a new pass: (the mask's,) the input's, the blocks
        if len(phases) == 2 + masked and done == 4:
            raise Stop("stopped after 4 blocks")

    with pytest.raises(Stop):
        predict_files(str(blobseg), [str(tmp_path / "in.npy")], target, progress=stop_in_the_blocks, **kw)
    folder = rescaled.temp_folder({"prob": target})
    assert not target.exists() and (folder / rescaled.RECORD).is_file(), "kept for --resume"
    assert (folder / rescaled.MASK).is_file() == masked
    from biozoo.runtime.errors import InputError

    other = {"pixel_size": "0.35"} if not masked else {"mask": None, "ignore_value": -1.0}
    with pytest.raises(InputError, match="cannot resume from .*other inputs, pixel sizes or masks"):
        predict_files(str(blobseg), [str(tmp_path / "in.npy")], target, resume=True, **{**kw, **other})
    assert (folder / rescaled.RECORD).is_file(), "a refused --resume keeps what it could continue"
    resumed = predict_files(str(blobseg), [str(tmp_path / "in.npy")], target, resume=True, **kw)
    assert resumed["items"][0]["distributed"]["skipped"] >= 4
    memory_run = predict_files(str(blobseg), [str(tmp_path / "in.npy")], tmp_path / "mem.npy",
                               **{k: v for k, v in kw.items() if k not in ("workers", "threads")})
    np.testing.assert_array_equal(np.load(target), np.load(tmp_path / "mem.npy"))
    if masked:
        assert _mask_entry(resumed) == _mask_entry(memory_run)
    assert _leftovers(tmp_path / "out") == []


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """test_box_streaming's detector (trained at 1 um, blocks overlapping by 40 px)."""
    from .test_box_streaming import TRAINING, _patched
    from .test_detections import build_detection_package

    return _patched(build_detection_package(tmp_path_factory.mktemp("detector"), True), TRAINING)


@pytest.mark.parametrize("tile, one, dask", [(260, True, False), (120, False, False), (120, False, True)])
def test_a_detectors_boxes_come_back_onto_the_input_grid(detector, tmp_path, tile, one, dask):
    """Boxes merged at the model's resolution, corners scaled back: one block gives the in-memory box files
    exactly; several give the same boxes (corners within float32 rounding of the shifts into image coordinates),
    streamed and on Dask."""
    from .test_box_streaming import _detections, _texts
    from .test_detections import _image as squares

    centres = [(y, x) for y in range(40, 380, 72) for x in range(40, 400, 72)]
    x, count = squares((400, 420), centres, half=16), len(centres)  # 16 px squares at the model's resolution
    np.save(tmp_path / "in.npy", x)
    kw = dict(device="cpu", pixel_size="0.5", rescale=True, quiet=True)
    predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "memory", **kw)
    if dask:
        pytest.importorskip("distributed")
    where = dict(workers=1, threads=1, tile=f"{tile},{tile}") if dask else dict(memory=_budget(detector, x, tile))
    summary = predict_files(str(detector), [str(tmp_path / "in.npy")], tmp_path / "blocks", **where, **kw)
    item = summary["items"][0]
    assert item["streamed"] and (item["boxes"]["blocks"] == 1) == one and item["detections"]["count"] == count
    assert item["rescaled"]["factors"] == {"y": 0.5, "x": 0.5} and _pixel_entry(summary)["rescaled"]
    got, want = _detections(tmp_path / "blocks")[0], _detections(tmp_path / "memory")[0]
    assert json.loads((tmp_path / "blocks" / "in.json").read_text())["width"] == 420
    if one:
        assert _texts(tmp_path / "blocks") == _texts(tmp_path / "memory")
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=4e-3)
    assert _leftovers(tmp_path / "blocks") == []
