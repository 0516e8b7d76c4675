"""`biozoo validate` on exported packages: biozoo's own checks of the export record and of halo-consistent sizes
pass on what the exporter writes and fail, with the reason, when a package's claims are wrong."""
from __future__ import annotations

import json
import zipfile

import pytest
import yaml

from biozoo.exporters import export_run
from biozoo.runtime.cli import main


@pytest.fixture(scope="module")
def package_folder(quick_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("validate") / "unet.zip"
    export_run(quick_run("unet-nuclei-2d"), out)
    return out


def _validate(source, capsys) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["validate", str(source), "--json"])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def _edited(package, tmp_path, edit) -> str:
    folder = tmp_path / "pkg"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(rdf)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return str(folder / "rdf.yaml")


def test_exported_package_passes_every_validate_check(package_folder, capsys):
    code, checks = _validate(package_folder, capsys)
    assert code == 0, checks
    for name in ("export-record", "halo-sizes", "onnx-compatibility", "bioimageio.spec"):
        assert checks[name]["passed"] and not checks[name].get("skipped"), checks[name]


def _set_halo(value):
    def edit(rdf):
        for axis in rdf["outputs"][0]["axes"]:
            if axis.get("halo"):
                axis["halo"] = value
    return edit


@pytest.mark.parametrize("edit, check, words", [
    (lambda rdf: rdf["config"]["biozoo"].pop("parity"), "export-record", "parity"),
    (lambda rdf: rdf["config"]["biozoo"]["batch_independence"].update(passed=False), "export-record", "batch"),
    (_set_halo(4), "halo-sizes", "receptive field"),
    (_set_halo(70), "load", "nothing would be left between the halos"),  # refused when the package is read
])
def test_wrong_claims_fail_validate_with_the_reason(package_folder, tmp_path, capsys, edit, check, words):
    code, checks = _validate(_edited(package_folder, tmp_path, edit), capsys)
    assert code == 1
    assert not checks[check]["passed"] and words in checks[check]["detail"]


def test_third_party_package_skips_the_export_record(rdf, capsys):
    code, checks = _validate(rdf("unet2d"), capsys)
    assert checks["export-record"]["passed"] and checks["export-record"]["skipped"]
