"""biozoo.specs: YAML recipes and templates shipped with biozoo (data only, plus this tiny loader)."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from biozoo.runtime import TrainingError


def list_recipes() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in files(__name__).joinpath("recipes").iterdir() if p.name.endswith(".yaml"))


def recipe_path(name: str) -> Path:
    path = Path(str(files(__name__).joinpath("recipes", f"{name}.yaml")))
    if not path.is_file():
        raise TrainingError(f"no recipe '{name}'; shipped recipes: {', '.join(list_recipes())}")
    return path
