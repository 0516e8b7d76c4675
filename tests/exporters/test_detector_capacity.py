"""Detector packages with a fixed output capacity pass bioimageio.core's test_model whatever the image holds.

The packages are exported (export_run, the real exporter) from run folders around a detector2d_tiny whose weights
are set by hand, not trained, so what it finds is fixed by construction: objectness logit = GAIN x the 4 x 4 max of
the normalized image + BIAS (a path of identity convolutions through the U-Net to the output stride), boxes of a
fixed size around each cell centre. On a constant frame it finds nothing; on a frame of isolated one-pixel-peaked
blobs it finds one box per blob, scored by the blob's brightness. No training, so nothing here depends on what a
smoke run happens to learn on this CPU.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tifffile
import torch
import yaml

from biozoo.zoo.config import parse_recipe

GAIN, BIAS = 8.0, -4.0  # background (0) -> score 0.018, the brightest blob (1) -> 0.982; threshold 0.5
HALF_BOX = 3.0  # px from the cell centre to each box edge
SIZE = 160  # the test frame; bioimageio.core crops it to 120, 128 and 136 (the rdf's min 120, step 8)
BACKGROUND = 100


def _hand_set(net: torch.nn.Module) -> torch.nn.Module:
    """Zero every weight, then pass input channel 0 unchanged (3x3 centre taps) through the encoder, the skip into
    the decoder and the neck; max-pooling on the way gives each stride-4 cell the maximum of its 4 x 4 pixels."""
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        convs = [m for block in (*net.encoders, *net.decoders) for m in block.body if isinstance(m, torch.nn.Conv2d)]
        for conv in (*convs, net.neck[0]):
            conv.weight[0, 0, 1, 1] = 1.0  # channel 0 in (the decoder: the skip's channel 0) -> channel 0 out
        net.objectness.weight[0, 0] = GAIN
        net.objectness.bias[0] = BIAS
        net.distances.bias[:] = math.log(HALF_BOX / net.config.stride)
    return net.eval()


def _frame(peaks: list[tuple[int, int]], amplitudes: list[float]) -> np.ndarray:
    """uint16 frame: constant background plus Gaussian blobs (sigma 1.5 px) peaked on one pixel each; rounding
    makes each blob exactly 0 beyond ~6 px, so crops away from the blobs are truly constant."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.full((SIZE, SIZE), float(BACKGROUND))
    for (py, px), a in zip(peaks, amplitudes):
        image += a * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 1.5**2))
    return np.round(image).astype(np.uint16)


def _constructed_run(root: Path, image: np.ndarray, capacity: int) -> Path:
    """A finished `biozoo train` run folder (the files open_run needs) around the hand-set detector."""
    from biozoo.zoo.train import build_model

    data, run = root / "data", root / "run"
    (data / "images").mkdir(parents=True)
    run.mkdir()
    tifffile.imwrite(data / "images" / "frame.tif", image)
    recipe = parse_recipe({
        "name": "det-constructed", "task": "detection", "classes": ["blob"], "score_threshold": 0.5,
        "iou_threshold": 0.5, "max_detections": capacity,
        "model": {"name": "detector2d_tiny", "depth": 3, "base_channels": 2, "batch_norm": False},
        "data": {"dataset": str(data), "tile": None, "patch_size": [64, 64], "percentiles": [0.0, 100.0]}})
    net = _hand_set(build_model(recipe))
    torch.save(net.state_dict(), run / "best.pt")
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    contract = net.io_contract()  # the architecture's measured receptive field (conservative for these weights)
    files = {
        "split.json": {"manifest_hash": "constructed", "data": str(data), "train": [], "val": [],
                       "test": ["frame.tif"]},
        "stats.json": {"pixel_size": None},
        "receptive_field.json": {"receptive_field": contract.receptive_field, "halo": contract.halo},
        "test_metrics.json": {
            "recipe": recipe.name, "task": "detection", "note": "hand-set weights, not trained: no metrics",
            "mAP50": 0.0, "mAP50-95": 0.0, "split": {"train": 0, "val": 0, "test": 1},
            "postprocessing": {"score_threshold": 0.5, "score_threshold_chosen_on": "fixed by the recipe",
                               "iou_threshold": 0.5, "max_detections": capacity, "map_score_threshold": 0.05}},
    }
    for name, content in files.items():
        (run / name).write_text(json.dumps(content))
    return run


def _export(tmp_path: Path, image: np.ndarray, capacity: int):
    from biozoo.exporters import export_run

    report = export_run(_constructed_run(tmp_path, image, capacity), tmp_path / "det.zip", name="constructed")
    return report, tmp_path / "det.zip"


def _rdf(package: Path) -> tuple[dict, dict[str, bytes]]:
    import zipfile

    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml")), {n: z.read(n) for n in z.namelist() if n.endswith(".npy")}


def _npy(raw: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(raw))


def _graph(package: Path) -> ort.InferenceSession:
    import zipfile

    with zipfile.ZipFile(package) as z:
        return ort.InferenceSession(z.read("weights.onnx"), providers=["CPUExecutionProvider"])


