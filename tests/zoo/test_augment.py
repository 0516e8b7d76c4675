"""The augmentations for other microscopes (zoo/data/augment.py, StarPatches' zoom path, data.augmentation): image and
labels stay aligned under zoom, labels stay instance maps, targets are those of the zoomed labels, every draw is a
function of the seed, and the defaults leave patches exactly as before. Synthetic data, no training: seconds."""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime import TrainingError
from biozoo.zoo.config import AugmentationConfig, parse_recipe
from biozoo.zoo.data.augment import Photometric, gaussian_blur, zoom_coordinates, zoom_pair
from biozoo.zoo.star_targets import stardist_targets
from biozoo.zoo.tasks.stardist import StarPatches
from tests.synthetic import ellipse_labels


def ellipses(shape=(160, 160), count=25, seed=0) -> np.ndarray:
    return ellipse_labels(shape, count, seed, radii=(4, 12))


def _centroids(lab: np.ndarray) -> dict[int, np.ndarray]:
    return {int(k): np.argwhere(lab == k).mean(axis=0) for k in np.unique(lab) if k}


# ---- zoom_pair ----------------------------------------------------------------------------------------------------
def test_zoom_by_one_is_a_crop():
    lab = ellipses()
    img = np.random.default_rng(1).random(lab.shape).astype(np.float32)
    cy, cx = zoom_coordinates(10, 64, 1.0), zoom_coordinates(23, 50, 1.0)
    zi, zl = zoom_pair(img, lab, cy, cx, 1.0)
    np.testing.assert_allclose(zi, img[10:74, 23:73], atol=1e-6)
    np.testing.assert_array_equal(zl, lab[10:74, 23:73])


def _separated(shape=(160, 160), step=20, seed=0) -> np.ndarray:
    """Non-touching ellipses on a jittered lattice (ids 1.., radii 3-7 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    centres = [(y, x) for y in range(step // 2, shape[0], step) for x in range(step // 2, shape[1], step)]
    for i, (cy, cx) in enumerate(centres, start=1):
        cy, cx = cy + rng.uniform(-2, 2), cx + rng.uniform(-2, 2)
        a, b = rng.uniform(3, 7, 2)
        lab[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 < 1] = i
    return lab


@pytest.mark.parametrize("scale", [0.6, 0.8, 1.3, 1.7])
def test_zoom_keeps_image_and_labels_aligned(scale):
    """The image is the foreground mask: after the zoom, its linear interpolation and the nearest-neighbour labels
    agree but for boundary pixels, and every object's centroid lands where the zoom maps it (within a pixel)."""
    lab = _separated()
    img = (lab > 0).astype(np.float32)
    y0, x0, n = 7.3, 11.6, int(90 * scale)
    zi, zl = zoom_pair(img, lab, zoom_coordinates(y0, n, scale), zoom_coordinates(x0, n, scale), scale)
    assert zi.shape == zl.shape == (n, n) and zi.dtype == np.float32
    assert ((zi > 0.5) == (zl > 0)).mean() > 0.95
    window = lab[int(y0) + 1:int(y0 + 90) - 1, int(x0) + 1:int(x0 + 90) - 1]
    inner = [k for k in np.unique(window) if k and (window == k).sum() == (lab == k).sum()]
    assert len(inner) >= 9
    zoomed = _centroids(zl)
    for k in inner:  # objects wholly inside the source window: their centroid moves with the zoom
        expected = (np.argwhere(lab == k).mean(axis=0) - (y0, x0) + 0.5) * scale - 0.5
        assert np.abs(zoomed[k] - expected).max() < max(1.0, scale / 2 + 0.5), (k, zoomed[k], expected)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16])
def test_zoomed_labels_stay_an_instance_map(dtype):
    lab = ellipses().astype(dtype)
    img = lab.astype(np.float32)
    for scale in (0.6, 1.0, 1.7):
        _, zl = zoom_pair(img, lab, zoom_coordinates(-3.0, 90, scale), zoom_coordinates(5.0, 90, scale), scale)
        assert zl.dtype == dtype and set(np.unique(zl)) <= set(np.unique(lab))


