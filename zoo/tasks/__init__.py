"""biozoo.zoo.tasks: one training plug-in per task, registered under the id that ``recipe.task`` carries.

The generic run (`base.run_training`) never names a task; it asks `get_task(recipe.task)` for the task's data,
model, objective, evaluation and statistics. Adding a task means its recipe class in config.py and one module
here that implements `TrainTask` and lists its instances in ``PLUGINS``; nothing else (no hand-kept list here).
"""
from __future__ import annotations

from biozoo.runtime import BiozooError

from ..registry import module_plugins, unknown_name
from .base import Evaluation, TrainTask, run_training

TASKS: dict[str, TrainTask] = {}


def register_task(task: TrainTask) -> TrainTask:
    """Register ``task`` under ``task.name``; a second task claiming one id is a programming error."""
    if task.name in TASKS and TASKS[task.name] is not task:
        raise ValueError(f"task {task.name!r} is already registered by {type(TASKS[task.name]).__module__}")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> TrainTask:
    """The registered task ``name``; a BiozooError listing the close matches for an unknown one."""
    task = TASKS.get(name)
    if task is None:
        raise BiozooError(unknown_name("task", name, list_tasks()))
    return task


def list_tasks() -> list[str]:
    return sorted(TASKS)


for _task in module_plugins(__name__, __path__):
    register_task(_task)

__all__ = ["TASKS", "Evaluation", "TrainTask", "get_task", "list_tasks", "register_task", "run_training"]
