"""Packages carry onnx, torchscript and pytorch_state_dict weights: the rdf describes them as the spec wants (one
source, the others its children), each reproduces the test tensors (recorded per format), and a format that does not
is refused before anything is written. bioimageio.core's test_model runs each format on its own in test_export.py
(unet, care, n2v) and test_stardist_package.py."""
from __future__ import annotations

import ast
import hashlib
import zipfile

import pytest
import yaml

from biozoo.exporters import export_run
from biozoo.exporters import weight_formats
from biozoo.runtime import ExportError
from biozoo.runtime.cli import main

FORMATS = ("onnx", "torchscript", "pytorch_state_dict")
DENSE_RECIPES = ("unet-nuclei-2d", "care-nuclei-2d", "n2v-nuclei-2d")


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


@pytest.mark.parametrize("recipe", [*DENSE_RECIPES, "stardist"])
def test_weights_are_described_with_one_source_and_recorded_parity(recipe, exported):
    report, package = exported(recipe)
    rdf = _rdf(package)
    weights = rdf["weights"]
    assert set(weights) == set(FORMATS)
    assert weights["pytorch_state_dict"].get("parent") is None  # the source the other two were converted from
    assert weights["onnx"]["parent"] == weights["torchscript"]["parent"] == "pytorch_state_dict"
    arch = weights["pytorch_state_dict"]["architecture"]
    with zipfile.ZipFile(package) as zf:
        for entry in (*weights.values(), arch):
            assert hashlib.sha256(zf.read(entry["source"])).hexdigest() == entry["sha256"]
        source = zf.read(arch["source"]).decode()
        readme = zf.read("README.md").decode()
    assert arch["callable"] == "build" and arch["kwargs"]["network"] in ("unet", "stardist2d")
    recorded = rdf["config"]["biozoo"]["parity"]["weight_formats"]
    assert recorded == report.weight_formats and set(recorded) == set(FORMATS)
    for fmt, r in recorded.items():
        assert r["passed"] and r["mismatched_per_million"] <= rdf["config"]["bioimageio"][
            "reproducibility_tolerance"][0]["mismatched_elements_per_million"], fmt
    assert "## Weight formats" in readme and "weights_torchscript.pt" in readme
    imported = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else (n.module or "").split(".")[0]
                for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imported <= {"torch", "typing", "__future__"}, imported  # torch alone builds the network


def test_runtime_still_runs_onnx_and_validates_every_weights_file(exported, capsys, tmp_path):
    _, package = exported("care-nuclei-2d")
    assert main(["test", str(package), "--json"]) == 0
    assert '"status": "passed"' in capsys.readouterr().out
    # a tampered torchscript file: biozoo never runs it, but validate hashes every referenced file
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"x" if item.filename == "weights_torchscript.pt" else data)
    assert main(["validate", str(tampered)]) == 1
    assert "weights_torchscript.pt" in capsys.readouterr().out


def test_weights_option_writes_only_what_was_asked(quick_run, tmp_path):
    run = quick_run("care-nuclei-2d")
    report = export_run(run, tmp_path / "ts.zip", weights="onnx,torchscript")
    rdf = _rdf(tmp_path / "ts.zip")
    assert set(rdf["weights"]) == {"onnx", "torchscript"} == set(report.weight_formats)
    assert rdf["weights"]["onnx"].get("parent") is None and rdf["weights"]["torchscript"]["parent"] == "onnx"
    with zipfile.ZipFile(tmp_path / "ts.zip") as zf:
        assert not {"weights_state_dict.pt", "networks.py"} & set(zf.namelist())
    export_run(run, tmp_path / "onnx.zip", weights="onnx")
    assert list(_rdf(tmp_path / "onnx.zip")["weights"]) == ["onnx"]


@pytest.mark.parametrize("asked, message", [("onnx,keras", "unknown weight format"),
                                            ("torchscript", "has no onnx"),
                                            ("onnx,,tensorflow_saved_model_bundle", "unknown weight format")])
def test_bad_weights_option_is_refused(asked, message, quick_run, tmp_path, capsys):
    out = tmp_path / "m.zip"
    assert main(["export", str(quick_run("care-nuclei-2d")), "-o", str(out), "--weights", asked]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_detector_exports_onnx_only_and_says_why():
    with pytest.raises(ExportError, match="detection task exports onnx only"):
        weight_formats.parse_formats("onnx,torchscript", ("onnx",), "detection")


def test_a_format_that_does_not_reproduce_the_test_tensors_is_refused(quick_run, monkeypatch, tmp_path):
    # the architecture rebuilt with a sigmoid after the head: the state dict loads, the outputs differ
    original = weight_formats.architecture_kwargs
    monkeypatch.setattr(weight_formats, "architecture_kwargs",
                        lambda net, output: {**original(net, output), "final_activation": "sigmoid"})
    out = tmp_path / "refused.zip"
    with pytest.raises(ExportError, match="pytorch_state_dict weights do not reproduce test output 'restored'"):
        export_run(quick_run("care-nuclei-2d"), out)
    assert list(tmp_path.iterdir()) == []


def test_an_architecture_that_does_not_take_the_state_dict_is_refused(quick_run, monkeypatch, tmp_path):
    original = weight_formats.architecture_kwargs
    monkeypatch.setattr(weight_formats, "architecture_kwargs",  # kwargs that do not describe the trained network
                        lambda net, output: {**original(net, output), "base_channels": 2 * net.config.base_channels})
    with pytest.raises(ExportError, match="does not take the exported state dict"):
        export_run(quick_run("care-nuclei-2d"), tmp_path / "refused.zip")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe", [*DENSE_RECIPES, "stardist"])
def test_validate_consumers_on_the_recipes_packages(recipe, exported, capsys):
    import json

    _, package = exported(recipe)
    assert main(["validate", str(package), "--consumers", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["consumers"]
    unable = {name: r["reasons"] for name, r in report.items() if not r["ok"]}
    if recipe == "stardist":  # documented: JDLL implements no stardist_postprocessing op
        assert list(unable) == ["deepImageJ"] and "stardist_postprocessing" in " ".join(unable["deepImageJ"])
    else:
        assert unable == {}
    assert set(report) == {"biozoo", "bioimageio.core", "ilastik", "deepImageJ", "BiaPy"}
    assert report["BiaPy"]["weights"] == ["pytorch_state_dict"] and report["biozoo"]["weights"] == ["onnx"]
