"""StarDist post-processing: exact polygon overlaps, greedy NMS as stardist's, rendering as skimage, the op.

Synthetic star-convex objects only (random ellipses -> stardist targets + noise); the real-data comparison with
stardist lives in the benchmark and the slow zoo test.
"""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime.errors import PackageError
from biozoo.runtime.format.description import Axis, Processing, Tensor
from biozoo.runtime.ops import stardist as SP
from biozoo.runtime.ops import OPS, build_op
from biozoo.runtime.ops.polygon_overlap import StarPolygons
from tests.synthetic import ellipse_labels

ENGINES = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(SP._jit() is None, reason="numba not installed"))]


def ellipses(shape=(96, 96), count=12, seed=0) -> np.ndarray:
    """Random touching/overlapping ellipses, later ones on top: a label image of star-convex-ish nuclei."""
    return ellipse_labels(shape, count, seed, radii=(3, 11))


def noisy_maps(lab: np.ndarray, n_rays=32, grid=1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    from biozoo.zoo.star_targets import object_probabilities, star_distances

    rng = np.random.default_rng(seed)
    prob = object_probabilities(lab, (grid, grid))
    prob = np.clip(prob + rng.normal(0, 0.08, prob.shape), 0, 1).astype(np.float32)
    dist = star_distances(lab, n_rays, (grid, grid))
    dist = (dist * rng.uniform(0.85, 1.15, dist.shape) + rng.uniform(0, 1, dist.shape)).astype(np.float32)
    return prob, dist


# ---- exact overlaps ---------------------------------------------------------------------------------------------
def _shoelace(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1)))


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: a simple polygon clipped by a convex counter-clockwise one (exact in float64)."""
    out = [tuple(p) for p in subject]
    for a, b in zip(clip, np.roll(clip, -1, axis=0)):
        src, out = out, []
        side = lambda p: (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])  # noqa: E731
        for p, q in zip(src, src[1:] + src[:1]):
            sp, sq = side(p), side(q)
            if sp >= 0:
                out.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not out:
            return np.zeros((0, 2))
    return np.array(out)


def _random_polygons(count, seed, n=16):
    rng = np.random.default_rng(seed)
    points = rng.integers(20, 40, (count, 2))
    dist = rng.uniform(1.5, 14, (count, n)).astype(np.float32)
    return StarPolygons.from_rays(points, dist)


def test_overlap_areas_are_exact_against_convex_clipping():
    polys = _random_polygons(60, seed=1)
    n = polys.edges.shape[1]
    rng = np.random.default_rng(2)
    checked = 0
    for i in np.flatnonzero(polys.star)[:20]:
        centre = polys.points[i, ::-1]
        p = polys.edges[i, :, :2] + centre
        for _ in range(5):  # convex counter-clockwise integer diamonds near P, one vertex repeated up to n
            r = int(rng.integers(2, 12))
            quad = np.array([[r, 0], [0, r], [-r, 0], [0, -r]]) + centre + rng.integers(-8, 9, 2)
            q_xy = np.concatenate([quad, np.repeat(quad[-1:], n - 4, axis=0)])
            both = StarPolygons.from_vertices(np.stack([centre[::-1], quad.mean(0).astype(int)[::-1]]),
                                              np.stack([p, q_xy]))
            exact = abs(_shoelace(_clip_convex(p, quad)))
            area, bound = both.overlap_areas(0, np.array([1]))
            assert abs(area[0] - exact) < 1e-4
            assert np.isfinite(bound[0])
            checked += 1
    assert checked == 100


def test_windowed_and_all_edge_overlaps_agree_and_are_symmetric():
    polys = _random_polygons(80, seed=3)
    star = np.flatnonzero(polys.star & polys.simple)
    for i in star[:15]:
        js = star[star != i]
        a, _ = polys.overlap_areas(i, js)
        saved = polys.star[i]
        polys.star[i] = False  # forces the test of every edge pair
        b, _ = polys.overlap_areas(i, js)
        polys.star[i] = saved
        np.testing.assert_allclose(a, b, atol=1e-5)
        back = np.array([polys.overlap_areas(j, np.array([i]))[0][0] for j in js])
        np.testing.assert_allclose(a, back, atol=1e-4)
        assert (a >= -1e-6).all() and (a <= np.minimum(polys.area[i], polys.area[js]) + 1e-4).all()


def test_clipper_stays_within_the_bound():
    pytest.importorskip("pyclipper")
    polys = _random_polygons(80, seed=4)
    for i in np.flatnonzero(polys.star)[:20]:
        js = np.flatnonzero(polys.simple)
        area, bound = polys.overlap_areas(i, js)
        clipper = np.array([SP._clipper_area(polys.vertices(i), polys.vertices(j)) for j in js])
        assert (np.abs(clipper - area) <= bound).all()


# ---- NMS --------------------------------------------------------------------------------------------------------
def _brute_force_nms(points, dist, thresh):
    """Greedy NMS over every pair, overlap from Clipper on stardist's integer polygons (no prefilter at all)."""
    pytest.importorskip("pyclipper")
    polys = StarPolygons.from_rays(points, dist)
    keep = np.ones(len(points), bool)
    for i in range(len(points)):
        if not keep[i]:
            continue
        for j in range(i + 1, len(points)):
            if keep[j]:
                inter = SP._clipper_area(polys.vertices(i), polys.vertices(j))
                smaller = min(polys.area[i] + 1e-10, polys.area[j] + 1e-10)
                if np.float32(inter / smaller) > np.float32(thresh):
                    keep[j] = False
    return keep


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("nms_thresh", [0.1, 0.4, 0.7])
def test_nms_equals_brute_force_greedy_suppression(nms_thresh, engine):
    prob, dist = noisy_maps(ellipses((48, 48), count=6, seed=5), n_rays=16)
    points, scores, d = SP.candidates(prob, dist, 0.6, b=0)
    assert 50 < len(points) < 400
    keep = SP.suppress(points, d, nms_thresh, engine)
    np.testing.assert_array_equal(keep, _brute_force_nms(points, d, nms_thresh))
    assert 2 <= keep.sum() < len(points)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("grid,b", [(1, 2), (2, 0), (2, ((1, 3), (0, 2)))])
