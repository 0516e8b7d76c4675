"""`biozoo train RECIPE --out RUN_DIR [--resume]`: data -> split -> patches -> loop -> test metrics, in one run dir.

The run dir holds: recipe.yaml (resolved), best.pt, last.pt, metrics.csv, curves.png, split.json (the manifest
hash and where the data came from), stats.json (training intensity percentiles, pixel size, class frequencies),
receptive_field.json, and test_metrics.json (held-out test split, with the classical baseline beside it).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml

from biozoo.runtime import TrainingError

from . import metrics as M
from .config import CareRecipe, DetectionRecipe, N2VRecipe, SegmentationRecipe, StarDistRecipe, load_recipe
from .n2v import n2v_loss, n2v_mask
from .recipe_setup import AnyRecipe, build_model, prepare_data
from .training import plot_curves, seed_everything, train_loop

log = logging.getLogger("biozoo")
VAL_MASKED_FRACTION = 0.05
VAL_MASK_DRAWS = 3


def _predict(model: torch.nn.Module, image: np.ndarray, step: int) -> np.ndarray:
    """Whole-image prediction, padded (reflect) to the model's size step and cropped back."""
    pad = [(0, (-n) % step) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad, mode="reflect")[None, None].astype(np.float32))
    with torch.no_grad():
        y = model(x)[0].numpy()
    return y[(slice(None), *(slice(0, n) for n in image.shape))]


def _losses(recipe: AnyRecipe, train_ds):
    bs = recipe.training.batch_size
    if isinstance(recipe, N2VRecipe):
        def make_batch(g):
            x, _ = train_ds.sample_batch(g, bs)
            masked, mask = n2v_mask(x, g, recipe.masked_fraction, recipe.neighbourhood, median=recipe.n2v2)
            return masked, x, mask

        return make_batch, lambda model, b: n2v_loss(model(b[0]), b[1], b[2])
    make_batch = lambda g: train_ds.sample_batch(g, bs)  # noqa: E731
    if isinstance(recipe, SegmentationRecipe):
        return make_batch, lambda model, b: torch.nn.functional.cross_entropy(model(b[0]), b[1])
    return make_batch, lambda model, b: torch.nn.functional.mse_loss(model(b[0]), b[1])


def _validator(recipe: AnyRecipe, images, targets, step: int):
    g_seed = recipe.training.seed + 1

    def validate(model) -> dict[str, float]:
        losses = []
        for i, img in enumerate(images):
            x = torch.from_numpy(img[None, None])
            if isinstance(recipe, N2VRecipe):  # self-supervised: clean targets are never used for training choices
                # fixed, denser masks than in training: a stable estimate of the blind-spot error (it is dominated
                # by the noise variance, so a sparse mask makes early stopping pick checkpoints by chance)
                for draw in range(VAL_MASK_DRAWS):
                    g = torch.Generator().manual_seed(g_seed + 1000 * draw + i)
                    masked, mask = n2v_mask(x, g, VAL_MASKED_FRACTION, recipe.neighbourhood, median=recipe.n2v2)
                    pred = torch.from_numpy(_predict(model, masked[0, 0].numpy(), step))[None]
                    losses.append(n2v_loss(pred, x, mask).item())
            elif isinstance(recipe, SegmentationRecipe):
                logits = torch.from_numpy(_predict(model, img, step))[None]
                losses.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets[i][None]).long()).item())
            else:
                losses.append(float(np.mean((_predict(model, img, step)[0] - targets[i]) ** 2)))
        return {"val_loss": float(np.mean(losses))}

    return validate


def _test_metrics(recipe: AnyRecipe, model, step: int, test, val) -> dict[str, Any]:
    (images, targets), (val_images, val_targets) = test, val
    if isinstance(recipe, SegmentationRecipe):
        fg_pred = [(_predict(model, x, step).argmax(0) > 0) for x in images]
        truth = [t > 0 for t in targets]
        otsu = [x > M.otsu_threshold(x) for x in images]
        return {
            "foreground_iou": M.iou(np.concatenate([p.ravel() for p in fg_pred]), np.concatenate([t.ravel() for t in truth])),
            "baseline": {"name": "otsu", "foreground_iou": M.iou(np.concatenate([o.ravel() for o in otsu]),
                                                               np.concatenate([t.ravel() for t in truth]))},
        }
    preds = [_predict(model, x, step)[0] for x in images]
    sigma = M.best_gaussian_sigma(val_images, val_targets)
    return {
        "psnr": float(np.mean([M.psnr(p, c) for p, c in zip(preds, targets)])),
        "psnr_noisy_input": float(np.mean([M.psnr(x, c) for x, c in zip(images, targets)])),
        "baseline": {"name": "gaussian", "sigma_chosen_on_val": sigma,
                     "psnr": float(np.mean([M.psnr(M.gaussian_filter(x, sigma), c) for x, c in zip(images, targets)]))},
    }


