"""The conformance corpus: real third-party bioimage.io packages that biozoo did not write (../shared/thirdparty/).

For each package: `biozoo info`, `test` and `validate` pass (real CLI, subprocess); `predict` on the test inputs
reproduces the test outputs within the package's tolerance and equals bioimageio.core's prediction on the same
input. Skipped, with the reason, when the corpus folder is absent.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

CORPUS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "thirdparty"
PACKAGES = sorted(p.name for p in CORPUS.glob("*.zip")) if CORPUS.is_dir() else []
pytestmark = pytest.mark.skipif(not PACKAGES, reason=f"conformance corpus {CORPUS} is absent (a CI-only folder)")


def cli(tmp_path, *args, ok=(0,)):
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode in ok, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(params=PACKAGES or ["none"])
def package(request) -> pathlib.Path:
    return CORPUS / request.param


def test_info_test_validate_pass(package, tmp_path):
    info = json.loads(cli(tmp_path, "info", package, "--json").stdout)
    assert info["inputs"] and info["outputs"]
    report = json.loads(cli(tmp_path, "test", package, "--json").stdout)
    assert report["status"] == "passed", report
    assert all(o["passed"] for o in report["outputs"].values())
    validation = json.loads(cli(tmp_path, "validate", package, "--json").stdout)
    failed = [c for c in validation["checks"] if not c["passed"]]
    assert validation["status"] == "passed" and not failed, failed


def _test_tensors(model):
    """The package's test inputs and outputs by tensor id, as stored (model layout)."""
    def load(t):
        return np.load(model.package.file(t.test_tensor, f"{t.id}.test_tensor"), allow_pickle=False)

    return ({t.id: load(t) for t in model.description.inputs}, {t.id: load(t) for t in model.description.outputs})


def _core_prediction(model, inputs):
    from bioimageio.core import Sample, Tensor, create_prediction_pipeline, load_model_description

    descr = load_model_description(str(model.package.rdf_path), perform_io_checks=False)
    dims = {t.id: tuple(a.id for a in t.axes) for t in model.description.inputs}
    sample = Sample(members={tid: Tensor(x, dims=dims[tid]) for tid, x in inputs.items()}, stat={}, id="corpus")
    pipeline = create_prediction_pipeline(descr, weight_format="onnx", devices=["cpu"])  # the weights biozoo runs
    result = pipeline.predict_sample_without_blocking(sample)
    return {str(k): v.data.to_numpy() for k, v in result.members.items()}


def test_predict_reproduces_test_outputs_and_equals_bioimageio_core(package, monkeypatch, tmp_path):
    pytest.importorskip("bioimageio.core")
    monkeypatch.setenv("BIOZOO_CACHE_DIR", str(tmp_path / "cache"))
    from biozoo.runtime import load

    model = load(package, device="cpu")
    inputs, expected = _test_tensors(model)
    letters = {t.id: t.letters for t in model.description.inputs}
    got = model.predict_with_axes(inputs, letters)
    core = _core_prediction(model, inputs)
    for tid, want in expected.items():
        actual = got[tid][0]
        assert actual.shape == want.shape, (tid, actual.shape, want.shape)
        tol = model.description.tolerance_for(tid)
        bad = np.abs(actual - want) > tol.absolute + tol.relative * np.abs(want)
        assert bad.sum() / bad.size * 1e6 <= tol.mismatched_per_million, (tid, float(np.abs(actual - want).max()))
        assert core[tid].shape == want.shape
        np.testing.assert_allclose(actual, core[tid], rtol=1e-5, atol=1e-5, err_msg=f"{package.name}: {tid}")


def _spec_conversion(rdf_path: pathlib.Path) -> dict:
    """bioimageio.spec's own 0.4 -> 0.5 conversion of the rdf, as a plain dict (no IO checks)."""
    from bioimageio.spec import load_description

    descr = load_description(str(rdf_path), format_version="latest", perform_io_checks=False)
    assert type(descr).__name__ == "ModelDescr", descr.validation_summary
    return descr.model_dump(mode="json")


def _ops(chain: list) -> list:
    """A processing chain without ensure_dtype (float32 -> float32 here: the spec brackets chains with it)."""
    return [p for p in chain if p["id"] != "ensure_dtype"]


def _axes_by_id(tensor: dict) -> dict:
    return {a.get("id") or {"batch": "batch", "channel": "channel"}.get(a["type"], a["type"]): a
            for a in tensor["axes"]}


def test_format_04_conversion_matches_bioimageio_spec_field_by_field(tmp_path):
    """biozoo's own 0.4 reader against bioimageio.spec's updater on every 0.4 package of the corpus, where the
    updater works; the documented differences (batch size 1 kept) are asserted as such."""
    pytest.importorskip("bioimageio.spec")
    import zipfile

    from biozoo.runtime.format.format_v04 import convert_v04

    compared = 0
    for name in PACKAGES:
        folder = tmp_path / name
        with zipfile.ZipFile(CORPUS / name) as z:
            z.extractall(folder)
        raw = yaml.safe_load((folder / "rdf.yaml").read_text())
        if not str(raw["format_version"]).startswith("0.4"):
            continue
        ours, theirs = convert_v04(raw), _spec_conversion(folder / "rdf.yaml")
        assert ours["name"] == theirs["name"]
        assert set(ours["weights"]) == {k for k, v in theirs["weights"].items() if v}
        assert ours["weights"]["onnx"]["opset_version"] == theirs["weights"]["onnx"]["opset_version"]
        for kind, proc in (("inputs", "preprocessing"), ("outputs", "postprocessing")):
            for mine, spec in zip(ours[kind], theirs[kind], strict=True):
                assert mine["id"] == spec["id"]
                assert mine["test_tensor"]["source"] == str(spec["test_tensor"]["source"])
                assert mine["data"]["type"] == spec["data"]["type"]
                assert [p["id"] for p in _ops(mine[proc])] == [p["id"] for p in _ops(spec[proc])]
                for p, q in zip(_ops(mine[proc]), _ops(spec[proc])):
                    for key, value in (p.get("kwargs") or {}).items():
                        assert list(value) == list(q["kwargs"][key]) if isinstance(value, list) else \
                            value == q["kwargs"][key], (name, p, q)
                ours_axes, spec_axes = _axes_by_id(mine), _axes_by_id(spec)
                assert list(ours_axes) == list(spec_axes)
                for axis_id, a in ours_axes.items():
                    b = spec_axes[axis_id]
                    assert a["type"] == b["type"]
                    if a["type"] == "batch":  # the spec's updater drops a fixed batch size 1; biozoo keeps it
                        assert b.get("size") is None
                        continue
                    assert a.get("size") == b.get("size"), (name, axis_id, a, b)
                    assert float(a.get("scale", 1.0)) == float(b.get("scale", 1.0))
                    assert a.get("halo", 0) == b.get("halo", 0)
                    assert a.get("channel_names") == b.get("channel_names")
        compared += 1
    assert compared == sum(1 for n in PACKAGES if "v0_4" in n)