def test_blank_inputs_give_all_padding_and_the_package_passes_core(tmp_path, assert_package_passes, capsys):
    """The regression: core feeds centre crops of the test frame; here they miss the four corner blobs, so the
    graph finds nothing there. With a data-dependent list that was a 0-length axis (core failed the package, the
    exporter refused it); now they are K rows of padding and the package passes."""
    corners = [(5, 5), (5, 154), (154, 5), (154, 154)]
    report, package = _export(tmp_path, _frame(corners, [1000, 950, 900, 850]), capacity=1000)
    rdf, tensors = _rdf(package)
    for out in rdf["outputs"]:
        assert out["axes"][0] == {"type": "index", "id": "detection", "size": 1000}  # fixed K, not data dependent
    detection = rdf["config"]["biozoo"]["detection"]
    assert detection["max_detections"] == 1000 and detection["padding"] == "rows with score 0"
    scores = _npy(tensors["test_scores.npy"])
    assert scores.shape == (1000,) and np.count_nonzero(scores) == 4  # one box per blob, then padding
    # the exporter's parity run saw the blank crops (what the old exporter refused) and torch agreed with ORT
    assert report.parity["boxes"]["boxes_found"][0] == 4 and report.parity["boxes"]["boxes_found"][1:] == [0, 0, 0]
    assert_package_passes(package)

    from biozoo.runtime import load
    from biozoo.runtime.cli import main

    blank = np.full((1, 1, 120, 120), 0.0, np.float32)  # a constant frame, normalized: all zeros
    raw = _graph(package).run(None, {"raw": blank})
    assert [r.shape for r in raw] == [(1000, 4), (1000,), (1000,)] and not any(r.any() for r in raw)
    model = load(package, device="cpu")
    frame = np.full((SIZE, SIZE), BACKGROUND, np.float32)
    out = model.predict(frame, axes="yx", skip_checks=["masked-normalization"])
    assert [v.shape for v in out.values()] == [(0, 4), (0,), (0,)]  # the API shows no padding row
    found = model.predict(_frame(corners, [1000, 950, 900, 850]).astype(np.float32), axes="yx")
    assert len(found["scores"]) == 4 and np.all(found["scores"] > 0.5)
    centres = (found["boxes"][:, :2] + found["boxes"][:, 2:]) / 2  # x, y; the box is around the peak's cell
    np.testing.assert_allclose(centres, [(px + 0.5, py + 0.5) for py, px in corners], atol=0.51)
    tifffile.imwrite(tmp_path / "blank.tif", frame)
    capsys.readouterr()
    assert main(["predict", str(package), str(tmp_path / "blank.tif"), "-o", str(tmp_path / "pred"),
                 "--no-check", "masked-normalization", "--json"]) == 0
    item = json.loads(capsys.readouterr().out)["items"][0]
    assert item["detections"]["count"] == 0 and Path(item["written"]["yolo"]).read_text() == ""
    assert json.loads(Path(item["written"]["json"]).read_text())["detections"] == []


def test_crowded_inputs_fill_the_capacity_with_the_best_boxes(tmp_path, assert_package_passes):
    """100 blobs, capacity 5: every output has 5 real rows, the 5 brightest blobs by decreasing score, on the
    test frame and on every crop core tries."""
    peaks = [(16 * i + 9, 16 * j + 9) for i in range(10) for j in range(10)]
    amplitudes = [1000.0 - 3 * k for k in range(len(peaks))]  # distinct: no tied scores anywhere
    order = np.random.default_rng(0).permutation(len(peaks))  # brightness not in raster order
    peaks = [peaks[i] for i in order]
    report, package = _export(tmp_path, _frame(peaks, amplitudes), capacity=5)
    assert report.parity["boxes"]["boxes_found"] == [5, 5, 5, 5]
    rdf, tensors = _rdf(package)
    assert [o["axes"][0]["size"] for o in rdf["outputs"]] == [5, 5, 5]
    boxes, scores = _npy(tensors["test_boxes.npy"]), _npy(tensors["test_scores.npy"])
    assert boxes.shape == (5, 4) and np.all(scores > 0.5) and np.all(np.diff(scores) < 0)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    np.testing.assert_allclose(centres, [(px + 0.5, py + 0.5) for py, px in peaks[:5]], atol=0.51)
    assert _npy(tensors["test_labels.npy"]).tolist() == [1] * 5
    assert_package_passes(package)


def test_a_test_frame_without_detections_is_refused_with_the_reason(tmp_path):
    """bioimageio.spec refuses all-~0 test tensors, and a frame without detections gives only padding (zeros):
    the exporter says so before writing anything (an empty crop elsewhere is fine, see above)."""
    from biozoo.runtime import ExportError

    with pytest.raises(ExportError, match="detects nothing on the first held-out test image.*lower score_threshold"):
        _export(tmp_path, _frame([], []), capacity=10)
    assert not (tmp_path / "det.zip").exists()
