"""The `biozoo` command line, run for real in a subprocess (contract: shared/DESIGN.md section 3).

Exit codes: 0 success, 1 a check failed (test/validate), 2 bad usage or bad input with a one-line
"biozoo: error: ..." on stderr and no traceback. `--json` prints exactly one JSON object on stdout.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image


def cli(tmp_path, *args, ok=(0,)):
    """Run `python -m biozoo.runtime.cli ARGS` with its own cache; check the exit code is in `ok`."""
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode in ok, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one_json(proc) -> dict:
    data = json.loads(proc.stdout)  # the whole stdout: one object and nothing else
    assert isinstance(data, dict)
    return data


def write(path, arr):
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, arr)
    elif suffix == ".png":
        Image.fromarray(arr).save(path)
    else:
        tifffile.imwrite(path, arr)
    return path


def rand(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).random(shape).astype(dtype)


def copy_package(rdf, kind, tmp_path):
    return shutil.copytree(rdf(kind).parent, tmp_path / f"pkg_{kind}")


def edit_rdf(folder, edit):
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(data)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


# ---------------------------------------- info / test / validate
@pytest.mark.parametrize("form", ["zip-json", "folder-json", "folder-text"])
def test_info(rdf, zipped, tmp_path, form):
    package = zipped("multi_io") if form.startswith("zip") else rdf("multi_io").parent
    proc = cli(tmp_path, "info", package, *(["--json"] if form.endswith("json") else []))
    if form.endswith("text"):
        for word in ("inputs:", "outputs:", "a [bcyx]", "b [bcyx]", "sum [bcyx]", "prod [bcyx]"):
            assert word in proc.stdout
        return
    info = one_json(proc)
    assert [t["id"] for t in info["inputs"]] == ["a", "b"]
    assert [t["id"] for t in info["outputs"]] == ["sum", "prod"]
    assert all(t["axes"] == "bcyx" for t in info["inputs"] + info["outputs"])
    assert info["inputs"][0]["sizes"]["y"] == "8+4n" and info["inputs"][1]["sizes"]["y"] == "=a.y"
    # no training record (a third-party-like package): where the checks take their references from instead
    assert info["training"]["pixel_size_um"] is None
    assert info["training"]["out_of_distribution"]["measured_on"].startswith("the package's test tensors")


def test_info_shows_the_recorded_training_conditions(tmp_path):
    from tests import packages

    folder = packages.build_package("blobseg", tmp_path / "pk").parent
    info = one_json(cli(tmp_path, "info", folder, "--json"))
    assert info["training"]["pixel_size_um"] == {"y": 0.5, "x": 0.5} and info["training"]["receptive_field_px"] == 15
    text = cli(tmp_path, "info", folder).stdout
    assert "pixel size y 0.5, x 0.5 (µm), receptive field 15 px" in text


def test_test_passes_on_a_good_package(zipped, tmp_path):
    report = one_json(cli(tmp_path, "test", zipped("unet2d"), "--json", "--device", "cpu"))
    assert report["status"] == "passed"
    assert set(report["outputs"]) == {"prob"}
    assert report["outputs"]["prob"]["passed"] and report["outputs"]["prob"]["max_abs_error"] < 1e-3


def test_test_fails_with_exit_1_when_a_test_output_was_altered(rdf, tmp_path):
    folder = copy_package(rdf, "unet2d", tmp_path)
    npy = folder / "test_output_prob.npy"
    np.save(npy, np.load(npy) + 0.25)
    sha = hashlib.sha256(npy.read_bytes()).hexdigest()
    edit_rdf(folder, lambda d: d["outputs"][0]["test_tensor"].update(sha256=sha))  # still loads: sha matches
    report = one_json(cli(tmp_path, "test", folder, "--json", ok=(1,)))
    assert report["status"] == "failed"
    assert not report["outputs"]["prob"]["passed"]
    assert report["outputs"]["prob"]["max_abs_error"] == pytest.approx(0.25, abs=1e-3)


def _license(folder):
    edit_rdf(folder, lambda d: d.update(license="NOT-A-LICENSE"))  # spec rejects it, biozoo still loads it


def _cover(folder):
    with open(folder / "cover.png", "ab") as f:  # covered by a sha256, but not needed to run the model
        f.write(b"tampered")


@pytest.mark.parametrize("break_it,failed", [(None, set()), (_license, {"bioimageio.spec"}),
                                             (_cover, {"files", "bioimageio.spec"})],
                         ids=["good", "bad-license", "cover-sha-mismatch"])
def test_validate(rdf, tmp_path, break_it, failed):
    folder = copy_package(rdf, "unet2d", tmp_path)
    if break_it:
        break_it(folder)
    report = one_json(cli(tmp_path, "validate", folder, "--json", ok=(1,) if failed else (0,)))
    assert report["status"] == ("failed" if failed else "passed")
    checks = {c["name"]: c for c in report["checks"]}
    assert {"load", "files", "onnx-compatibility", "bioimageio.spec"} <= set(checks)
    assert not checks["bioimageio.spec"].get("skipped"), "bioimageio.spec is installed: it must really run"
    assert {n for n, c in checks.items() if not c["passed"]} == failed
    if break_it is _license:
        assert any(e.startswith("license") for e in checks["bioimageio.spec"]["errors"])
    if break_it is _cover:
        assert "sha256 mismatch for 'cover.png'" in checks["files"]["detail"]


@pytest.mark.parametrize("what", ["corrupted-zip", "invalid-yaml"])
def test_validate_unopenable_package_reports_without_traceback(rdf, tmp_path, what):
    if what == "corrupted-zip":
        package = tmp_path / "bad.zip"
        package.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    else:
        package = copy_package(rdf, "unet2d", tmp_path)
        (package / "rdf.yaml").write_text("type: model\nformat_version: 0.5.12\ninputs: [\n")
    proc = cli(tmp_path, "validate", package, "--json", ok=(1, 2))
    assert proc.returncode == 2 or one_json(proc)["status"] == "failed"


# ---------------------------------------- predict
def test_predict_tiff_of_any_size_to_tiff_with_axes_and_json_summary(rdf, models, tmp_path):
    x = rand((100, 90)) * 50  # not a valid unet2d size (min 40, step 8): padded and cropped back
    out = tmp_path / "out" / "pred.tif"
    summary = one_json(cli(tmp_path, "predict", rdf("unet2d").parent, write(tmp_path / "img.tif", x), "-o", out,
                           "--json"))
    assert summary["items"] == [{"input": str(tmp_path / "img.tif"), "written": {"prob": str(out)},
                                 "shapes": {"prob": [100, 90]}, "axes": {"prob": "yx"}}]
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "YX"
        y = tif.series[0].asarray()
    assert y.shape == (100, 90) and y.dtype == np.float32
    np.testing.assert_allclose(y, models("unet2d").predict(x, axes="yx"), atol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_predict_npy_and_png(rdf, tmp_path, suffix):
    x = (rand((64, 72)) * 255).astype(np.uint8) if suffix == ".png" else rand((64, 72))
    out = tmp_path / ("pred.npy" if suffix == ".npy" else "pred.tif")
    cli(tmp_path, "predict", rdf("unet2d").parent, write(tmp_path / f"img{suffix}", x), "-o", out)
    y = np.load(out) if suffix == ".npy" else tifffile.imread(out)
    assert y.shape == (64, 72) and np.all((y > 0) & (y < 1))  # sigmoid output


def test_predict_several_inputs_into_a_folder(rdf, tmp_path):
    files = [write(tmp_path / f"img{i}{s}", rand((48 + 8 * i, 56), seed=i)) for i, s in enumerate([".tif", ".npy"])]
    summary = one_json(cli(tmp_path, "predict", rdf("unet2d").parent, *files, "-o", tmp_path / "out", "--json"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.tif", "img1.tif"]
    written = [it["written"]["prob"] for it in summary["items"]]
    assert written == [str(tmp_path / "out" / n) for n in ("img0.tif", "img1.tif")]
    assert tifffile.imread(tmp_path / "out" / "img1.tif").shape == (56, 56)


def test_predict_inputs_with_the_same_stem_do_not_overwrite_each_other(rdf, tmp_path):
    files = [write(tmp_path / f"img{s}", rand((48, 48), seed=i)) for i, s in enumerate([".tif", ".npy"])]
    proc = cli(tmp_path, "predict", rdf("unet2d").parent, *files, "-o", tmp_path / "out", ok=(0, 2))
    written = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert (proc.returncode == 2 and not written) or (proc.returncode == 0 and len(written) == 2)


def test_predict_multi_io_writes_one_file_per_output(rdf, tmp_path):
    a, b = write(tmp_path / "a.tif", rand((52, 60)) * 4), write(tmp_path / "b.npy", rand((52, 60), seed=1))
    summary = one_json(cli(tmp_path, "predict", rdf("multi_io").parent, f"a={a}", f"b={b}", "-o", tmp_path / "o",
                           "--json"))
    assert summary["items"][0]["written"] == {"sum": str(tmp_path / "o" / "a_sum.tif"),
                                              "prod": str(tmp_path / "o" / "a_prod.tif")}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_prod.tif", "a_sum.tif"]
    prod = tifffile.imread(tmp_path / "o" / "a_prod.tif")
    assert prod.shape == (52, 60) and set(np.unique(prod)) <= {0, 1}  # binarized


def test_predict_tiled_equals_whole_image(rdf, tmp_path):
    img = write(tmp_path / "big.tif", rand((150, 170)) * 1000)
    cli(tmp_path, "predict", rdf("unet2d").parent, img, "-o", tmp_path / "whole.npy")
    cli(tmp_path, "predict", rdf("unet2d").parent, img, "--tile", "48,48", "-o", tmp_path / "tiled.npy")
    whole, tiled = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "tiled.npy")
    assert whole.shape == tiled.shape == (150, 170)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_predict_3d_stack_with_explicit_axes(rdf, tmp_path):
    img = write(tmp_path / "stack.tif", rand((18, 30, 34)) * 4000)
    out = tmp_path / "stack_pred.tif"
    cli(tmp_path, "predict", rdf("unet3d").parent, img, "--axes", "zyx", "-o", out)
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (18, 30, 34)


# ---------------------------------------- bad input: exit 2
def _zip_with(rdf, tmp_path, kind, extra: dict[str, bytes]):
    path = tmp_path / f"{kind}_extra.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(rdf(kind).parent.iterdir()):
            zf.write(f, f.name)
        for name, data in extra.items():
            zf.writestr(name, data)
    return path


def _corrupt_zip(zipped, tmp_path):
    data = bytearray(zipped("unet2d").read_bytes())
    data[len(data) // 4: len(data) // 2] = bytes(b ^ 0x5A for b in data[len(data) // 4: len(data) // 2])
    (tmp_path / "corrupt.zip").write_bytes(bytes(data))  # central directory intact, deflate streams broken
    return tmp_path / "corrupt.zip"


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _tampered(rdf, tmp_path, change):
    folder = copy_package(rdf, "unet2d", tmp_path)
    change(folder)
    return folder


IMG2D = lambda t: write(t / "img.tif", rand((48, 48)))  # noqa: E731
BAD = {  # name: (build (rdf, zipped, tmp_path) -> CLI args after "predict", expected part of the message)
    "2d-image-with-zyx-axes": (lambda r, z, t: [r("unet2d").parent, IMG2D(t), "--axes", "zyx"], "axes 'zyx'"),
    "5d-array-without-axes": (lambda r, z, t: [r("unet2d").parent, write(t / "i.npy", rand((1, 1, 1, 48, 48)))],
                              "cannot tell the axes"),
    "unknown-tensor-id": (lambda r, z, t: [r("multi_io").parent, f"nope={IMG2D(t)}", f"b={IMG2D(t)}"], "ID=FILE"),
    "wrong-channel-count": (lambda r, z, t: [r("softmax3").parent, write(t / "i.npy", rand((3, 40, 40))), "--axes",
                                             "cyx"], "needs exactly 2"),
    "nan": (lambda r, z, t: [r("unet2d").parent, write(t / "i.npy", np.where(rand((48, 48)) > 0.5, np.nan, 1.0))],
            "NaN/Inf"),
    "inf": (lambda r, z, t: [r("unet2d").parent, write(t / "i.tif", np.full((48, 48), np.inf, np.float32))],
            "NaN/Inf"),
    "empty-array": (lambda r, z, t: [r("unet2d").parent, write(t / "i.npy", np.zeros((0, 10), np.float32))], "empty"),
    "not-a-zip": (lambda r, z, t: [_bytes(t / "p.zip", b"PK\x03\x04 truncated"), IMG2D(t)], "not a package"),
    "corrupted-zip": (lambda r, z, t: [_corrupt_zip(z, t), IMG2D(t)], "corrupted"),
    "sha-mismatch": (lambda r, z, t: [_tampered(r, t, lambda f: open(f / "weights.onnx", "ab").write(b"x")),
                                      IMG2D(t)], "sha256 mismatch for 'weights.onnx'"),
    "missing-input-file": (lambda r, z, t: [r("unet2d").parent, t / "nothere.tif"], "does not exist"),
    "missing-package-file": (lambda r, z, t: [_tampered(r, t, lambda f: (f / "weights.onnx").unlink()), IMG2D(t)],
                             "missing from the package"),
    "http-source": (lambda r, z, t: [_tampered(r, t, lambda f: edit_rdf(f, lambda d: d["weights"]["onnx"].update(
        source="https://example.org/w.onnx"))), IMG2D(t)], "offline"),
    "zip-slip": (lambda r, z, t: [_zip_with(r, t, "unet2d", {"../evil.txt": b"escaped"}), IMG2D(t)], "escapes"),
    "unsupported-extension": (lambda r, z, t: [r("unet2d").parent, write(t / "i.npy", rand((48, 48))).rename(
        t / "i.jpg")], "unsupported file type '.jpg'"),
    "no-such-package": (lambda r, z, t: [t / "nothere.zip", IMG2D(t)], "does not exist"),
    "invalid-tile": (lambda r, z, t: [r("unet2d").parent, IMG2D(t), "--tile", "a,b"], "--tile"),
}
@pytest.mark.parametrize("case", list(BAD))
def test_predict_bad_input_exit_2_one_line_no_traceback_no_output(rdf, zipped, tmp_path, case):
    build, message = BAD[case]
    args = build(rdf, zipped, tmp_path)
    out = tmp_path / "out" / "pred.tif"
    proc = cli(tmp_path, "-q", "predict", *args, "-o", out, ok=(2,))
    assert proc.stderr.startswith("biozoo: error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists(), "no output may be written for bad input"
    assert not list(tmp_path.rglob("evil.txt")), "a zip member escaped"


@pytest.mark.parametrize("args", [["nope"], [], ["predict", "pkg"], ["info"], ["test", "pkg", "--device", "tpu"]],
                         ids=["unknown-command", "no-command", "predict-without-input", "info-without-package",
                              "bad-device"])
def test_usage_errors_exit_2(tmp_path, args):
    proc = cli(tmp_path, *args, ok=(2,))
    assert "usage: biozoo" in proc.stderr and "error:" in proc.stderr and proc.stdout == ""


def test_cpu_fallback_says_one_line_and_no_cuda_error_wall(rdf, tmp_path):
    from biozoo.runtime.engine.session import cuda_driver_available

    if cuda_driver_available():
        pytest.skip("this machine has a CUDA driver")
    proc = cli(tmp_path, "info", rdf("fixed").parent)
    assert proc.stderr.strip().splitlines() == ["biozoo: onnxruntime runs on CPUExecutionProvider"]
