"""Input checks on a real trained and exported U-Net (tests/conftest.py: real_unet_package, trained on the stardist
wheel's real nuclei at a nominal 0.5 um) with real images: the acceptance cases of issue 6.

- a black border over half of a real nuclei image: with masking the output in the valid region equals the output
  for the valid region alone (beyond the halo, within the package's tolerance); without it, it differs visibly;
- a 2x-upsampled copy of a held-out test tile: refused without --rescale; with it, foreground IoU >= 0.9 with the
  prediction on the original;
- the checks stay quiet on the clean held-out tiles, and fire on an inverted image and on a 3x-upscaled one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from biozoo.runtime import load
from biozoo.runtime.checks import InputWarning
from biozoo.runtime.engine.test_tensors import compare
from tests.runtime.test_cli import cli, one_json

OUT = "probabilities"  # softmax over background / foreground / boundary


@pytest.fixture(scope="module")
def model(real_unet_package):
    return load(real_unet_package, device="cpu")


@pytest.fixture(scope="module")
def test_tiles(real_unet_run):
    """The held-out test tiles of the run's split (never trained or validated on)."""
    split = json.loads((real_unet_run / "split.json").read_text())
    return [tifffile.imread(Path(split["data"]) / "images" / name) for name in split["test"]]


@pytest.fixture(scope="module")
def nuclei(real_unet_run):
    from biozoo.zoo.data import fetch_dataset

    return tifffile.imread(fetch_dataset("stardist-nuclei-2d") / "images" / "img2d.tif")  # cached by the training


def checks(prediction) -> dict:
    return {c["name"]: c for c in prediction.report.as_list()}


def foreground(probabilities: np.ndarray) -> np.ndarray:
    return probabilities[1] > 0.5


def iou(a, b) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_black_border_masked_normalization(model, nuclei):
    halo = max(a.halo for a in model.description.output(OUT).axes)
    tol = model.description.tolerance_for(OUT)
    image = nuclei.copy()
    image[:, :256] = 0  # the microscope blacked out the left half
    alone = model.predict(nuclei[:, 256:], "yx", pixel_size=0.5)
    on = model.predict_with_report(image, "yx", pixel_size=0.5)
    off = model.predict_with_report(image, "yx", pixel_size=0.5, skip_checks=["masked-normalization"])
    r = checks(on)["masked-normalization"]
    assert r["status"] == "warning" and r["excluded_fraction"] == pytest.approx(0.5, abs=0.01)
    inner = (slice(None), slice(None), slice(256 + halo, None))  # the valid region beyond the halo
    ref = alone[:, :, halo:]
    masked, unmasked = on.outputs[OUT][0], off.outputs[OUT][0]
    assert compare(masked[inner], ref, tol)["passed"]
    differs = compare(unmasked[inner], ref, tol)
    assert not differs["passed"] and differs["mismatched_per_million"] > 1e5  # over 10% of the values
    # visibly: the foreground of the whole valid half agrees with masking, much less without
    valid = (slice(None), slice(None), slice(256, None))
    with_mask = iou(foreground(masked[valid]), foreground(alone))
    assert with_mask >= 0.95 and iou(foreground(unmasked[valid]), foreground(alone)) < with_mask - 0.05
    assert np.all(masked[:, :, :256] == 0)


def test_upsampled_tile_refused_then_rescaled(model, test_tiles, tmp_path, real_unet_package):
    files = []
    for i, tile in enumerate(test_tiles):
        path = tmp_path / f"tile{i}_2x.tif"
        tifffile.imwrite(path, np.kron(tile, np.ones((2, 2), tile.dtype)), imagej=True, resolution=(4.0, 4.0),
                         metadata={"unit": "micron"})  # 0.25 um: twice the training resolution
        files.append(path)
    out = tmp_path / "out"
    proc = cli(tmp_path, "predict", real_unet_package, *files, "-o", out, ok=(2,))
    assert "0.25 x 0.25" in proc.stderr and "0.5 x 0.5" in proc.stderr and "--rescale" in proc.stderr
    assert not out.exists() or not any(out.iterdir())
    report = one_json(cli(tmp_path, "predict", real_unet_package, *files, "-o", out, "--rescale", "--json"))
    assert [c["status"] for c in report["checks"] if c["name"] == "pixel-size"] == ["ok", "ok"]
    for i, tile in enumerate(test_tiles):
        rescaled = tifffile.imread(out / f"tile{i}_2x.tif")
        assert rescaled.shape == (3, 256, 256)
        original = foreground(model.predict(tile, "yx", pixel_size=0.5))
        assert iou(foreground(rescaled), np.kron(original, np.ones((2, 2), bool))) >= 0.9


def test_quiet_on_clean_test_tiles(model, test_tiles):
    for tile in test_tiles:
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputWarning)
            p = model.predict_with_report(tile, "yx", pixel_size=0.5)
        statuses = {name: c["status"] for name, c in checks(p).items()}
        assert statuses == {"pixel-size": "ok", "masked-normalization": "ok", "batch-effects": "skipped",
                            "distribution-shift": "ok", "receptive-field": "ok", "out-of-distribution": "ok"}


def test_inverted_image_is_a_distribution_shift(model, nuclei):
    r = checks(model.predict_with_report(nuclei.max() - nuclei, "yx", pixel_size=0.5))["distribution-shift"]
    assert r["status"] == "warning" and r["max_deviation"] > 0.5


def test_upscaled_objects_flagged_by_the_receptive_field_check(model, nuclei):
    """3x larger nuclei without calibration: the pixel size is unknown (a warning), and the objects in the output are
    far from the training size (a net that sees only parts of its objects fragments them, or they are 3x larger)."""
    crop = nuclei[:170, :170]
    p = model.predict_with_report(np.kron(crop, np.ones((3, 3), crop.dtype)), "yx")
    found = checks(p)
    assert found["pixel-size"]["status"] == "warning" and "0.5 x 0.5" in found["pixel-size"]["message"]
    r = found["receptive-field"]
    assert r["status"] == "warning", r
    assert not 0.5 <= r["median_diameter_vs_training"] <= 2.0


def test_real_package_is_batch_independent(model):
    report = model.test()
    check = next(c for c in report["checks"] if c["name"] == "batch-independence")
    assert check["status"] == "ok" and report["status"] == "passed"
