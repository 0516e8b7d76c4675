"""The out-of-distribution check (runtime/checks/reliability.py) and its agreement measures (agreement.py)."""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime.checks import agreement as A
from biozoo.runtime.checks import reliability
from tests import packages


def _labels(rng, size=96, count=12, radius=(4, 9)):
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((size, size), np.int32)
    for k in range(1, count + 1):
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(*radius)
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k * 7  # sparse ids: the measure must not care
    return out


def test_instance_f1_equals_the_optimal_matching_of_zoo_metrics():
    pytest.importorskip("scipy")
    from biozoo.zoo.matching import match

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _labels(rng), _labels(rng)
        b[rng.random(b.shape) < 0.02] = 0
        shifted = np.roll(a, int(rng.integers(0, 4)), axis=1)
        for x, y in ((a, b), (a, shifted), (a, a)):
            assert A.instance_f1(x, y) == pytest.approx(match(x, y)[0].as_dict()["f1"])


def test_pooled_agreement_counts_objects_over_regions():
    rng = np.random.default_rng(1)
    a, b = _labels(rng, 128, 20), _labels(rng, 128, 20)
    halves = [(a[:, :64], b[:, :64]), (a[:, 64:], b[:, 64:])]
    matched = [A.matched_objects(x, y) for x, y in halves]
    f1 = A.f1_of(*np.sum(matched, axis=0))
    assert A.pooled("labels", halves) == pytest.approx((f1 + A.pooled("mask", halves)) / 2)
    assert A.pooled("mask", [(a, a)]) == 1.0 and A.pooled("labels", [(a, a)]) == 1.0
    assert A.pooled("mask", [(np.zeros((4, 4)), np.zeros((4, 4)))]) == 1.0  # nothing in either: they agree
    assert A.agreement(a, np.zeros_like(a), "labels") == 0.0


def test_image_agreement_is_one_for_equal_images_and_drops_with_the_error():
    rng = np.random.default_rng(2)
    x = rng.random((64, 64)).astype(np.float32)
    assert A.image_agreement(x, x) == 1.0
    assert A.image_agreement(x, x + 0.01) > A.image_agreement(x, x + 0.1) > A.image_agreement(x, x + 0.5)


def test_crops_stay_inside_the_image_on_the_axis_step_within_the_cost(tmp_path, monkeypatch):
    from biozoo.runtime import load

    model = load(packages.build_package("unet2d", tmp_path))
    assert reliability.plan_crops(model.engine, (1, 1, 512, 512)) == []  # small: the whole image, flipped once
    margin = reliability.crop_margins(model.engine, (1, 1, 2048, 1536))
    assert margin == {2: 16, 3: 16}  # unet2d: halo 16, step 8: a 288^2 crop costs less than two of 256^2
    for m in (None, margin):
        crops = reliability.plan_crops(model.engine, (1, 1, 2048, 1536), margin=m)
        assert 2 <= len(crops) <= reliability.MAX_CROPS  # at least two, whichever way they are compared
        runs = 2 if m is None else 1  # as it is and flipped, or flipped only (compared with the prediction)
        pixels = sum(runs * (c[2].stop - c[2].start) * (c[3].stop - c[3].start) for c in crops)
        assert pixels <= max(reliability.COST_FRACTION * 2048 * 1536, reliability.MIN_RUN_PIXELS)
        for c in crops:
            for axis, n in ((2, 2048), (3, 1536)):
                assert 0 <= c[axis].start < c[axis].stop <= n and c[axis].start % 8 == 0  # unet2d: step 8
                assert c[axis].stop - c[axis].start == reliability.CROP_SIDE + 2 * (m or {}).get(axis, 0)
    monkeypatch.setattr(reliability, "margins", lambda engine: {2: 56, 3: 56})  # a StarDist-like halo
    assert reliability.crop_margins(model.engine, (1, 1, 2048, 1536)) is None  # 368^2 > 2 x 256^2: run twice


@pytest.fixture(scope="module")
def skewseg(tmp_path_factory):
    from biozoo.runtime import load

    return load(packages.build_package("skewseg", tmp_path_factory.mktemp("skewseg")), device="cpu")


def _result(prediction):
    return next(r for r in prediction.report.as_list() if r["name"] == reliability.NAME)


def test_quiet_on_images_like_the_test_input(skewseg):
    x = packages.blob_image(np.random.default_rng(5), 128, 6, 12)
    result = _result(skewseg.predict_with_report(x[0, 0], axes="yx"))
    assert result["status"] == "ok", result
    assert result["reference_source"] == "measured on the package's test tensors"
    assert result["agreement"] >= result["limit"] and result["reference_agreement"] > 0.75


def test_warns_with_the_numbers_when_the_prediction_does_not_survive_a_flip(skewseg):
    x = np.random.default_rng(6).random((128, 128)).astype(np.float32) * 200  # fine texture: the skew term rules
    result = _result(skewseg.predict_with_report(x, axes="yx"))
    assert result["status"] == "warning", result
    assert result["agreement"] < result["limit"] < result["reference_agreement"]
    assert f"{result['agreement']:.3f}" in result["message"] and "out of its depth" in result["message"]
    with pytest.warns(UserWarning, match="out-of-distribution"):
        skewseg.predict(x, axes="yx")


