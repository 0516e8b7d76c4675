"""Fixtures of the exporter tests: one tiny real run per task, trained at most once per session."""
from __future__ import annotations

import pytest

from tests.exporters.tiny_runs import disk_folder, train_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """tiny_run("stardist") -> the run dir of that task's tiny recipe (tests/exporters/tiny_runs.py)."""
    data = disk_folder(tmp_path_factory.mktemp("disks"))
    cache: dict = {}

    def get(task: str):
        if task not in cache:
            cache[task] = train_tiny(task, data, tmp_path_factory.mktemp(f"run-{task}") / "run")
        return cache[task]

    return get
