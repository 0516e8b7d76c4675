"""Careless commands and hostile files around the packages (issue 13, part B): every refusal is exit 2 with one
line, no traceback, nothing computed and nothing written; nothing connects to a network.

- predict never writes over its inputs, the mask or the package (not even with --overwrite), refuses existing
  outputs without --overwrite, finds unwritable output locations before inference, writes atomically;
- predict refuses, before reading a pixel, a prediction that needs more memory than is available (file headers,
  output shapes, --rescale factors; $BIOZOO_MEMORY_LIMIT overrides), and the receptive-field check, which runs
  after the prediction, is skipped (never raises) when it cannot run;
- values outside the float32 range are refused (they would become Inf in the network);
- checkpoints are read with weights_only=True: a pickled payload in last.pt/best.pt is refused and never runs;
  truncated or mismatched checkpoints, bad --out/-o paths and non-UTF-8 recipes are refused;
- validate hands bioimageio.spec neither the network (no downloads, no GitHub look-ups) nor files outside the
  package; onnxruntime's telemetry is off before onnxruntime is imported;
- the offline guard: every command runs with sockets made impossible (a sitecustomize) and nothing tries.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import yaml

from tests import packages

TESTS = pathlib.Path(__file__).resolve().parents[1]

GUARD = textwrap.dedent('''
    """Offline guard of tests/security/test_commands_hostile.py: no network connection, no DNS; attempts are logged."""
    import os
    import socket
    import sys

    _LOG = os.environ.get("BIOZOO_TEST_NET_LOG")
    _WATCH = os.environ.get("BIOZOO_TEST_WATCH")  # a file outside any package: opening it is logged
    _INET = (socket.AF_INET, socket.AF_INET6)


    def _record(text):
        if _LOG:
            with open(_LOG, "a") as f:
                f.write(text + "\\n")


    def _refuse(what):
        _record(what)
        raise OSError(101, "Network is unreachable (offline test guard)")


    def _hook(event, args):
        if event == "socket.connect" and getattr(args[0], "family", None) in _INET:
            _refuse(f"connect {args[1]!r}")
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                       "socket.gethostbyaddr"):
            _refuse(f"{event} {args[0]!r}")
        elif event == "open" and _WATCH and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                if os.path.realpath(os.fsdecode(args[0])) == _WATCH:
                    _record(f"open {_WATCH}")
            except (TypeError, ValueError):
                pass


    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex


    def connect(self, address):
        if self.family in _INET:
            _refuse(f"connect {address!r}")
        return _connect(self, address)


    def connect_ex(self, address):
        if self.family in _INET:
            _refuse(f"connect {address!r}")
        return _connect_ex(self, address)


    def create_connection(address, *args, **kwargs):
        _refuse(f"create_connection {address!r}")


    def getaddrinfo(host, *args, **kwargs):
        _refuse(f"getaddrinfo {host!r}")


    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo
    sys.addaudithook(_hook)
''')


@pytest.fixture
def offline(tmp_path):
    """run(*cli_args, ok=(0,), code=None) in a subprocess without network; returns (proc, attempts)."""
    site = tmp_path / "offline-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "network-attempts.log"

    def run(*args, ok=(0,), code=None, watch=None, home=None, drop_telemetry_env=True):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               "BIOZOO_CACHE_DIR": str(tmp_path / "cache"), "BIOZOO_TEST_NET_LOG": str(log),
               "NO_PROXY": "", "HTTPS_PROXY": "", "HTTP_PROXY": ""}
        if drop_telemetry_env:  # this process imported biozoo: the variable must come from biozoo in the child
            env.pop("ORT_DISABLE_TELEMETRY", None)
        if watch is not None:
            env["BIOZOO_TEST_WATCH"] = os.path.realpath(watch)
        if home is not None:
            env["HOME"] = str(home)
        command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "biozoo.runtime.cli",
                                                              *map(str, args)]
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert proc.returncode in ok, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        attempts = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc, attempts

    return run


def _sha(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _image(path, shape=(64, 64), dtype=np.float32, seed=0, **kwargs):
    data = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    if path.suffix == ".npy":
        np.save(path, data)
    else:
        tifffile.imwrite(path, data, **kwargs)
    return path


@pytest.fixture
def no_inference(monkeypatch):
    """Any prediction in this process fails the test: refusals must come before inference."""
    from biozoo.runtime.model import Model

    def forbidden(*args, **kwargs):
        raise AssertionError("inference ran although the command should have been refused before it")

    monkeypatch.setattr(Model, "predict_with_report", forbidden)


def _main(capsys, *args):
    """biozoo's CLI in this process: (exit code, stderr, stdout); a refusal is exactly one 'biozoo: error:' line."""
    from biozoo.runtime.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    if code == 2:
        errors = [line for line in captured.err.splitlines() if line.startswith("biozoo: error:")]
        assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    return code, captured.err, captured.out


