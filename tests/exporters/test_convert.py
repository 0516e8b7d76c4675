"""`biozoo convert` on a real third-party package (multi_tensor: two inputs, two outputs, shipping torchscript and
pytorch_state_dict weights): with its ONNX weights removed, the converted package passes `biozoo test` and
bioimageio.core's test_model; the state dict needs --trust-code; tampered test outputs, an existing output path and a
package that has ONNX already are refused without writing anything."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from biozoo.exporters.convert import load_yaml12
from biozoo.runtime.cli import main

THIRDPARTY = Path(__file__).resolve().parents[2].parent / "shared" / "thirdparty"
MULTI_TENSOR = THIRDPARTY / "multi_tensor.zip"
pytestmark = pytest.mark.skipif(not MULTI_TENSOR.is_file(),
                                reason=f"the third-party conformance packages are not at {THIRDPARTY}")


def _run(*argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--quiet", *argv])
    return rc, out.getvalue(), err.getvalue()


def _edited(src: Path, dest: Path, drop: tuple[str, ...] = (), edit=None) -> Path:
    """A copy of the zip `src` without the weights formats `drop` (entries and files); `edit(folder, rdf)` may change
    files and the rdf dict before it is zipped again."""
    folder = dest.with_suffix("")
    with zipfile.ZipFile(src) as z:
        z.extractall(folder)
    rdf_path = folder / "rdf.yaml"
    rdf = load_yaml12(rdf_path.read_text(encoding="utf-8"))  # `1e-05` stays a number when written back
    for fmt in drop:
        entry = rdf["weights"].pop(fmt)
        for f in (entry, entry.get("external_data") or {}):
            if f.get("source"):
                (folder / f["source"]).unlink()
    if edit is not None:
        edit(folder, rdf)
    rdf_path.write_text(yaml.safe_dump(rdf, sort_keys=False), encoding="utf-8")
    with zipfile.ZipFile(dest, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder).as_posix())
    shutil.rmtree(folder)
    return dest


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return load_yaml12(z.read("rdf.yaml").decode("utf-8"))


def _core_passes(package: Path) -> None:
    from bioimageio.core import test_model

    summary = test_model(str(package), weight_format="onnx", devices=["cpu"])
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed


def _biozoo_test_passes(package: Path) -> dict:
    rc, out, err = _run("test", str(package), "--json")
    report = json.loads(out)
    assert rc == 0 and report["status"] == "passed", (err, report)
    return report


@pytest.fixture(scope="module")
def from_torchscript(tmp_path_factory):
    """(input without ONNX, converted package, the CLI's JSON report)."""
    tmp = tmp_path_factory.mktemp("convert-ts")
    src = _edited(MULTI_TENSOR, tmp / "no_onnx.zip", drop=("onnx",))
    out = tmp / "converted.zip"
    rc, stdout, stderr = _run("convert", str(src), "-o", str(out), "--json")
    assert rc == 0, stderr
    return src, out, json.loads(stdout)


def test_torchscript_conversion_passes_biozoo_test_and_core_test_model(from_torchscript):
    src, out, report = from_torchscript
    assert report["source_format"] == "torchscript" and report["spec"] in ("valid-format", "passed")
    for tid, r in report["test"]["outputs"].items():  # the package's own tolerance: abs 1e-5, rel 1e-3
        assert r["passed"] and r["tolerance"]["absolute"] == 1e-5, (tid, r)
    rdf = _rdf(out)
    entry = rdf["weights"]["onnx"]
    assert {k: entry[k] for k in ("source", "opset_version", "parent")} == {
        "source": "weights.onnx", "opset_version": 17, "parent": "torchscript"}
    assert "external_data" not in entry
    with zipfile.ZipFile(out) as z, zipfile.ZipFile(src) as original:
        assert set(original.namelist()) | {"weights.onnx"} == set(z.namelist())  # every original file kept
        data = z.read("weights.onnx")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        for name in original.namelist():
            if name != "rdf.yaml":
                assert z.read(name) == original.read(name), name
    proto = onnx.load_from_string(data)
    assert proto.ir_version == 8 and {o.domain: o.version for o in proto.opset_import}[""] == 17
    assert [i.name for i in proto.graph.input] == ["input0", "input1"]
    assert [o.name for o in proto.graph.output] == ["output0", "output1"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "input0_y", "input0_x"]  # batch and parameterized space axes free, channel fixed
    assert rdf["weights"]["torchscript"] == _rdf(src)["weights"]["torchscript"]
    _biozoo_test_passes(out)
    _core_passes(out)


def test_state_dict_needs_trust_code(tmp_path):
    src = _edited(MULTI_TENSOR, tmp_path / "state_dict_only.zip", drop=("onnx", "torchscript"))
    out = tmp_path / "converted.zip"
    rc, _, err = _run("convert", str(src), "-o", str(out))
    assert rc == 2 and "--trust-code" in err and "Traceback" not in err
    assert not out.exists()

    rc, stdout, err = _run("convert", str(src), "-o", str(out), "--trust-code")
    assert rc == 0, err
    assert "biozoo test: passed" in stdout
    assert _rdf(out)["weights"]["onnx"]["parent"] == "pytorch_state_dict"
    _biozoo_test_passes(out)


def test_tampered_test_output_fails_parity_and_writes_nothing(tmp_path):
    def tamper(folder: Path, rdf: dict) -> None:
        path = folder / "test_output_0.npy"
        np.save(path, np.load(path) * 1.5 + 0.1)
        rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()

    src = _edited(MULTI_TENSOR, tmp_path / "tampered.zip", drop=("onnx",), edit=tamper)
    out = tmp_path / "converted.zip"
    rc, _, err = _run("convert", str(src), "-o", str(out))
    assert rc == 1, err
    assert "output 'output0'" in err and "max abs difference" in err and "1e-05" in err
    assert "output 'output1'" not in err  # the untouched output reproduces
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_refusals_write_nothing(tmp_path, from_torchscript):
    src, converted, _ = from_torchscript
    existing = tmp_path / "existing.zip"
    existing.write_bytes(b"keep me")
    rc, _, err = _run("convert", str(src), "-o", str(existing))
    assert rc == 2 and "--overwrite" in err and existing.read_bytes() == b"keep me"

    rc, _, err = _run("convert", str(src), "-o", str(src), "--overwrite")
    assert rc == 2 and "is the input package" in err

    rc, _, err = _run("convert", str(converted), "-o", str(tmp_path / "again.zip"))
    assert rc == 2 and "already has ONNX weights" in err and not (tmp_path / "again.zip").exists()

    rc, _, err = _run("convert", str(src), "-o", str(tmp_path / "new.tar"))
    assert rc == 2 and ".zip" in err


def test_without_torch_says_what_to_install(tmp_path, from_torchscript):
    src, _, _ = from_torchscript
    code = ("import sys; sys.modules['torch'] = None\n"  # what an install without the [train] extra looks like
            "from biozoo.runtime.cli import main\n"
            f"sys.exit(main(['convert', {str(src)!r}, '-o', {str(tmp_path / 'x.zip')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'biozoo[train]'" in done.stderr and "Traceback" not in done.stderr


UPSCALER = '''import torch


class Upscaler(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")
'''


def test_format_04_package_is_written_as_format_05(tmp_path):
    """upsample_v0_4 ships a state dict (empty: nearest x4 upsampling) whose architecture file is not in the zip; the
    file is written here, with its sha256 in the 0.4 rdf."""
    upsample = THIRDPARTY / "upsample_v0_4.zip"
    if not upsample.is_file():
        pytest.skip(f"{upsample} is missing")

    def add_architecture(folder: Path, rdf: dict) -> None:
        (folder / "upsample_model.py").write_text(UPSCALER, encoding="utf-8")
        rdf["weights"]["pytorch_state_dict"]["architecture_sha256"] = hashlib.sha256(UPSCALER.encode()).hexdigest()

    src = _edited(upsample, tmp_path / "upsample_no_onnx.zip", drop=("onnx",), edit=add_architecture)
    assert str(_rdf(src)["format_version"]).startswith("0.4")
    out = tmp_path / "converted.zip"
    rc, _, err = _run("convert", str(src), "-o", str(out), "--trust-code")
    assert rc == 0, err
    rdf = _rdf(out)
    assert str(rdf["format_version"]).startswith("0.5") and rdf["weights"]["onnx"]["parent"] == "pytorch_state_dict"
    _biozoo_test_passes(out)
    _core_passes(out)


@pytest.mark.slow
def test_conversion_is_deterministic(tmp_path, from_torchscript):
    src, out, report = from_torchscript
    again = tmp_path / "again.zip"
    rc, stdout, err = _run("convert", str(src), "-o", str(again), "--json")
    assert rc == 0, err
    assert json.loads(stdout)["sha256"] == report["sha256"] and again.read_bytes() == out.read_bytes()


@pytest.mark.slow
def test_default_ids_and_the_torch_export_fallback(tmp_path):
    """diff_output_shape: tensor ids at their spec defaults, output half the input size; its U-Net crops with
    size-dependent slices before instance norms, which only torch.export (the fallback) can export (~35 s)."""
    package = THIRDPARTY / "diff_output_shape.zip"
    if not package.is_file():
        pytest.skip(f"{package} is missing")
    src = _edited(package, tmp_path / "no_onnx.zip", drop=("onnx",))
    out = tmp_path / "converted.zip"
    rc, stdout, err = _run("convert", str(src), "-o", str(out), "--trust-code", "--json")
    assert rc == 0, err
    assert "torch.export" in json.loads(stdout)["exporter"]
    _biozoo_test_passes(out)
    _core_passes(out)
