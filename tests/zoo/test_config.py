"""Recipes parse into strict configs; every mistake names its YAML path."""
from __future__ import annotations

import pytest

from biozoo.runtime import TrainingError
from biozoo.zoo.config import CareRecipe, N2VRecipe, SegmentationRecipe, load_recipe, parse_recipe

BASE = {"name": "unet-test", "model": {"name": "unet2d", "depth": 3}, "data": {"dataset": "stardist-nuclei-2d"}}


def test_task_discriminator_selects_the_recipe_class():
    assert isinstance(parse_recipe({**BASE, "task": "segmentation"}), SegmentationRecipe)
    assert isinstance(parse_recipe({**BASE, "task": "care"}), CareRecipe)
    assert isinstance(parse_recipe({**BASE, "task": "n2v", "n2v2": True}), N2VRecipe)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"training": {"lr": -1}}, "training.lr"),
        ({"training": {"learning_rate": 0.1}}, "training.learning_rate"),
        ({"data": {"dataset": "x", "patch_size": [60, 64]}}, "divisible by 2**model.depth"),
        ({"data": {"dataset": "x", "fractions": [0.5, 0.2, 0.2]}}, "sum to 1"),
        ({"model": {"name": "unet2d", "depth": 9}}, "model.depth"),
        ({"task": "magic"}, "task"),
    ],
)
def test_errors_name_the_yaml_path(change, path):
    with pytest.raises(TrainingError, match=path.replace("*", r"\*").replace(".", r"\.")):
        parse_recipe({**BASE, "task": "segmentation", **change})


def test_load_recipe_reads_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: r\ntask: care\nmodel: {name: unet2d}\ndata: {dataset: d}\n")
    assert load_recipe(p).task == "care"
    with pytest.raises(TrainingError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
