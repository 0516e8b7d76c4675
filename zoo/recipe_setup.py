"""What every task's trainer (and the exporter) builds from a recipe: its data folder and its untrained network.
Its own module so the task trainers (train_detector, train_stardist) use it without importing the dispatcher in
train.py that calls them."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from biozoo.runtime import TrainingError

from .config import CareRecipe, DetectionRecipe, N2VRecipe, SegmentationRecipe, StarDistRecipe
from .registry import create_model

AnyRecipe = Union[SegmentationRecipe, CareRecipe, N2VRecipe, DetectionRecipe, StarDistRecipe]


def prepare_data(recipe: AnyRecipe) -> Path:
    """The folder the split is made in: fetched (or given) data, cut into tiles, plus noise for care/n2v."""
    from .data import fetch_dataset, list_datasets, make_noisy_pairs, tile_dataset

    d = recipe.data
    source = fetch_dataset(d.dataset) if d.dataset in list_datasets() else Path(d.dataset).expanduser()
    if not (source / "images").is_dir():
        raise TrainingError(f"data.dataset '{d.dataset}': no images/ folder in {source}; give a dataset name from "
                            "`biozoo data list` or a folder with images/ (+ masks/ or targets/)")
    folder = tile_dataset(source, source / "derived" / f"tiles-{d.tile}", d.tile) if d.tile else source
    if recipe.task in ("care", "n2v"):
        gain, sigma = recipe.noise
        folder = make_noisy_pairs(folder, folder.parent / f"{folder.name}-noisy-g{gain:g}-s{sigma:g}", gain, sigma)
    return folder


def build_model(recipe: AnyRecipe) -> torch.nn.Module:
    """The untrained network a recipe describes (the exporter rebuilds it this way before loading best.pt)."""
    m = recipe.model
    if isinstance(recipe, StarDistRecipe):
        return create_model(m.name, in_channels=1, n_rays=recipe.n_rays, grid=recipe.grid, depth=m.depth,
                            base_channels=m.base_channels, convs_per_block=m.convs_per_block,
                            batch_norm=m.batch_norm, residual=m.residual, features=recipe.head_features)
    if isinstance(recipe, DetectionRecipe):
        return create_model(m.name, in_channels=1, num_classes=len(recipe.classes), stride=recipe.stride,
                            depth=m.depth, base_channels=m.base_channels, convs_per_block=m.convs_per_block,
                            batch_norm=m.batch_norm, residual=m.residual)
    out = len(recipe.classes) if isinstance(recipe, SegmentationRecipe) else 1
    extra = {"n2v2": recipe.n2v2} if isinstance(recipe, N2VRecipe) else {}
    return create_model(m.name, in_channels=1, out_channels=out, depth=m.depth, base_channels=m.base_channels,
                        convs_per_block=m.convs_per_block, batch_norm=m.batch_norm, residual=m.residual, **extra)