def test_a_recorded_reference_is_used_and_the_check_can_be_turned_off(skewseg, tmp_path):
    x = packages.blob_image(np.random.default_rng(7), 128, 6, 12)[0, 0]
    off = _result(skewseg.predict_with_report(x, axes="yx", skip_checks=[reliability.NAME]))
    assert off["status"] == "skipped" and "--no-check" in off["message"]
    training = skewseg.description.config["biozoo"]["training"]
    training["out_of_distribution"] = {"flip_agreement": {"prob": {"agreement": 1.0}}, "measured_on": "3 images"}
    try:
        result = _result(skewseg.predict_with_report(x, axes="yx"))
    finally:
        del training["out_of_distribution"]
    assert result["reference_source"] == "3 images" and result["reference_agreement"] == 1.0
    for hostile in (float("nan"), "0.9", 7.0, True, {"agreement": 1}, None):  # a package's record is untrusted
        training["out_of_distribution"] = {"flip_agreement": {"prob": {"agreement": hostile}}}
        try:
            result = _result(skewseg.predict_with_report(x, axes="yx"))
        finally:
            del training["out_of_distribution"]
        assert result["status"] == "skipped" and "not a number from 0 to 1" in result["message"], hostile


def test_blob_segmenter_is_flip_equivariant_on_any_input(tmp_path):
    from biozoo.runtime import load

    model = load(packages.build_package("blobseg", tmp_path), device="cpu")
    x = np.random.default_rng(8).random((80, 80)).astype(np.float32)
    result = _result(model.predict_with_report(x, axes="yx"))
    assert result["status"] == "ok" and result["agreement"] > 0.95


def _streamed_check(model, x: np.ndarray, tmp_path, monkeypatch, tile_side: int) -> dict:
    """The check's result of `biozoo predict` on x saved as .npy, streamed (a memory budget for tiles of about
    tile_side^2)."""
    from biozoo.runtime.commands import predict_files as pf
    from biozoo.runtime.commands.memory_plan import streamed_held
    from biozoo.runtime.engine import memory

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # budgets mean bytes for tiles and arrays only
    np.save(tmp_path / "in.npy", x)
    per_pixel = memory.tile_bytes_per_pixel(model.engine, memory.activation_profile(model.engine))
    summary = pf.predict_files(str(model.package.rdf_path), [str(tmp_path / "in.npy")],
                               tmp_path / "out" / "pred.npy", device="cpu", quiet=True,
                               memory=str(tile_side * tile_side * per_pixel + streamed_held(x.size)))
    assert summary["items"][0].get("streamed") is True
    return next(c for c in summary["checks"] if c["name"] == reliability.NAME)


@pytest.mark.parametrize("texture", ["blobs", "noise"])
def test_streamed_images_are_checked_on_crops_normalized_like_the_tiles(skewseg, tmp_path, monkeypatch, texture):
    """Above the memory budget the image is predicted tile by tile; the check reads its crops lazily, normalizes
    them with the whole image's statistics and finds what the in-memory check finds."""
    rng = np.random.default_rng(9)
    x = packages.blob_image(rng, 320, 10, 12)[0, 0] if texture == "blobs" else (rng.random((320, 320)) * 200
                                                                                ).astype(np.float32)
    streamed = _streamed_check(skewseg, x, tmp_path, monkeypatch, 96)
    in_memory = _result(skewseg.predict_with_report(x, axes="yx"))
    assert streamed["status"] == in_memory["status"] == ("ok" if texture == "blobs" else "warning"), streamed
    assert streamed["agreement"] == pytest.approx(in_memory["agreement"], abs=1e-3)


@pytest.mark.parametrize("texture", ["blobs", "noise"])
def test_large_images_compare_flipped_crops_with_the_prediction_in_memory_and_streamed(skewseg, tmp_path,
                                                                                       monkeypatch, texture):
    """Above MIN_RUN_PIXELS the crops are predicted flipped only and compared inside their margins with the
    prediction (read back from the written output when streamed): the same verdicts as on whole images, the same
    numbers in memory and streamed, and one extra run per crop."""
    rng = np.random.default_rng(11)
    side = 900
    x = packages.blob_image(rng, side, 120, 12)[0, 0] if texture == "blobs" else (rng.random((side, side)) * 200
                                                                                  ).astype(np.float32)
    reliability.reference(skewseg.engine)  # taken once per package (on its test tensors): not counted below
    calls = []
    run = skewseg.engine.run_processed
    monkeypatch.setattr(skewseg.engine, "run_processed", lambda *a, **k: calls.append(1) or run(*a, **k))
    in_memory = _result(skewseg.predict_with_report(x, axes="yx"))
    monkeypatch.undo()
    assert in_memory["crops"] >= 2 and len(calls) == 1 + in_memory["crops"], (in_memory, len(calls))
    assert in_memory["pixels"] == in_memory["crops"] * reliability.CROP_SIDE ** 2  # the margins are not compared
    assert in_memory["status"] == ("ok" if texture == "blobs" else "warning"), in_memory
    streamed = _streamed_check(skewseg, x, tmp_path, monkeypatch, 192)
    assert streamed["status"] == in_memory["status"] and streamed["crops"] == in_memory["crops"], streamed
    assert streamed["agreement"] == pytest.approx(in_memory["agreement"], abs=2e-3)


def test_post_processing_with_batch_statistics_is_compared_with_a_run_of_the_same_sample(models):
    """The dataset_stats fixture scales its output with statistics over the whole batch: the prediction of a batch
    of two cannot stand for sample 0 alone (it compared at 0.000 before), so sample 0 is run again."""
    rng = np.random.default_rng(0)
    dim = (rng.random((48, 48)) * 200 + 10).astype(np.float32)
    p = models("dataset_stats").predict_with_report(np.stack([dim, dim * 10]), axes="byx")
    result = _result(p)
    assert result["status"] == "ok" and result["agreement"] > 0.5, result
