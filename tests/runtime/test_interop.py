"""Packages in the shapes third parties write them, built here for what the corpus lacks (tests/test_thirdparty.py
runs the real ones): ONNX graph names unlike the tensor ids, ids and axis ids left at the spec's defaults,
spec-0.5.14 tolerance selectors, a fixed-shape format-0.4 model with a halo, per-dataset statistics in 0.4 form, and
ONNX external data that is tampered with or not listed. Expected outputs are computed with plain onnxruntime and
numpy, never with biozoo.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from tests import _onnx_graphs as graphs
from biozoo.runtime import load
from biozoo.runtime.engine.tiling import fixed_size_grid, pad_to, plan_tiles
from biozoo.runtime.errors import PackageError


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _renamed(model_bytes: bytes, names: dict[str, str]) -> onnx.ModelProto:
    """The graph with its input/output names replaced (as torch.onnx writes them: 'input.1' -> '82')."""
    proto = onnx.load_from_string(model_bytes)
    for value in (*proto.graph.input, *proto.graph.output):
        value.name = names.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    return proto


def _run_graph(proto_or_bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = proto_or_bytes if isinstance(proto_or_bytes, bytes) else proto_or_bytes.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip([i.name for i in session.get_inputs()], feeds.values())))


def _zmuv(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return ((x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + 1e-6)).astype(np.float32)


def _write(folder: pathlib.Path, rdf: dict) -> pathlib.Path:
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder / "rdf.yaml"


def _image(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape, dtype=np.float32) * 100 + 10).astype(np.float32)


# ---- ONNX names unlike the tensor ids; ids, axis ids and tolerances at their (0.5.14) defaults ------------------
@pytest.fixture
def defaults_package(tmp_path) -> pathlib.Path:
    folder = tmp_path / "defaults"
    folder.mkdir()
    proto = _renamed(graphs.unet2d(), {"raw": "input.1", "prob": "82"})
    onnx.save(proto, folder / "weights.onnx")
    x = _image((1, 1, 64, 64))
    y = 1 / (1 + np.exp(-_run_graph(proto, {"input.1": _zmuv(x, (1, 2, 3))})[0]))
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", y.astype(np.float32))
    rdf = {  # what bioimageio.spec's writer leaves out is left out: tensor ids, the x axis id, data, halo 0
        "type": "model", "format_version": "0.5.4", "name": "defaults", "description": "spec defaults",
        "authors": [{"name": "a"}], "cite": [{"text": "c", "doi": "10.1000/x"}], "license": "MIT",
        "documentation": "README.md",
        "inputs": [{"axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]},
                             {"type": "space", "id": "y", "size": {"min": 40, "step": 8}},
                             {"type": "space", "size": {"min": 40, "step": 8}}],
                    "test_tensor": {"source": "in.npy", "sha256": _sha(folder / "in.npy")},
                    "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"]}}]}],
        "outputs": [{"axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["prob"]},
                              {"type": "space", "id": "y", "size": {"tensor_id": "input", "axis_id": "y"}},
                              {"type": "space", "size": {"tensor_id": "input", "axis_id": "x"}}],
                     "test_tensor": {"source": "out.npy", "sha256": _sha(folder / "out.npy")},
                     "postprocessing": [{"id": "sigmoid"}]}],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": _sha(folder / "weights.onnx"),
                             "opset_version": graphs.OPSET}},
    }
    (folder / "README.md").write_text("# defaults\n\n# Validation\n\nBuilt by the biozoo tests.\n")
    return _write(folder, rdf)


def test_spec_defaults_and_graph_names_unlike_the_ids(defaults_package, capsys):
    model = load(defaults_package, device="cpu")
    assert [t.id for t in model.description.inputs] == ["input"]
    assert [t.id for t in model.description.outputs] == ["output"]
    assert [a.id for a in model.description.inputs[0].axes] == ["batch", "channel", "y", "x"]
    assert "bound by position" in model.session.binding_note and "input -> input.1" in model.session.binding_note
    tol = model.description.tolerance_for("output")  # none listed: the spec's default for continuous outputs
    assert (tol.relative, tol.absolute, tol.mismatched_per_million) == (1e-3, 1e-3, 100)
    report = model.test()
    assert report["status"] == "passed", report
    from biozoo.runtime.cli import main

    assert main(["info", str(defaults_package), "--json"]) == 0
    assert "bound by position" in json.loads(capsys.readouterr().out)["binding"]
    assert main(["validate", str(defaults_package), "--json"]) in (0, 1)
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert "bound by position" in checks["io-binding"]["detail"] and checks["load"]["passed"]


def test_tolerances_of_spec_0_5_14_select_outputs_by_kind(defaults_package):
    """bioimageio.spec 0.5.14 writes one entry for continuous and one for discrete outputs (its defaults)."""
    rdf = yaml.safe_load(defaults_package.read_text())
    rdf["config"] = {"bioimageio": {"reproducibility_tolerance": [
        {"output_ids": "any_discrete_output", "relative_tolerance": 0, "absolute_tolerance": 0,
         "mismatched_elements_per_million": 1000},
        {"output_ids": "any_continuous_output", "relative_tolerance": 1e-4, "absolute_tolerance": 1e-5,
         "mismatched_elements_per_million": 0}]}}
    _write(defaults_package.parent, rdf)
    model = load(defaults_package, device="cpu")
    tol = model.description.tolerance_for("output")
    assert (tol.relative, tol.absolute, tol.mismatched_per_million) == (1e-4, 1e-5, 0)
    assert model.test()["outputs"]["output"]["tolerance"]["absolute"] == 1e-5
    y = np.load(defaults_package.parent / "out.npy")
    np.save(defaults_package.parent / "out.npy", y + 1e-3)  # within 0.5.12's default, outside this tolerance
    rdf["outputs"][0]["test_tensor"]["sha256"] = _sha(defaults_package.parent / "out.npy")
    _write(defaults_package.parent, rdf)
    assert load(defaults_package, device="cpu").test()["status"] == "failed"


def test_bioimageio_core_passes_the_defaults_package(defaults_package, assert_package_passes):
    assert_package_passes(defaults_package)


def test_graph_that_matches_neither_by_name_nor_by_count_is_refused(defaults_package):
    rdf = yaml.safe_load(defaults_package.read_text())
    second = json.loads(json.dumps(rdf["inputs"][0]))
    second["id"] = "extra"
    rdf["inputs"].append(second)
    _write(defaults_package.parent, rdf)
    with pytest.raises(PackageError, match=r"2 described input\(s\).*1 graph input\(s\).*neither by name nor by count"):
        load(defaults_package, device="cpu")


# ---- format 0.4: a fixed input shape with a halo (the spec's updater raises NotImplementedError here) ------------
FIXED = 64


@pytest.fixture
def fixed_halo_v04(tmp_path) -> pathlib.Path:
    folder = tmp_path / "fixed04"
    folder.mkdir()
    (folder / "weights.onnx").write_bytes(graphs.unet2d())  # stride-4 U-Net; 0.4 pins it to 1x1x64x64
    x = _image((1, 1, FIXED, FIXED), seed=1)
    y = 1 / (1 + np.exp(-_run_graph(graphs.unet2d(), {"raw": _zmuv(x, (2, 3))})[0]))
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", y.astype(np.float32))
    rdf = {
        "type": "model", "format_version": "0.4.10", "name": "fixed halo 0.4", "description": "fixed 0.4",
        "authors": [{"name": "a"}], "cite": [{"text": "c", "doi": "10.1000/x"}], "license": "MIT",
        "documentation": "README.md", "covers": [], "timestamp": "2022-01-01T00:00:00",
        "inputs": [{"name": "raw", "axes": "bcyx", "data_type": "float32", "data_range": [0, 255],
                    "shape": [1, 1, FIXED, FIXED],
                    "preprocessing": [{"name": "zero_mean_unit_variance",
                                       "kwargs": {"mode": "per_sample", "axes": "yx"}}]}],
        "outputs": [{"name": "prob", "axes": "bcyx", "data_type": "float32", "data_range": [0, 1],
                     "shape": [1, 1, FIXED, FIXED], "halo": [0, 0, 16, 16],
                     "postprocessing": [{"name": "sigmoid"}]}],
        "test_inputs": ["test_input.npy"], "test_outputs": ["test_output.npy"],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": _sha(folder / "weights.onnx"),
                             "opset_version": graphs.OPSET}},
    }
    (folder / "README.md").write_text("# fixed 0.4\n")
    return _write(folder, rdf)


def test_fixed_shape_v04_with_halo_is_read_and_reproduces_its_test_output(fixed_halo_v04):
    model = load(fixed_halo_v04, device="cpu")
    assert model.package.converted_from == "0.4.10"
    raw, prob = model.description.inputs[0], model.description.outputs[0]
    assert raw.axis("batch").size == 1  # kept (bioimageio.spec's updater drops it)
    y = prob.axis("y")
    assert (y.size.tensor_id, y.size.axis_id, y.halo) == ("raw", "y", 16)
    assert model.test()["status"] == "passed"


def test_fixed_size_tiles_start_on_the_pooling_grid_and_equal_the_untiled_network(fixed_halo_v04):
    """1x1x150x170 through a 64x64 fixed-size model: every tile starts on its grid, the last one is padded (not
    shifted), and the stitched output equals the whole padded image through the same (stride-4) graph."""
    model = load(fixed_halo_v04, device="cpu")
    x = _image((1, 1, 150, 170), seed=2)
    arrays, _ = model.prepare_inputs(x, "bcyx")
    processed = model.preprocess(arrays)
    plan = plan_tiles(model.network, {"raw": processed["raw"].shape})
    grid = fixed_size_grid(FIXED, 16)
    assert grid % 4 == 0 and plan.n_tiles > 4
    assert all(s % grid == 0 for p in plan.tiled for s in p.starts)
    tiled = model.predict(x, axes="bcyx")
    padded = pad_to(processed["raw"], plan.input_shapes["raw"], model.pad_mode)
    whole = 1 / (1 + np.exp(-_run_graph(graphs.unet2d(), {"raw": padded})[0]))[..., :150, :170]
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # the grid matters for this graph: the same tile, one pixel off the grid, gives other values
    off = _run_graph(graphs.unet2d(), {"raw": np.ascontiguousarray(padded[..., 1:65, 1:65])})[0]
    on = _run_graph(graphs.unet2d(), {"raw": np.ascontiguousarray(padded[..., 0:64, 0:64])})[0]
    assert np.abs(off[..., 16:47, 16:47] - on[..., 17:48, 17:48]).max() > 1e-3


# ---- format 0.4: per-dataset statistics -----------------------------------------------------------------------
def test_per_dataset_statistics_in_04_form_normalize_over_every_sample(tmp_path):
    folder = tmp_path / "dataset04"
    folder.mkdir()
    onnx_bytes = graphs.single_conv(3, ["batch", 1, "y", "x"])
    (folder / "weights.onnx").write_bytes(onnx_bytes)
    x = np.stack([_image((1, 32, 32), seed=3), _image((1, 32, 32), seed=4) * 3])
    expected = _run_graph(onnx_bytes, {"raw": _zmuv(x, (0, 2, 3))})[0]  # statistics over batch and space
    np.save(folder / "test_input.npy", x)
    np.save(folder / "test_output.npy", expected)
    rdf = {
        "type": "model", "format_version": "0.4.9", "name": "dataset stats 0.4", "description": "per_dataset",
        "authors": [{"name": "a"}], "cite": [{"text": "c", "doi": "10.1000/x"}], "license": "MIT",
        "documentation": "README.md", "covers": [], "timestamp": "2022-01-01T00:00:00",
        "inputs": [{"name": "raw", "axes": "bcyx", "data_type": "float32", "data_range": [0, 255],
                    "shape": {"min": [1, 1, 8, 8], "step": [1, 0, 1, 1]},
                    "preprocessing": [{"name": "zero_mean_unit_variance",
                                       "kwargs": {"mode": "per_dataset", "axes": "yx"}}]}],
        "outputs": [{"name": "out", "axes": "bcyx", "data_type": "float32", "data_range": [None, None],
                     "shape": {"reference_tensor": "raw", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]}}],
        "test_inputs": ["test_input.npy"], "test_outputs": ["test_output.npy"],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": _sha(folder / "weights.onnx")}},
    }
    (folder / "README.md").write_text("# dataset stats 0.4\n")
    model = load(_write(folder, rdf), device="cpu")
    assert model.description.inputs[0].processing[0].kwargs["axes"] == ["batch", "y", "x"]
    assert model.description.onnx["opset_version"] == 15  # the spec's default for 0.4
    np.testing.assert_allclose(model.predict(x, axes="bcyx", skip_checks=["batch-effects"]), expected, rtol=1e-4,
                               atol=1e-4)
    per_sample = _run_graph(onnx_bytes, {"raw": _zmuv(x, (2, 3))})[0]
    assert np.abs(per_sample - expected).max() > 1e-2  # the test can tell the two apart
    assert model.test()["status"] == "passed"


# ---- ONNX external data: hashed like every other file -----------------------------------------------------------
@pytest.fixture
def external_package(tmp_path) -> pathlib.Path:
    folder = tmp_path / "external"
    folder.mkdir()
    proto = onnx.load_from_string(graphs.unet2d())
    onnx.save(proto, folder / "weights.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.onnx.data", size_threshold=256)
    x = _image((1, 1, 48, 48), seed=5)
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", _run_graph(graphs.unet2d(), {"raw": x})[0])
    rdf = {
        "type": "model", "format_version": "0.5.12", "name": "external", "description": "external data",
        "authors": [{"name": "a"}], "cite": [{"text": "c", "doi": "10.1000/x"}], "license": "MIT",
        "documentation": "README.md",
        "inputs": [{"id": "raw", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]},
                                          {"type": "space", "id": "y", "size": {"min": 8, "step": 4}},
                                          {"type": "space", "id": "x", "size": {"min": 8, "step": 4}}],
                    "test_tensor": {"source": "in.npy", "sha256": _sha(folder / "in.npy")}}],
        "outputs": [{"id": "prob", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["p"]},
                                            {"type": "space", "id": "y", "size": {"tensor_id": "raw", "axis_id": "y"}},
                                            {"type": "space", "id": "x", "size": {"tensor_id": "raw", "axis_id": "x"}}],
                     "test_tensor": {"source": "out.npy", "sha256": _sha(folder / "out.npy")}}],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": _sha(folder / "weights.onnx"),
                             "opset_version": graphs.OPSET,
                             "external_data": {"source": "weights.onnx.data",
                                               "sha256": _sha(folder / "weights.onnx.data")}}},
    }
    (folder / "README.md").write_text("# external\n")
    return _write(folder, rdf)


def test_external_data_is_verified_before_use(external_package):
    assert load(external_package, device="cpu").test()["status"] == "passed"
    from biozoo.runtime.commands.validate import validate_package

    files = next(c for c in validate_package(external_package)["checks"] if c["name"] == "files")
    assert files["passed"] and files["detail"].startswith("5 referenced files")  # weights, data, 2 tensors, docs


def test_tampered_external_data_is_refused(external_package):
    data = external_package.parent / "weights.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(PackageError, match="sha256 mismatch for 'weights.onnx.data'"):
        load(external_package, device="cpu")
    from biozoo.runtime.commands.validate import validate_package

    report = validate_package(external_package)
    assert report["status"] == "failed"
    assert "sha256 mismatch" in next(c for c in report["checks"] if c["name"] == "load")["detail"]


def test_external_data_the_description_does_not_list_is_refused(external_package):
    rdf = yaml.safe_load(external_package.read_text())
    del rdf["weights"]["onnx"]["external_data"]
    _write(external_package.parent, rdf)
    with pytest.raises(PackageError, match="does not list it with a sha256"):
        load(external_package, device="cpu")


def test_onnx_portability_is_information_from_onnxruntime_s_table():
    from biozoo.runtime.format.onnx_compat import oldest_onnxruntime, portability_note

    assert oldest_onnxruntime(8, 17) == "1.16"  # biozoo's own exports
    assert oldest_onnxruntime(9, 20) == "1.17"  # the official unet2d_nuclei_broad example
    assert oldest_onnxruntime(10, 17) == "1.18"  # bioimageio.core's converter
    assert oldest_onnxruntime(12, 24) is None
    assert "newer than onnxruntime" in portability_note(12, 24)