# ---------------------------------------------------------------------------------------------- predict: outputs
def test_predict_never_writes_over_an_input_or_the_mask_even_with_overwrite(rdf, tmp_path, capsys, no_inference):
    package = rdf("unet2d").parent
    a, b = _image(tmp_path / "a.tif"), _image(tmp_path / "b.tif", seed=1)
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.ones((64, 64), np.uint8))
    before = {p: _sha(p) for p in (a, b, mask)}
    for args in ([a, "-o", a], [a, "-o", a, "--overwrite"],  # -o = the input
                 [a, b, "-o", tmp_path], [a, b, "-o", tmp_path, "--overwrite"],  # -o = the inputs' folder
                 [a, "-o", mask, "--mask", mask, "--overwrite"]):  # -o = the mask
        code, err, _ = _main(capsys, "predict", package, *args)
        assert code == 2 and "predict never writes over its inputs" in err, (args, err)
    assert "is the --mask file" in err
    link = tmp_path / "alias.tif"  # another name for the same file
    os.link(a, link)
    code, err, _ = _main(capsys, "predict", package, a, "-o", link, "--overwrite")
    assert code == 2 and "is an input" in err
    assert {p: _sha(p) for p in (a, b, mask)} == before


def test_predict_never_writes_over_a_file_of_the_package(rdf, tmp_path, capsys, no_inference):
    package = tmp_path / "pkg"
    import shutil

    shutil.copytree(rdf("unet2d").parent, package)
    target = package / "test_input_raw.npy"
    before = _sha(target)
    code, err, _ = _main(capsys, "predict", package, _image(tmp_path / "a.tif"), "-o", target, "--overwrite")
    assert code == 2 and "file of the package" in err
    assert _sha(target) == before


def test_existing_outputs_need_overwrite(rdf, tmp_path, capsys):
    package = rdf("unet2d").parent
    src = _image(tmp_path / "img.tif")
    out = tmp_path / "out.tif"
    out.write_bytes(b"the user's earlier result")
    code, err, _ = _main(capsys, "predict", package, src, "-o", out)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"the user's earlier result"
    assert _main(capsys, "predict", package, src, "-o", out, "--overwrite")[0] == 0
    assert tifffile.imread(out).shape == (64, 64)
    folder = tmp_path / "outs"  # folder outputs: one existing file is enough to refuse the whole command
    folder.mkdir()
    (folder / "img.tif").write_bytes(b"old")
    code, err, _ = _main(capsys, "predict", package, src, _image(tmp_path / "two.tif"), "-o", folder)
    assert code == 2 and "img.tif' already exists" in err and not (folder / "two.tif").exists()


@pytest.mark.parametrize("where", ["under-a-file", "unwritable-folder", "proc"])
def test_unwritable_output_locations_are_found_before_inference(rdf, tmp_path, capsys, no_inference, where):
    package = rdf("unet2d").parent
    src = _image(tmp_path / "img.tif")
    if where == "under-a-file":
        (tmp_path / "notes.txt").write_text("a file, not a folder")
        out = tmp_path / "notes.txt" / "sub" / "out.tif"
    elif where == "unwritable-folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "new" / "out.tif"
    else:
        if not pathlib.Path("/proc/self").is_dir():
            pytest.skip("no /proc on this system")
        out = pathlib.Path("/proc/biozoo-no-such-folder/out.tif")
    code, err, _ = _main(capsys, "predict", package, src, "-o", out)
    assert code == 2 and "cannot be written" in err, err


