"""What every task shares: the `TrainTask` protocol and the one run that drives any task through it.

`run_training` owns everything that is the same for every task: refuse an existing run unless resuming, the run
folder, the split, the seed, the loop, the curves, reloading best.pt, and every run-dir file:

    recipe.yaml           the resolved recipe
    best.pt, last.pt, metrics.csv, curves.png   (the loop's)
    split.json            the manifest hash, the data folder and the file names of each part
    stats.json            the task's training statistics (intensity percentiles, pixel size, classes or objects)
    receptive_field.json  the model's IO contract: receptive field, halo, size step, minimum size
    test_metrics.json     the held-out test split, beside the task's classical baseline
    + the task's own files (stardist: thresholds.json)

A task supplies only what differs (its data, model, objective, evaluation and statistics); it never writes into
the run dir itself. All JSON goes through `write_json`: strict (NaN and infinities become null), atomic.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, runtime_checkable

import torch
import yaml

from biozoo.runtime import TrainingError

from ..config import AnyRecipe
from ..data.split import Split, make_or_load_split
from ..io_contract import IOContract
from ..registry import create_model
from ..training import LossFn, MakeBatch, Validate, plot_curves, seed_everything, train_loop

PARTS = ("train", "val", "test")
TaskData = Any  # whatever the task's load() returns (usually a SplitData); only that task reads it


@dataclass
class SplitData:
    """What a task's load() usually returns: the training sampler and the normalized (images, truths) per part."""

    sampler: Any  # draws the training batches: sampler.sample_batch(generator, batch_size)
    train: tuple[list, Any]
    val: tuple[list, Any]
    test: tuple[list, Any]


@dataclass
class Evaluation:
    """A task's verdict on the trained model: ``metrics`` go into test_metrics.json after the keys every run has;
    ``files`` are further run-dir JSON files by name (e.g. stardist's thresholds.json)."""

    metrics: dict[str, Any]
    files: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class TrainTask(Protocol):
    """One task's part of training, registered in `biozoo.zoo.tasks` under its recipe's ``task`` id."""

    name: str  # == the recipe's Literal["..."] task discriminator
    records_output_stride: bool  # receptive_field.json also holds the contract's output_stride (subsampled heads)

    def prepare(self, recipe: AnyRecipe) -> Path:
        """The folder the split is made in: `data_folder(recipe)` plus what the task derives (noise, labels)."""

    def load(self, recipe: AnyRecipe, folder: Path, split: Split) -> TaskData:
        """The training sampler and the normalized val/test arrays of `split`."""

    def build_model(self, recipe: AnyRecipe, data: Optional[TaskData] = None) -> torch.nn.Module:
        """The untrained network; with ``data``, initialised from the training data where the task does so."""

    def objective(self, recipe: AnyRecipe, data: TaskData, contract: IOContract
                  ) -> tuple[MakeBatch, LossFn, Validate]:
        """What the loop trains with: ``make_batch(generator)``, ``loss(model, batch)``, ``validate(model)``."""

    def evaluate(self, recipe: AnyRecipe, model: torch.nn.Module, data: TaskData, contract: IOContract
                 ) -> Evaluation:
        """Test metrics of the best model and the baseline; instance tasks add "postprocessing" (the package's)."""

    def stats(self, recipe: AnyRecipe, data: TaskData) -> dict[str, Any]:
        """stats.json: normalization, training intensity percentiles, pixel size and the task's counts."""


def data_folder(recipe: AnyRecipe) -> Path:
    """The recipe's data: a fetched dataset (by name) or a given folder with images/, cut into tiles when asked."""
    from ..data import fetch_dataset, list_datasets, tile_dataset

    from ..data.sources import is_mix, mixed_folder

    d = recipe.data
    if is_mix(d.dataset):  # each source tiled or sliced as it must be, then mixed: `tile` does not apply
        if d.tile:
            raise TrainingError(f"data.dataset '{d.dataset}' mixes sources that are each prepared their own way; "
                                "set data.tile: null")
        return mixed_folder(d.dataset)
    source = fetch_dataset(d.dataset) if d.dataset in list_datasets() else Path(d.dataset).expanduser()
    if not (source / "images").is_dir():
        raise TrainingError(f"data.dataset '{d.dataset}': no images/ folder in {source}; give a dataset name from "
                            "`biozoo data list` or a folder with images/ (+ masks/ or targets/)")
    return tile_dataset(source, source / "derived" / f"tiles-{d.tile}", d.tile) if d.tile else source


def create_recipe_model(recipe: AnyRecipe, **head: Any) -> torch.nn.Module:
    """The recipe's registered architecture with one input channel, the backbone of its `model:` section and the
    task's ``head`` hyperparameters (output channels, rays, stride, ...)."""
    m = recipe.model
    return create_model(m.name, in_channels=1, **head, depth=m.depth, base_channels=m.base_channels,
                        convs_per_block=m.convs_per_block, batch_norm=m.batch_norm, residual=m.residual)


def run_training(task: TrainTask, recipe: AnyRecipe, out: Path, resume: bool = False,
                 **loop_kwargs: Any) -> dict[str, Any]:
    """Train ``recipe`` into the run dir ``out`` (see the module docstring); return the test metrics."""
    out = Path(out)
    if not resume and (out / "last.pt").exists():
        raise TrainingError(f"'{out}' already holds a run; use --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    folder = task.prepare(recipe)
    split = make_or_load_split(folder, recipe.data.fractions, recipe.training.seed)
    data = task.load(recipe, folder, split)
    seed_everything(recipe.training.seed)  # weight init must not depend on what ran before in this process
    model = task.build_model(recipe, data)
    contract = model.io_contract()
    make_batch, loss, validate = task.objective(recipe, data, contract)
    state = train_loop(model, loss, make_batch, validate, recipe.training, out, resume=resume, **loop_kwargs)
    plot_curves(state.history, out / "curves.png")
    model.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    model.eval()
    evaluation = task.evaluate(recipe, model, data, contract)
    result = {
        "recipe": recipe.name, "task": recipe.task, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
        "stopped_early": state.stopped_early, "split": {p: len(split.part(p)) for p in PARTS},
        **evaluation.metrics,
    }
    for name, content in evaluation.files.items():
        write_json(out / name, content)
    write_json(out / "test_metrics.json", result)
    write_json(out / "split.json", {"manifest_hash": split.manifest_hash, "data": str(folder),
                                    **{p: list(split.part(p)) for p in PARTS}})
    write_json(out / "stats.json", task.stats(recipe, data))
    geometry = {"receptive_field": contract.receptive_field, "halo": contract.halo,
                "size_step": contract.size_step, "min_size": contract.min_size}
    if task.records_output_stride:
        geometry["output_stride"] = contract.output_stride
    write_json(out / "receptive_field.json", geometry)
    write_text(out / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    return result


def write_json(path: Path, data: Any) -> None:
    """Strict JSON (indent 1), atomically: NaN and infinities (e.g. precision without any detection) become null,
    dataclasses their fields, and anything else json cannot write its ``str``."""
    write_text(path, json.dumps(_strict(data), indent=1, allow_nan=False, default=str))


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``: never a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _strict(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return _strict(asdict(value))
    return value
