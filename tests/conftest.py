"""Shared fixtures: the real fixture packages of tests/packages.py, built once per session."""
from __future__ import annotations

import pathlib

import pytest

from tests import packages


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


# ---------------------------------------------------------------- real trained runs and packages (real nuclei data)
# Short trainings of the shipped recipes on the stardist wheel's real nuclei; each is trained at most once per session.
QUICK_BUDGET = {"epochs": 2, "steps_per_epoch": 3}


def _train(recipe_name: str, out, training: dict, data: dict | None = None):
    from biozoo.specs import recipe_path
    from biozoo.zoo.config import load_recipe
    from biozoo.zoo.train import train_recipe

    recipe = load_recipe(recipe_path(recipe_name))
    recipe = recipe.model_copy(update={"training": recipe.training.model_copy(update=training),
                                       "data": recipe.data.model_copy(update=data or {})})
    train_recipe(recipe, out, progress=False)
    return out


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """quick_run("care-nuclei-2d") -> run dir of that recipe trained for a few steps (for export plumbing tests)."""
    cache: dict = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            cache[name] = _train(name, tmp_path_factory.mktemp(f"run-{name}"), QUICK_BUDGET)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def real_unet_run(tmp_path_factory) -> pathlib.Path:
    """unet-nuclei-2d trained long enough to segment (foreground IoU ~0.9) on the stardist wheel's DSB image (cut
    into 128 px tiles; pinned here, whatever the recipe trains on, because the tests of the input checks use that
    image), with a NOMINAL pixel size of 0.5 um: the image carries no calibration, and the input checks need a
    recorded training pixel size."""
    return _train("unet-nuclei-2d", tmp_path_factory.mktemp("run-real-unet"),
                  {"epochs": 15, "steps_per_epoch": 20},
                  {"dataset": "stardist-nuclei-2d", "tile": 128, "pixel_size": (0.5, 0.5)})


@pytest.fixture(scope="session")
def real_unet_package(real_unet_run, tmp_path_factory) -> pathlib.Path:
    """The package (zip) exported from real_unet_run."""
    from biozoo.exporters import export_run

    out = tmp_path_factory.mktemp("real-unet-package") / "unet-nuclei-2d.zip"
    export_run(real_unet_run, out)
    return out


@pytest.fixture
def assert_package_passes(capsys):
    """assert_package_passes(package, weight_format=None): bioimageio.core's test_model says "passed" (for that weight
    format, or core's own choice), and so does `biozoo test --json` (ONNX)."""
    def check(package, weight_format=None) -> None:
        import json

        from bioimageio.core import test_model

        from biozoo.runtime.cli import main

        summary = test_model(str(package), weight_format=weight_format, devices=["cpu"])
        failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
        assert summary.status == "passed", failed
        capsys.readouterr()  # drop what bioimageio.core printed
        if weight_format not in (None, "onnx"):
            return  # biozoo runs the ONNX weights whatever the format core tested: once is enough
        assert main(["test", str(package), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["status"] == "passed"

    return check


# ---------------------------------------------------------------- a screen for napari tests (marker `napari`)
@pytest.fixture(scope="session")
def virtual_screen():
    """A display for Qt and napari's OpenGL canvas: the existing $DISPLAY, else an Xvfb started here (Qt's
    offscreen platform has no OpenGL context, so napari's canvas cannot draw there)."""
    import os
    import shutil
    import subprocess
    import time

    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.fail("the napari tests need a screen: no $DISPLAY and no Xvfb. Install Debian's xvfb (and Qt's xcb "
                    "libraries: libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 "
                    "libxcb-xinerama0 libxcb-randr0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0)")
    for number in range(90, 190):
        if not os.path.exists(f"/tmp/.X11-unix/X{number}") and not os.path.exists(f"/tmp/.X{number}-lock"):
            break
    process = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.environ["DISPLAY"], os.environ["QT_QPA_PLATFORM"] = f":{number}", "xcb"
    try:
        yield os.environ["DISPLAY"]
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def qapp_args(virtual_screen):
    """pytest-qt's QApplication arguments; depending on virtual_screen makes the screen exist before Qt starts."""
    return []


@pytest.fixture()
def no_baseline(monkeypatch):
    """The process's resident memory counted as 0: budgets mean bytes for tiles and whole-image arrays only (shared
    by the bounded-memory, masked, rescaled and OME-Zarr tests, so that none depends on what pytest holds)."""
    from biozoo.runtime.engine import memory

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)