def test_zoom_refuses_mismatched_pairs():
    with pytest.raises(ValueError, match="one 2D image"):
        zoom_pair(np.zeros((8, 8)), np.zeros((8, 9), np.int32), np.arange(4.0), np.arange(4.0), 1.0)


def test_gaussian_blur_equals_scipys():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((40, 33)).astype(np.float32)
    for sigma in (1.0, 2.0):
        np.testing.assert_allclose(gaussian_blur(x, sigma), ndimage.gaussian_filter(x, sigma, mode="mirror",
                                                                                    truncate=3.0), atol=1e-5)
    np.testing.assert_array_equal(gaussian_blur(x, 0.0), x)


# ---- photometric --------------------------------------------------------------------------------------------------
def test_photometric_off_draws_nothing_and_changes_nothing():
    x = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    assert not Photometric().active
    np.testing.assert_array_equal(Photometric()(rng, x), x)
    assert rng.bit_generator.state == state


def test_photometric_is_a_function_of_the_seed_and_bounded():
    x = np.linspace(-0.1, 1.2, 32 * 32, dtype=np.float32).reshape(32, 32)
    aug = Photometric(gamma=(0.7, 1.4), noise=0.05, blur=1.0)
    a = [aug(np.random.default_rng(s), x) for s in range(20)]
    b = [aug(np.random.default_rng(s), x) for s in range(20)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert sum(not np.array_equal(u, x) for u in a) >= 15  # each part on half of the draws: most draws change x
    assert all(u.shape == x.shape and u.dtype == np.float32 for u in a)
    assert max(float(np.abs(u - x).max()) for u in a) < 0.6
    gamma_only = Photometric(gamma=(0.5, 2.0))
    for s in range(10):  # a gamma curve keeps 0, 1 and the sign
        y = gamma_only(np.random.default_rng(s), np.array([[-0.5, 0.0, 1.0, 0.5]], np.float32))
        assert y[0, 1] == 0 and y[0, 2] == pytest.approx(1) and y[0, 0] < 0 < y[0, 3] < 1


# ---- StarPatches' zoom path ---------------------------------------------------------------------------------------
def _patches(**kw) -> StarPatches:
    labels = [ellipses((200, 180), 40, seed=s) for s in range(2)] + [ellipses((128, 128), 12, seed=9)]
    images = [(y > 0).astype(np.float32) for y in labels]
    return StarPatches(images, labels, (64, 64), 16, 2, intensity=0.0, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_zoomed_patch_targets_are_those_of_its_zoomed_labels(seed):
    patches = _patches(scale=(0.6, 1.7))
    for index in range(3):
        region, labels, (top, left) = patches.region(np.random.default_rng(seed), index)
        assert top % 2 == 0 and left % 2 == 0 and labels.dtype == np.int32
        assert set(np.unique(labels)) <= set(np.unique(patches.labels[index]))
        assert ((region > 0.5) == (labels > 0)).mean() > 0.95  # image and labels moved together
        image, target = patches.sample(np.random.default_rng(seed), index)
        assert image.shape == (64, 64) and target.shape == (17, 32, 32)
        np.testing.assert_array_equal(image, region[top:top + 64, left:left + 64])
        expected = stardist_targets(labels, 16, (2, 2))[:, top // 2:top // 2 + 32, left // 2:left // 2 + 32]
        np.testing.assert_array_equal(target, expected)


def test_zoomed_patch_rays_continue_beyond_the_patch():
    """An object wholly inside the zoomed region gets the distances of the whole object, as without zoom."""
    patches = _patches(scale=(1.0, 1.0))  # s = 1: the region is a crop with real pixels around the patch
    for seed in range(10):
        region, labels, (top, left) = patches.region(np.random.default_rng(seed), 0)
        _, target = patches.sample(np.random.default_rng(seed), 0)
        np.testing.assert_array_equal(target, stardist_targets(labels, 16, (2, 2))[:, top // 2:top // 2 + 32,
                                                                                    left // 2:left // 2 + 32])
        # the margin: real pixels around the patch where the image has them, up to patches.margin
        assert {top, left} <= set(range(0, patches.margin + 1, 2)) and max(top, left) > 0


def test_windowed_targets_are_the_crop_of_the_whole_ones():
    lab = ellipses((120, 100), 30, seed=5)
    whole = stardist_targets(lab, 16, (2, 2))
    for top, left, h, w in ((0, 0, 64, 64), (10, 24, 40, 60), (56, 36, 64, 64), (118, 98, 2, 2)):
        np.testing.assert_array_equal(stardist_targets(lab, 16, (2, 2), window=(top, left, h, w)),
                                      whole[:, top // 2:(top + h) // 2, left // 2:(left + w) // 2])
    with pytest.raises(TrainingError, match="multiples of the grid"):
        stardist_targets(lab, 16, (2, 2), window=(1, 0, 8, 8))


def test_zoomed_patches_are_a_function_of_the_seed():
    patches = _patches(scale=(0.6, 1.7), photometric=Photometric((0.7, 1.4), 0.05, 1.0))
    one = [patches.sample(np.random.default_rng(s), s % 3) for s in range(8)]
    two = [patches.sample(np.random.default_rng(s), s % 3) for s in range(8)]
    for (a, t), (b, u) in zip(one, two):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(t, u)
    assert not np.array_equal(one[0][0], patches.sample(np.random.default_rng(100), 0)[0])


def test_zoom_range_is_raised_for_small_images():
    """A 128 px image cannot hold the source window of a 64 px patch zoomed by 0.4 (160 px): the zoom stays >= 0.5."""
    patches = _patches(scale=(0.4, 0.4))
    region, labels, (top, left) = patches.region(np.random.default_rng(0), 2)
    assert region.shape[0] >= 64 and region.shape[1] >= 64
    assert len(np.unique(labels[top:top + 64, left:left + 64])) > 1


def test_defaults_leave_patches_exactly_as_before():
    plain = _patches()
    off = _patches(scale=None, photometric=Photometric())
    assert off.scale is None and off.photometric is None
    for s in range(10):
        (a, t), (b, u) = plain.sample(np.random.default_rng(s), s % 3), off.sample(np.random.default_rng(s), s % 3)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(t, u)
    with pytest.raises(TrainingError, match="zoom range"):
        _patches(scale=(1.5, 1.0))


# ---- recipe options -----------------------------------------------------------------------------------------------
def _recipe(task="stardist", **data):
    base = {"name": "r", "task": task, "model": {"name": "unet2d", "depth": 2},
            "data": {"dataset": "x", "patch_size": [64, 64], **data}}
    return parse_recipe(base)


def test_augmentation_defaults_are_off_and_shipped_recipes_keep_them():
    from biozoo.specs import recipe_path
    from biozoo.zoo.config import load_recipe

    assert not AugmentationConfig().active and not _recipe().data.augmentation.active
    import pathlib

    folder = pathlib.Path(recipe_path("stardist-nuclei-2d-mix")).parent
    on = {p.stem for p in folder.glob("*.yaml") if load_recipe(p).data.augmentation.active}
    assert on == {"stardist-nuclei-2d-mix"}  # the other recipes train exactly as before


@pytest.mark.parametrize("data,task,message", [
    ({"augmentation": {"scale": [0.6, 1.7]}}, "segmentation", "task 'stardist' only"),
    ({"augment": False, "augmentation": {"noise": 0.05}}, "stardist", "augment is false"),
    ({"augmentation": {"scale": [1.7, 0.6]}}, "stardist", "low <= high"),
    ({"augmentation": {"zoom": [0.6, 1.7]}}, "stardist", "zoom"),
])
def test_augmentation_errors_say_what_to_do(data, task, message):
    with pytest.raises(TrainingError, match=message):
        _recipe(task, **data)
