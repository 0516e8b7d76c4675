"""`--mask FILE` / `--ignore-value V` above the memory budget (streamed) and on Dask: the masked statistics
streamed over lazily read masks, the fill of masked pixels and the masked outputs, tile by tile, against the
in-memory prediction of the same files (commands/streamed_masks.py).

Equality is exact: the streamed statistics follow numpy's pairwise sums over the compacted valid values and take
exact order statistics, the fill is np.median's value, and the halo of the test U-Net covers its receptive field
(so tiles give the whole image's bytes, as in test_bounded_memory.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime.engine import memory
from biozoo.runtime.errors import InputError
from biozoo.runtime.ops.stats import DatasetStatistics, Measure, StatsContext
from biozoo.runtime.ops.streamed_stats import streamed_dataset_update, streamed_measures

AXES = ("batch", "channel", "y", "x")


def _holes(shape, seed: int = 0) -> np.ndarray:
    """A valid mask with random holes (30%) and a big masked rectangle."""
    valid = np.random.default_rng(seed).random(shape) > 0.3
    valid[..., shape[-2] // 6: shape[-2] * 2 // 3, shape[-1] // 10: shape[-1] * 4 // 5] = False
    return valid


def _measures() -> list[Measure]:
    out = []
    for red in (("channel", "y", "x"), ("y", "x"), ("batch", "channel", "y", "x")):
        out += [Measure("raw", "mean", red), Measure("raw", "std", red)]
        out += [Measure("raw", "quantile", red, q, method) for q in (0.0, 0.003, 0.01, 0.5, 0.998, 1.0)
                for method in ("linear", "inverted_cdf")]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_streamed_masked_statistics_equal_the_in_memory_ones(models, dtype):
    """Several measures of a 3-channel image under a mask of holes and a rectangle (chunk=4096 forces many
    pairwise leaves and slabs), integer input too (the in-memory path computes on its float32 copy), and the
    fill of masked pixels: np.median of the valid ones, per channel."""
    from biozoo.runtime.commands.streamed_masks import fill_measure

    rng = np.random.default_rng(1)
    x = (rng.random((1, 3, 333, 301)) * 4000).astype(dtype)
    valid = _holes((1, 1, 333, 301))
    ms = _measures()
    median = Measure("raw", "quantile", ("y", "x"), 0.5, "median")
    got = streamed_measures([*ms, median], {"raw": (x, AXES)}, chunk=4096, masks={"raw": valid})
    in_memory = StatsContext({"raw": (x.astype(np.float32), AXES)}, None, {"raw": valid})
    for m in ms:
        np.testing.assert_array_equal(got[m].astype(np.float32), in_memory.get(m, AXES), err_msg=str(m))
    full = np.broadcast_to(valid, x.shape)
    medians = [np.median(x[0, c].astype(np.float32)[full[0, c]]) for c in range(3)]
    np.testing.assert_array_equal(got[median].astype(np.float32).ravel(), np.array(medians, np.float32))
    assert fill_measure(models("unet2d").description.inputs[0]) == Measure("raw", "quantile", ("y", "x"), 0.5,
                                                                          "median")


def test_lazily_read_masks_give_the_same_statistics(tmp_path):
    """The driver's masks: a space-only mask file read through a memory map, and --ignore-value computed from
    the image itself (its slabs derived from the image's own slabs on a one-channel image)."""
    from biozoo.runtime.commands.streamed_masks import ValidMask
    from biozoo.runtime.engine.streaming import LazyView

    rng = np.random.default_rng(2)
    x = (rng.random((1, 1, 250, 230)) * 100).astype(np.float32)
    valid = _holes((250, 230), seed=3)
    x[0, 0][~valid] = 0.0
    np.save(tmp_path / "mask.npy", valid.astype(np.uint8))
    mapped = LazyView(np.load(tmp_path / "mask.npy", mmap_mode="r"))[None, None]
    from_file = ValidMask(mapped, "space", (1,), 0)
    from_value = ValidMask(LazyView(x), "value", (1,), 0, 0.0)
    assert from_file.sample_counts() == from_value.sample_counts() == [int(valid.sum())]
    ms = _measures()
    want = StatsContext({"raw": (x, AXES)}, None, {"raw": valid[None, None]})
    for mask in (from_file, from_value):
        got = streamed_measures(ms, {"raw": (LazyView(x), AXES)}, chunk=3000, masks={"raw": mask})
        for m in ms:
            np.testing.assert_array_equal(got[m].astype(np.float32), want.get(m, AXES), err_msg=str(m))


def test_streamed_masked_dataset_statistics_equal_the_in_memory_ones():
    ms = [Measure("raw", kind, ("batch", "y", "x"), q) for kind, q in (("mean", 0), ("std", 0), ("quantile", 0.01),
                                                                      ("quantile", 0.998))]
    in_memory, streamed = DatasetStatistics(ms), DatasetStatistics(ms)
    rng = np.random.default_rng(8)
    for i, shape in enumerate([(1, 2, 130, 170), (1, 2, 90, 211)]):
        x = rng.gamma(2.0, 30.0 * (i + 1), shape).astype(np.float32)
        valid = _holes((1, 1, *shape[2:]), seed=i)
        in_memory.update({"raw": (x, AXES)}, {"raw": valid})
        streamed_dataset_update(streamed, {"raw": (x, AXES)}, chunk=3000, masks={"raw": valid})
    for m in ms:
        if m.kind == "quantile":
            np.testing.assert_array_equal(streamed.value(m), in_memory.value(m))
        else:  # float64 sums in another order (pairwise over the valid values, not over the zero-filled slice)
            np.testing.assert_allclose(streamed.value(m), in_memory.value(m), rtol=1e-12)


# ------------------------------------------------------------------------------------- predict_files, end to end
def _budget(model, x) -> int:
    """Below the in-memory need of x, with room for ~96x96 tiles when streamed (masked)."""
    from biozoo.runtime.commands.memory_plan import streamed_held

    per_pixel = memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine))
    return 96 * 96 * per_pixel + streamed_held(x.size, True)


