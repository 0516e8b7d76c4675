"""`biozoo train` for task `stardist`: instance masks -> split -> patches with star targets -> loop -> thresholds
optimized on the validation split -> instance metrics on the held-out test split, beside Otsu + watershed.

Targets are computed once per training image (on the grid raster) and cropped per patch; flips and 90-degree
rotations permute the rays, so no target is recomputed while training. With a random zoom
(``data.augmentation.scale``) each patch's labels are zoomed (nearest) and its targets computed from them.

Evaluation uses the runtime's post-processing (``biozoo.runtime.stardist_instances``, the code the exported
package runs, imported lazily): the thresholds chosen here and the metrics reported are those of the package itself.

Run dir: what every run writes (see tasks/base.py) plus ``thresholds.json`` (prob and NMS thresholds, the grid
searched on the validation split, and the validation score).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from biozoo.runtime import TrainingError

from .. import matching as MT
from ..config import StarDistRecipe
from ..data.augment import Photometric, zoom_coordinates, zoom_pair
from ..star_targets import stardist_loss, stardist_targets
from .base import Evaluation, SplitData, create_recipe_model, data_folder

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OPTIMIZE_IOUS = (0.3, 0.5, 0.7)  # the thresholds are chosen for the mean accuracy over these (stardist's choice)
NMS_GRID = (0.3, 0.4, 0.5)
PROB_COARSE = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def load_instances(folder: Path, names: Sequence[str], percentiles: tuple[float, float]
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Normalized images (float32) and their instance labels (int32) for the files ``names`` of a data folder."""
    import tifffile

    from ..data import percentile_normalize

    if not (folder / "masks").is_dir():
        raise TrainingError(f"task 'stardist' needs {folder / 'masks'}/ with instance labels (0 = background, one id "
                            "per object), same file names as images/")
    images, labels = [], []
    for name in names:
        x = np.squeeze(np.asarray(tifffile.imread(folder / "images" / name)))
        y = np.squeeze(np.asarray(tifffile.imread(folder / "masks" / name)))
        if x.ndim != 2 or x.shape != y.shape:
            raise TrainingError(f"{name}: image {x.shape} and mask {y.shape} must be one 2D (Y, X) pair of one shape")
        if y.dtype.kind not in "iu":
            raise TrainingError(f"{folder / 'masks' / name} has dtype {y.dtype}; expected integer instance labels")
        images.append(percentile_normalize(x, *percentiles)[0])
        labels.append(y.astype(np.int32))
    return images, labels


