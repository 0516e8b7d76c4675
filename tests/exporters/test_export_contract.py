"""The export contract, parametrized over every registered task (the model contract's counterpart): a tiny real
run of the task exports through the one pipeline; the package is spec-valid, passes bioimageio.core's test_model
and `biozoo test`, its model reproduces its own test tensors, and exporting the run again gives the same bytes.

A new task gets all of this by registering itself and adding its tiny recipe to tests/exporters/tiny_runs.py."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml

from biozoo.exporters import export_run
from biozoo.exporters.tasks import get_export_task, list_export_tasks
from tests.exporters.tiny_runs import TINY_RECIPES

TASKS = list_export_tasks()


def test_every_task_is_registered_in_both_torch_layers_and_has_a_tiny_recipe():
    from biozoo.zoo.tasks import list_tasks

    assert set(TASKS) == set(list_tasks()) == set(TINY_RECIPES)


@pytest.fixture(scope="module")
def packaged(tiny_run, tmp_path_factory):
    cache: dict = {}

    def get(task: str):
        if task not in cache:
            out = tmp_path_factory.mktemp(f"pkg-{task}") / f"{task}.zip"
            cache[task] = (tiny_run(task), export_run(tiny_run(task), out), out)
        return cache[task]

    return get


def _members(package) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


@pytest.mark.parametrize("task", TASKS)
def test_the_package_passes_bioimageio_core_and_biozoo(task, packaged, assert_package_passes):
    if task == "stardist":
        pytest.importorskip("stardist")  # core runs stardist_postprocessing with the stardist package
    _, report, package = packaged(task)
    assert report.test["status"] == "passed" and report.parity["passed"]
    assert_package_passes(package)


@pytest.mark.parametrize("task", TASKS)
def test_the_package_says_what_it_is_and_reproduces_its_test_tensors(task, packaged):
    from biozoo.runtime import load

    _, _, package = packaged(task)
    members = _members(package)
    rdf = yaml.safe_load(members["rdf.yaml"])
    assert rdf["config"]["biozoo"]["task"] == task
    assert {"README.md", "cover.png", "weights.onnx", "test_input.npy"} <= set(members)
    assert "# Validation" in members["README.md"].decode()
    outputs = [o["id"] for o in rdf["outputs"]]
    assert get_export_task(task).output_id in outputs
    model = load(package, device="cpu")
    test_input = np.load(_as_file(members, rdf["inputs"][0]["test_tensor"]["source"]))
    got = model.predict(test_input[0, 0], axes="yx")
    got = got if isinstance(got, dict) else {outputs[0]: got}
    tolerance = rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]
    for descr in rdf["outputs"]:
        expected = np.load(_as_file(members, descr["test_tensor"]["source"]))
        value = np.asarray(got[descr["id"]])
        if descr["axes"][0]["type"] == "index":  # a fixed-capacity list: biozoo drops the padding rows (all 0)
            assert not np.any(expected[len(value):]) and len(value) > 0
            expected = expected[: len(value)]
        np.testing.assert_allclose(value.reshape(expected.shape), expected,
                                   atol=tolerance["absolute_tolerance"] + 1e-6,
                                   rtol=tolerance["relative_tolerance"])


@pytest.mark.parametrize("task", TASKS)
def test_exporting_the_same_run_again_gives_the_same_bytes(task, packaged, tmp_path):
    run, report, package = packaged(task)
    again = export_run(run, tmp_path / "again.zip")
    assert again.sha256 == report.sha256 and (tmp_path / "again.zip").read_bytes() == package.read_bytes()


def _as_file(members: dict[str, bytes], name: str):
    import io

    return io.BytesIO(members[name])
