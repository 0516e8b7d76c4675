"""A detection run end to end on synthetic blobs: train -> run dir -> export -> bioimageio.core test_model ->
biozoo test / predict (box files). The real-data acceptance run is the slow test at the bottom."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from biozoo.zoo.config import parse_recipe

from tests.synthetic import blob_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, Path]:
    from biozoo.zoo.train import train_recipe

    root = tmp_path_factory.mktemp("detection")
    folder = blob_folder(root / "data", n=8, size=96)
    recipe = parse_recipe({
        "name": "det-smoke", "task": "detection", "classes": ["blob"],
        "model": {"name": "detector2d_tiny", "depth": 3, "base_channels": 4, "batch_norm": True},
        "data": {"dataset": str(folder), "tile": None, "patch_size": [64, 64], "fractions": [0.5, 0.25, 0.25]},
        "training": {"epochs": 6, "steps_per_epoch": 5, "batch_size": 4, "lr": 0.01, "early_stopping": None,
                     "threads": 1}})  # one thread: a tiny net on a shared machine is faster without thread sync
    threads = torch.get_num_threads()
    try:
        result = train_recipe(recipe, root / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "run", result, folder


def test_training_writes_a_complete_run_dir(run):
    out, result, folder = run
    for name in ("recipe.yaml", "best.pt", "last.pt", "metrics.csv", "curves.png", "split.json", "stats.json",
                 "receptive_field.json", "test_metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert 0 <= metrics["mAP50-95"] <= metrics["mAP50"] <= 1 and metrics["ground_truth"] > 0
    assert 0 <= metrics["baseline"]["mAP50"] <= 1 and metrics["split"] == {"train": 4, "val": 2, "test": 2}
    assert 0 < metrics["postprocessing"]["score_threshold"] < 1
    assert "val_map50" in (out / "metrics.csv").read_text().splitlines()[0]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["class_frequencies"]["blob"] > 0 and stats["box_size"]["median_px"] > 4
    assert json.loads((out / "receptive_field.json").read_text())["output_stride"] == 4
    assert sorted(p.name for p in (folder / "labels").glob("*.txt")) == sorted(
        p.stem + ".txt" for p in (folder / "images").glob("*.tif"))


def test_export_passes_bioimageio_core_and_biozoo_and_predict_writes_box_files(run, tmp_path, capsys,
                                                                             assert_package_passes):

    from biozoo.exporters import export_run
    from biozoo.runtime import load
    from biozoo.runtime.cli import main

    out, _, folder = run
    report = export_run(out, tmp_path / "det.zip", name="detector smoke test")
    assert report.test["status"] == "passed" and report.parity["boxes"]["passed"]
    assert_package_passes(tmp_path / "det.zip")
    model = load(tmp_path / "det.zip", device="cpu")
    assert model.description.config["biozoo"]["detection"]["classes"] == ["blob"]
    assert [t.id for t in model.description.outputs] == ["boxes", "scores", "labels"]
    image = sorted((folder / "images").glob("*.tif"))[0]
    capsys.readouterr()  # what bioimageio.core logged
    assert main(["predict", str(tmp_path / "det.zip"), str(image), "-o", str(tmp_path / "pred"), "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["items"][0]
    assert {Path(p).suffix for p in item["written"].values()} == {".txt", ".csv", ".json"}
    record = json.loads(Path(item["written"]["json"]).read_text())
    assert record["count"] == item["detections"]["count"] == len(Path(item["written"]["yolo"]).read_text().splitlines())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_shipped_recipe_detects_real_nuclei(tmp_path, assert_package_passes):
    """Acceptance: yolo-nuclei-2d on the real HeLa frames, held-out test split: mAP50 >= 0.80 and above the
    Otsu + connected-components baseline; the package passes bioimageio.core and biozoo test, predict writes boxes."""

    from biozoo.exporters import export_run
    from biozoo.specs import recipe_path
    from biozoo.zoo.train import train_recipe

    start = time.perf_counter()
    result = train_recipe(recipe_path("yolo-nuclei-2d"), tmp_path / "run", progress=False)
    print(f"yolo-nuclei-2d: {time.perf_counter() - start:.0f} s, mAP50 {result['mAP50']:.3f}, "
          f"mAP50-95 {result['mAP50-95']:.3f}, baseline {result['baseline']}")
    assert result["ground_truth"] >= 300  # enough held-out objects for a meaningful mAP
    assert result["mAP50"] >= 0.80
    assert result["mAP50"] > result["baseline"]["mAP50"]
    report = export_run(tmp_path / "run", tmp_path / "yolo.zip")
    assert report.test["status"] == "passed"
    assert_package_passes(tmp_path / "yolo.zip")
