"""One tiny, real training run per task on synthetic disks (bright, separated, noisy): seconds on one CPU thread.

The export contract trains each registered task's entry here once per session; a task without an entry fails the
contract, so a new task cannot ship without an exported-package test.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TINY_BUDGET = {"batch_size": 4, "lr": 0.01, "threads": 1, "early_stopping": None, "seed": 0}
UNET = {"name": "unet2d_tiny", "depth": 2, "base_channels": 8, "batch_norm": True}

# task id -> the recipe fields beyond name/task/data/training. Instance tasks train longer: their packages need
# objects in the test output (bioimageio.spec refuses an all-zero test tensor), and separated disks give them
# that after a few hundred steps.
TINY_RECIPES: dict[str, dict[str, Any]] = {
    "segmentation": {"model": UNET, "training": {"epochs": 2, "steps_per_epoch": 3}},
    "care": {"model": {**UNET, "residual": True}, "noise": [0.02, 0.08],
             "training": {"epochs": 2, "steps_per_epoch": 3}},
    "n2v": {"model": UNET, "noise": [0.02, 0.08], "training": {"epochs": 2, "steps_per_epoch": 3}},
    "stardist": {"n_rays": 16, "grid": 2, "head_features": 16,
                 "model": {"name": "stardist2d_tiny", "depth": 2, "base_channels": 8, "batch_norm": True},
                 "training": {"epochs": 25, "steps_per_epoch": 10}},
    "detection": {"classes": ["disk"],
                  "model": {"name": "detector2d_tiny", "depth": 3, "base_channels": 4, "batch_norm": True},
                  "training": {"epochs": 12, "steps_per_epoch": 10}},
}


def disks(shape: tuple[int, int], rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels): ``count`` disks of radius 5-9 px, intensity ~220 on ~20, Gaussian noise sigma 8."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.int32)
    for i in range(1, count + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 9)
        lab[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (lab == 0)] = i
    image = (lab > 0) * 200.0 + 20 + rng.normal(0, 8, shape)
    return image.astype(np.float32), lab


def disk_folder(root: Path, n: int = 14, size: int = 96) -> Path:
    """A dataset folder (images/ + masks/ label TIFFs) every task trains on."""
    import tifffile

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        image, lab = disks((size, size), rng, 6)
        tifffile.imwrite(root / "images" / f"d{i:02d}.tif", image)
        tifffile.imwrite(root / "masks" / f"d{i:02d}.tif", lab)
    return root


def tiny_recipe(task: str, data: Path) -> Any:
    from biozoo.zoo.config import parse_recipe

    fields = dict(TINY_RECIPES[task])
    training = {**TINY_BUDGET, **fields.pop("training")}
    return parse_recipe({"name": f"tiny-{task}", "task": task, **fields, "training": training,
                         "data": {"dataset": str(data), "tile": None, "patch_size": [64, 64]}})


def train_tiny(task: str, data: Path, out: Path) -> Path:
    """The real trainer on the task's tiny recipe; torch's thread count is restored afterwards."""
    import torch

    from biozoo.zoo.train import train_recipe

    threads = torch.get_num_threads()
    try:
        train_recipe(tiny_recipe(task, data), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out