def test_a_failed_write_leaves_no_file_behind(rdf, tmp_path, capsys, monkeypatch):
    package = rdf("unet2d").parent
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def disk_full(path, *args, **kwargs):
        pathlib.Path(path).write_bytes(b"II*\x00 half a tiff")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    code, err, _ = _main(capsys, "predict", package, _image(tmp_path / "img.npy"), "-o", out_dir / "pred.tif")
    assert code == 2 and "No space left on device" in err
    assert list(out_dir.iterdir()) == []  # neither the output nor its temporary file


def test_detection_box_files_are_planned_and_checked_before_inference(tmp_path):
    """The YOLO .txt / .csv / .json names of a detection package are known up front: an annotation of the same
    name next to the image is refused (without --overwrite), a file name for -o is refused."""
    from biozoo.runtime.commands.output_paths import check_output_paths, planned_outputs
    from biozoo.runtime.engine.outputs import detection_outputs
    from biozoo.runtime.errors import InputError
    from biozoo.runtime.format.description import parse_description

    index = {"id": "detection", "type": "index", "size": {}}
    corners = {"type": "channel", "channel_names": ["x_min", "y_min", "x_max", "y_max"]}
    desc = parse_description({
        "type": "model", "format_version": "0.5.4", "name": "det", "weights": {"onnx": {"source": "w.onnx"}},
        "inputs": [{"id": "raw", "axes": [{"type": "batch", "size": 1}, {"type": "channel", "channel_names": ["c"]},
                                          {"id": "y", "type": "space", "size": {"min": 32, "step": 16}},
                                          {"id": "x", "type": "space", "size": {"min": 32, "step": 16}}]}],
        "outputs": [{"id": "boxes", "axes": [index, corners]}, {"id": "scores", "axes": [index]},
                    {"id": "labels", "axes": [index], "data": {"type": "int64"}}]})
    boxes = detection_outputs(desc)
    plan = planned_outputs(desc, tmp_path, False, "tif", "cells", boxes)
    assert sorted(p.name for p in plan.values()) == ["cells.csv", "cells.json", "cells.txt"]
    image = _image(tmp_path / "cells.tif")
    (tmp_path / "cells.txt").write_text("0 0.5 0.5 0.1 0.1\n")  # the user's own YOLO annotation
    with pytest.raises(InputError, match="cells.txt' already exists"):
        check_output_paths(list(plan.values()), {image: "an input"}, None, overwrite=False)
    with pytest.raises(InputError, match="give -o a folder"):
        planned_outputs(desc, tmp_path / "boxes.csv", False, "tif", "cells", boxes)


# ---------------------------------------------------------------------------------------------- predict: memory
@pytest.fixture(scope="module")
def blobseg(tmp_path_factory):
    return packages.build_package("blobseg", tmp_path_factory.mktemp("blobseg"))


def test_a_prediction_larger_than_the_memory_limit_is_refused_before_any_work(rdf, tmp_path, capsys, monkeypatch,
                                                                              no_inference):
    monkeypatch.setenv("BIOZOO_MEMORY_LIMIT", "256KB")
    out = tmp_path / "out.tif"
    code, err, _ = _main(capsys, "predict", rdf("unet2d").parent, _image(tmp_path / "img.tif", (256, 256)), "-o", out)
    assert code == 2 and "needs at least" in err and "256.0 KiB are available ($BIOZOO_MEMORY_LIMIT" in err, err
    assert "256x256 float32" in err and not out.exists()
    monkeypatch.setenv("BIOZOO_MEMORY_LIMIT", "lots")
    code, err, _ = _main(capsys, "predict", rdf("unet2d").parent, tmp_path / "img.tif", "-o", out)
    assert code == 2 and "not a memory size" in err


def test_running_out_of_memory_anyway_is_one_line_and_writes_nothing(rdf, tmp_path, capsys, monkeypatch):
    from biozoo.runtime.checks.input_checks import parse_bytes
    from biozoo.runtime.model import Model

    assert parse_bytes("2GB") == parse_bytes("2 GiB") == 2 * 2**30 and parse_bytes("1500") == 1500

    def exhausted(*args, **kwargs):  # the estimate is a lower bound: a MemoryError can still come
        raise MemoryError("Unable to allocate 4.4 GiB for an array with shape (30000, 30000) and data type float32")

    monkeypatch.setattr(Model, "predict_with_report", exhausted)
    out = tmp_path / "out.tif"
    code, err, _ = _main(capsys, "predict", rdf("unet2d").parent, _image(tmp_path / "img.tif"), "-o", out)
    assert code == 2 and "out of memory during the prediction" in err and "4.4 GiB" in err and not out.exists()


