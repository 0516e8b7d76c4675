"""Input checks (issue 6), Python API: each check fires on a realistic case and stays quiet on a clean input.

Fixture packages (tests/packages.py): `blobseg` is a deterministic blob segmenter (7 box filters, receptive field
15 px) with a config.biozoo block (trained at 0.5 um, discs of radius 5); `batch_mixing` / `bn_train` mix the
samples of a batch; the standard kinds stand in for third-party packages (no config.biozoo).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

from tests import packages
from biozoo.runtime import InputError, load
from biozoo.runtime.checks import CHECKS, InputWarning, parse_no_check
from biozoo.runtime.checks.masking import detect_constant_regions
from biozoo.runtime.checks.objects import label
from biozoo.runtime.checks.pixelsize import parse_pixel_size, read_pixel_size
from biozoo.runtime.checks.resample import resample
from biozoo.runtime.ops.stats import DatasetStatistics, Measure, StatsContext


@pytest.fixture(scope="session")
def extra(tmp_path_factory):
    """extra("blobseg") -> loaded Model of a fixture kind outside packages.KINDS (built once per session)."""
    dest = tmp_path_factory.mktemp("check-packages")
    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = load(packages.build_package(kind, dest), device="cpu")
        return cache[kind]

    return get


def blobs(seed=0, size=128, count=20, radius=5.0, **kw) -> np.ndarray:
    return packages.blob_image(np.random.default_rng(seed), size, count, radius, **kw)[0, 0]


def by_name(prediction) -> dict:
    return {r["name"]: r for r in prediction.report.as_list()}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ------------------------------------------------------------------ building blocks
def test_no_check_names_are_validated():
    assert parse_no_check(["pixel-size", "receptive-field,batch-effects"]) == {
        "pixel-size", "receptive-field", "batch-effects"}
    with pytest.raises(InputError) as e:
        parse_no_check(["pixel-sise"])
    assert "did you mean 'pixel-size'" in str(e.value)
    assert all(name in str(e.value) for name in CHECKS)


def test_pixel_size_arguments():
    assert parse_pixel_size("0.65,0.325", ["y", "x"]) == {"y": 0.65, "x": 0.325}
    assert parse_pixel_size("325nm", ["y", "x"]) == pytest.approx({"y": 0.325, "x": 0.325})
    assert parse_pixel_size({"x": 0.5}, ["y", "x"]) == {"x": 0.5}
    for bad in ("0.5,0.5,0.5", "abc", "-1", "3 parsecs"):
        with pytest.raises(InputError):
            parse_pixel_size(bad, ["y", "x"])


@pytest.mark.parametrize("kind, expected", [
    ("imagej", {"y": 0.25, "x": 0.4}),
    ("ome", {"y": 0.5, "x": 0.5}),
    ("ome-nm", {"y": 0.2, "x": 0.2}),
    ("centimeter", {"y": 0.5, "x": 0.5}),
    ("plain", None),  # tifffile's default: resolution 1/1 without unit
    ("72dpi", None),  # a screen default in inches is not a measurement
])
def test_pixel_size_from_tiff_metadata(tmp_path, kind, expected):
    x = np.zeros((16, 16), np.uint16)
    path = tmp_path / f"{kind}.tif"
    if kind == "imagej":
        tifffile.imwrite(path, x, imagej=True, resolution=(1 / 0.4, 1 / 0.25), metadata={"unit": "micron"})
    elif kind.startswith("ome"):
        unit, value = ("nm", 200.0) if kind == "ome-nm" else ("µm", 0.5)
        tifffile.imwrite(path, x, ome=True, metadata={"axes": "YX", "PhysicalSizeX": value, "PhysicalSizeY": value,
                                                       "PhysicalSizeXUnit": unit, "PhysicalSizeYUnit": unit})
    elif kind == "centimeter":
        tifffile.imwrite(path, x, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    elif kind == "72dpi":
        tifffile.imwrite(path, x, resolution=(72, 72), resolutionunit="INCH")
    else:
        tifffile.imwrite(path, x)
    got = read_pixel_size(path)
    assert got == (None if expected is None else pytest.approx(expected))


def test_resample_round_trip_and_labels():
    ramp = np.add.outer(np.arange(20.0), np.arange(30.0)).astype(np.float32)
    up = resample(ramp, {0: 40, 1: 60}, "linear")
    assert up.shape == (40, 60) and up.dtype == np.float32
    back = resample(up, {0: 20, 1: 30}, "linear")
    assert np.abs(back - ramp)[1:-1, 1:-1].max() < 1e-4  # linear data survives linear resampling (inside)
    labels = np.random.default_rng(0).integers(0, 5, (20, 30)).astype(np.uint16)
    big = resample(labels, {0: 40, 1: 60}, "nearest")
    assert big.dtype == np.uint16 and set(np.unique(big)) <= set(np.unique(labels))
    assert np.array_equal(resample(big, {0: 20, 1: 30}, "nearest"), labels)


@pytest.mark.parametrize("shape", [(64, 80), (12, 20, 24), (1, 9)])
def test_labelling_matches_scipy(shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(len(shape))
    fg = rng.random(shape) < 0.45
    mine, n = label(fg)
    ref, m = ndimage.label(fg)
    assert n == m
    # the same partition: a one-to-one map between label values
    pairs = set(zip(mine[fg].tolist(), ref[fg].tolist()))
    assert len(pairs) == n and len({a for a, _ in pairs}) == n and len({b for _, b in pairs}) == n


def test_masked_statistics_use_only_valid_pixels():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (2, 1, 32, 32)).astype(np.float32)
    valid = rng.random((2, 1, 32, 32)) > 0.3
    x[~valid] = 0.0
    axes = ("batch", "channel", "y", "x")
    per_sample = (Measure("raw", "quantile", ("channel", "y", "x"), 0.9), Measure("raw", "mean", ("channel", "y", "x")))
    ctx = StatsContext({"raw": (x, axes)}, masks={"raw": valid})
    for b in range(2):
        values = x[b][valid[b]]
        assert ctx.get(per_sample[0], axes)[b].item() == pytest.approx(np.quantile(values, 0.9), rel=1e-5)
        assert ctx.get(per_sample[1], axes)[b].item() == pytest.approx(values.mean(), rel=1e-5)
    dataset = DatasetStatistics([Measure("raw", "mean", None), Measure("raw", "std", None)])
    dataset.update({"raw": (x[:1], axes)}, {"raw": valid[:1]})
    dataset.update({"raw": (x[1:], axes)}, {"raw": valid[1:]})
    assert dataset.value(Measure("raw", "mean", None)).item() == pytest.approx(x[valid].mean(), rel=1e-6)
    assert dataset.value(Measure("raw", "std", None)).item() == pytest.approx(x[valid].std(), rel=1e-6)


def test_constant_region_detection(extra):
    t = extra("blobseg").description.inputs[0]
    clean = blobs()[None, None]
    assert detect_constant_regions(clean, t)[0] is None
    # a dark background clipped at 0 (30-50% zeros, scattered) is not a blacked-out region
    clipped = np.clip(np.random.default_rng(2).normal(0.3, 1.0, (1, 1, 128, 128)), 0, None).astype(np.float32)
    assert (clipped == 0).mean() > 0.3
    assert detect_constant_regions(clipped, t)[0] is None
    bordered = clean.copy()
    bordered[..., :, 80:] = 0.0
    saturated = clean.copy()
    saturated[..., :40, :] = 4095.0
    for img, kind, fraction in ((bordered, "zero", 48 / 128), (saturated, "saturated", 40 / 128)):
        valid, numbers = detect_constant_regions(img, t)
        assert valid is not None and numbers["regions"][0]["kind"] == kind
        assert 1 - valid.mean() == pytest.approx(fraction, abs=0.01)


# ------------------------------------------------------------------ the checks, each firing and quiet
def test_clean_input_passes_every_check(extra):
    p = extra("blobseg").predict_with_report(blobs(), "yx", pixel_size=0.5)
    statuses = {name: r["status"] for name, r in by_name(p).items()}
    assert statuses == {"pixel-size": "ok", "masked-normalization": "ok", "batch-effects": "skipped",
                        "distribution-shift": "ok", "receptive-field": "ok", "out-of-distribution": "ok"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        extra("blobseg").predict(blobs(), "yx", pixel_size="500nm")


def test_pixel_size_mismatch_is_refused_and_rescale_agrees(extra):
    model = extra("blobseg")
    image = blobs(seed=3, radius=7.0, count=12)
    up = np.kron(image, np.ones((2, 2), np.float32))
    with pytest.raises(InputError) as e:
        model.predict(up, "yx", pixel_size=0.25)
    for word in ("0.25 x 0.25", "0.5 x 0.5", "--rescale", "50%"):
        assert word in str(e.value)
    ref = model.predict(image, "yx", pixel_size=0.5) > 0.5
    p = model.predict_with_report(up, "yx", pixel_size=0.25, rescale=True)
    out = p.outputs["prob"][0]
    assert out.shape == (256, 256) and by_name(p)["pixel-size"]["rescaled"]
    assert iou(out > 0.5, np.kron(ref, np.ones((2, 2), bool))) >= 0.9
    # a mismatch within 10% is fine, and --no-check turns the refusal off
    assert by_name(model.predict_with_report(image, "yx", pixel_size=0.53))["pixel-size"]["status"] == "ok"
    p = model.predict_with_report(up, "yx", pixel_size=0.25, skip_checks=["pixel-size"])
    assert by_name(p)["pixel-size"]["status"] == "skipped"


def test_unknown_pixel_size_warns_with_the_training_one(extra, models):
    with pytest.warns(InputWarning, match=r"0\.5 x 0\.5 µm"):
        extra("blobseg").predict(blobs(), "yx")
    with pytest.raises(InputError, match="--pixel-size"):
        extra("blobseg").predict(blobs(), "yx", rescale=True)
    third_party = models("unet2d").predict_with_report(np.ones((64, 64), np.float32), "yx", pixel_size=0.5)
    assert by_name(third_party)["pixel-size"]["status"] == "skipped"


def test_receptive_field(extra):
    model = extra("blobseg")
    small = by_name(model.predict_with_report(blobs(seed=4), "yx", pixel_size=0.5))["receptive-field"]
    assert small["status"] == "ok" and small["median_diameter_px"] < 15
    # the same kind of objects, imaged 3.5x larger (pixel size check off: the file "has no metadata")
    big = blobs(seed=4, size=256, count=5, radius=18.0)
    r = by_name(model.predict_with_report(big, "yx"))["receptive-field"]
    assert r["status"] == "warning" and r["median_diameter_px"] > 15
    assert "15 px" in r["message"] and "ownsample" in r["message"]


def test_receptive_field_of_a_large_image_is_measured_on_its_central_crop(extra):
    """Above RF_CROP px a side the objects are measured in the central crop (bounded cost): too-large objects there
    are found, small ones outside it are not counted."""
    from biozoo.runtime.checks.input_checks import RF_CROP

    model = extra("blobseg")
    side = RF_CROP + 512
    image = np.zeros((side, side), np.float32)
    inner = slice(256, 256 + RF_CROP)
    image[inner, inner] = blobs(seed=6, size=RF_CROP, count=60, radius=18.0)
    image[:200, :200] = blobs(seed=7, size=200, count=40, radius=4.0)  # outside the crop: not counted
    r = by_name(model.predict_with_report(image, "yx", skip_checks=["out-of-distribution"]))["receptive-field"]
    alone = by_name(model.predict_with_report(image[inner, inner], "yx",
                                              skip_checks=["out-of-distribution"]))["receptive-field"]
    assert r["status"] == "warning" and f"central crop of {RF_CROP} px" in r["message"], r["message"]
    assert r["objects"] == alone["objects"] and r["median_diameter_px"] == alone["median_diameter_px"]


def test_masked_normalization_black_border(extra):
    model = extra("blobseg")
    image = blobs(seed=5, size=128, count=24)
    image[:, :64] = 0.0
    alone = model.predict(image[:, 64:], "yx", pixel_size=0.5)
    on = model.predict_with_report(image, "yx", pixel_size=0.5)
    off = model.predict_with_report(image, "yx", pixel_size=0.5, skip_checks=["masked-normalization"])
    r = by_name(on)["masked-normalization"]
    assert r["status"] == "warning" and r["excluded_fraction"] == pytest.approx(0.5, abs=0.01)
    margin = 8  # the model's halo: pixels closer to the border see the filled region
    y_on, y_off = on.outputs["prob"][0], off.outputs["prob"][0]
    assert np.abs(y_on[:, 64 + margin:] - alone[:, margin:]).max() < 1e-4
    assert np.abs(y_off[:, 64 + margin:] - alone[:, margin:]).max() > 1e-2
    assert np.all(y_on[:, :64] == 0)  # probabilities: background where masked


def test_explicit_mask_and_ignore_value(extra, models):
    model = extra("blobseg")
    image = blobs(seed=6)
    image[:20] = 7.0  # a constant stripe too small (15%) for auto-detection
    mask = np.ones(image.shape, np.uint8)
    mask[:20] = 0
    by_mask = model.predict_with_report(image, "yx", pixel_size=0.5, mask=mask)
    by_value = model.predict_with_report(image, "yx", pixel_size=0.5, ignore_value=7.0)
    assert by_name(by_mask)["masked-normalization"]["excluded_fraction"] == pytest.approx(20 / 128, abs=1e-3)
    assert np.array_equal(by_mask.outputs["prob"][0], by_value.outputs["prob"][0])
    with pytest.raises(InputError, match="shape"):
        model.predict(image, "yx", pixel_size=0.5, mask=mask[:10])
    with pytest.raises(InputError, match="no valid pixel"):
        model.predict(image, "yx", pixel_size=0.5, mask=np.zeros_like(mask))
    # a float output that is no probability (scale_range postprocessing) is NaN where masked
    top_masked = np.ones((32, 32), np.uint8)
    top_masked[:8] = 0
    restored = models("dataset_stats").predict(blobs(size=32, count=2), "yx", mask=top_masked)
    assert np.isnan(restored[:8]).all() and np.isfinite(restored[8:]).all()


def test_distribution_shift(extra, models):
    model = extra("blobseg")
    image = blobs(seed=7)
    assert by_name(model.predict_with_report(image, "yx", pixel_size=0.5))["distribution-shift"]["status"] == "ok"
    inverted = by_name(model.predict_with_report(image.max() - image, "yx", pixel_size=0.5))["distribution-shift"]
    assert inverted["status"] == "warning" and inverted["max_deviation"] > 0.5
    assert "p50" in inverted["message"] and "training" in inverted["message"]
    third_party = by_name(models("unet2d").predict_with_report(image[:64, :64], "yx"))["distribution-shift"]
    assert third_party["status"] == "skipped"


def test_batch_effects(models):
    model = models("dataset_stats")  # dataset-wide zero_mean_unit_variance
    frame = blobs(seed=8, size=32, count=3)
    steady = np.stack([frame, blobs(seed=9, size=32, count=3), blobs(seed=10, size=32, count=3)])
    bleached = np.stack([frame, frame * 0.4, frame * 0.15])  # a bleaching time series
    assert by_name(model.predict_with_report(steady, "byx"))["batch-effects"]["status"] == "ok"
    r = by_name(model.predict_with_report(bleached, "byx"))["batch-effects"]
    assert r["status"] == "warning" and r["spread_ratio"] > 2 and "per sample" in r["message"]
    per_sample = by_name(models("unet2d").predict_with_report(steady[:, :, :], "byx"))["batch-effects"]
    assert per_sample["status"] == "skipped"


@pytest.mark.parametrize("kind", ["batch_mixing", "bn_train"])
def test_batch_dependence_fails_test_and_validate(extra, kind):
    pytest.importorskip("torch") if kind == "bn_train" else None
    from biozoo.runtime.commands.validate import validate_package

    model = extra(kind)
    report = model.test()
    check = next(c for c in report["checks"] if c["name"] == "batch-independence")
    assert report["status"] == "failed" and check["status"] == "error"
    assert "batch normalization" in check["message"] and "training mode" in check["message"]
    validated = validate_package(model.package.source)
    assert validated["status"] == "failed"
    assert [c["passed"] for c in validated["checks"] if c["name"] == "batch-independence"] == [False]
    # the same package with the check turned off: only the batch-independence finding made it fail
    assert validate_package(model.package.source, skip_checks=["batch-independence"])["status"] == "passed"


def test_batch_independent_packages_pass(models, extra):
    for model in (models("unet2d"), models("multi_io"), extra("blobseg")):
        report = model.test()
        check = next(c for c in report["checks"] if c["name"] == "batch-independence")
        assert check["status"] == "ok" and report["status"] == "passed", report
    fixed = next(c for c in models("fixed").test()["checks"] if c["name"] == "batch-independence")
    assert fixed["status"] == "skipped" and "batch size 1" in fixed["message"]