def test_nms_and_labels_equal_stardists(grid, b, engine):
    stardist = pytest.importorskip("stardist")
    prob, dist = noisy_maps(ellipses((128, 96), count=25, seed=grid), grid=grid)
    for pt, nt in ((0.5, 0.4), (0.3, 0.3), (0.7, 0.6)):
        ours = SP.non_maximum_suppression(dist, prob, grid=(grid, grid), b=b, nms_thresh=nt, prob_thresh=pt,
                                          engine=engine)
        theirs = stardist.non_maximum_suppression(dist, prob, grid=(grid, grid), b=b, nms_thresh=nt, prob_thresh=pt)
        for a, c in zip(ours, theirs):
            np.testing.assert_array_equal(a, c)
        shape = (128, 96)
        np.testing.assert_array_equal(SP.polygons_to_label(ours[2], ours[0], shape, prob=ours[1]),
                                      stardist.polygons_to_label(theirs[2], theirs[0], shape, prob=theirs[1]))


def test_candidates_follow_threshold_border_and_order():
    prob = np.zeros((10, 12), np.float32)
    prob[0, 0], prob[5, 6], prob[4, 4], prob[8, 3] = 0.9, 0.7, 0.8, 0.6
    dist = np.ones((10, 12, 4), np.float32)
    points, scores, _ = SP.candidates(prob, dist, 0.5, b=2, grid=(2, 2))
    np.testing.assert_array_equal(points, [[8, 8], [10, 12]])  # (0, 0) and (8, 3) lie in the border
    np.testing.assert_array_equal(scores, np.float32([0.8, 0.7]))
    assert len(SP.candidates(prob, dist, 0.5, b=0)[0]) == 4


@pytest.mark.parametrize("engine", ENGINES)
def test_nms_without_pyclipper_uses_exact_overlaps(monkeypatch, engine):
    prob, dist = noisy_maps(ellipses((64, 64), count=10, seed=7), n_rays=16)
    with_clipper = SP.non_maximum_suppression(dist, prob, nms_thresh=0.4, prob_thresh=0.5, engine=engine)
    monkeypatch.setattr(SP, "_have_pyclipper", lambda: False)
    exact = SP.non_maximum_suppression(dist, prob, nms_thresh=0.4, prob_thresh=0.5, engine=engine)
    np.testing.assert_array_equal(with_clipper[0], exact[0])


def test_the_compiled_and_vectorized_engines_agree_on_messy_maps():
    if SP._jit() is None:
        pytest.skip("numba not installed")
    for seed in range(3):
        prob, dist = noisy_maps(ellipses((80, 80), count=14, seed=20 + seed), n_rays=32, seed=seed)
        for pt, nt in ((0.3, 0.2), (0.5, 0.5), (0.2, 0.8)):
            a = SP.non_maximum_suppression(dist, prob, nms_thresh=nt, prob_thresh=pt, engine="numba")
            b = SP.non_maximum_suppression(dist, prob, nms_thresh=nt, prob_thresh=pt, engine="numpy")
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


# ---- rendering --------------------------------------------------------------------------------------------------
def test_rendering_a_diamond_by_hand():
    # 4 rays of length 2 from (5, 5): vertices (5, 7), (7, 5), (5, 3), (3, 5); pixel centres count when an odd
    # number of edges cross their row to the right (half-open rows: the top vertex row is in, the bottom one out)
    labels = SP.polygons_to_label(np.full((1, 4), 2, np.float32), np.array([[5, 5]]), (10, 10))
    expected = np.zeros((10, 10), np.int32)
    expected[4, 4:6] = expected[5, 3:7] = expected[6, 4:6] = 1
    np.testing.assert_array_equal(labels, expected)