def test_rescale_of_a_tiff_claiming_one_pixel_per_cm_is_refused_with_the_numbers(blobseg, tmp_path, capsys,
                                                                                  no_inference):
    src = _image(tmp_path / "cm.tif", (64, 64), np.uint16, resolution=(1, 1), resolutionunit="CENTIMETER")
    code, err, _ = _main(capsys, "predict", blobseg, src, "-o", tmp_path / "out.tif", "--rescale")
    assert code == 2 and "resampled 4e+08x" in err and "TiB" in err and "--pixel-size" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cm.tif"]  # no output, no temporary folder


def test_receptive_field_check_never_fails_after_the_prediction(blobseg, tmp_path, capsys, monkeypatch):
    from biozoo.runtime.checks import input_checks
    from biozoo.runtime.checks import CheckReport
    from biozoo.runtime.model import load

    model = load(blobseg, device="cpu")
    prob = np.zeros((1, 1, 64, 64), np.float32)
    prob[0, 0, 10:20, 10:20] = 1
    monkeypatch.setenv("BIOZOO_MEMORY_LIMIT", "1KB")  # enough to decide, not to label 4096 values
    report = CheckReport()
    input_checks.receptive_field(report, model, {"prob": prob})
    [result] = report.results
    assert result.status == "skipped" and "more than the 1.0 KiB available" in result.message
    monkeypatch.delenv("BIOZOO_MEMORY_LIMIT")

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.05 GiB for an array")

    monkeypatch.setattr(input_checks, "object_diameters", exhausted)
    out = tmp_path / "out.tif"
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, packages.blob_image(np.random.default_rng(0), 96, 12, 5.0)[0, 0].astype(np.uint16),
                     imagej=True, resolution=(2, 2), metadata={"unit": "micron"})
    code, _, stdout = _main(capsys, "predict", blobseg, src, "-o", out, "--json")
    assert code == 0 and tifffile.imread(out).shape == (96, 96)  # the prediction is kept
    check = next(c for c in json.loads(stdout)["checks"] if c["name"] == "receptive-field")
    assert check["status"] == "skipped" and "MemoryError: Unable to allocate" in check["message"]


# ---------------------------------------------------------------------------------------------- float32 range
def test_values_outside_float32_range_are_refused(rdf, models, tmp_path, capsys):
    from biozoo.runtime.errors import InputError

    x = np.full((64, 64), 1.0, np.float64)
    x[3, 4] = 1e300
    np.save(tmp_path / "huge.npy", x)
    code, err, _ = _main(capsys, "predict", rdf("unet2d").parent, tmp_path / "huge.npy", "-o", tmp_path / "o.tif")
    assert code == 2 and "1 value(s) outside the float32 range" in err and not (tmp_path / "o.tif").exists()
    with pytest.raises(InputError, match="outside the float32 range"):
        models("unet2d").prepare_inputs(x, "yx")
    assert models("unet2d").prepare_inputs(x.clip(0, 1e30), "yx")[0]["raw"].dtype == np.float32