def ray_permutation(n_rays: int, flip_y: bool, flip_x: bool, rot: int) -> np.ndarray:
    """Channel order of the distances after flipping rows / columns and then ``np.rot90(., rot)``: ray k points at
    angle 2*pi*k/n (row = sin, col = cos), a row flip maps it to -angle, a column flip to pi - angle, a rotation by
    90 degrees (counter-clockwise on screen) to angle - pi/2. ``new = old[..., perm]``."""
    k = (np.arange(n_rays) + rot * (n_rays // 4)) % n_rays  # undo the turn first, then the flips
    if flip_x:
        k = (n_rays // 2 - k) % n_rays
    if flip_y:
        k = (-k) % n_rays
    return k


class StarPatches:
    """Random patches (image, star targets) of the training images; every random number from the loop's Generator.

    Targets are computed once per image on its grid raster; a patch crops them. Flips and 90-degree rotations
    permute the rays (``ray_permutation``), and the crop start is chosen so that the flipped patch's grid pixels
    are grid pixels of the image. Rays of objects cut by the patch border continue to the object's true end.

    ``scale`` = (low, high): every patch is zoomed by s, log-uniform in [low, high] (raised for an image too small
    to hold the patch's source window of patch / s pixels). The zoomed region is the patch plus up to ``margin``
    pixels of real image around it; it is flipped / turned, its targets are computed from its zoomed labels, then
    the patch is cut out: exact targets, rays continuing up to ``margin`` pixels beyond the patch border.
    ``photometric`` (blur, gamma, noise) is applied to the image after the geometry, before the intensity jitter.
    Both off (the defaults) draw no random number: patches are exactly those of a StarPatches without them.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], patch: Sequence[int],
                 n_rays: int, grid: int, augment: bool = True, intensity: float = 0.1,
                 scale: Optional[tuple[float, float]] = None, photometric: Optional[Photometric] = None,
                 margin: int = 64) -> None:
        self.images, self.labels = list(images), list(labels)
        self.patch, self.n_rays, self.grid, self.intensity = tuple(int(p) for p in patch), n_rays, grid, intensity
        if scale is not None and not 0 < scale[0] <= scale[1]:
            raise TrainingError(f"zoom range {scale}: expected (low, high) with 0 < low <= high, e.g. (0.6, 1.7)")
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.photometric = photometric if photometric is not None and photometric.active else None
        self.margin = int(margin) // grid * grid
        small = [i for i, x in enumerate(self.images) if any(s < p + grid for s, p in zip(x.shape, self.patch))]
        if small:
            raise TrainingError(f"training images {small} are smaller than data.patch_size {self.patch} (+ grid "
                                f"{grid}); lower the patch size or use larger tiles")
        self.targets = [stardist_targets(y, n_rays, (grid, grid)) for y in labels]
        # flips keep the rays only for an even count, 90-degree turns for a multiple of 4
        self.flips = augment and n_rays % 2 == 0
        self.turns = augment and n_rays % 4 == 0 and self.patch[0] == self.patch[1]
        # images with objects are drawn 10x more often than empty ones (a foreground-aware sampler)
        weights = np.array([1.0 if (y > 0).any() else 0.1 for y in labels])
        self.weights = torch.as_tensor(weights / weights.sum())

    def sample(self, rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.scale is None:
            img, tgt = self._crop(rng, index)
        else:
            region, labels, (top, left) = self.region(rng, index)
            (py, px), g = self.patch, self.grid
            tgt = stardist_targets(labels, self.n_rays, (g, g), window=(top, left, py, px))
            img = region[top:top + py, left:left + px]
        if self.photometric is not None:
            img = self.photometric(rng, img)
        if self.intensity:
            img = img * np.float32(1 + rng.uniform(-self.intensity, self.intensity)) + np.float32(
                rng.uniform(-self.intensity, self.intensity))
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(tgt, np.float32)

    def region(self, rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(image, labels, (top, left)) of one zoomed, flipped and turned region (the zoom path of ``sample``):
        the patch is ``[top:top + patch_y, left:left + patch_x]``, both offsets multiples of the grid."""
        x, lab, g, m = self.images[index], self.labels[index], self.grid, self.margin
        low = max(self.scale[0], *(p / n for p, n in zip(self.patch, x.shape)))
        s = float(np.exp(rng.uniform(np.log(low), np.log(max(self.scale[1], low)))))
        coords, pads = [], []
        for n, p in zip(x.shape, self.patch):
            start = float(rng.uniform(0, max(n - p / s, 0.0)))  # source position of the patch's first pixel edge
            before = min(m, int(start * s) // g * g)
            after = min(m, int(max(n - start - p / s, 0.0) * s) // g * g)
            coords.append(zoom_coordinates(start - before / s, before + p + after, s))
            pads.append((before, after))
        img, lab = zoom_pair(x, lab, coords[0], coords[1], s)
        (top, bottom), (left, right) = pads
        if self.flips and rng.random() < 0.5:
            img, lab, (top, bottom) = img[::-1], lab[::-1], (bottom, top)
        if self.flips and rng.random() < 0.5:
            img, lab, (left, right) = img[:, ::-1], lab[:, ::-1], (right, left)
        for _ in range(int(rng.integers(4)) if self.turns else 0):  # np.rot90: the right margin becomes the top
            img, lab = np.rot90(img), np.rot90(lab)
            top, left, bottom, right = right, top, left, bottom
        return np.ascontiguousarray(img), np.ascontiguousarray(lab), (top, left)

    def _crop(self, rng: np.random.Generator, index: int) -> tuple[np.ndarray, np.ndarray]:
        x, t, g = self.images[index], self.targets[index], self.grid
        flip_y, flip_x = (bool(rng.random() < 0.5) if self.flips else False for _ in range(2))
        rot = int(rng.integers(4)) if self.turns else 0
        # after np.rot90(., rot), which original axes run backwards? (rot 1: columns, 2: both, 3: rows)
        back_y = flip_y ^ (rot in (2, 3))
        back_x = flip_x ^ (rot in (1, 2))
        start = []
        for size, p, back in zip(x.shape, self.patch, (back_y, back_x)):
            # a reversed axis needs start = 1 (mod grid) so that the patch's last pixel is on the grid
            first = int(rng.integers(0, (size - p - int(back)) // g + 1)) * g + int(back and g > 1)
            start.append(first)
        (y0, x0), (py, px) = start, self.patch
        img = x[y0:y0 + py, x0:x0 + px]
        tgt = t[:, -(-y0 // g):-(-y0 // g) + py // g, -(-x0 // g):-(-x0 // g) + px // g]
        if flip_y:
            img, tgt = img[::-1], tgt[:, ::-1]
        if flip_x:
            img, tgt = img[:, ::-1], tgt[:, :, ::-1]
        if rot:
            img, tgt = np.rot90(img, rot), np.rot90(tgt, rot, axes=(1, 2))
        if flip_y or flip_x or rot:
            tgt = np.concatenate([tgt[:1], tgt[1:][ray_permutation(self.n_rays, flip_y, flip_x, rot)]])
        return img, tgt

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        seeds = torch.randint(0, 2**62, (batch_size,), generator=generator)
        items = [self.sample(np.random.default_rng(int(s)), int(i)) for i, s in zip(idx, seeds)]
        return (torch.from_numpy(np.stack([a for a, _ in items]))[:, None],
                torch.from_numpy(np.stack([b for _, b in items])))


def predict_maps(model: torch.nn.Module, image: np.ndarray, step: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(prob (Y', X'), dist (Y', X', n_rays)) on the grid raster of a whole image (reflect-padded to the step)."""
    pad = [(0, (-n) % step) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad, mode="reflect")[None, None].astype(np.float32))
    with torch.no_grad():
        y = model(x)[0].numpy()
    ny, nx = (-(-n // grid) for n in image.shape)
    return y[0, :ny, :nx], np.moveaxis(y[1:, :ny, :nx], 0, -1)


def segment(maps: Sequence[tuple[np.ndarray, np.ndarray]], shapes: Sequence[tuple[int, ...]], prob_threshold: float,
            nms_threshold: float, grid: int, border: int) -> list[np.ndarray]:
    """Label images from predicted maps with the package's own post-processing."""
    from biozoo.runtime import stardist_instances as instances

    out = []
    for (prob, dist), shape in zip(maps, shapes):
        full = tuple(n * grid for n in prob.shape)
        labels = instances(prob, dist, prob_threshold, nms_threshold, (grid, grid), border, full)
        out.append(labels[:shape[0], :shape[1]])
    return out


def optimize_thresholds(maps, labels, grid: int, border: int) -> dict[str, Any]:
    """(prob, nms) thresholds maximizing the mean accuracy over OPTIMIZE_IOUS on the given (validation) split: a
    coarse grid, then the best probability refined by +-0.05. Ties go to the higher probability (fewer candidates).
    A probability threshold that leaves more than a third of all raster pixels as candidates is skipped: that is an
    untrained network, and its NMS would compare millions of pairs."""
    shapes = [y.shape for y in labels]
    cells = sum(p.size for p, _ in maps)
    table: dict[tuple[float, float], float] = {}

    def score(prob: float, nms: float) -> float:
        key = (round(prob, 2), nms)
        if key not in table:
            if sum(int((p > prob).sum()) for p, _ in maps) > cells / 3:
                table[key] = -1.0
            else:
                pred = segment(maps, shapes, key[0], nms, grid, border)
                matched = MT.match_dataset(labels, pred, OPTIMIZE_IOUS)
                table[key] = float(np.mean([m.as_dict()["accuracy"] for m in matched]))
        return table[key]

    for nms in NMS_GRID:
        for prob in PROB_COARSE:
            score(prob, nms)
    best = max(table, key=lambda k: (table[k], k[0]))
    for prob in (best[0] - 0.05, best[0] + 0.05):
        if 0 < prob < 1:
            score(prob, best[1])
    best = max(table, key=lambda k: (table[k], k[0]))
    return {"score": table[best], "prob_threshold": best[0], "nms_threshold": best[1],
            "searched": [[p, n, round(v, 4)] for (p, n), v in sorted(table.items())]}


def watershed_baseline(images: Sequence[np.ndarray], sigma: float, min_distance: int) -> list[np.ndarray]:
    """Otsu threshold of the smoothed image, then a watershed of the distance transform from its local maxima."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    from ..metrics import otsu_threshold

    out = []
    for x in images:
        smooth = ndimage.gaussian_filter(x, sigma) if sigma > 0 else x
        fg = smooth > otsu_threshold(smooth)
        dist = ndimage.distance_transform_edt(fg)
        peaks = peak_local_max(dist, min_distance=min_distance, labels=ndimage.label(fg)[0], exclude_border=False)
        markers = np.zeros(x.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        out.append(watershed(-dist, markers, mask=fg).astype(np.int32))
    return out


def _baseline(val, test) -> dict[str, Any]:
    """Otsu + distance-transform watershed, its smoothing and peak distance chosen on the validation split."""
    options = [(s, d) for s in (0.0, 1.0, 2.0) for d in (2, 3, 5, 7, 10)]

    def score(images, labels, s, d):
        return MT.match_dataset(labels, watershed_baseline(images, s, d), (0.5,))[0].as_dict()["accuracy"]

    sigma, min_distance = max(options, key=lambda o: score(*val, *o))
    predicted = watershed_baseline(test[0], sigma, min_distance)
    result = MT.metrics_table(MT.match_dataset(test[1], predicted, IOU_THRESHOLDS))
    return {"name": "otsu+watershed", "sigma_chosen_on_val": sigma, "min_distance_chosen_on_val": min_distance,
            "accuracy_iou50": result["0.5"]["accuracy"], "matching": result}


class StarDistTask:
    name = "stardist"
    records_output_stride = True

    def prepare(self, recipe: StarDistRecipe) -> Path:
        return data_folder(recipe)

    def load(self, recipe: StarDistRecipe, folder: Path, split) -> SplitData:
        d = recipe.data
        train, val, test = (load_instances(folder, split.part(p), d.percentiles) for p in ("train", "val", "test"))
        a = d.augmentation
        patches = StarPatches(*train, d.patch_size, recipe.n_rays, recipe.grid, augment=d.augment,
                              intensity=0.1 if d.augment else 0.0, scale=a.scale,
                              photometric=Photometric(a.gamma, a.noise, a.blur))
        return SplitData(patches, train, val, test)  # truths: instance labels

    def build_model(self, recipe: StarDistRecipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        model = create_recipe_model(recipe, n_rays=recipe.n_rays, grid=recipe.grid, features=recipe.head_features)
        if data is not None:  # distances start at the training objects' mean ray length instead of 0: faster start
            targets = data.sampler.targets
            with torch.no_grad():
                model.dist.bias.fill_(float(np.mean([t[1:][:, t[0] > 0].mean() for t in targets if (t[0] > 0).any()]
                                                    or [0.0])))
        return model

    def objective(self, recipe: StarDistRecipe, data: SplitData, contract):
        step, bs, g = contract.size_step, recipe.training.batch_size, recipe.grid
        val_targets = [torch.from_numpy(stardist_targets(y, recipe.n_rays, (g, g)))[None] for y in data.val[1]]

        def loss(model_, batch):
            logits, dist = model_.heads(batch[0])
            return stardist_loss(logits, dist, batch[1], recipe.dist_weight)

        def validate(model_) -> dict[str, float]:
            losses = []
            for x, t in zip(data.val[0], val_targets):
                pad = [(0, (-n) % step) for n in x.shape]
                xt = torch.from_numpy(np.pad(x, pad, mode="reflect")[None, None])
                logits, dist = model_.heads(xt)
                ny, nx = t.shape[2:]
                losses.append(stardist_loss(logits[..., :ny, :nx], dist[..., :ny, :nx], t, recipe.dist_weight).item())
            return {"val_loss": float(np.mean(losses))}

        return lambda gen: data.sampler.sample_batch(gen, bs), loss, validate

    def evaluate(self, recipe: StarDistRecipe, model, data: SplitData, contract) -> Evaluation:
        """Thresholds optimized on the validation split (unless the recipe fixes them), then instance matching on
        the test split with the package's post-processing, beside Otsu + watershed; thresholds.json beside."""
        step, g, val, test = contract.size_step, recipe.grid, data.val, data.test
        val_maps = [predict_maps(model, x, step, g) for x in val[0]]
        found = optimize_thresholds(val_maps, val[1], g, recipe.border)
        prob_t = recipe.prob_threshold if recipe.prob_threshold is not None else found["prob_threshold"]
        nms_t = recipe.nms_threshold if recipe.nms_threshold is not None else found["nms_threshold"]
        thresholds = {"prob_threshold": prob_t, "nms_threshold": nms_t, "border": recipe.border,
                      "optimized_on": "validation split", "objective": f"mean accuracy at IoU {list(OPTIMIZE_IOUS)}",
                      "val_score": found["score"], "fixed_by_recipe": [k for k in ("prob_threshold", "nms_threshold")
                                                                       if getattr(recipe, k) is not None],
                      "searched": found["searched"]}
        test_pred = segment([predict_maps(model, x, step, g) for x in test[0]], [y.shape for y in test[1]], prob_t,
                            nms_t, g, recipe.border)
        table = MT.metrics_table(MT.match_dataset(test[1], test_pred, IOU_THRESHOLDS))
        return Evaluation({
            "accuracy_iou50": table["0.5"]["accuracy"], "f1_iou50": table["0.5"]["f1"],
            "panoptic_quality_iou50": table["0.5"]["panoptic_quality"], "matching": table,
            "postprocessing": {k: thresholds[k] for k in ("prob_threshold", "nms_threshold", "border")},
            "baseline": _baseline(val, test),
        }, files={"thresholds.json": thresholds})

    def stats(self, recipe: StarDistRecipe, data: SplitData) -> dict[str, Any]:
        d, (train_x, train_y) = recipe.data, data.train
        pixels = np.concatenate([x.ravel() for x in train_x])
        return {
            "normalization": {"percentiles": list(d.percentiles)},
            "normalized_intensity_percentiles": {str(q): float(np.percentile(pixels, q)) for q in (1, 50, 99)},
            "pixel_size": list(d.pixel_size) if d.pixel_size else None,
            "objects": {p: int(sum(len(np.unique(y)) - 1 for y in labels))
                        for p, (_, labels) in (("train", data.train), ("val", data.val), ("test", data.test))},
            "sampling": {"images": len(train_x), "patch_size": list(d.patch_size), "n_rays": recipe.n_rays,
                         "grid": recipe.grid,
                         **({"augmentation": d.augmentation.model_dump(mode="json")} if d.augmentation.active else {})},
        }


PLUGINS = (StarDistTask(),)  # what biozoo.zoo.tasks registers from this module
