"""Loading and verification: zip / folder / rdf path, sha256, offline, safe unpacking, weights selection."""
from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest
import yaml

from tests import packages
from biozoo.runtime import InputError, PackageError, load


@pytest.mark.parametrize("kind", packages.KINDS)
def test_every_fixture_package_reproduces_its_test_tensors(models, kind):
    report = models(kind).test()
    assert report["status"] == "passed", report
    assert report["outputs"], "a test without outputs proves nothing"
    for r in report["outputs"].values():
        assert r["max_abs_error"] <= r["tolerance"]["absolute"] + r["tolerance"]["relative"]


def test_zip_folder_and_rdf_path_load_the_same_model(rdf, zipped):
    x = np.random.default_rng(1).random((48, 56), dtype=np.float32)
    outs = [load(src, device="cpu").predict(x, axes="yx") for src in (rdf("unet2d"), rdf("unet2d").parent, zipped("unet2d"))]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


def _copy(rdf, kind, tmp_path):
    dest = tmp_path / kind
    shutil.copytree(rdf(kind).parent, dest)
    return dest


def _edit_rdf(folder, edit):
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(data)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))


def test_sha_mismatch_names_the_file_and_both_hashes(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    with open(folder / "weights.onnx", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(PackageError, match=r"sha256 mismatch for 'weights.onnx'.*says [0-9a-f]{64}.*has [0-9a-f]{64}"):
        load(folder, device="cpu")


def test_missing_file_is_named(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    (folder / "weights.onnx").unlink()
    with pytest.raises(PackageError, match="'weights.onnx', which is missing"):
        load(folder, device="cpu")


def test_http_source_is_never_fetched(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    _edit_rdf(folder, lambda d: d["weights"]["onnx"].update(source="https://example.org/weights.onnx"))
    with pytest.raises(PackageError, match=r"weights.onnx points to https://example.org/weights.onnx.*offline"):
        load(folder, device="cpu")


def test_package_without_onnx_lists_its_formats_and_the_command_that_converts_it(rdf, tmp_path):
    folder = _copy(rdf, "tf_and_onnx", tmp_path)
    _edit_rdf(folder, lambda d: d["weights"].pop("onnx"))
    with pytest.raises(PackageError, match=r"no ONNX weights \(it has: tensorflow_saved_model_bundle, torchscript\)"
                                           r".*`biozoo convert PACKAGE -o NEW.zip`.*biozoo\[train\].*--trust-code"):
        load(folder, device="cpu")


def test_other_weight_formats_are_ignored_not_read(rdf, tmp_path):
    folder = _copy(rdf, "tf_and_onnx", tmp_path)
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    other = data["weights"]["torchscript"]["source"]
    (folder / other).write_bytes(b"corrupted: a verified file would fail its sha256")
    _edit_rdf(folder, lambda d: d["weights"]["torchscript"].update(source="https://example.org/never-fetched.pt"))
    assert load(folder, device="cpu").test()["status"] == "passed"


def test_format_03_is_refused_with_its_version(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    _edit_rdf(folder, lambda d: d.update(format_version="0.3.6"))
    with pytest.raises(PackageError, match="format_version 0.3.6.*0.4.x and 0.5.x.*update-format"):
        load(folder, device="cpu")


def test_corrupted_zip_is_refused(zipped, tmp_path):
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zipped("fixed").read_bytes()[:-200])
    with pytest.raises(PackageError, match="corrupted"):
        load(broken, device="cpu")


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "sub/../../evil.txt"])
def test_zip_slip_members_are_refused(zipped, tmp_path, member):
    evil = tmp_path / "evil.zip"
    shutil.copy(zipped("fixed"), evil)
    with zipfile.ZipFile(evil, "a") as z:
        z.writestr(member, "pwned")
    with pytest.raises(PackageError, match="escapes the package"):
        load(evil, device="cpu")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_symlink_member_is_refused(zipped, tmp_path):
    evil = tmp_path / "link.zip"
    shutil.copy(zipped("fixed"), evil)
    info = zipfile.ZipInfo("link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(evil, "a") as z:
        z.writestr(info, "/etc/passwd")
    with pytest.raises(PackageError, match="symbolic link"):
        load(evil, device="cpu")


def test_onnx_external_data_must_stay_inside_the_package(rdf, tmp_path):
    onnx = pytest.importorskip("onnx")
    folder = _copy(rdf, "fixed", tmp_path)
    model = onnx.load(folder / "weights.onnx")
    onnx.save_model(model, folder / "weights.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    text = (folder / "weights.onnx").read_bytes().replace(b"weights.data", b"../ghts.data")  # same length keeps the protobuf valid
    (folder / "weights.onnx").write_bytes(text)
    _edit_rdf(folder, lambda d: d["weights"]["onnx"].pop("sha256"))
    with pytest.raises(PackageError, match="paths must stay inside the package"):
        load(folder, device="cpu")


def test_garbage_onnx_is_a_package_error(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    (folder / "weights.onnx").write_bytes(b"\x0c\xff garbage, not a protobuf")
    _edit_rdf(folder, lambda d: d["weights"]["onnx"].pop("sha256"))
    with pytest.raises(PackageError, match="weights.onnx"):
        load(folder, device="cpu")


def test_unknown_processing_op_is_named(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    _edit_rdf(folder, lambda d: d["inputs"][0].update(preprocessing=[{"id": "magic_norm", "kwargs": {}}]))
    with pytest.raises(PackageError, match="'magic_norm' is not supported.*supported: binarize"):
        load(folder, device="cpu")


def test_yaml_is_read_safely(rdf, tmp_path):
    folder = _copy(rdf, "fixed", tmp_path)
    (folder / "rdf.yaml").write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PackageError, match="not valid YAML"):
        load(folder, device="cpu")


def test_session_is_built_once_and_reused_until_a_larger_run(models):
    """The session is reused for runs of any size up to the largest so far; a larger run gets a fresh session (a
    fresh memory arena: see test_bounded_memory)."""
    model = models("unet2d")
    model.predict(np.ones((40, 40), np.float32), axes="yx")
    session = model.session.session
    for side in (40, 24, 40):
        model.predict(np.ones((side, side), np.float32), axes="yx")
    assert model.session.session is session
    bigger = model.predict(np.ones((400, 400), np.float32), axes="yx")
    assert model.session.session is not session and bigger.shape[-2:] == (400, 400)


def test_device_cuda_without_cuda_is_a_clear_error(rdf):
    from biozoo.runtime.engine.session import cuda_driver_available

    if cuda_driver_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="--device cuda was requested but no usable CUDA"):
        load(rdf("fixed"), device="cuda")
