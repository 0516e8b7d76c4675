"""`biozoo train RECIPE.yaml --out RUN_DIR [--resume]`, plugged into the CLI via the biozoo.commands entry points.

Imports torch only when the command runs, so `biozoo info` and friends stay torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from a YAML recipe (see specs/recipes/)",
                              description="Train a model from a YAML recipe into a run folder.")
    p.add_argument("recipe", metavar="RECIPE.yaml", help="a recipe file, or a name from specs/recipes (e.g. unet-nuclei-2d)")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, test metrics")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt exactly")
    p.add_argument("--json", action="store_true", help="print the test metrics as one JSON object")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from biozoo.specs import recipe_path

    from .train import train_recipe

    source = Path(args.recipe)
    if not source.exists() and not source.suffix:
        source = recipe_path(args.recipe)
    _check_arguments(source, Path(args.out))
    result = train_recipe(source, Path(args.out), resume=args.resume, progress=not args.quiet)
    if args.json:  # test_metrics.json as written (strict JSON: a NaN metric is null there, never a bare NaN)
        print(json.dumps(json.loads((Path(args.out) / "test_metrics.json").read_text()), allow_nan=False))
    else:
        print("\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def _check_arguments(recipe: Path, out: Path) -> None:
    """Refuse bad paths before torch is imported or any data is fetched (exit 2, one line)."""
    from biozoo.runtime import TrainingError

    if recipe.is_file():
        try:
            recipe.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise TrainingError(f"recipe '{recipe}' is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                                "YAML (see specs/recipes/ for examples)") from None
    elif recipe.exists():
        raise TrainingError(f"recipe '{recipe}' is a folder; expected a recipe .yaml file or a name from specs/recipes")
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out '{out}' is an existing file; the run needs a folder: choose another --out")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TrainingError(f"--out '{out}' lies under the file '{parent}'; choose a folder path for --out")
