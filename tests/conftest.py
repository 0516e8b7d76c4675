"""Shared fixtures: the real fixture packages of tests/packages.py, built once per session."""
from __future__ import annotations

import pathlib
import sys

import pytest

TESTS = pathlib.Path(__file__).parent
sys.path.insert(0, str(TESTS))

import packages  # noqa: E402


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    dest = tmp_path_factory.mktemp("packages")
    for kind in packages.KINDS:
        packages.build_package(kind, dest)
    return dest


@pytest.fixture(scope="session")
def rdf(package_dir):
    """rdf("unet2d") -> path of that package's rdf.yaml."""
    return lambda kind: package_dir / kind / "rdf.yaml"


@pytest.fixture(scope="session")
def zipped(tmp_path_factory):
    dest = tmp_path_factory.mktemp("zips")
    return lambda kind: packages.build_package(kind, dest, zip=True) if not (dest / f"{kind}.zip").exists() else dest / f"{kind}.zip"


@pytest.fixture(scope="session")
def models(rdf):
    from biozoo.runtime import load

    cache: dict = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = load(rdf(kind), device="cpu")
        return cache[kind]

    return get


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BIOZOO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "biozoo-cache"))
