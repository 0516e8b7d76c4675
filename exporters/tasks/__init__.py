"""The export side of every task, registered once under the recipe's task id (the same ids as biozoo.zoo.tasks).

A new task means one module here with an `ExportTask` subclass, listed in the module's ``PLUGINS``; nothing
else: the modules are found here, and the pipeline in export.py never names a task.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Optional

from biozoo.runtime import ExportError
from biozoo.zoo.registry import module_plugins

from .base import ExportContext, ExportTask, Graph, TestOutput

TASKS: dict[str, ExportTask] = {}


def register_task(task: ExportTask) -> ExportTask:
    """Add ``task`` under ``task.name``; a second task with the same id is a bug, not an override."""
    if task.name in TASKS:
        raise ExportError(f"export task '{task.name}' is registered twice ({type(TASKS[task.name]).__name__} and "
                          f"{type(task).__name__}); give the new task its own id")
    TASKS[task.name] = task
    return task


def get_export_task(name: str, run_root: Optional[Path] = None) -> ExportTask:
    try:
        return TASKS[name]
    except KeyError:
        close = difflib.get_close_matches(name, TASKS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        where = f"run '{run_root}' is a '{name}' run" if run_root else f"unknown task '{name}'"
        raise ExportError(f"{where}{hint}; biozoo exports {', '.join(sorted(TASKS))}") from None


def list_export_tasks() -> list[str]:
    return sorted(TASKS)


for _task in module_plugins(__name__, __path__):
    register_task(_task)

__all__ = ["TASKS", "ExportContext", "ExportTask", "Graph", "TestOutput", "get_export_task", "list_export_tasks",
           "register_task"]
