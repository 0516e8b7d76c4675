"""Every recipe task has exactly one registered TrainTask, and an unknown task id is a clear error."""
from __future__ import annotations

import pytest

from biozoo.runtime import BiozooError
from biozoo.zoo.config import TASK_IDS, parse_recipe
from biozoo.zoo.tasks import TASKS, get_task, list_tasks
from biozoo.zoo.tasks.base import TrainTask


def test_every_recipe_task_has_a_train_task_and_vice_versa() -> None:
    assert sorted(TASK_IDS) == list_tasks()
    for name in TASK_IDS:
        task = get_task(name)
        assert task.name == name and TASKS[name] is task
        assert isinstance(task, TrainTask), f"{type(task).__name__} lacks part of the TrainTask protocol"


def test_unknown_task_names_the_close_matches() -> None:
    with pytest.raises(BiozooError, match=r"unknown task 'stardsit'; did you mean 'stardist'\?"):
        get_task("stardsit")
    with pytest.raises(BiozooError, match="available: care, detection, n2v, segmentation, stardist"):
        get_task("nothing-like-it")


def test_build_model_comes_from_the_recipes_task() -> None:
    from biozoo.zoo.train import build_model

    recipe = parse_recipe({"name": "s", "task": "segmentation", "classes": ["bg", "fg"],
                           "model": {"name": "unet2d_tiny", "depth": 2}, "data": {"dataset": "x"}})
    assert build_model(recipe).io_contract(measure=False).out_channels == 2


def test_run_dir_json_is_strict_and_atomic(tmp_path) -> None:
    import json

    from biozoo.zoo.tasks.base import write_json

    path = tmp_path / "test_metrics.json"
    write_json(path, {"precision": float("nan"), "ratio": [float("inf"), -float("inf"), 0.5], "shape": (2, 3)})
    assert path.read_text() == json.dumps({"precision": None, "ratio": [None, None, 0.5], "shape": [2, 3]}, indent=1)
    assert [p.name for p in tmp_path.iterdir()] == ["test_metrics.json"]
