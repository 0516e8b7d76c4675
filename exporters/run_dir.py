"""Reading a training run folder (written by `biozoo train`) for export: recipe, best checkpoint, split, stats."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biozoo.runtime import ExportError

REQUIRED = ("recipe.yaml", "best.pt", "split.json", "stats.json", "test_metrics.json", "receptive_field.json")


@dataclass(frozen=True)
class RunDir:
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def _json(self, name: str) -> dict[str, Any]:
        try:
            return json.loads(self.path(name).read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{self.path(name)} is not valid JSON ({e}); re-run training") from None

    @cached_property
    def recipe(self) -> Any:
        from biozoo.zoo.config import load_recipe

        return load_recipe(self.path("recipe.yaml"))

    @cached_property
    def split(self) -> dict[str, Any]:
        return self._json("split.json")

    @cached_property
    def stats(self) -> dict[str, Any]:
        return self._json("stats.json")

    @cached_property
    def test_metrics(self) -> dict[str, Any]:
        return self._json("test_metrics.json")

    @cached_property
    def receptive_field(self) -> dict[str, Any]:
        return self._json("receptive_field.json")

    @property
    def data_dir(self) -> Path:
        return Path(self.split["data"])

    def trained_model(self) -> torch.nn.Module:
        """The recipe's network with the best checkpoint's weights, in eval mode."""
        from biozoo.zoo.train import build_model
        from biozoo.zoo.training import load_checkpoint

        net = build_model(self.recipe)
        state = load_checkpoint(self.path("best.pt"), "best checkpoint")  # weights_only: pickles are refused
        try:
            net.load_state_dict(state)
        except (RuntimeError, KeyError) as e:
            raise ExportError(f"{self.path('best.pt')} does not match the recipe's model ({e}); was the recipe "
                              "edited after training?") from None
        return net.eval()

    def contract(self, net: torch.nn.Module) -> Any:
        """The model's IO contract carrying the receptive field measured at training time."""
        rf = self.receptive_field
        contract = net.io_contract()
        # bioimageio.core's blockwise predict grows each block by the halo on both sides: a halo on the size-step
        # grid keeps those blocks valid (a larger halo is always safe, only a smaller one would be wrong)
        halo = -(-int(rf["halo"]) // contract.size_step) * contract.size_step
        return contract.with_receptive_field(int(rf["receptive_field"]), halo)


def open_run(root: Path) -> RunDir:
    if not root.is_dir():
        raise ExportError(f"run folder '{root}' does not exist; train first: biozoo train RECIPE --out {root}")
    missing = [n for n in REQUIRED if not (root / n).is_file()]
    if missing:
        raise ExportError(f"run folder '{root}' lacks {', '.join(missing)}: it is not a finished `biozoo train` run "
                          "(training interrupted? resume it with --resume)")
    run = RunDir(root)
    if not run.split.get("test"):
        raise ExportError(f"{root / 'split.json'} has no test files; the package's test tensors come from the "
                          "held-out test split")
    return run


def read_image(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path) if path.suffix.lower() in (".tif", ".tiff") else np.load(path))


def test_image(run: RunDir, contract: Any) -> np.ndarray:
    """The first held-out test image (raw intensities, float32), cut or reflect-padded to a valid model size."""
    name = run.split["test"][0]
    path = run.data_dir / "images" / name
    if not path.is_file():
        raise ExportError(f"test image '{path}' (from split.json) is missing; fetch the data again "
                          f"(biozoo data fetch {run.recipe.data.dataset})")
    image = read_image(path).astype(np.float32)
    if image.ndim != contract.spatial_dims:
        raise ExportError(f"test image '{path}' has shape {image.shape}; the model expects {contract.spatial_dims}D "
                          "single-channel images")
    sizes = []
    for n in image.shape:
        if n >= contract.min_tile:  # the largest valid size that fits, so no pixel is invented
            sizes.append(contract.min_tile + (n - contract.min_tile) // contract.size_step * contract.size_step)
        else:
            sizes.append(contract.min_tile)
    image = image[tuple(slice(0, min(s, n)) for s, n in zip(sizes, image.shape))]
    pad = [(0, s - n) for s, n in zip(sizes, image.shape)]
    return np.pad(image, pad, mode="reflect") if any(p for _, p in pad) else image


def object_sizes(run: RunDir) -> Any:
    """Median / 95th percentile equivalent diameter (px) of the objects in the training masks, or None."""
    masks = run.data_dir / "masks"
    if not masks.is_dir():
        return None
    diameters = []
    for name in run.split.get("train", []):
        path = masks / name
        if not path.is_file():
            continue
        labels = read_image(path)
        if labels.max() <= 1:  # a binary mask: objects are its connected components
            from scipy import ndimage

            labels, _ = ndimage.label(labels > 0)
        areas = np.bincount(labels.ravel().astype(np.int64))[1:]
        areas = areas[areas > 0]
        diameters.extend((2 * np.sqrt(areas / np.pi)) if labels.ndim == 2 else 2 * np.cbrt(3 * areas / (4 * np.pi)))
    if not diameters:
        return None
    d = np.asarray(diameters)
    return {"median_diameter_px": round(float(np.median(d)), 2), "p95_diameter_px": round(float(np.percentile(d, 95)), 2),
            "count": int(d.size)}
