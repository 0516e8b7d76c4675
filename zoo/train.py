"""`biozoo train RECIPE --out RUN_DIR [--resume]`: data -> split -> patches -> loop -> test metrics, in one run dir.

One pipeline for every task: the recipe's ``task`` picks its plug-in (`biozoo.zoo.tasks`), and
`tasks.base.run_training` drives it and writes the run dir (its files are listed there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from .config import RECIPES, AnyRecipe, load_recipe
from .tasks import get_task, run_training


def train_recipe(recipe: Union[AnyRecipe, str, Path], out: Path, resume: bool = False, **loop_kwargs) -> dict[str, Any]:
    """Train a recipe (object, file or path) into the run dir ``out``; return its test metrics."""
    if not isinstance(recipe, RECIPES):
        recipe = load_recipe(recipe)
    return run_training(get_task(recipe.task), recipe, Path(out), resume=resume, **loop_kwargs)


def build_model(recipe: AnyRecipe) -> torch.nn.Module:
    """The untrained network a recipe describes (the exporter rebuilds it this way before loading best.pt)."""
    return get_task(recipe.task).build_model(recipe)
