"""The fixture packages of tests/packages.py are real bioimage.io packages.

Each kind must validate with bioimageio.spec (with file/hash checks) and pass bioimageio.core's
``test_model`` (the official conformance test, which recomputes the test outputs).
Everything runs offline: network connections are blocked while these tests run.
"""

from __future__ import annotations

import hashlib
import pathlib
import socket
import zipfile

import pytest

from tests import packages

spec = pytest.importorskip("bioimageio.spec")
core = pytest.importorskip("bioimageio.core")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during fixture package validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    dest = tmp_path_factory.mktemp("fixture_packages")
    return {kind: packages.build_package(kind, dest) for kind in packages.KINDS}


def _load(source: pathlib.Path):
    descr = spec.load_description(source, perform_io_checks=True)
    assert isinstance(descr, spec.model.v0_5.ModelDescr), descr.validation_summary.format()
    return descr


def _core_test(source: pathlib.Path, kind: str):
    return core.test_model(source, weight_format=packages.TESTABLE_WEIGHT_FORMAT[kind],
                           devices=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", packages.KINDS)
def test_package_is_valid_bioimageio_model(built: dict[str, pathlib.Path], kind: str):
    rdf = built[kind]
    descr = _load(rdf)
    assert descr.format_version == packages.FORMAT_VERSION
    assert descr.weights.onnx is not None and descr.weights.onnx.opset_version == 17
    folder = rdf.parent
    assert {"rdf.yaml", "weights.onnx", "cover.png", "README.md"} <= {p.name for p in folder.iterdir()}
    assert "# Validation" in (folder / "README.md").read_text()
    assert [t.test_tensor is not None for t in [*descr.inputs, *descr.outputs]] == [True] * (
        len(descr.inputs) + len(descr.outputs))


@pytest.mark.parametrize("kind", [k if k not in packages.CORE_CANNOT_TEST else pytest.param(
    k, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=packages.CORE_CANNOT_TEST[k])) for k in packages.KINDS])
def test_package_passes_core_test_model(built: dict[str, pathlib.Path], kind: str):
    summary = _core_test(built[kind], kind)
    assert summary.status == "passed", summary.format()


def test_zip_package(tmp_path: pathlib.Path):
    zpath = packages.build_package("multi_io", tmp_path, zip=True)
    assert zpath == tmp_path / "multi_io.zip"
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
    assert "rdf.yaml" in names and all("/" not in n for n in names)
    _load(zpath)
    assert _core_test(zpath, "multi_io").status == "passed"


def test_build_is_deterministic(tmp_path: pathlib.Path, built: dict[str, pathlib.Path]):
    again = packages.build_package("unet2d", tmp_path).parent
    for f in built["unet2d"].parent.iterdir():
        assert hashlib.sha256(f.read_bytes()).digest() == hashlib.sha256((again / f.name).read_bytes()).digest(), f


def test_unknown_kind(tmp_path: pathlib.Path):
    with pytest.raises(ValueError, match="unknown kind"):
        packages.build_package("nope", tmp_path)