# ---------------------------------------------------------------------------------------------- training checkpoints
class _Payload:
    """Pickles to a call of os.system: what a hostile last.pt/best.pt would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _loop_parts():
    import torch

    from biozoo.zoo.config import TrainingConfig

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 3, padding=1))

    def batch(g):
        x = torch.rand(2, 1, 8, 8, generator=g)
        return x, x * 2

    def loss(model, b):
        return torch.nn.functional.mse_loss(model(b[0]), b[1])

    def val(model):
        return {"val_loss": loss(model, batch(torch.Generator().manual_seed(1))).item()}

    cfg = TrainingConfig(epochs=2, steps_per_epoch=2, lr=1e-2, schedule="cosine", early_stopping=None, seed=0)
    return net, loss, batch, val, cfg


@pytest.mark.parametrize("which", ["last.pt", "best.pt"])
def test_a_pickled_payload_in_a_checkpoint_is_refused_never_run(tmp_path, which):
    torch = pytest.importorskip("torch")
    from biozoo.runtime import TrainingError
    from biozoo.zoo.training import train_loop

    net, loss, batch, val, cfg = _loop_parts()
    run = tmp_path / "run"
    train_loop(net(), loss, batch, val, cfg, run, stop_after_epochs=1, progress=False)
    marker = tmp_path / "PWNED"
    if which == "last.pt":
        ckpt = torch.load(run / "last.pt", weights_only=True)
        ckpt["loop"]["history"].append(_Payload(marker))
    else:
        ckpt = {"weight": _Payload(marker)}
    torch.save(ckpt, run / which)
    with pytest.raises(TrainingError, match=f"{which}.*holds pickled Python objects.*never runs code"):
        train_loop(net(), loss, batch, val, cfg, run, resume=True, progress=False)
    assert not marker.exists()


def test_truncated_foreign_and_mismatched_checkpoints_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from biozoo.runtime import TrainingError
    from biozoo.zoo.training import train_loop

    net, loss, batch, val, cfg = _loop_parts()
    run = tmp_path / "run"
    train_loop(net(), loss, batch, val, cfg, run, stop_after_epochs=1, progress=False)
    good = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(TrainingError, match="cannot be read.*truncated or not a torch checkpoint"):
        train_loop(net(), loss, batch, val, cfg, run, resume=True, progress=False)
    torch.save({"weights": torch.zeros(3)}, run / "last.pt")
    with pytest.raises(TrainingError, match="not a biozoo training checkpoint"):
        train_loop(net(), loss, batch, val, cfg, run, resume=True, progress=False)
    (run / "last.pt").write_bytes(good)
    wider = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 1, 3, padding=1))
    with pytest.raises(TrainingError, match="does not match this run.*another architecture"):
        train_loop(wider, loss, batch, val, cfg, run, resume=True, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingError, match="is a file"):
        train_loop(net(), loss, batch, val, cfg, tmp_path / "file", progress=False)


def test_train_and_export_refuse_bad_paths_and_hostile_checkpoints(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"not a folder")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: tiny\ntask: segmentation\n")
    code, err, _ = _main(capsys, "train", recipe, "--out", existing)
    assert code == 2 and "--out" in err and "is an existing file" in err
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("name: caf\xe9\ntask: segmentation\n".encode("latin-1"))
    code, err, _ = _main(capsys, "train", latin, "--out", tmp_path / "run")
    assert code == 2 and "is not UTF-8" in err and not (tmp_path / "run").exists()

    run = tmp_path / "run-dir"
    run.mkdir()
    marker = tmp_path / "PWNED"
    torch.save({"weight": _Payload(marker)}, run / "best.pt")
    code, err, _ = _main(capsys, "export", run, "-o", tmp_path / "model.zip")
    assert code == 2 and "holds pickled Python objects" in err and not marker.exists()
    assert not (tmp_path / "model.zip").exists()
    out = tmp_path / "done.zip"
    out.write_bytes(b"an earlier package")
    code, err, _ = _main(capsys, "export", run, "-o", out)
    assert code == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == b"an earlier package"
    (tmp_path / "folder.zip").mkdir()
    code, err, _ = _main(capsys, "export", run, "-o", tmp_path / "folder.zip")
    assert code == 2 and "is a folder" in err


# ---------------------------------------------------------------------------------------------- validate offline
def _package_copy(rdf, tmp_path, edit=None):
    import shutil

    folder = shutil.copytree(rdf("unet2d").parent, tmp_path / "pkg")
    if edit:
        data = yaml.safe_load((folder / "rdf.yaml").read_text())
        edit(data)
        (folder / "rdf.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def test_validate_looks_up_no_github_user_and_no_url(rdf, tmp_path, offline):
    """A valid package naming GitHub maintainers and URLs validates offline, and nothing tries to connect
    (bioimageio.spec with IO checks resolved api.github.com and failed offline)."""
    def edit(d):
        d["maintainers"] = [{"name": "A. Person", "github_user": "biozoo-no-such-user-7156628e"}]
        d["git_repo"] = "https://github.com/example/biozoo-fixture"
        d["cite"][0]["url"] = "https://example.com/unet"

    proc, attempts = offline("validate", _package_copy(rdf, tmp_path, edit), "--json")
    report = json.loads(proc.stdout)
    assert report["status"] == "passed", report
    spec = next(c for c in report["checks"] if c["name"] == "bioimageio.spec")
    assert not spec.get("skipped") and "offline" in spec["detail"]
    assert attempts == []


@pytest.mark.parametrize("source", ["https://example.com/extra.bin", "../secret.txt"])
def test_validate_never_hands_bioimageio_spec_a_source_outside_the_package(rdf, tmp_path, offline, source):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the package")
    package = _package_copy(rdf, tmp_path, lambda d: d.update(
        attachments=[{"source": source, "sha256": _sha(secret)}]))
    proc, attempts = offline("validate", package, "--json", ok=(1,), watch=secret)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert not checks["files"]["passed"]
    spec = checks["bioimageio.spec"]
    assert not spec["passed"] and spec["skipped"] and f"attachments[0].source: {source}" in spec["detail"]
    assert "files outside the package" in spec["detail"]
    assert attempts == []  # no GET of the URL, no open() of ../secret.txt


# ---------------------------------------------------------------------------------------------- onnxruntime telemetry
def test_onnxruntime_telemetry_is_off_before_onnxruntime_is_imported(rdf, tmp_path, offline):
    home = tmp_path / "home"
    home.mkdir()
    for module in ("biozoo.runtime", "biozoo.zoo", "biozoo.exporters"):
        proc, _ = offline(code=f"import os, sys, {module}; assert 'onnxruntime' not in sys.modules; "
                               "print(os.environ.get('ORT_DISABLE_TELEMETRY'))", home=home)
        assert proc.stdout.strip() == "1", module
    _, attempts = offline("predict", rdf("unet2d").parent, _image(tmp_path / "img.tif"), "-o", tmp_path / "o.tif",
                          home=home)
    assert (tmp_path / "o.tif").is_file() and attempts == []
    assert not (home / ".cache" / "Microsoft").exists()  # onnxruntime-gpu's device-id file


# ---------------------------------------------------------------------------------------------- the offline guard
def test_the_guard_catches_connections(offline):
    proc, attempts = offline(code="import socket\ntry:\n    socket.create_connection(('192.0.2.1', 443), 1)\n"
                                  "except OSError as e:\n    print(e)\n")
    assert "offline test guard" in proc.stdout and attempts and "192.0.2.1" in attempts[0]


@pytest.mark.parametrize("command", ["info", "validate", "test", "predict", "bench"])
def test_every_command_works_offline(rdf, tmp_path, offline, command):
    package = rdf("unet2d").parent
    args = {"info": [], "validate": [], "test": ["--device", "cpu"],
            "predict": [_image(tmp_path / "img.tif"), "-o", tmp_path / "out.tif"],
            "bench": ["--size", "64", "--runs", "1"]}[command]
    proc, attempts = offline(command, package, *args, "--json")
    assert json.loads(proc.stdout)
    assert attempts == [], attempts


def test_train_works_offline_on_a_local_dataset(tmp_path, offline):
    pytest.importorskip("torch")
    from biozoo.runtime.checks.objects import label

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(6):
        image = packages.blob_image(rng, 64, 5, 5.0)[0, 0]
        tifffile.imwrite(tmp_path / "data" / "images" / f"im{i}.tif", image.astype(np.uint16))
        tifffile.imwrite(tmp_path / "data" / "masks" / f"im{i}.tif", label(image > 100)[0].astype(np.uint16))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "tiny", "task": "segmentation", "model": {"name": "unet2d", "depth": 2, "base_channels": 4},
        "data": {"dataset": str(tmp_path / "data"), "tile": None, "patch_size": [32, 32]},
        "training": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 2, "seed": 0}}))
    proc, attempts = offline("train", recipe, "--out", tmp_path / "run", "--json")
    assert json.loads(proc.stdout)["epochs_run"] == 1 and (tmp_path / "run" / "best.pt").is_file()
    assert attempts == [], attempts
