"""The input checks cost little next to the network (issue 12, "Overhead"): their percentile estimates from one
fixed-seed pixel sample stay within the documented error bound, the cheap object measurement equals the exact
labelling, and `biozoo bench` reports the split of predict time. No test here asserts a timing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests import packages
from biozoo.runtime import load
from biozoo.runtime.checks import CHECKS
from biozoo.runtime.checks.estimates import SAMPLE_SIZE, PixelSample, estimate_percentiles, rank_error_bound
from biozoo.runtime.checks.objects import component_sizes, foreground, label

QS = [0.5, 1, 5, 25, 50, 75, 95, 99, 99.8]


def _rank(values: np.ndarray, estimate: float) -> tuple[float, float]:
    """Fraction of values strictly below and at most `estimate` (an estimate's rank lies between them)."""
    return float(np.mean(values < estimate)), float(np.mean(values <= estimate))


@pytest.mark.parametrize("dist", ["normal", "exponential", "bimodal", "integers", "constant_background"])
def test_sampled_percentiles_are_within_the_rank_error_bound(dist):
    rng = np.random.default_rng(3)
    n = 1 << 21  # 32x the sample: an estimate, not the exact value
    x = {"normal": lambda: rng.normal(100, 15, n),
         "exponential": lambda: rng.exponential(3.0, n),
         "bimodal": lambda: np.where(rng.random(n) < 0.9, rng.normal(0, 1, n), rng.normal(50, 2, n)),
         "integers": lambda: rng.integers(0, 12, n).astype(float),
         "constant_background": lambda: np.where(rng.random(n) < 0.7, 0.0, rng.gamma(2.0, 100.0, n))}[dist]()
    x = x.astype(np.float32).reshape(1, 1, 1024, 2048)
    eps = rank_error_bound(SAMPLE_SIZE)
    assert eps < 0.011  # the documented "< 1.1 percentile points" at the default confidence
    got = estimate_percentiles(x, QS)
    flat = x.ravel()
    for q, g in zip(QS, got):
        below, at_most = _rank(flat, g)
        assert below - eps <= q / 100 <= at_most + eps, (dist, q, g, below, at_most)


def test_small_inputs_are_exact_and_the_draw_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 100, 100)).astype(np.float32)
    assert PixelSample(x.shape).exact
    np.testing.assert_allclose(estimate_percentiles(x, QS), np.percentile(x.astype(np.float64), QS))
    big = rng.normal(size=(1024, 1024)).astype(np.float32)
    assert not PixelSample(big.shape).exact
    np.testing.assert_array_equal(estimate_percentiles(big, QS), estimate_percentiles(big, QS))


def test_masked_sample_reads_only_valid_pixels():
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, size=(1, 1, 1024, 1024)).astype(np.float32)
    valid = np.ones((1, 1, 1024, 1024), bool)
    valid[..., :, :400] = False  # a blacked-out band, 39% of the image
    x[~valid] = 1e6
    got = estimate_percentiles(x, [0, 50, 100], valid)
    assert got[-1] < 1e6
    exact = np.percentile(x[valid], 50)
    below, at_most = _rank(x[valid], got[1])
    assert below - rank_error_bound(SAMPLE_SIZE) <= 0.5 <= at_most + rank_error_bound(SAMPLE_SIZE), (got, exact)
    small_valid = np.zeros((1, 1, 1024, 1024), bool)
    small_valid[..., :8, :8] = True  # fewer valid pixels than the sample: exact
    np.testing.assert_allclose(estimate_percentiles(x, [50], small_valid), np.percentile(x[small_valid], 50))


def test_pooled_draw_serves_each_batch_sample():
    rng = np.random.default_rng(2)
    x = np.stack([rng.normal(m, 1, (1, 768, 768)) for m in (0, 100, 200)]).astype(np.float32)  # b, c, y, x
    sample = PixelSample(x.shape, None, SAMPLE_SIZE * 3)
    for b, mean in enumerate((0, 100, 200)):
        p50 = sample.percentiles(x, [50], where=(0, b))[0]
        assert abs(p50 - mean) < 0.05
        below, at_most = _rank(x[b].ravel(), p50)
        assert below - 2 * rank_error_bound(SAMPLE_SIZE) <= 0.5 <= at_most + 2 * rank_error_bound(SAMPLE_SIZE)