def _image_and_mask(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.random((300, 280)) * 200 + 10).astype(np.float32)
    valid = _holes((300, 280), seed)
    x[~valid] = 0.0  # what --ignore-value 0 finds
    return x, valid


def _save_mask(path, valid):
    if path.suffix == ".npy":
        np.save(path, valid.astype(np.uint8))
    else:
        import tifffile

        tifffile.imwrite(path, (valid * 255).astype(np.uint8))


def _checks(summary) -> dict:
    return {c["name"]: c for c in summary["checks"]}


@pytest.mark.parametrize("how", ["mask.tif", "mask.npy", "ignore"])
def test_streamed_masked_prediction_equals_the_in_memory_one(models, rdf, no_baseline, tmp_path, how):
    from biozoo.runtime.commands import predict_files as pf

    model = models("unet2d")
    x, valid = _image_and_mask()
    np.save(tmp_path / "in.npy", x)
    options = {"ignore_value": 0.0} if how == "ignore" else {"mask": str(tmp_path / how)}
    if how != "ignore":
        _save_mask(tmp_path / how, valid)
    args = dict(device="cpu", quiet=True, **options)
    lazy = pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "lazy" / "p.npy",
                            memory=str(_budget(model, x)), **args)
    whole = pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "whole" / "p.npy", **args)
    assert lazy["items"][0].get("streamed") is True and not whole["items"][0].get("streamed")
    got, want = np.load(tmp_path / "lazy" / "p.npy"), np.load(tmp_path / "whole" / "p.npy")
    np.testing.assert_array_equal(got, want)
    assert (got[~valid] == 0).all() and (got[valid] > 0).all()  # masked outputs: background (a probability)
    streamed_entry, memory_entry = _checks(lazy)["masked-normalization"], _checks(whole)["masked-normalization"]
    assert streamed_entry["status"] == memory_entry["status"] == "ok"
    assert streamed_entry["message"] == memory_entry["message"] and "excluded" in streamed_entry["message"]
    assert sorted(p.name for p in (tmp_path / "lazy").iterdir()) == ["p.npy"]  # no temporary left behind


