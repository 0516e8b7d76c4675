"""`biozoo train` end to end on a small synthetic folder (unit test; the real-data recipes run in the slow test)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from biozoo.runtime import TrainingError
from biozoo.zoo.config import parse_recipe
from biozoo.zoo.train import train_recipe


def _blobs(seed: int, n: int = 96):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    labels = np.zeros((n, n), np.uint16)
    for k in range(1, 9):
        cy, cx, r = rng.uniform(8, n - 8), rng.uniform(8, n - 8), rng.uniform(4, 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = k
    image = (labels > 0) * 100.0 + rng.normal(20, 5, (n, n))
    return image.astype(np.float32), labels


@pytest.fixture()
def folder(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(3):
        image, labels = _blobs(i)
        tifffile.imwrite(tmp_path / "data" / "images" / f"img{i}.tif", image)
        tifffile.imwrite(tmp_path / "data" / "masks" / f"img{i}.tif", labels)
    return tmp_path / "data"


def _recipe(folder, task="segmentation", **extra):
    return parse_recipe({
        "name": "tiny", "task": task, "model": {"name": "unet2d_tiny", "depth": 2, "base_channels": 4},
        "data": {"dataset": str(folder), "tile": 32, "patch_size": [32, 32]},
        "training": {"batch_size": 4, "epochs": 2, "steps_per_epoch": 3, "seed": 1, "threads": 2}, **extra,
    })


def test_segmentation_run_dir_holds_everything(folder, tmp_path):
    result = train_recipe(_recipe(folder), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "split.json", "stats.json", "receptive_field.json",
                 "test_metrics.json", "recipe.yaml"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0 <= metrics["foreground_iou"] <= 1 and metrics["baseline"]["name"] == "otsu"
    assert result["split"]["test"] >= 1
    assert json.loads((run / "receptive_field.json").read_text())["halo"] > 0
    with pytest.raises(TrainingError, match="already holds a run"):
        train_recipe(_recipe(folder), run, progress=False)


@pytest.mark.parametrize("task", ["care", "n2v"])
def test_restoration_tasks_report_psnr_and_baseline(folder, tmp_path, task):
    result = train_recipe(_recipe(folder, task, noise=[0.05, 0.05]), tmp_path / task, progress=False)
    assert np.isfinite(result["psnr"]) and np.isfinite(result["psnr_noisy_input"])
    assert result["baseline"]["name"] == "gaussian"


def test_cli_train_is_plugged_in(folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ntask: segmentation\nmodel: {{name: unet2d_tiny, depth: 2}}\n"
                      f"data: {{dataset: {folder}, tile: 32, patch_size: [32, 32]}}\n"
                      "training: {epochs: 1, steps_per_epoch: 2, batch_size: 2}\n")
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "-q", "train", str(recipe), "--out",
                           str(tmp_path / "cli-run"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "foreground_iou" in json.loads(proc.stdout)
    bad = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "train", str(tmp_path / "nope.yaml"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
