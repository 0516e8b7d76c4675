"""The dense tasks: `segmentation` (classes per pixel), `care` (denoising from noisy/clean pairs) and `n2v`
(self-supervised denoising, blind-spot masks). Patches come from `PatchDataset`; every prediction is of the whole
image, reflect-padded to the model's size step and cropped back.

Test metrics: segmentation reports the foreground IoU beside an Otsu threshold; care and n2v the PSNR of the
prediction and of the noisy input against the clean reference, beside a Gaussian filter whose sigma is chosen on the
validation split. n2v never trains on, or picks checkpoints by, the clean images: they are read for evaluation only.
Every metric comes with a 95% bootstrap interval over disjoint test tiles, and every "model beats baseline" claim
with the paired interval of the difference (`metrics.claim`); the per-tile sums go into test_tiles.json so that two
runs on the same test tiles can be compared the same way (`compare_runs`, e.g. CARE vs N2V).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from biozoo.runtime import TrainingError

from .. import metrics as M
from ..config import CareRecipe, N2VRecipe, SegmentationRecipe
from ..n2v import n2v_loss, n2v_mask
from .base import Evaluation, SplitData, create_recipe_model, data_folder

VAL_MASKED_FRACTION = 0.05
VAL_MASKED_PIXELS = 5000  # blind-spot pixels per validation: draws of the mask are added until there are this many
MAX_VAL_MASK_DRAWS = 3
# The validation loss (checkpoint choice, early stopping) runs on central crops of at most this many pixels (YX) of
# each validation image: hundreds of thousands of pixels are plenty, and whole 700x1100 frames every epoch would cost
# more than the training steps on 2 CPU cores. The evaluation (and the Gaussian's sigma) use the whole images.
VAL_CROP = 384
TILES_FILE = "test_tiles.json"


@dataclass
class DenseData(SplitData):
    """SplitData plus what the dense evaluation reports: the test file names and the data folder's noise.json."""

    test_names: tuple[str, ...] = ()
    noise: Optional[dict] = None