def test_rendering_equals_skimage_and_paints_the_most_probable_on_top():
    draw = pytest.importorskip("skimage.draw")
    rng = np.random.default_rng(8)
    for trial in range(30):
        k, n = int(rng.integers(1, 12)), int(rng.choice([3, 5, 8, 32]))
        points = rng.integers(-5, 60, (k, 2))
        dist = (rng.random((k, n)) * rng.uniform(0.5, 25)).astype(np.float32)
        prob = rng.random(k).astype(np.float32)
        shape = (int(rng.integers(10, 60)), int(rng.integers(10, 60)))
        ours = SP.polygons_to_label(dist, points, shape, prob=prob)
        expected = np.zeros(shape, np.int32)
        rows, cols = SP._render_coords(dist, points)
        for idx in np.argsort(prob, kind="stable"):
            rr, cc = draw.polygon(rows[idx], cols[idx], shape)
            expected[rr, cc] = idx + 1
        np.testing.assert_array_equal(ours, expected)


# ---- the op -----------------------------------------------------------------------------------------------------
def _op(**kwargs):
    axes = (Axis("batch", "batch", None), Axis("channel", "channel", 9), Axis("y", "space", None),
            Axis("x", "space", None))
    tensor = Tensor(id="out", axes=axes, processing=(), test_tensor=None)
    return build_op(Processing("stardist_postprocessing", kwargs), tensor, "outputs[0].postprocessing[0]")


def test_op_turns_network_maps_into_labels_per_sample():
    assert "stardist_postprocessing" in OPS
    lab = ellipses((64, 48), count=8, seed=9)
    prob, dist = noisy_maps(lab, n_rays=8, grid=2)
    x = np.concatenate([prob[None], np.moveaxis(dist, -1, 0)])[None]  # (1, 9, 32, 24)
    op = _op(prob_threshold=0.5, nms_threshold=0.4, n_rays=8, grid=[2, 2], b=0)
    out = op(np.concatenate([x, x[:, :, ::-1]]), ("batch", "channel", "y", "x"), None)
    assert out.shape == (2, 1, 64, 48) and out.dtype == np.int32
    np.testing.assert_array_equal(out[0, 0], SP.instances(prob, dist, 0.5, 0.4, (2, 2), 0))
    assert out[0].max() >= 4 and out[1].max() >= 4
    yxc = op(np.moveaxis(x[0], 0, -1), ("y", "x", "channel"), None)  # other axis orders, no batch
    np.testing.assert_array_equal(yxc[..., 0], out[0, 0])
    labels_axes = (Axis("batch", "batch", None), Axis("channel", "channel", 1, channel_names=("instance",)),
                   Axis("y", "space", None, scale=0.5, halo=7), Axis("x", "space", None, halo=8))
    net = op.network_axes(labels_axes)
    assert [a.size for a in net[:2]] == [None, 9] and net[1].channel_names == ()
    assert [(a.scale, a.halo) for a in net[2:]] == [(1.0, 4), (2.0, 4)]  # on the grid raster


def test_op_refuses_wrong_channels_3d_and_bad_kwargs():
    op = _op(prob_threshold=0.5, nms_threshold=0.4, n_rays=8, grid=[1, 1], b=2)
    with pytest.raises(PackageError, match="gives 5 channels.*needs 9"):
        op(np.zeros((1, 5, 16, 16), np.float32), ("batch", "channel", "y", "x"), None)
    with pytest.raises(PackageError, match="3D"):
        _op(prob_threshold=0.5, nms_threshold=0.4, n_rays=8, grid=[1, 1, 1], b=2, anisotropy=[1, 1, 1])
    with pytest.raises(PackageError, match="unexpected kwargs"):
        _op(prob_threshold=0.5, nms_threshold=0.4, n_rays=8, grid=[1, 1], b=2, probability=0.5)


@pytest.mark.parametrize("size", [(97, 95), (96, 96)])
def test_labels_on_a_grid_2_raster_have_the_size_of_an_odd_input(tmp_path, size):
    """A grid-2 network gives ceil(n / 2) raster rows for n input rows once padded; the labels cover every input
    row (they once stopped at 2 * floor(n / 2): 442 rows for a 443-row image) and equal stardist's labels of the
    same raster rendered at the input's size."""
    from stardist.geometry import polygons_to_label
    from stardist.nms import non_maximum_suppression

    from tests import packages
    from tests.packages import star_maps
    from biozoo.runtime import load

    package = packages.build_package("stardist_grid2_maps", tmp_path)
    maps = star_maps(*size, count=12, seed=4)
    labels = load(package, device="cpu").predict(maps, axes="yxc")[..., 0]
    assert labels.shape == size
    raster = maps[::2, ::2]
    points, probs, dist = non_maximum_suppression(raster[..., 1:], raster[..., 0], grid=(2, 2), b=2,
                                                  prob_thresh=0.5, nms_thresh=0.4)
    expected = polygons_to_label(dist, points, shape=size, prob=probs)
    assert expected.max() >= 5
    np.testing.assert_array_equal(labels, expected)