@pytest.mark.parametrize("shape", [(9,), (40, 37), (1, 64), (64, 1), (7, 9, 11), (3, 4, 5, 6)])
@pytest.mark.parametrize("density", [0.2, 0.55, 0.9])
def test_component_sizes_equal_the_labelled_sizes(shape, density):
    fg = np.random.default_rng(len(shape)).random(shape) < density
    labels, n = label(fg)
    expected = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    np.testing.assert_array_equal(component_sizes(fg), expected)
    assert labels.max(initial=0) == n and set(np.unique(labels)) == set(range(n + 1)) - ({0} if fg.all() else set())


def test_component_sizes_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    fg = np.random.default_rng(5).random((300, 200)) < 0.5
    ref, n = ndimage.label(fg)
    labels, m = label(fg)
    assert n == m and np.array_equal(labels, ref)
    np.testing.assert_array_equal(component_sizes(fg), np.bincount(ref.ravel())[1:])


def test_foreground_of_class_scores_equals_argmax(models):
    t = models("softmax3").description.outputs[0]
    rng = np.random.default_rng(4)
    channels = next(a for a in t.axes if a.type == "channel")
    shape = [2 if a.type == "batch" else len(channels.channel_names) if a.type == "channel" else 33 for a in t.axes]
    y = rng.random(shape).astype(np.float32)
    fg, how = foreground(y, t)
    if "argmax" in how:
        ch = next(i for i, a in enumerate(t.axes) if a.type == "channel")
        np.testing.assert_array_equal(fg, np.moveaxis(np.argmax(y, axis=ch) != 0, 0, 0))


def test_checks_on_a_large_input_decide_as_the_exact_percentiles(tmp_path):
    """A 1024^2 input (16x the sample): the sampled distribution-shift numbers stay within a hair of the exact ones
    and the verdicts are those of the exact computation."""
    model = load(packages.build_package("blobseg", tmp_path), device="cpu")
    image = packages.blob_image(np.random.default_rng(7), 1024, 400, 5.0)[0, 0]
    for x in (image, image.max() - image):
        report = {r["name"]: r for r in model.predict_with_report(x, "yx", pixel_size=0.5).report.as_list()}
        shift = report["distribution-shift"]
        processed = model.preprocess(model.prepare_inputs(x, "yx")[0])[model.description.inputs[0].id]
        qs = [float(q) for q in shift["percentiles"]]
        exact = np.percentile(processed.astype(np.float64), qs)
        spread = shift["training_values"][-1] - shift["training_values"][0]
        deviation = np.abs(exact - np.array(shift["training_values"])) / spread
        assert np.abs(np.array(shift["input_values"]) - exact).max() < 0.02 * spread
        assert (shift["status"] == "warning") == bool(deviation.max() > 0.5)


def test_bench_json_carries_the_split(rdf, capsys):
    from biozoo.runtime.cli import main

    code = main(["bench", str(rdf("unet2d")), "--size", "96", "--runs", "2", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    split = result["split_s"]
    assert {"network", "preprocessing", "postprocessing_and_tiling", "checks", "other", "total"} <= set(split)
    assert all(v >= 0 for v in split.values()) and split["network"] > 0 and split["checks"] > 0
    assert 0 <= result["checks_fraction"] <= 1
    assert result["ratio_biozoo_over_raw"] == pytest.approx(result["biozoo_s"] / result["raw_onnxruntime_s"])
    assert result["checks"] and all(c.split(":")[0] in CHECKS for c in result["checks"])

    assert main(["bench", str(rdf("unet2d")), "--size", "96", "--runs", "2"]) == 0
    text = capsys.readouterr().out
    assert "network" in text and "checks" in text and "ratio biozoo / raw" in text


def test_constant_region_screen_keeps_the_full_pass_verdicts(models):
    from biozoo.runtime.checks.masking import detect_constant_regions

    t = models("unet2d").description.inputs[0]  # b, c, y, x
    rng = np.random.default_rng(6)
    clean = rng.gamma(2.0, 50.0, (1, 1, 1024, 1024)).astype(np.float32)
    clipped = np.where(rng.random(clean.shape) < 0.1, 0, clean).astype(np.float32)  # 10% isolated zeros
    black = clean.copy()
    black[..., :, :350] = 0  # a 34% blacked-out band
    saturated = clean.copy()
    saturated[..., 700:, :] = clean.max()
    for image in (clean, clipped, black, saturated):
        pixels = PixelSample(image.shape)
        full, numbers = detect_constant_regions(image, t)
        screened, screened_numbers = detect_constant_regions(image, t, pixels)
        assert (full is None) == (screened is None) and numbers == screened_numbers
        if full is not None:
            np.testing.assert_array_equal(full, screened)
    assert detect_constant_regions(black, t, PixelSample(black.shape))[0] is not None