def _central_crop(image: np.ndarray, size: int = VAL_CROP) -> np.ndarray:
    """The central size x size part (YX) of an image; smaller axes are kept whole."""
    yx = [slice((n - size) // 2, (n - size) // 2 + size) if n > size else slice(None) for n in image.shape[-2:]]
    return image[(..., *yx)]


def predict(model: torch.nn.Module, image: np.ndarray, step: int) -> np.ndarray:
    """Whole-image prediction, padded (reflect) to the model's size step and cropped back."""
    pad = [(0, (-n) % step) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad, mode="reflect")[None, None].astype(np.float32))
    with torch.no_grad():
        y = model(x)[0].numpy()
    return y[(slice(None), *(slice(0, n) for n in image.shape))]


class _DenseTask:
    """What the three dense tasks share; each subclass gives its targets, output channels, loss and metrics."""

    name: str
    truth: str  # the targets load_folder reads for validation and test ("care": the clean images)
    records_output_stride = False

    def prepare(self, recipe) -> Path:
        return data_folder(recipe)

    def load(self, recipe, folder: Path, split) -> SplitData:
        from ..data import folder_dataset, load_folder
        from ..data.augment import Augment

        d = recipe.data
        train = folder_dataset(folder, split.train, self.name, d.patch_size, d.percentiles,
                               augment=Augment() if d.augment else None, foreground_aware=d.foreground_aware,
                               weighted=self._weighted(recipe), seed=recipe.training.seed)
        val, test = (load_folder(folder, split.part(p), self.truth, len(d.patch_size), d.percentiles)[:2]
                     for p in ("val", "test"))
        noise = json.loads((folder / "noise.json").read_text()) if (folder / "noise.json").is_file() else None
        return DenseData(train, (train.images, train.targets), val, test, tuple(split.test), noise)

    def _weighted(self, recipe) -> Optional[bool]:
        return None

    def build_model(self, recipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, out_channels=1)

    def objective(self, recipe, data: SplitData, contract):
        bs, step = recipe.training.batch_size, contract.size_step
        images, targets = ([_central_crop(a) for a in part] for part in data.val)

        def validate(model) -> dict[str, float]:
            losses = []
            for i, (image, target) in enumerate(zip(images, targets)):
                losses += self._val_losses(recipe, model, image, target, i, step)
            return {"val_loss": float(np.mean(losses))}

        return lambda g: data.sampler.sample_batch(g, bs), self._loss, validate

    @staticmethod
    def _loss(model, batch) -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1])

    def _val_losses(self, recipe, model, image, target, index: int, step: int) -> list[float]:
        return [float(np.mean((predict(model, image, step)[0] - target) ** 2))]

    def evaluate(self, recipe, model, data: DenseData, contract) -> Evaluation:
        """PSNR of the prediction and of the noisy input, beside a Gaussian filter (sigma chosen on val), with
        their intervals and the claims that the model beats both (PSNR of all test pixels, pooled over tiles)."""
        (images, targets), (val_images, val_targets) = data.test, data.val
        sigma = M.best_gaussian_sigma(val_images, val_targets)
        key = _model_key(recipe)
        outputs = {key: [predict(model, x, contract.size_step)[0] for x in images],
                   "gaussian": [M.gaussian_filter(x, sigma) for x in images], "noisy_input": images}
        t = recipe.evaluation.tile
        parts = {k: M.squared_error_parts(v, targets, t) for k, v in outputs.items()}
        metrics = _measured("psnr", parts, recipe, images)
        model_m, base, noisy = (metrics.pop(k) for k in (key, "gaussian", "noisy_input"))
        metrics = {"psnr": model_m["psnr"], "psnr_ci95": model_m["ci95"],
                   "psnr_noisy_input": noisy["psnr"], "psnr_noisy_input_ci95": noisy["ci95"],
                   "baseline": {"name": "gaussian", "sigma_chosen_on_val": sigma, "psnr": base["psnr"],
                                "psnr_ci95": base["ci95"]}, **metrics}
        metrics["clean_reference"] = _reference_noise(targets, data.noise)
        return Evaluation(metrics, {TILES_FILE: _tiles_record("psnr", parts, recipe, images, data)})

    def stats(self, recipe, data: SplitData) -> dict[str, Any]:
        d, (images, _), report = recipe.data, data.train, data.sampler.report
        pixels = np.concatenate([x.ravel() for x in images])
        return {
            "normalization": {"percentiles": list(d.percentiles), "per_image_raw": report.get("percentiles")},
            "normalized_intensity_percentiles": {str(q): float(np.percentile(pixels, q)) for q in (1, 50, 99)},
            "pixel_size": list(d.pixel_size) if d.pixel_size else None,
            "class_frequencies": report.get("class_frequencies"),
            "sampling": {k: v for k, v in report.items() if k != "percentiles"},
        }