def _stardist_package(tmp_path):
    from tests import packages

    return packages.build_package("stardist_maps", tmp_path / "package")


def test_streamed_masked_stardist_labels_equal_the_in_memory_ones(no_baseline, tmp_path):
    """In memory the labels are masked after stardist_postprocessing (objects cut at the mask, not removed), the
    maps filled before it: block by block gives the same labels."""
    from tests.packages import star_maps
    from biozoo.runtime import load
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.commands.memory_plan import streamed_held

    package = _stardist_package(tmp_path)
    maps = star_maps(520, 500, count=250, seed=5)  # blocks need 96 px of context past their cores
    valid = np.ones((520, 500), bool)
    valid[60:300, 100:350] = False
    np.save(tmp_path / "maps.npy", maps)
    np.save(tmp_path / "mask.npy", valid)
    model = load(package, device="cpu")
    budget = 340 * 340 * memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine)) \
        + streamed_held(maps.size, True)
    args = dict(axes="yxc", device="cpu", quiet=True, mask=str(tmp_path / "mask.npy"))
    lazy = pf.predict_files(str(package), [str(tmp_path / "maps.npy")], tmp_path / "lazy.npy", memory=f"{budget}B",
                            **args)
    pf.predict_files(str(package), [str(tmp_path / "maps.npy")], tmp_path / "whole.npy", **args)
    assert lazy["items"][0].get("streamed")
    got, want = np.load(tmp_path / "lazy.npy"), np.load(tmp_path / "whole.npy")
    assert want.max() > 100 and not want[~valid].any()
    np.testing.assert_array_equal(got, want)


def test_masked_prediction_on_dask_equals_the_in_memory_one(models, rdf, tmp_path):
    """Two local workers: each rebuilds the mask from the job (the mask file's path, the driver's fill values)."""
    pytest.importorskip("distributed")
    from biozoo.runtime.commands.predict_files import predict_files

    x, valid = _image_and_mask(seed=4)
    np.save(tmp_path / "in.npy", x)
    _save_mask(tmp_path / "mask.tif", valid)
    args = dict(device="cpu", quiet=True, mask=str(tmp_path / "mask.tif"))
    summary = predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "dask.npy", tile="96,96",
                            workers=2, **args)
    predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "whole.npy", **args)
    assert summary["items"][0]["distributed"]["blocks"] > 4
    assert _checks(summary)["masked-normalization"]["status"] == "ok"
    np.testing.assert_array_equal(np.load(tmp_path / "dask.npy"), np.load(tmp_path / "whole.npy"))


@pytest.mark.parametrize("case", ["shape", "empty"])
def test_mask_errors_are_the_in_memory_ones_and_write_nothing(models, rdf, no_baseline, tmp_path, case):
    from biozoo.runtime.commands import predict_files as pf

    model = models("unet2d")
    x, _ = _image_and_mask()
    np.save(tmp_path / "in.npy", x)
    mask = np.zeros((300, 280), np.uint8) if case == "empty" else np.ones((280, 300), np.uint8)
    np.save(tmp_path / "mask.npy", mask)
    messages = []
    for memory_arg in (str(_budget(model, x)), None):
        out = tmp_path / f"out-{memory_arg is None}"
        out.mkdir()
        with pytest.raises(InputError) as e:
            pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], out / "p.npy", device="cpu", quiet=True,
                             mask=str(tmp_path / "mask.npy"), memory=memory_arg)
        messages.append(str(e.value))
        assert list(out.iterdir()) == []
    assert messages[0] == messages[1]
    expected = "leaves no valid pixel in sample(s) [0]" if case == "empty" else "--mask has shape (280, 300)"
    assert expected in messages[0], messages[0]


