"""The detector: decoding, targets, box augmentation, in-graph NMS export (eager torch vs onnxruntime), training.

The dense-map contract (forward/backward/ONNX/tiling of detector2d_tiny) runs in test_contract.py and
tests/exporters/test_onnx_contract.py; here are the parts that are specific to boxes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tifffile
import torch
import torch.nn.functional as F

from biozoo.runtime import BiozooError, TrainingError
from biozoo.zoo import boxes as B
from biozoo.zoo import create_model
from biozoo.zoo.config import parse_recipe
from biozoo.zoo.detector import DetectorConfig, DetectorWithNMS, decode, export_detector_onnx, nms_indices
from tests.synthetic import blob_folder
from biozoo.zoo.tasks.detection import augment_boxes, build_targets, crop_boxes, ensure_labels, predict_boxes

torch.set_num_threads(2)


class PooledNet(torch.nn.Module):
    """Stand-in for a trained detector: objectness = a steep function of the local mean intensity (clear peaks;
    not so steep that sigmoid saturates into tied scores), distances from the other channels. Exports with the
    same decode and NMS as the real net."""

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.config = DetectorConfig(num_classes=num_classes, depth=2, stride=4, in_channels=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = F.avg_pool2d(x, 4)
        size = 0.6 + 0.3 * p.mean(1, keepdim=True)
        return torch.cat([6 * p - 3, size, size * 1.1, size * 0.9, size], 1)


def _blobs(shape, centres, channels=1, seed=0, half=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.02, (1, channels, *shape)).astype(np.float32)
    for k, (cy, cx) in enumerate(centres):
        x[0, k % channels, cy - half:cy + half, cx - half:cx + half] += 1.0 + 0.1 * k
    return x


def test_decode_places_boxes_around_cell_centres():
    maps = torch.full((1, 5, 3, 4), -10.0)
    maps[0, 0, 1, 2] = 3.0  # one peak, cell (1, 2): centre (x, y) = (10, 6) at stride 4
    maps[0, 1:, 1, 2] = torch.log(torch.tensor([2.0, 1.0, 0.5, 1.5]))  # distances 8, 4, 2, 6 pixels
    boxes, scores = decode(maps, num_classes=1, stride=4)
    assert boxes.shape == (1, 12, 4) and scores.shape == (1, 1, 12)
    i = 1 * 4 + 2
    np.testing.assert_allclose(boxes[0, i].numpy(), [10 - 8, 6 - 4, 10 + 2, 6 + 6], atol=1e-5)
    assert scores[0, 0, i] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    assert (scores[0, 0] > 0.01).sum() == 1  # the flat background is no object


def test_perfect_targets_decode_to_the_truth():
    truth = B.Boxes.make([[3, 5, 21, 19], [40, 30, 62, 64], [60, 2, 64, 10]], [0, 1, 0])
    t = build_targets(truth, np.zeros((0, 4)), (64, 72), stride=4, num_classes=2)
    assert t["heat"].shape == (2, 16, 18) and (t["heat"] == 1).sum() == 3
    maps = torch.full((1, 6, 16, 18), -20.0)
    maps[0, :2] = torch.from_numpy(np.where(t["heat"] == 1, 20.0, -20.0))
    gy, gx = np.mgrid[0:16, 0:18]
    centre = np.stack([(gx + 0.5) * 4, (gy + 0.5) * 4, (gx + 0.5) * 4, (gy + 0.5) * 4])
    dist = np.abs(t["box"] - centre) / 4
    maps[0, 2:] = torch.from_numpy(np.log(np.where(t["box_weight"] > 0, np.maximum(dist, 1e-3), 1.0)))
    boxes, scores = decode(maps, 2, 4)
    rows = nms_indices(boxes, scores, 100, 0.5, 0.5)
    found = sorted(boxes[0, rows[:, 2]].numpy().round(3).tolist())
    assert found == sorted(truth.xyxy.tolist())
    assert sorted(rows[:, 1].tolist()) == [0, 0, 1]


def test_dont_care_boxes_have_no_negative_loss_and_partial_boxes_follow_min_visible():
    truth = B.Boxes.make([[0, 0, 20, 20], [30, 30, 50, 50]])
    kept, ignore = crop_boxes(truth, y0=10, x0=14, size=(32, 32), min_visible=0.4)
    # box 1 keeps 6 x 10 of 20 x 20 (15%): don't care; box 2 keeps 16 x 12 (48%): kept, clipped
    assert ignore.tolist() == [[0, 0, 6, 10]]
    assert kept.xyxy.tolist() == [[16, 20, 32, 32]]
    t = build_targets(kept, ignore, (32, 32), 4, 1)
    # cells whose centre lies in the don't-care box [0, 6) x [0, 10): centres x = 2, y = 2 and 6
    assert np.argwhere(t["negative"] == 0).tolist() == [[0, 0], [1, 0]]


@pytest.mark.parametrize("seed", range(4))
def test_box_augmentation_matches_the_augmented_mask(seed):
    rng = np.random.default_rng(100 + seed)
    mask = np.zeros((48, 48), np.int32)
    for k in range(1, 6):
        y, x = rng.integers(0, 40, 2)
        mask[y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = k
    truth = B.masks_to_boxes(mask)
    image, moved = augment_boxes(np.random.default_rng(seed), mask.astype(np.float32), truth.xyxy, intensity=0.0)
    expected = B.masks_to_boxes(np.round(image).astype(np.int32))  # the same ids: same order
    np.testing.assert_allclose(moved, expected.xyxy)


@pytest.fixture(scope="module")
def pooled_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "pooled.onnx"
    module = DetectorWithNMS(PooledNet(num_classes=2), score_threshold=0.2, iou_threshold=0.3).eval()
    export_detector_onnx(module, torch.zeros(1, 2, 32, 32), path)
    return module, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), path


@pytest.mark.parametrize("shape,centres", [
    ((64, 96), [(12, 12), (14, 20), (40, 70), (50, 20), (30, 44), (33, 47)]),  # overlapping pairs: NMS decides
    ((96, 48), [(20, 20), (70, 30)]),
    ((32, 32), []),  # nothing above the score threshold: empty outputs
])
def test_in_graph_nms_matches_the_eager_reference(pooled_onnx, shape, centres):
    module, session, path = pooled_onnx
    x = _blobs(shape, centres, channels=2)
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(x))]
    got = session.run(None, {"raw": x})
    k = module.settings["max_detections"]
    assert [g.shape for g in got] == [e.shape for e in expected] == [(k, 4), (k,), (k,)]  # fixed capacity
    n = int(np.count_nonzero(got[1]))
    assert (n > 0) == bool(centres) and np.all(got[1][:n] > 0.2)  # the detections first, all above threshold
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[2].dtype == np.int64 and set(got[2][:n].tolist()) <= {1, 2}  # 1-based labels
    assert not (got[0][n:].any() or got[2][n:].any())  # padding rows: score, label and box all 0
    assert np.all(np.diff(got[1]) <= 0)  # sorted by decreasing score (padding last)
    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_tied_scores_give_one_order_in_torch_and_onnxruntime(pooled_onnx):
    """A flat image: every cell is a peak with the same score, NMS and sorting meet nothing but ties."""
    module, session, _ = pooled_onnx
    x = np.full((1, 2, 48, 64), 0.6, np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.from_numpy(x))]
    got = session.run(None, {"raw": x})
    assert np.count_nonzero(got[1]) > 10
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_exported_detector_runs_at_several_sizes_and_refuses_batches(tmp_path):
    torch.manual_seed(0)
    net = create_model("detector2d_tiny").eval()
    module = DetectorWithNMS(net, score_threshold=0.001)
    export_detector_onnx(module, torch.zeros(1, 1, 16, 16), tmp_path / "d.onnx")
    proto = onnx.load(str(tmp_path / "d.onnx"))
    assert proto.ir_version == 8 and [o.name for o in proto.graph.output] == ["boxes", "scores", "labels"]
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((16, 16), (24, 40), (56, 32)):
        boxes, scores, labels = session.run(None, {"raw": np.random.default_rng(1).random((1, 1, *shape), np.float32)})
        assert boxes.shape == (1000, 4) and scores.shape == labels.shape == (1000,)  # the default capacity
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output] == [[1000, 4], [1000],
                                                                                                [1000]]
    with pytest.raises(BiozooError, match="one image at a time"):
        module(torch.zeros(2, 1, 16, 16))
    with pytest.raises(BiozooError, match="one image"):
        export_detector_onnx(module, torch.zeros(2, 1, 16, 16), tmp_path / "x.onnx")


def _one_cell_blobs(shape, n: int, channels: int = 2) -> np.ndarray:
    """n blobs on a 16 px grid, each filling exactly one 4 x 4 cell of the stride-4 maps (one peak per blob, no
    tied neighbours), brightness 0.4 + 0.02 k: distinct, unsaturated PooledNet scores 0.35 .. 0.9."""
    x = np.random.default_rng(0).normal(0.0, 0.02, (1, channels, *shape)).astype(np.float32)
    cols = shape[1] // 16
    for k in range(n):
        y0, x0 = 16 * (k // cols) + 4, 16 * (k % cols) + 4
        x[0, k % channels, y0:y0 + 4, x0:x0 + 4] += 0.4 + 0.02 * k
    return x


@pytest.mark.parametrize("capacity", [1, 5, 12])
def test_capacity_keeps_the_best_rows_and_pads_the_rest_in_torch_and_onnxruntime(tmp_path, capacity):
    """K rows whatever the image holds: a crowded image (more objects than K) gives the K best of what an
    uncapped graph finds, a sparse one its detections then zeros, a blank one only zeros."""
    net = PooledNet(num_classes=2)
    graphs = {}
    for k in (capacity, 1000):
        module = DetectorWithNMS(net, score_threshold=0.2, iou_threshold=0.3, max_detections=k).eval()
        export_detector_onnx(module, torch.zeros(1, 2, 32, 32), tmp_path / f"k{k}.onnx")
        graphs[k] = module, ort.InferenceSession(str(tmp_path / f"k{k}.onnx"), providers=["CPUExecutionProvider"])
    crowded = _one_cell_blobs((96, 96), 25)
    sparse = _one_cell_blobs((96, 96), 1)
    blank = np.zeros((1, 2, 64, 64), np.float32)
    for name, x in (("crowded", crowded), ("sparse", sparse), ("blank", blank)):
        (module, session), (_, uncapped) = graphs[capacity], graphs[1000]
        got = session.run(None, {"raw": x})
        with torch.no_grad():
            eager = [t.numpy() for t in module(torch.from_numpy(x))]
        full = uncapped.run(None, {"raw": x})
        n_all = int(np.count_nonzero(full[1]))
        n = min(n_all, capacity)
        assert [g.shape for g in got] == [(capacity, 4), (capacity,), (capacity,)], name
        assert int(np.count_nonzero(got[1])) == n, name
        assert n_all == {"crowded": 25, "sparse": 1, "blank": 0}[name]  # what the blobs put there
        for g, e, f in zip(got, eager, full):  # the best K of the uncapped list, the same in torch
            np.testing.assert_allclose(g[:n], f[:n], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-4)
            assert not g[n:].any(), name  # padding: zeros


def test_predict_boxes_drops_boxes_found_in_the_padding():
    net = PooledNet()
    image = _blobs((30, 30), [(12, 12)], half=5)[0, 0]  # padded to 32 x 32: nothing new appears in 2 zero rows
    found = predict_boxes(net, image, step=16, num_classes=1, stride=4, score_threshold=0.5, iou_threshold=0.5,
                          max_detections=10)
    assert len(found) == 1 and np.all(found.xyxy[:, 2:] <= 30)
    centre = (found.xyxy[0, :2] + found.xyxy[0, 2:]) / 2
    np.testing.assert_allclose(centre, [12, 12], atol=4)


def test_labels_are_derived_once_and_redone_when_a_mask_changes(tmp_path):
    folder = blob_folder(tmp_path / "data", n=2, size=32)
    labels = ensure_labels(folder)
    first = (labels / "s00.txt").read_text()
    lab = tifffile.imread(folder / "masks" / "s00.tif")
    assert len(first.splitlines()) == len(np.unique(lab)) - 1
    stamp = (labels / "s00.txt").stat().st_mtime_ns
    ensure_labels(folder)
    assert (labels / "s00.txt").stat().st_mtime_ns == stamp  # unchanged masks: nothing rewritten
    lab[lab == 1] = 0
    tifffile.imwrite(folder / "masks" / "s00.tif", lab)
    ensure_labels(folder)
    assert len((labels / "s00.txt").read_text().splitlines()) == len(first.splitlines()) - 1


def test_yolo_labels_without_masks_are_used_as_given(tmp_path):
    import shutil

    from biozoo.zoo.tasks.detection import load_detection_data

    folder = blob_folder(tmp_path / "data", n=2, size=32)
    truth = B.masks_to_boxes(tifffile.imread(folder / "masks" / "s01.tif"))
    ensure_labels(folder)
    shutil.rmtree(folder / "masks")
    assert ensure_labels(folder) == folder / "labels"
    images, boxes = load_detection_data(folder, ["s00.tif", "s01.tif"], (1.0, 99.8))
    assert images[1].shape == (32, 32) and images[1].dtype == np.float32
    np.testing.assert_allclose(boxes[1].xyxy, truth.xyxy, atol=1e-3)
    shutil.rmtree(folder / "labels")
    with pytest.raises(TrainingError, match="neither masks/ .* nor labels/"):
        ensure_labels(folder)


def test_detection_recipe_checks():
    base = {"name": "d", "task": "detection", "model": {"name": "detector2d", "depth": 3},
            "data": {"dataset": "x", "patch_size": [64, 64]}}
    assert parse_recipe(base).stride == 4
    with pytest.raises(TrainingError, match=r"stride 16 must be a power of two <= 2\*\*model.depth = 8"):
        parse_recipe({**base, "stride": 16})
    with pytest.raises(TrainingError, match="iou_threshold"):
        parse_recipe({**base, "iou_threshold": 0})
