"""bench reports measured ratios (never asserted as timings); ops follow the spec on hand-checkable cases."""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime.commands.bench import run_bench
from biozoo.runtime.errors import PackageError
from biozoo.runtime.format.description import Processing
from biozoo.runtime.ops import OPS, build_op
from biozoo.runtime.ops.stats import StatsContext


def test_bench_measures_both_contenders(models):
    result = run_bench(models("unet2d"), size=96, runs=2)
    assert result["input_shape"] == [1, 1, 96, 96]
    assert result["biozoo_s"] > 0 and result["raw_onnxruntime_s"] > 0
    assert result["ratio_biozoo_over_raw"] == pytest.approx(result["biozoo_s"] / result["raw_onnxruntime_s"])


def _tensor(models):
    return models("softmax3").description.inputs[0]  # axes batch, channel(2), y, x


def _apply(models, op_id, kwargs, x):
    t = _tensor(models)
    ids = tuple(a.id for a in t.axes)
    op = build_op(Processing(op_id, kwargs), t, "test")
    return op(x, ids, StatsContext({t.id: (x, ids)}))


def test_every_spec_op_is_registered():
    assert set(OPS) == {
        "binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear", "scale_range",
        "sigmoid", "softmax", "zero_mean_unit_variance", "scale_mean_variance", "stardist_postprocessing",
    }


def test_along_axis_ops_use_one_value_per_channel(models):
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    out = _apply(models, "binarize", {"axis": "channel", "threshold": [5.0, 30.0]}, x)
    np.testing.assert_array_equal(out[:, 0], x[:, 0] > 5)
    np.testing.assert_array_equal(out[:, 1], x[:, 1] > 30)
    out = _apply(models, "scale_linear", {"axis": "channel", "gain": [1.0, 2.0], "offset": [0.0, -1.0]}, x)
    np.testing.assert_allclose(out[:, 1], x[:, 1] * 2 - 1)
    out = _apply(models, "fixed_zero_mean_unit_variance", {"axis": "channel", "mean": [1.0, 2.0], "std": [2.0, 4.0]}, x)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] - 2) / (4 + 1e-6), rtol=1e-6)


def test_per_sample_vs_dataset_statistics(models):
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(0, 1, (2, 8, 8)), rng.normal(50, 10, (2, 8, 8))]).astype(np.float32)
    per_sample = _apply(models, "zero_mean_unit_variance", {"axes": ["channel", "y", "x"]}, x)
    np.testing.assert_allclose(per_sample.reshape(2, -1).mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(per_sample.reshape(2, -1).std(axis=1), 1, atol=1e-4)
    dataset = _apply(models, "zero_mean_unit_variance", {"axes": ["batch", "channel", "y", "x"]}, x)
    np.testing.assert_allclose(dataset, (x - x.mean()) / (x.std() + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_apply(models, "zero_mean_unit_variance", {}, x), dataset, rtol=1e-6)


def test_scale_range_and_clip_percentiles(models):
    x = np.random.default_rng(1).uniform(0, 100, (1, 2, 10, 10)).astype(np.float32)
    out = _apply(models, "scale_range", {"axes": ["y", "x"], "min_percentile": 0, "max_percentile": 100}, x)
    np.testing.assert_allclose(out.min(axis=(2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=(2, 3)), 1, atol=1e-5)
    clipped = _apply(models, "clip", {"min_percentile": 10, "max_percentile": 90, "axes": ["y", "x"]}, x)
    for c in range(2):
        lo, hi = np.quantile(x[0, c], [0.1, 0.9], method="inverted_cdf")
        np.testing.assert_allclose([clipped[0, c].min(), clipped[0, c].max()], [lo, hi])


def test_softmax_and_sigmoid(models):
    x = np.random.default_rng(2).normal(0, 3, (1, 2, 4, 4)).astype(np.float32)
    soft = _apply(models, "softmax", {"axis": "channel"}, x)
    np.testing.assert_allclose(soft.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(_apply(models, "sigmoid", {}, x), 1 / (1 + np.exp(-x)), rtol=1e-6)


def test_bad_kwargs_are_package_errors(models):
    with pytest.raises(PackageError, match="unexpected kwargs"):
        _apply(models, "sigmoid", {"strength": 2}, np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(PackageError, match="softmax axis 'z'"):
        _apply(models, "softmax", {"axis": "z"}, np.zeros((1, 2, 2, 2), np.float32))


@pytest.mark.parametrize("method", ["linear", "inverted_cdf"])
def test_an_ops_quantiles_are_computed_in_one_pass_with_the_same_values(method, monkeypatch):
    from biozoo.runtime.ops import stats
    from biozoo.runtime.ops.stats import Measure, StatsContext

    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 30.0, (1, 2, 96, 80)).astype(np.float32)
    axes = ("batch", "channel", "y", "x")
    measures = [Measure("raw", "quantile", ("y", "x"), q, method) for q in (0.01, 0.5, 0.998)]
    separate = StatsContext({"raw": (x, axes)})
    expected = [separate.get(m, axes) for m in measures]
    calls = []
    real = stats.quantiles
    monkeypatch.setattr(stats, "quantiles", lambda *a: calls.append(a[1]) or real(*a))
    shared = StatsContext({"raw": (x, axes)})
    shared.prefetch(measures)
    got = [shared.get(m, axes) for m in measures]
    assert calls == [[0.01, 0.5, 0.998]]  # one copy of the data for all three
    for m, e, g in zip(measures, expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape and np.array_equal(g, e)
        assert np.array_equal(g, np.quantile(x, [m.q], axis=(2, 3), keepdims=True, method=method)[0].astype(np.float32))


@pytest.mark.parametrize("method", ["linear", "inverted_cdf"])
def test_quantiles_by_successive_partitions_equal_numpys(method):
    """order_statistics.quantiles against np.quantile (quantiles as an array, as bioimageio.core asks): the same
    float64 bits over every axis choice, on crowded ties, a single element, huge values, and NaN."""
    from biozoo.runtime.ops.order_statistics import quantiles

    rng = np.random.default_rng(1)
    sparse = np.where(rng.random((2, 3, 40, 30)) < 0.9, 0, rng.random((2, 3, 40, 30))).astype(np.float32)
    cases = [rng.random((1, 1, 300, 200), dtype=np.float32) * 1000, sparse,
             rng.integers(0, 5, (1, 2, 50, 50)).astype(np.float32), rng.random((1, 1, 1, 1), dtype=np.float32),
             rng.standard_normal((4, 33, 65), dtype=np.float32) * 1e6]
    qs = [0.0, 0.01, 0.0100001, 0.3, 0.5, 0.77, 0.998, 0.999999, 1.0]
    for x in cases:
        for idx in [tuple(range(x.ndim)), tuple(range(1, x.ndim)), (x.ndim - 1,), (0, x.ndim - 1)]:
            got = quantiles(x, qs, idx, method)
            want = np.quantile(x, qs, axis=idx, keepdims=True, method=method).astype(np.float64)
            assert got.shape == want.shape and np.array_equal(got, want), (x.shape, idx)
    sparse[0, 0, 5, 5] = np.nan
    np.testing.assert_array_equal(quantiles(sparse, [0.5], (1, 2, 3), method),
                                  np.quantile(sparse, [0.5], axis=(1, 2, 3), keepdims=True, method=method))