def test_a_mask_that_excludes_nothing_changes_nothing(models, rdf, no_baseline, tmp_path):
    from biozoo.runtime.commands import predict_files as pf

    model = models("unet2d")
    x = (np.random.default_rng(2).random((300, 280)) * 200 + 10).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "mask.npy", np.ones(x.shape, np.uint8))
    summary = pf.predict_files(str(rdf("unet2d")), [str(tmp_path / "in.npy")], tmp_path / "p.npy", device="cpu",
                               quiet=True, mask=str(tmp_path / "mask.npy"), memory=str(_budget(model, x)))
    assert summary["items"][0].get("streamed") and "0.0% of the pixels" in _checks(summary)["masked-normalization"][
        "message"]
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), model.predict(x, axes="yx"))


def test_the_streamed_fill_reads_regions_like_the_whole_image(models):
    """FilledInput and ValidMask on regions (ints, strides, a 3-channel --ignore-value mask, two samples) against
    masking.fill_masked / mask_from_value on the whole array."""
    from biozoo.runtime.checks import masking
    from biozoo.runtime.commands.streamed_masks import FilledInput, MaskedRun, MaskSpec, ValidMask
    from biozoo.runtime.engine.streaming import LazyView

    rng = np.random.default_rng(9)
    x = (rng.random((2, 3, 40, 50)) * 10).astype(np.float32)
    x[:, :, 5:20, 10:30] = 7.0
    tensor = models("unet2d").description.inputs[0]  # b, c, y, x
    valid_whole = masking.mask_from_value(x, tensor, 7.0)
    filled = masking.fill_masked(x, valid_whole, tensor)
    fill = np.stack([[np.median(x[b, c][valid_whole[b, 0]]) for c in range(3)] for b in range(2)]).astype(
        np.float32)[..., None, None]
    valid = ValidMask(LazyView(x), "value", (1,), 0, 7.0)
    lazy = FilledInput(LazyView(x), valid, MaskedRun(MaskSpec(None, 7.0), fill, 0.1), (2, 3))
    for key in [(slice(None),), (1, slice(1, 3), slice(3, 33, 2)), (slice(0, 2), 0, 7), (Ellipsis, slice(4, 9))]:
        np.testing.assert_array_equal(np.asarray(lazy[key]), filled[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(valid[0, 0, 3:22]), valid_whole[0, 0, 3:22])


class _Counting:
    """A lazily read array that counts the elements read (a key of ints and whole axes is a view)."""

    def __init__(self, data: np.ndarray, counter: list):
        self.data, self.shape, self.ndim, self.size, self.counter = data, data.shape, data.ndim, data.size, counter

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if all(isinstance(k, int) or k == slice(None) for k in key):
            return _Counting(self.data[key], self.counter)
        self.counter[0] += np.size(self.data[key])
        return self.data[key]


def test_masked_statistics_and_the_fill_share_three_reads_of_the_image():
    """Normalization over (channel, y, x) and the fill's median over (y, x) of a one-channel image share their
    passes: the image is read three times, the mask four (its count first), whatever the number of measures."""
    rng = np.random.default_rng(6)
    x = (rng.random((1, 1, 300, 200)) * 1e3).astype(np.float32)
    valid = _holes((1, 1, 300, 200), seed=6)
    reads, mask_reads = [0], [0]
    red = ("channel", "y", "x")
    ms = [Measure("raw", "mean", red), Measure("raw", "std", red), Measure("raw", "quantile", red, 0.01),
          Measure("raw", "quantile", red, 0.998), Measure("raw", "quantile", ("y", "x"), 0.5, "median")]
    got = streamed_measures(ms, {"raw": (_Counting(x, reads), AXES)}, chunk=7000,
                            masks={"raw": _Counting(valid, mask_reads)})
    assert 3 * x.size <= reads[0] < 4 * x.size and mask_reads[0] == 4 * valid.size
    want = StatsContext({"raw": (x, AXES)}, None, {"raw": valid})
    for m in ms[:4]:
        np.testing.assert_array_equal(got[m].astype(np.float32), want.get(m, AXES))
