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


@pytest.fixture(scope="session")
def exported(quick_run, tiny_run, tmp_path_factory):
    """exported(recipe) -> (ExportReport, package.zip) of a quick run of that shipped recipe, or of the tiny
    StarDist run for "stardist"; each exported at most once per session."""
    from biozoo.exporters import export_run

    cache: dict = {}

    def get(recipe: str):
        if recipe not in cache:
            run = tiny_run("stardist") if recipe == "stardist" else quick_run(recipe)
            out = tmp_path_factory.mktemp("pkg") / f"{recipe}.zip"
            cache[recipe] = (export_run(run, out), out)
        return cache[recipe]

    return get
