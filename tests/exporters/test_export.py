"""Export of real (briefly trained) runs of every shipped recipe: the package is valid for bioimageio.spec, passes
bioimageio.core's test_model and `biozoo test`, is deterministic, and records what the runtime checks later."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import yaml

from biozoo.exporters import TASKS, export_run
from biozoo.runtime import ExportError
from biozoo.runtime.cli import main
from biozoo.specs import list_recipes, recipe_path
from biozoo.zoo.config import load_recipe

# A detector can be packaged only once its first test image gives a detection (bioimageio.spec refuses an all-zero
# test tensor), which a few quick steps do not give; detection export runs on a fast synthetic run and on the real recipe in tests/exporters/test_detector_export.py.
# The same holds for StarDist (a label test output without objects): tests/exporters/test_stardist_package.py and
# tests/zoo/test_stardist_real.py.
QUICK_EXPORTABLE = [r for r in list_recipes() if load_recipe(recipe_path(r)).task not in ("detection", "stardist")]


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


@pytest.mark.parametrize("weight_format", ["onnx", "torchscript", "pytorch_state_dict"])
@pytest.mark.parametrize("recipe", QUICK_EXPORTABLE)
def test_every_recipe_exports_a_package_that_bioimageio_core_and_biozoo_pass(recipe, weight_format, exported,
                                                                          assert_package_passes):
    report, package = exported(recipe)  # one weight format per test_model call
    assert weight_format in _rdf(package)["weights"]
    assert_package_passes(package, weight_format=weight_format)
    assert report.parity["max_abs_error"] <= report.parity["abs_tolerance"]


def test_package_records_contract_training_conditions_and_checks(quick_run, exported):
    report, package = exported("unet-nuclei-2d")
    rdf = _rdf(package)
    rf = json.loads((quick_run("unet-nuclei-2d") / "receptive_field.json").read_text())
    y_in = rdf["inputs"][0]["axes"][2]
    y_out = rdf["outputs"][0]["axes"][2]
    assert y_in["size"]["step"] == rf["size_step"]
    assert y_out["halo"] >= rf["halo"] and y_out["halo"] % rf["size_step"] == 0  # on the grid for core's blocking
    assert y_in["size"]["min"] - 2 * y_out["halo"] >= 1  # bioimage.io's rule for tiling with a halo
    pre = [p["id"] for p in rdf["inputs"][0]["preprocessing"]]
    assert "scale_range" in pre
    cfg = rdf["config"]["biozoo"]
    assert cfg["task"] == "segmentation" and cfg["training"]["receptive_field"] == rf["receptive_field"]
    assert cfg["training"]["split_manifest_hash"] == json.loads((quick_run("unet-nuclei-2d") / "split.json").read_text())["manifest_hash"]
    assert cfg["training"]["object_size"]["count"] > 10  # real nuclei in the training masks
    test_images = len(json.loads((quick_run("unet-nuclei-2d") / "split.json").read_text())["test"])
    ood = cfg["training"]["out_of_distribution"]  # the out-of-distribution check's reference, from the test split
    assert ood["measured_on"].startswith(f"{test_images} held-out test image")
    assert ood["flip_agreement"]["probabilities"]["images"] == test_images
    assert 0 < ood["flip_agreement"]["probabilities"]["agreement"] <= 1
    assert cfg["parity"]["max_abs_error"] == report.parity["max_abs_error"]
    assert cfg["batch_independence"]["passed"] is True
    assert rdf["weights"]["onnx"]["opset_version"] == 17
    with zipfile.ZipFile(package) as zf:
        readme = zf.read("README.md").decode()
        names = set(zf.namelist())
    assert "# Validation" in readme and "curves.png" in readme
    assert {"weights.onnx", "cover.png", "curves.png", "test_input.npy", "test_output.npy"} <= names


def test_pixel_size_becomes_axis_scale_and_config(real_unet_package):
    rdf = _rdf(real_unet_package)
    for tensor in (rdf["inputs"][0], rdf["outputs"][0]):
        space = [a for a in tensor["axes"] if a["type"] == "space"]
        assert [(a["scale"], a["unit"]) for a in space] == [(0.5, "micrometer")] * 2
    assert rdf["config"]["biozoo"]["training"]["pixel_size"] == {"y": 0.5, "x": 0.5}


def test_export_is_deterministic(quick_run, exported, tmp_path):
    report, package = exported("care-nuclei-2d")
    again = export_run(quick_run("care-nuclei-2d"), tmp_path / "again.zip")
    assert again.sha256 == report.sha256
    assert (tmp_path / "again.zip").read_bytes() == package.read_bytes()


class _MixesBatch(torch.nn.Module):
    """Subtracts the batch mean: the output of a sample depends on its batch mates."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x - x.mean(dim=0, keepdim=True))


class _TrainingBatchNorm(torch.nn.Module):
    """Batch norm forced into training mode (batch statistics), as a buggy custom layer would do."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.nn.functional.batch_norm(x, None, None, training=True))


@pytest.mark.parametrize("wrap", [_MixesBatch, _TrainingBatchNorm])
def test_batch_dependent_models_are_refused_and_nothing_is_written(wrap, quick_run, monkeypatch, tmp_path):
    task = TASKS["segmentation"]
    original = task.wrap
    monkeypatch.setattr(task, "wrap", lambda net: original(wrap(net)))
    out = tmp_path / "refused.zip"
    with pytest.raises(ExportError, match="batch"):
        export_run(quick_run("unet-nuclei-2d"), out)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_json_and_bad_run_dir(quick_run, tmp_path, capsys):
    out = tmp_path / "m.zip"
    assert main(["export", str(quick_run("n2v-nuclei-2d")), "-o", str(out), "--json", "--author", "A. Person"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["package"] == str(out) and report["test"]["status"] == "passed"
    assert _rdf(out)["authors"] == [{"name": "A. Person"}]
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "x.zip")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "recipe.yaml").write_text("name: x\n")
    assert main(["export", str(tmp_path / "half"), "-o", str(tmp_path / "x.zip")]) == 2
    assert "best.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def test_test_tensors_come_from_the_held_out_split(quick_run, exported):
    import tifffile

    run = quick_run("unet-nuclei-2d")
    split = json.loads((run / "split.json").read_text())
    _, package = exported("unet-nuclei-2d")
    with zipfile.ZipFile(package) as zf:
        with zf.open("test_input.npy") as f:
            test_input = np.load(f)
    first_test = tifffile.imread(f"{split['data']}/images/{split['test'][0]}").astype(np.float32)
    h, w = test_input.shape[2:]
    np.testing.assert_array_equal(test_input[0, 0], first_test[:h, :w])