class SegmentationTask(_DenseTask):
    name = truth = "segmentation"

    def _weighted(self, recipe: SegmentationRecipe) -> Optional[bool]:
        return {"auto": None, "on": True, "off": False}[recipe.data.weighted_sampling]

    def build_model(self, recipe: SegmentationRecipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, out_channels=len(recipe.classes))

    @staticmethod
    def _loss(model, batch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def _val_losses(self, recipe, model, image, target, index: int, step: int) -> list[float]:
        logits = torch.from_numpy(predict(model, image, step))[None]
        return [torch.nn.functional.cross_entropy(logits, torch.from_numpy(target[None]).long()).item()]

    def evaluate(self, recipe, model, data: DenseData, contract) -> Evaluation:
        """Foreground IoU of the prediction (all test pixels), beside an Otsu threshold of each whole image, with
        their intervals and the claim that the model beats Otsu."""
        images, targets = data.test
        key = _model_key(recipe)
        outputs = {key: [(predict(model, x, contract.size_step).argmax(0) > 0) for x in images],
                   "otsu": [x > M.otsu_threshold(x) for x in images]}
        t = recipe.evaluation.tile
        parts = {k: M.overlap_parts(v, [y > 0 for y in targets], t) for k, v in outputs.items()}
        metrics = _measured("foreground_iou", parts, recipe, images)
        model_m, base = metrics.pop(key), metrics.pop("otsu")
        metrics = {"foreground_iou": model_m["foreground_iou"], "foreground_iou_ci95": model_m["ci95"],
                   "baseline": {"name": "otsu", "foreground_iou": base["foreground_iou"],
                                "foreground_iou_ci95": base["ci95"]}, **metrics}
        return Evaluation(metrics, {TILES_FILE: _tiles_record("foreground_iou", parts, recipe, images, data)})


class CareTask(_DenseTask):
    name = truth = "care"

    def prepare(self, recipe: CareRecipe) -> Path:
        return noisy_pairs(recipe, data_folder(recipe))


class N2VTask(CareTask):
    name, truth = "n2v", "care"  # n2v's clean targets are read for evaluation only

    def build_model(self, recipe: N2VRecipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, out_channels=1, n2v2=recipe.n2v2)

    def objective(self, recipe: N2VRecipe, data: SplitData, contract):
        bs, step, images = recipe.training.batch_size, contract.size_step, [_central_crop(x) for x in data.val[0]]
        # a few small validation images need several mask draws for a stable loss, whole frames need one
        per_draw = VAL_MASKED_FRACTION * sum(x.size for x in images)
        draws = int(min(MAX_VAL_MASK_DRAWS, max(1, np.ceil(VAL_MASKED_PIXELS / max(per_draw, 1)))))

        def validate(model) -> dict[str, float]:
            return {"val_loss": float(np.mean([v for i, x in enumerate(images)
                                               for v in self._blind_spot_losses(recipe, model, x, i, step, draws)]))}

        def make_batch(g):
            x, _ = data.sampler.sample_batch(g, bs)
            masked, mask = n2v_mask(x, g, recipe.masked_fraction, recipe.neighbourhood, median=recipe.n2v2)
            return masked, x, mask

        return make_batch, lambda model, b: n2v_loss(model(b[0]), b[1], b[2]), validate

    @staticmethod
    def _blind_spot_losses(recipe: N2VRecipe, model, image, index: int, step: int, draws: int) -> list[float]:
        """Self-supervised: fixed, denser masks than in training give a stable estimate of the blind-spot error (it
        is dominated by the noise variance, so a sparse mask makes early stopping pick checkpoints by chance)."""
        x = torch.from_numpy(image[None, None])
        losses = []
        for draw in range(draws):
            g = torch.Generator().manual_seed(recipe.training.seed + 1 + 1000 * draw + index)
            masked, mask = n2v_mask(x, g, VAL_MASKED_FRACTION, recipe.neighbourhood, median=recipe.n2v2)
            pred = torch.from_numpy(predict(model, masked[0, 0].numpy(), step))[None]
            losses.append(n2v_loss(pred, x, mask).item())
        return losses


def noisy_pairs(recipe, folder: Path) -> Path:
    """care/n2v train on noisy inputs made once from the clean references (the recipe's bin, Poisson gain and
    Gaussian sigma), in a `derived/` folder beside tiles (tiled data) or inside the dataset folder (whole images)."""
    from ..data import make_noisy_pairs

    (gain, sigma), b = recipe.noise, recipe.bin
    base = folder.parent if folder.parent.name == "derived" else folder / "derived"
    name = f"{folder.name}-noisy-{f'b{b}-' if b > 1 else ''}g{gain:g}-s{sigma:g}"
    return make_noisy_pairs(folder, base / name, gain, sigma, percentiles=recipe.data.percentiles, bin=b)


def _reference_noise(targets, noise: Optional[dict]) -> dict[str, Any]:
    """How clean the test references are, in the units the PSNRs are measured in (the noisy input's
    normalization): their own residual noise (noise.noise_sigma) and the PSNR a perfect denoiser would score."""
    from ..data.noise import noise_sigma

    deciles = np.median([noise_sigma(c) for c in targets], axis=0)
    mse = float(np.mean(deciles**2))
    out = {"noise_sigma_by_intensity_decile": [round(float(v), 6) for v in deciles],
           "psnr_ceiling_db": float(-10 * np.log10(max(mse, 1e-12)))}
    if noise:
        out.update({k: noise.get(k) for k in ("model", "bin", "gain", "sigma", "added_noise_sigma")})
    return out


def _model_key(recipe) -> str:
    """The trained model's name in claims and test_tiles.json: its recipe's, unless that is a baseline's."""
    return recipe.name if recipe.name not in ("gaussian", "otsu", "noisy_input") else f"{recipe.name}-model"


def _tile_images(images, tile: int) -> np.ndarray:
    """The test image index of each tile, in the order of metrics.*_parts."""
    return np.asarray([i for i, x in enumerate(images) for _ in M.tile_slices(x.shape, tile)])


def _measured(metric: str, parts: dict[str, np.ndarray], recipe, images) -> dict[str, Any]:
    """Per method: the metric and its interval; then the model's claims over each other method and how the
    bootstrap was made (everything a reader needs to judge the intervals)."""
    e, model, stat = recipe.evaluation, _model_key(recipe), M.STATISTICS[metric]
    groups = _tile_images(images, e.tile)
    if len(groups) < 2:  # nothing to resample: report the numbers, claim nothing
        note = f"{len(groups)} test tile of {e.tile} px: no interval; add test images or lower evaluation.tile"
        out: dict[str, Any] = {k: {metric: float(stat(p)), "ci95": None} for k, p in parts.items()}
        out["claims"] = [{"better": model, "worse": other, "metric": metric,
                          "difference": float(stat(parts[model]) - stat(parts[other])), "ci95": None, "holds": False,
                          "note": note} for other in parts if other != model]
    else:
        out = {k: {metric: float(stat(p)), "ci95": M.bootstrap_interval(p, metric, e.resamples, e.seed)}
               for k, p in parts.items()}
        out["claims"] = [M.claim(model, other, metric, parts, e.resamples, e.seed, groups) for other in parts
                         if other != model]
    out["bootstrap"] = {"unit": "test tile", "tile": e.tile, "tiles": len(groups), "images": len(images),
                        "pixels": int(sum(x.size for x in images)), "resamples": e.resamples, "seed": e.seed,
                        "paired": True, "interval": "95% percentile",
                        "statistic": f"{metric} of all pixels of the resampled tiles (per-tile sums pooled)",
                        "caveat": "neighbouring tiles and frames are correlated: the interval assumes them "
                                  "independent; per_image gives each test image's difference alone"}
    return out


def _tiles_record(metric: str, parts: dict[str, np.ndarray], recipe, images, data: DenseData) -> dict[str, Any]:
    """test_tiles.json: the per-tile sums of every method, what `compare_runs` pairs across two runs."""
    t = recipe.evaluation.tile
    return {"metric": metric, "model": _model_key(recipe), "tile": t, "test_images": list(data.test_names),
            "shapes": [list(x.shape) for x in images], "image_of_tile": _tile_images(images, t).tolist(),
            "parts": {k: p.tolist() for k, p in parts.items()}}


def compare_runs(better: Path, worse: Path) -> dict[str, Any]:
    """The claim "run ``better``'s model beats run ``worse``'s" (e.g. CARE vs N2V) with the same paired bootstrap
    over the test tiles both evaluated; the runs must share the split, the tiles and the metric."""
    better, worse = Path(better), Path(worse)
    runs = []
    for run in (better, worse):
        files = [run / n for n in (TILES_FILE, "test_metrics.json", "split.json")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TrainingError(f"cannot compare {run}: it lacks {', '.join(missing)}; expected a finished run of a "
                                "dense task (biozoo train), trained by a biozoo that writes test_tiles.json")
        runs.append([json.loads(f.read_text()) for f in files])
    (tb, mb, sb), (tw, mw, sw) = runs
    same = {"split manifest": (sb["manifest_hash"], sw["manifest_hash"]), "metric": (tb["metric"], tw["metric"]),
            "tiles": ((tb["tile"], tb["test_images"], tb["shapes"]), (tw["tile"], tw["test_images"], tw["shapes"]))}
    for what, (a, b) in same.items():
        if a != b:
            raise TrainingError(f"runs {better} and {worse} differ in their {what} ({a!r} vs {b!r}); a paired "
                                "comparison needs both evaluated on the same test tiles: train both recipes on the "
                                "same data, noise and evaluation settings")
    boot = mb["bootstrap"]
    kb, kw = tb.get("model", mb["recipe"]), tw.get("model", mw["recipe"])
    if kb == kw:
        raise TrainingError(f"runs {better} and {worse} are both of {kb!r}; compare the runs of two recipes")
    parts = {kb: np.asarray(tb["parts"][kb]), kw: np.asarray(tw["parts"][kw])}
    return M.claim(kb, kw, tb["metric"], parts, boot["resamples"], boot["seed"], np.asarray(tb["image_of_tile"]))


PLUGINS = (SegmentationTask(), CareTask(), N2VTask())  # what biozoo.zoo.tasks registers from this module
