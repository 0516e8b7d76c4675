"""The dense tasks: `segmentation` (classes per pixel), `care` (denoising from noisy/clean pairs) and `n2v`
(self-supervised denoising, blind-spot masks). Patches come from `PatchDataset`; every prediction is of the whole
image, reflect-padded to the model's size step and cropped back.

Test metrics: segmentation reports the foreground IoU beside an Otsu threshold; care and n2v the PSNR of the
prediction and of the noisy input against the clean image, beside a Gaussian filter whose sigma is chosen on the
validation split. n2v never trains on, or picks checkpoints by, the clean images: they are read for evaluation only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import metrics as M
from ..config import CareRecipe, N2VRecipe, SegmentationRecipe
from ..n2v import n2v_loss, n2v_mask
from .base import Evaluation, SplitData, create_recipe_model, data_folder

VAL_MASKED_FRACTION = 0.05
VAL_MASK_DRAWS = 3


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
        return SplitData(train, (train.images, train.targets), val, test)

    def _weighted(self, recipe) -> Optional[bool]:
        return None

    def build_model(self, recipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, out_channels=1)

    def objective(self, recipe, data: SplitData, contract):
        bs, step = recipe.training.batch_size, contract.size_step
        images, targets = data.val

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

    def evaluate(self, recipe, model, data: SplitData, contract) -> Evaluation:
        """PSNR of the prediction and of the noisy input, beside a Gaussian filter (sigma chosen on val)."""
        (images, targets), (val_images, val_targets) = data.test, data.val
        preds = [predict(model, x, contract.size_step)[0] for x in images]
        sigma = M.best_gaussian_sigma(val_images, val_targets)
        return Evaluation({
            "psnr": float(np.mean([M.psnr(p, c) for p, c in zip(preds, targets)])),
            "psnr_noisy_input": float(np.mean([M.psnr(x, c) for x, c in zip(images, targets)])),
            "baseline": {"name": "gaussian", "sigma_chosen_on_val": sigma,
                         "psnr": float(np.mean([M.psnr(M.gaussian_filter(x, sigma), c)
                                                for x, c in zip(images, targets)]))},
        })

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

    def evaluate(self, recipe, model, data: SplitData, contract) -> Evaluation:
        """Foreground IoU of the prediction, beside an Otsu threshold of the image."""
        images, targets = data.test
        fg_pred = [(predict(model, x, contract.size_step).argmax(0) > 0) for x in images]
        truth = np.concatenate([(t > 0).ravel() for t in targets])
        otsu = [x > M.otsu_threshold(x) for x in images]
        return Evaluation({
            "foreground_iou": M.iou(np.concatenate([p.ravel() for p in fg_pred]), truth),
            "baseline": {"name": "otsu", "foreground_iou": M.iou(np.concatenate([o.ravel() for o in otsu]), truth)},
        })


class CareTask(_DenseTask):
    name = truth = "care"

    def prepare(self, recipe: CareRecipe) -> Path:
        return noisy_pairs(recipe, data_folder(recipe))


class N2VTask(CareTask):
    name, truth = "n2v", "care"  # n2v's clean targets are read for evaluation only

    def build_model(self, recipe: N2VRecipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, out_channels=1, n2v2=recipe.n2v2)

    def objective(self, recipe: N2VRecipe, data: SplitData, contract):
        _, _, validate = super().objective(recipe, data, contract)
        bs = recipe.training.batch_size

        def make_batch(g):
            x, _ = data.sampler.sample_batch(g, bs)
            masked, mask = n2v_mask(x, g, recipe.masked_fraction, recipe.neighbourhood, median=recipe.n2v2)
            return masked, x, mask

        return make_batch, lambda model, b: n2v_loss(model(b[0]), b[1], b[2]), validate

    def _val_losses(self, recipe: N2VRecipe, model, image, target, index: int, step: int) -> list[float]:
        """Self-supervised: fixed, denser masks than in training give a stable estimate of the blind-spot error (it
        is dominated by the noise variance, so a sparse mask makes early stopping pick checkpoints by chance)."""
        x = torch.from_numpy(image[None, None])
        losses = []
        for draw in range(VAL_MASK_DRAWS):
            g = torch.Generator().manual_seed(recipe.training.seed + 1 + 1000 * draw + index)
            masked, mask = n2v_mask(x, g, VAL_MASKED_FRACTION, recipe.neighbourhood, median=recipe.n2v2)
            pred = torch.from_numpy(predict(model, masked[0, 0].numpy(), step))[None]
            losses.append(n2v_loss(pred, x, mask).item())
        return losses


def noisy_pairs(recipe, folder: Path) -> Path:
    """care/n2v train on noisy inputs made once from the clean images (Poisson gain, Gaussian sigma of the recipe)."""
    from ..data import make_noisy_pairs

    gain, sigma = recipe.noise
    return make_noisy_pairs(folder, folder.parent / f"{folder.name}-noisy-g{gain:g}-s{sigma:g}", gain, sigma)


PLUGINS = (SegmentationTask(), CareTask(), N2VTask())  # what biozoo.zoo.tasks registers from this module
