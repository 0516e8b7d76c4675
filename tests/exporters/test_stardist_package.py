"""A StarDist run end to end on synthetic nuclei: train -> run dir -> package -> bioimageio.core test_model and
`biozoo test` -> `biozoo predict` writes a label TIFF -> tiled prediction equals the whole-image one.

The data is synthetic (bright disks on a dark, noisy background) so that a tiny network finds them after a few
seconds of training; real nuclei are in test_stardist_real.py (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from biozoo.runtime import load
from biozoo.runtime.cli import main
from tests.exporters.tiny_runs import disks


@pytest.fixture(scope="module")
def run(tiny_run):
    out = tiny_run("stardist")
    return out, json.loads((out / "test_metrics.json").read_text()), out


@pytest.fixture(scope="module")
def package(exported):
    report, out = exported("stardist")
    assert report.test["status"] == "passed"
    return out


def test_run_dir_holds_thresholds_metrics_and_baseline(run):
    out, result, _ = run
    for name in ("recipe.yaml", "best.pt", "last.pt", "metrics.csv", "curves.png", "split.json", "stats.json",
                 "receptive_field.json", "test_metrics.json", "thresholds.json"):
        assert (out / name).is_file(), name
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["optimized_on"] == "validation split" and 0 < thresholds["prob_threshold"] < 1
    assert thresholds["nms_threshold"] in (0.3, 0.4, 0.5) and len(thresholds["searched"]) >= 18
    assert result["postprocessing"]["prob_threshold"] == thresholds["prob_threshold"]
    m = result["matching"]["0.5"]
    assert m["tp"] + m["fn"] == m["n_true"] > 0 and result["accuracy_iou50"] == m["accuracy"]
    assert result["baseline"]["name"] == "otsu+watershed" and "0.5" in result["baseline"]["matching"]
    assert json.loads((out / "receptive_field.json").read_text())["output_stride"] == 2
    assert result["accuracy_iou50"] >= 0.5  # separated disks: even seconds of training find most of them


@pytest.mark.parametrize("weight_format", ["onnx", "torchscript", "pytorch_state_dict"])
def test_package_passes_bioimageio_core_and_biozoo_test(package, weight_format, assert_package_passes):
    pytest.importorskip("stardist")  # bioimageio.core runs stardist_postprocessing with the stardist package
    assert_package_passes(package, weight_format=weight_format)  # one weight format per test_model call


def test_predict_writes_a_label_tiff(package, tmp_path, capsys):
    import tifffile

    image, lab = disks((100, 124), np.random.default_rng(7), 8)  # not a multiple of the size step
    tifffile.imwrite(tmp_path / "cells.tif", image)
    assert main(["predict", str(package), str(tmp_path / "cells.tif"), "-o", str(tmp_path / "out"),
                 "--axes", "yx"]) == 0
    written = list((tmp_path / "out").glob("*.tif"))
    assert len(written) == 1
    labels = np.squeeze(tifffile.imread(written[0]))
    assert labels.shape == (100, 124) and labels.dtype.kind in "iu"
    from biozoo.zoo.matching import match

    assert match(lab, labels.astype(np.int64), (0.5,))[0].tp >= 4


def test_tiled_prediction_neither_loses_nor_duplicates_border_objects(package):
    model = load(package, device="cpu")
    image, _ = disks((192, 224), np.random.default_rng(8), 40)
    whole = model.predict(image, axes="yx")
    tiled = model.predict(image, axes="yx", tile={"y": 64, "x": 64})
    np.testing.assert_array_equal(tiled, whole)
    assert whole.shape == (192, 224) and whole.max() >= 20
    # objects do straddle the cuts between the tiles' kept regions: the test means something
    from biozoo.runtime.engine.tiling import plan_tiles

    plan = plan_tiles(model.network, {"raw": (1, 1, 192, 224)}, {"y": 64, "x": 64})
    cuts = {p.axis_id: p.cuts[1:-1] for p in plan.tiled}
    assert plan.n_tiles > 4 and cuts["x"]
    shared = [np.setdiff1d(np.intersect1d(whole[:, c - 1], whole[:, c]), [0]) for c in cuts["x"]]
    shared += [np.setdiff1d(np.intersect1d(whole[c - 1], whole[c]), [0]) for c in cuts["y"]]
    assert sum(len(s) for s in shared) >= 3
