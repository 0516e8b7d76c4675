"""`biozoo validate --consumers`: which bioimage.io consumers can run a package, by the rules of
runtime/format/consumer_rules.py (each with its source), on real packages: the fixture packages (ONNX only), the
third-party corpus (formats 0.4 and 0.5, three weight formats), and packages carrying torchscript and
pytorch_state_dict weights built here from a fixture."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biozoo.runtime.format.consumer_rules import BIOZOO_OPS, CONSUMERS, RULES
from biozoo.runtime.format.consumers import CHECKS, consumer_report, parse_consumers
from biozoo.runtime.errors import InputError

CORPUS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "thirdparty"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"conformance corpus {CORPUS} is absent")


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit(folder: pathlib.Path, change) -> pathlib.Path:
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    change(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


def _reasons(report, consumer) -> str:
    return " | ".join(report[consumer]["reasons"])


@pytest.fixture
def three_formats(package_dir, tmp_path):
    """The unet2d fixture with biozoo's three weight formats, described as biozoo's exporter describes them
    (networks.py:build with kwargs, sha256 everywhere) and a workflow tag. The weights files hold placeholder bytes:
    the consumer report reads descriptions and hashes, never weights."""
    folder = tmp_path / "three"
    shutil.copytree(package_dir / "unet2d", folder)
    (folder / "networks.py").write_text("import torch\n\n\ndef build(network, output='network', **config):\n"
                                        "    raise NotImplementedError\n")
    (folder / "weights_state_dict.pt").write_bytes(b"placeholder state dict\n")
    (folder / "weights_torchscript.pt").write_bytes(b"placeholder torchscript\n")

    def change(rdf):
        rdf["tags"] = ["semantic-segmentation", "nuclei", "2d", "biozoo"]
        rdf["weights"]["onnx"]["parent"] = "pytorch_state_dict"
        rdf["weights"]["torchscript"] = {"source": "weights_torchscript.pt",
                                         "sha256": _sha(folder / "weights_torchscript.pt"),
                                         "parent": "pytorch_state_dict", "pytorch_version": "2.4.0"}
        rdf["weights"]["pytorch_state_dict"] = {
            "source": "weights_state_dict.pt", "sha256": _sha(folder / "weights_state_dict.pt"),
            "pytorch_version": "2.4.0",
            "architecture": {"source": "networks.py", "sha256": _sha(folder / "networks.py"), "callable": "build",
                             "kwargs": {"network": "unet2d_tiny", "output": "sigmoid", "in_channels": 1,
                                        "out_channels": 1, "depth": 2}}}

    return _edit(folder, change)


# ------------------------------------------------------------------------------------------------ the table
def test_every_rule_is_data_with_a_source_and_a_known_check():
    assert set(CONSUMERS) == {"biozoo", "bioimageio.core", "ilastik", "deepImageJ", "BiaPy"}
    for rule in RULES:
        assert rule.consumer in CONSUMERS and rule.check in CHECKS, rule
        assert len(rule.source) > 20 and rule.why, rule
    for consumer in CONSUMERS:
        checks = {r.check for r in RULES if r.consumer == consumer}
        assert {"weights", "format_version"} <= checks, consumer


def test_biozoo_rule_lists_exactly_the_ops_the_runtime_implements():
    from biozoo.runtime.ops import OPS

    assert BIOZOO_OPS == tuple(sorted(OPS))


def test_consumer_names_are_parsed_case_insensitively_and_unknown_ones_refused():
    assert parse_consumers("biapy, ILASTIK,biapy") == ("BiaPy", "ilastik")
    with pytest.raises(InputError, match="unknown consumer.*'qupath'.*expected.*BiaPy"):
        parse_consumers("qupath,biapy")


# ------------------------------------------------------------------------------------ the fixture packages
@pytest.mark.parametrize("form", ["rdf", "folder", "zip"])
def test_an_onnx_only_package_names_the_consumers_that_cannot_run_it(form, rdf, package_dir, zipped):
    source = {"rdf": rdf("unet2d"), "folder": package_dir / "unet2d", "zip": zipped("unet2d")}[form]
    report = consumer_report(source)
    assert report["biozoo"]["ok"] and report["biozoo"]["weights"] == ["onnx"]
    assert report["bioimageio.core"]["ok"]
    # JDLL (deepImageJ 3) runs ONNX up to opset 18; the fixture is opset 17
    assert report["deepImageJ"]["ok"] and report["deepImageJ"]["weights"] == ["onnx"]
    assert not report["BiaPy"]["ok"]
    assert "needs pytorch_state_dict weights; the package has onnx" in _reasons(report, "BiaPy")
    assert any("BiaPy" in s and "check_bmz_model_compatibility" in s for s in report["BiaPy"]["sources"])
    assert not report["ilastik"]["ok"]
    assert "needs torchscript or pytorch_state_dict weights; the package has onnx" in _reasons(report, "ilastik")
    for entry in report.values():
        assert entry["rules_checked"] >= 3 and len(entry["reasons"]) == len(entry["sources"])


def test_ops_a_consumer_lacks_are_named(rdf):
    report = consumer_report(rdf("softmax3"))  # clip + scale_linear + ensure_dtype in, softmax out
    assert report["bioimageio.core"]["ok"] and report["biozoo"]["ok"]
    assert "tensor 'probs' uses softmax; it implements binarize" in _reasons(report, "deepImageJ")
    biapy = _reasons(report, "BiaPy")
    assert "tensor 'raw' uses clip; it implements zero_mean_unit_variance" in biapy
    assert "has 2 preprocessing steps (clip, scale_linear); it takes at most 1" in biapy  # float cast ignored


def test_several_inputs_and_outputs_are_refused_by_the_consumers_that_take_one(rdf):
    report = consumer_report(rdf("multi_io"))
    assert "the package has 2 inputs (a, b); it takes 1" in _reasons(report, "ilastik")
    assert "the package has 2 outputs (sum, prod); it takes 1" in _reasons(report, "ilastik")
    assert "the package has 2 inputs (a, b); it takes 1" in _reasons(report, "BiaPy")
    assert report["bioimageio.core"]["ok"] and report["deepImageJ"]["ok"]


# -------------------------------------------------------------------- packages with biozoo's three formats
def test_a_package_with_three_weight_formats_meets_every_consumer(three_formats, tmp_path):
    for source in (three_formats / "rdf.yaml", _zip(three_formats, tmp_path / "three.zip")):
        report = consumer_report(source)
        assert {c: r["reasons"] for c, r in report.items() if not r["ok"]} == {}
        assert report["BiaPy"]["weights"] == ["pytorch_state_dict"]
        assert report["ilastik"]["weights"] == ["torchscript", "pytorch_state_dict"]
        assert report["deepImageJ"]["weights"] == ["torchscript", "onnx"]
        assert report["biozoo"]["weights"] == ["onnx"]
        assert report["BiaPy"]["rules_checked"] == 9  # the semantic-segmentation rule applies


def test_an_architecture_file_that_does_not_match_its_sha256_is_unusable(three_formats):
    (three_formats / "networks.py").write_text("import os\nos.system('echo changed')\n")
    report = consumer_report(three_formats)
    assert "no usable pytorch_state_dict weights: pytorch_state_dict: sha256 mismatch for 'networks.py'" \
        in _reasons(report, "BiaPy")
    assert report["ilastik"]["ok"] and report["ilastik"]["weights"] == ["torchscript"]  # torchscript is left
    assert report["bioimageio.core"]["weights"] == ["torchscript", "onnx"]


def test_an_architecture_outside_the_package_or_from_a_library_is_named(three_formats):
    arch = lambda **a: _edit(three_formats, lambda rdf: rdf["weights"]["pytorch_state_dict"].update(  # noqa: E731
        architecture={"callable": "UNet", "kwargs": {"out_channels": 1}, **a}))
    report = consumer_report(arch(import_from="torch_em.model"))
    assert "imported from the library 'torch_em.model', which BiaPy does not ship (it ships biapy, torchvision, " \
           "timm)" in _reasons(report, "BiaPy")
    assert report["bioimageio.core"]["weights"] == ["pytorch_state_dict", "torchscript", "onnx"]  # core imports it
    report = consumer_report(arch(source="../outside.py", sha256="0" * 64))
    assert "paths must stay inside the package" in _reasons(report, "BiaPy")
    report = consumer_report(arch(source="https://example.org/unet.py"))
    assert "is a URL (https://example.org/unet.py), not a file in the package" in _reasons(report, "BiaPy")


def test_biapy_rules_on_kwargs_tags_and_percentiles(three_formats):
    def change(rdf):
        rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["postprocessing"] = "watershed"
        rdf["tags"] = ["object-detection", "2d"]
        rdf["inputs"][0]["preprocessing"] = [{"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"]}}]

    report = consumer_report(_edit(three_formats, change))
    biapy = _reasons(report, "BiaPy")
    assert "the architecture kwargs hold 'postprocessing'" in biapy
    assert "no workflow tag among the package's tags ['object-detection', '2d']" in biapy
    assert "scale_range does not write min_percentile, max_percentile" in biapy and "inferred: " in biapy
    assert report["BiaPy"]["rules_checked"] == 8  # not tagged as semantic segmentation: the classes rule is out
    assert report["ilastik"]["ok"] and report["deepImageJ"]["ok"] and report["bioimageio.core"]["ok"]


def test_semantic_segmentation_needs_a_number_of_classes_for_biapy(three_formats):
    _edit(three_formats, lambda rdf: rdf["weights"]["pytorch_state_dict"]["architecture"].update(
        kwargs={"network": "unet2d_tiny", "depth": 2}))
    assert "the architecture kwargs name no number of classes" in _reasons(consumer_report(three_formats), "BiaPy")


def test_stardist_postprocessing_and_axes_deepimagej_and_biapy_lack(three_formats):
    def change(rdf):
        out = rdf["outputs"][0]
        out["axes"] = [out["axes"][0], *out["axes"][2:], out["axes"][1]]  # b y x c
        out["postprocessing"] = [{"id": "stardist_postprocessing", "kwargs": {
            "prob_threshold": 0.5, "nms_threshold": 0.4, "n_rays": 32, "grid": [1, 1], "b": 2}}]
        rdf["inputs"][0]["axes"] = [rdf["inputs"][0]["axes"][i] for i in (0, 2, 3, 1)]  # b y x c

    report = consumer_report(_edit(three_formats, change))
    assert "tensor 'prob' uses stardist_postprocessing; it implements" in _reasons(report, "deepImageJ")
    assert "input 'raw' has axes 'byxc'; it takes bcyx or bczyx" in _reasons(report, "BiaPy")
    assert report["bioimageio.core"]["ok"] and report["biozoo"]["ok"] and report["ilastik"]["ok"]


def test_data_dependent_outputs_cannot_be_tiled_by_ilastik(three_formats):
    _edit(three_formats, lambda rdf: rdf["outputs"][0].update(axes=[
        {"type": "index", "id": "detection", "size": {"min": 1, "max": 50}},
        {"type": "channel", "channel_names": ["x_min", "y_min", "x_max", "y_max"]}]))
    report = consumer_report(three_formats)
    assert "output 'prob' has no space axis (a list, not an image)" in _reasons(report, "ilastik")
    assert "inferred: " in _reasons(report, "ilastik")


def test_a_package_that_cannot_be_read_is_one_no_consumer_runs(three_formats):
    _edit(three_formats, lambda rdf: rdf.update(weights=[{"onnx": "weights.onnx"}]))
    report = consumer_report(three_formats)
    assert all(not r["ok"] and "the package cannot be read: weights is" in r["reasons"][0] for r in report.values())


# ------------------------------------------------------------------------------ the third-party corpus
@needs_corpus
def test_third_party_package_with_three_formats_and_two_inputs():
    report = consumer_report(CORPUS / "multi_tensor.zip")
    assert report["bioimageio.core"]["weights"] == ["pytorch_state_dict", "torchscript", "onnx"]
    assert report["deepImageJ"]["ok"] and report["deepImageJ"]["weights"] == ["torchscript", "onnx"]
    assert "the package has 2 inputs (input0, input1); it takes 1" in _reasons(report, "BiaPy")
    assert "the package has 2 outputs (output0, output1); it takes 1" in _reasons(report, "ilastik")


@needs_corpus
def test_third_party_format_04_package_whose_architecture_file_is_not_in_the_zip():
    report = consumer_report(CORPUS / "upsample_v0_4.zip")
    assert report["biozoo"]["ok"] and report["bioimageio.core"]["weights"] == ["onnx"]
    biapy = _reasons(report, "BiaPy")
    assert "architecture names 'upsample_model.py', which is missing from the package" in biapy
    assert "the state dict's architecture writes no kwargs" in biapy  # 0.4: read as written, not as converted
    assert "no workflow tag among the package's tags ['scaling', 'test']" in biapy
    assert "upsample_model.py', which is missing" in _reasons(report, "ilastik")


@needs_corpus
def test_third_party_onnx_only_package_through_the_cli(tmp_path):
    folder = tmp_path / "onnx_only"
    with zipfile.ZipFile(CORPUS / "diff_output_shape.zip") as zf:
        zf.extractall(folder)
    _edit(folder, lambda rdf: (rdf["weights"].pop("pytorch_state_dict"), rdf["weights"]["onnx"].pop("parent")))
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", "validate", str(folder), *args],
                              capture_output=True, text=True, env=env, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    proc = cli("--consumers", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a report: the status does not depend on it
    consumers = json.loads(proc.stdout)["consumers"]
    assert {c for c, r in consumers.items() if not r["ok"]} == {"BiaPy", "ilastik"}
    assert consumers["BiaPy"]["reasons"][0].startswith("needs pytorch_state_dict weights; the package has onnx")
    assert set(consumers["BiaPy"]) == {"ok", "reasons", "sources", "rules_checked", "weights"}

    proc = cli("--require-consumers", "biapy,deepimagej")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert "  FAILED consumers: BiaPy cannot run the package (see consumers)" in lines
    assert [ln.split(":")[0].strip() for ln in lines if ln.startswith(("    ok ", "    no "))] == [
        "ok biozoo", "ok bioimageio.core", "no ilastik", "ok deepImageJ", "no BiaPy"]  # one line per consumer

    proc = cli("--require-consumers", "qupath")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith("biozoo: error: --require-consumers 'qupath': unknown consumer")


def _zip(folder: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f.name)
    return dest


# ---------------------------------------------------------------------- biozoo's own exported packages
@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "care", "n2v", "stardist", "detection"])
def test_biozoo_exported_packages(task, tmp_path_factory):
    """The packages biozoo exports (tiny real runs): every consumer whose rules allow them runs them; what a rule
    refuses is the documented limit of that consumer (StarDist post-processing in deepImageJ; box lists in ilastik
    and BiaPy; ONNX-only detection weights)."""
    from biozoo.exporters import export_run
    from tests.exporters.tiny_runs import disk_folder, train_tiny

    data = disk_folder(tmp_path_factory.mktemp("disks"))
    run = train_tiny(task, data, tmp_path_factory.mktemp("run") / "run")
    package = tmp_path_factory.mktemp("pkg") / f"{task}.zip"
    export_run(run, package)
    report = consumer_report(package)
    refused = {c for c, r in report.items() if not r["ok"]}
    expected = {"stardist": {"deepImageJ"}, "detection": {"ilastik", "BiaPy"}}.get(task, set())
    assert refused == expected, {c: report[c]["reasons"] for c in refused}


_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) |
                       st.text(max_size=12) | st.sampled_from(["networks.py", "../x.py", "https://a.b/c", "onnx"]),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=3), max_leaves=8)
_places = st.sampled_from([("tags",), ("weights", "pytorch_state_dict", "architecture"),
                           ("weights", "pytorch_state_dict", "architecture", "kwargs"),
                           ("weights", "pytorch_state_dict", "architecture", "source"),
                           ("weights", "onnx", "opset_version"), ("weights", "torchscript"),
                           ("inputs", 0, "preprocessing"), ("outputs", 0, "axes"), ("format_version",)])


_MISSING = object()


def _child(node, key):
    if isinstance(node, dict):
        return node.get(key, _MISSING)
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return node[key]
    return _MISSING


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(_places, _values), min_size=1, max_size=3))
def test_hostile_descriptions_give_a_report_never_a_crash(three_formats, changes):
    original = (three_formats / "rdf.yaml").read_text()

    def change(rdf):
        for path, value in changes:  # an earlier change may have replaced a parent: then a later one is moot
            parent = rdf
            for key in path[:-1]:
                parent = _child(parent, key)
            last = path[-1]
            if isinstance(parent, dict) or _child(parent, last) is not _MISSING:
                parent[last] = value

    try:
        report = consumer_report(_edit(three_formats, change))
    finally:
        (three_formats / "rdf.yaml").write_text(original)
    assert set(report) == set(CONSUMERS)
    for entry in report.values():
        assert entry["ok"] == (not entry["reasons"]) and all(isinstance(r, str) for r in entry["reasons"])