def train_recipe(recipe: Union[AnyRecipe, str, Path], out: Path, resume: bool = False, **loop_kwargs) -> dict[str, Any]:
    from .data import folder_dataset, load_folder, make_or_load_split
    from .data.augment import Augment

    if not isinstance(recipe, (SegmentationRecipe, CareRecipe, N2VRecipe, DetectionRecipe, StarDistRecipe)):
        recipe = load_recipe(recipe)
    out = Path(out)
    if isinstance(recipe, DetectionRecipe):
        from .train_detector import train_detection

        return train_detection(recipe, out, resume=resume, **loop_kwargs)
    if isinstance(recipe, StarDistRecipe):
        from .train_stardist import train_stardist

        return train_stardist(recipe, out, resume=resume, **loop_kwargs)
    if not resume and (out / "last.pt").exists():
        raise TrainingError(f"'{out}' already holds a run; use --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    folder = prepare_data(recipe)
    d, task = recipe.data, recipe.task
    split = make_or_load_split(folder, d.fractions, recipe.training.seed)
    kind = "n2v" if task == "n2v" else task
    weighted = {"auto": None, "on": True, "off": False}[d.weighted_sampling]
    train_ds = folder_dataset(folder, split.train, kind, d.patch_size, d.percentiles,
                              augment=Augment() if d.augment else None, foreground_aware=d.foreground_aware,
                              weighted=weighted if task == "segmentation" else None, seed=recipe.training.seed)
    truth_task = "care" if task == "n2v" else task  # n2v's clean targets are read for evaluation only
    val_images, val_targets, _ = load_folder(folder, split.val, truth_task, len(d.patch_size), d.percentiles)
    test_images, test_targets, _ = load_folder(folder, split.test, truth_task, len(d.patch_size), d.percentiles)
    seed_everything(recipe.training.seed)  # weight init must not depend on what ran before in this process
    model = build_model(recipe)
    contract = model.io_contract()
    make_batch, loss = _losses(recipe, train_ds)
    state = train_loop(model, loss, make_batch, _validator(recipe, val_images, val_targets, contract.size_step),
                       recipe.training, out, resume=resume, **loop_kwargs)
    plot_curves(state.history, out / "curves.png")
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    model.eval()
    result = {
        "recipe": recipe.name, "task": task, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        "stopped_early": state.stopped_early, "split": {p: len(split.part(p)) for p in ("train", "val", "test")},
        **_test_metrics(recipe, model, contract.size_step, (test_images, test_targets), (val_images, val_targets)),
    }
    _write(out / "test_metrics.json", result)
    _write(out / "split.json", {"manifest_hash": split.manifest_hash, "data": str(folder), **{
        p: list(split.part(p)) for p in ("train", "val", "test")}})
    train_pixels = np.concatenate([x.ravel() for x in train_ds.images])
    _write(out / "stats.json", {
        "normalization": {"percentiles": list(d.percentiles), "per_image_raw": train_ds.report.get("percentiles")},
        "normalized_intensity_percentiles": {str(q): float(np.percentile(train_pixels, q)) for q in (1, 50, 99)},
        "pixel_size": list(d.pixel_size) if d.pixel_size else None,
        "class_frequencies": train_ds.report.get("class_frequencies"),
        "sampling": {k: v for k, v in train_ds.report.items() if k != "percentiles"},
    })
    rf = contract.receptive_field
    _write(out / "receptive_field.json", {"receptive_field": rf, "halo": contract.halo,
                                          "size_step": contract.size_step, "min_size": contract.min_size})
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return result


def _write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    tmp.replace(path)
