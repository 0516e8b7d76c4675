"""StarDist in the zoo: targets (vs stardist and by hand), augmentation, loss, matching metrics, recipe checks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from biozoo.runtime import BiozooError, TrainingError
from biozoo.zoo import matching as MT
from biozoo.zoo.config import parse_recipe
from biozoo.zoo.star_targets import object_probabilities, star_distances, stardist_loss, stardist_targets
from biozoo.zoo.tasks.stardist import StarPatches, ray_permutation
from tests.synthetic import ellipse_labels


def ellipses(shape=(96, 96), count=12, seed=0, margin=0) -> np.ndarray:
    return ellipse_labels(shape, count, seed, margin, radii=(3, 10))


# ---- targets ----------------------------------------------------------------------------------------------------
def test_star_distances_of_a_square_by_hand():
    lab = np.zeros((9, 9), np.int32)
    lab[2:7, 2:7] = 5  # a 5x5 square; its centre pixel is (4, 4)
    d = star_distances(lab, n_rays=4)
    # rays 0..3 point to +x, +y (down), -x, -y: 2 pixels inside, then half a pixel to the pixel edge
    np.testing.assert_allclose(d[4, 4], [2.5] * 4, atol=1e-6)
    np.testing.assert_allclose(d[2, 2], [4.5, 4.5, 0.5, 0.5], atol=1e-6)  # the top-left corner pixel
    assert (d[lab == 0] == 0).all()
    p = object_probabilities(lab)
    assert p[4, 4] == 1.0 and p[2, 2] == p.max() / 3 and (p[lab == 0] == 0).all()


@pytest.mark.parametrize("grid", [1, 2])
def test_targets_equal_stardists(grid):
    stardist = pytest.importorskip("stardist")
    from stardist.utils import edt_prob

    lab = ellipses((90, 70), count=15, seed=grid)
    np.testing.assert_array_equal(star_distances(lab, 32, (grid, grid)), stardist.star_dist(lab, 32, grid=(grid, grid)))
    np.testing.assert_array_equal(object_probabilities(lab, (grid, grid)), edt_prob(lab)[::grid, ::grid])


def test_targets_refuse_bad_labels():
    with pytest.raises(TrainingError, match="2D label image"):
        star_distances(np.zeros((2, 3, 4), np.int32))
    with pytest.raises(TrainingError, match="fractional"):
        star_distances(np.full((4, 4), 0.5))
    with pytest.raises(TrainingError, match="n_rays must be >= 3"):
        star_distances(np.zeros((4, 4), np.int32), n_rays=2)


@pytest.mark.parametrize("flip_y,flip_x,rot", list(itertools.product((False, True), (False, True), range(4))))
def test_ray_permutation_matches_recomputed_targets(flip_y, flip_x, rot):
    lab = ellipses((48, 48), count=4, seed=3, margin=14)
    t = stardist_targets(lab, 16)
    moved, tm = lab, t
    if flip_y:
        moved, tm = moved[::-1], tm[:, ::-1]
    if flip_x:
        moved, tm = moved[:, ::-1], tm[:, :, ::-1]
    moved, tm = np.rot90(moved, rot), np.rot90(tm, rot, axes=(1, 2))
    tm = np.concatenate([tm[:1], tm[1:][ray_permutation(16, flip_y, flip_x, rot)]])
    np.testing.assert_allclose(tm, stardist_targets(np.ascontiguousarray(moved), 16), atol=1e-4)


@pytest.mark.parametrize("grid", [1, 2])
def test_patches_carry_the_targets_of_their_augmented_labels(grid):
    lab = ellipses((80, 80), count=6, seed=4, margin=30)  # objects stay inside every 64x64 crop
    patches = StarPatches([lab.astype(np.float32)], [lab], (64, 64), 32, grid, intensity=0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, target = patches.sample(rng, 0)  # the image is the label image: recompute from it
        np.testing.assert_allclose(target, stardist_targets(image.astype(np.int32), 32, (grid, grid)), atol=1e-4)
    x, t = patches.sample_batch(torch.Generator().manual_seed(0), 3)
    assert x.shape == (3, 1, 64, 64) and t.shape == (3, 33, 64 // grid, 64 // grid)


def test_loss_is_bce_when_distances_are_right():
    target = torch.from_numpy(stardist_targets(ellipses((32, 32), count=3), 8))[None]
    logits = torch.randn(1, 1, 32, 32)
    loss = stardist_loss(logits, target[:, 1:].clone(), target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[:, :1])
    torch.testing.assert_close(loss, bce + 1e-4 * ((1 - target[:, :1]) * target[:, 1:]).mean())
    worse = stardist_loss(logits, target[:, 1:] + 2.0, target)
    assert worse > loss + 0.2 * 2.0 * 0.99  # the weighted MAE of 2 px, times dist_weight


# ---- matching ---------------------------------------------------------------------------------------------------
def test_matching_by_hand_split_object():
    true = np.zeros((10, 10), np.int32)
    true[:, :] = 1
    pred = np.zeros_like(true)
    pred[:, :6], pred[:, 6:] = 1, 2  # IoU 0.6 and 0.4 with the one true object
    m = MT.match(true, pred, (0.5, 0.3))
    a = m[0].as_dict()
    assert (a["tp"], a["fp"], a["fn"]) == (1, 1, 0)
    assert a["accuracy"] == 0.5 and a["precision"] == 0.5 and a["recall"] == 1.0
    assert a["panoptic_quality"] == pytest.approx(0.6 / 1.5)
    assert m[1].tp == 1  # one true object matches at most one prediction


def _best_assignment(iou, thr):
    """Brute force: the most matches, then the largest IoU sum, over every one-to-one assignment."""
    n_t, n_p = iou.shape
    best = (0, 0.0)
    for k in range(min(n_t, n_p) + 1):
        for ts in itertools.combinations(range(n_t), k):
            for ps in itertools.permutations(range(n_p), k):
                vals = [iou[t, p] for t, p in zip(ts, ps)]
                if all(v >= thr for v in vals):
                    best = max(best, (k, float(sum(vals))))
    return best


def test_matching_is_the_optimal_assignment():
    rng = np.random.default_rng(5)
    for trial in range(25):
        true = ellipses((40, 40), count=int(rng.integers(1, 5)), seed=100 + trial)
        pred = ellipses((40, 40), count=int(rng.integers(1, 5)), seed=200 + trial)
        iou = MT.iou_matrix(true, pred)
        for thr in (0.1, 0.3, 0.5):
            m = MT.match(true, pred, (thr,))[0]
            tp, total = _best_assignment(iou, thr)
            assert m.tp == tp and m.matched_iou_sum == pytest.approx(total)
            assert m.tp + m.fn == len(np.unique(true)) - 1 and m.tp + m.fp == len(np.unique(pred)) - 1


def test_matching_equals_stardists_and_sums_over_images():
    sm = pytest.importorskip("stardist.matching")
    pairs = [(ellipses((64, 64), 10, seed=s), ellipses((64, 64), 8, seed=s + 50)) for s in range(4)]
    for thr in (0.3, 0.5, 0.7):
        ours = MT.match_dataset([t for t, _ in pairs], [p for _, p in pairs], (thr,))[0].as_dict()
        theirs = sm.matching_dataset([t for t, _ in pairs], [p for _, p in pairs], thresh=thr, show_progress=False)
        for key in ("tp", "fp", "fn", "precision", "recall", "accuracy", "f1", "panoptic_quality"):
            assert ours[key] == pytest.approx(getattr(theirs, key)), key


def test_matching_of_empty_images_and_bad_input():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    one[2:4, 2:4] = 7
    assert MT.match(empty, one)[0].as_dict()["fp"] == 1 and MT.match(one, empty)[0].as_dict()["fn"] == 1
    assert MT.match(empty, empty)[0].as_dict()["accuracy"] == 0.0
    with pytest.raises(BiozooError, match="differ in shape"):
        MT.iou_matrix(one, one[:4])
    with pytest.raises(BiozooError, match="non-negative integers"):
        MT.iou_matrix(one.astype(float), one)


# ---- recipe -----------------------------------------------------------------------------------------------------
def _recipe(**over):
    base = {"name": "sd", "task": "stardist", "model": {"name": "stardist2d", "depth": 2},
            "data": {"dataset": "x", "patch_size": [64, 64]}}
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_recipe(base)


def test_stardist_recipe_checks_grid_and_patch():
    r = _recipe(grid=4)
    assert (r.n_rays, r.grid, r.prob_threshold) == (32, 4, None)
    with pytest.raises(TrainingError, match=r"patch_size.*divisible by 2\*\*model.depth \* grid = 32"):
        _recipe(grid=8, data={"patch_size": [48, 48]})
    with pytest.raises(TrainingError, match="power of two"):
        _recipe(grid=3)
    with pytest.raises(TrainingError, match="n_rays"):
        _recipe(n_rays=2)


def test_build_model_follows_the_recipe():
    from biozoo.zoo.train import build_model

    net = build_model(_recipe(grid=2, n_rays=16, head_features=8, model={"name": "stardist2d_tiny"}))
    c = net.io_contract(measure=False)
    assert (c.out_channels, c.output_stride, c.size_step) == (17, 2, 8)
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 1, 32, 48)).shape) == (1, 17, 16, 24)
