"""biozoo.zoo.boxes: YOLO label files, masks -> boxes, IoU, NMS, COCO-style mAP, connected components (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from biozoo.runtime import InputError
from biozoo.zoo import boxes as B


def _gt(*xyxy, classes=None) -> B.Boxes:
    return B.Boxes.make(np.array(xyxy, np.float32).reshape(-1, 4), classes)


def _det(xyxy, scores, classes=None) -> B.Boxes:
    return B.Boxes.make(np.array(xyxy, np.float32).reshape(-1, 4), classes, scores)


def test_yolo_text_round_trip_and_pixel_edges(tmp_path):
    boxes = _gt([3, 10, 8, 30], [0, 0, 100, 50], classes=[2, 0])
    text = B.format_yolo(boxes, 50, 100)
    assert text.splitlines()[0] == "2 0.055000 0.400000 0.050000 0.400000"  # centre (5.5, 20) of 100 x 50
    B.write_yolo(tmp_path / "a.txt", boxes, 50, 100)
    back = B.read_yolo(tmp_path / "a.txt", 50, 100)
    np.testing.assert_allclose(back.xyxy, boxes.xyxy, atol=1e-3)
    assert back.classes.tolist() == [2, 0]
    B.write_yolo(tmp_path / "empty.txt", B.Boxes.make(np.zeros((0, 4))), 50, 100)
    assert (tmp_path / "empty.txt").read_text() == "" and len(B.read_yolo(tmp_path / "empty.txt", 50, 100)) == 0


@pytest.mark.parametrize("line,why", [("0 0.5 0.5 0.1", "4 fields"), ("a 0.5 0.5 0.1 0.1", "invalid literal"),
                                      ("-1 0.5 0.5 0.1 0.1", "negative"), ("0 0.5 nan 0.1 0.1", "non-finite")])
def test_malformed_yolo_lines_name_the_line(line, why):
    with pytest.raises(InputError, match=rf"f.txt, line 2: .*{why}.*'cls xc yc w h'"):
        B.parse_yolo("0 0.5 0.5 0.1 0.1\n" + line, 10, 10, "f.txt")
    with pytest.raises(InputError, match="does not exist"):
        B.read_yolo("/nonexistent/labels.txt", 10, 10)


def test_masks_to_boxes_uses_pixel_edges_and_id_order():
    lab = np.zeros((20, 30), np.uint16)
    lab[2:5, 3:8] = 7  # rows 2..4, columns 3..7
    lab[10:20, 0:1] = 2
    lab[0, 29] = 9
    b = B.masks_to_boxes(lab, class_id=1)
    assert b.xyxy.tolist() == [[0, 10, 1, 20], [3, 2, 8, 5], [29, 0, 30, 1]]
    assert b.classes.tolist() == [1, 1, 1]
    assert len(B.masks_to_boxes(np.zeros((4, 4), int))) == 0
    with pytest.raises(InputError, match="fractional"):
        B.masks_to_boxes(np.full((3, 3), 0.5))


def test_iou_by_hand():
    iou = B.box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(iou[0], [50 / 150, 1.0, 0.0, 0.0])


def _brute_force_nms(xyxy, scores, thr, classes):
    """The textbook definition, one pair at a time: the reference for the vectorized version."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(classes[i] != classes[k] or B.box_iou(xyxy[i], xyxy[k])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 60, (80, 2))
    wh = rng.uniform(5, 25, (80, 2))
    xyxy = np.concatenate([xy, xy + wh], 1)
    scores = rng.random(80).round(2)  # rounded: ties must keep the lower index first
    classes = rng.integers(0, 2, 80)
    for thr in (0.3, 0.5, 0.7):
        assert B.nms(xyxy, scores, thr, classes).tolist() == _brute_force_nms(xyxy, scores, thr, classes)


def test_map_hand_countable_cases():
    truth = [_gt([0, 0, 10, 10], [20, 20, 30, 30])]
    perfect = B.evaluate_detections([_det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8])], truth)
    assert perfect["mAP50"] == pytest.approx(1.0) and perfect["mAP50-95"] == pytest.approx(1.0)
    # a false positive ranked last does not lower AP (precision is read where each recall is first reached)
    fp_last = B.evaluate_detections([_det([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.1])],
                                    truth)
    assert fp_last["mAP50"] == pytest.approx(1.0)
    assert fp_last["precision50"] == pytest.approx(2 / 3) and fp_last["recall50"] == pytest.approx(1.0)
    # ranked first: precision 1/2 then 2/3; the interpolated (right-maximum) precision is 2/3 at every recall
    fp_first = B.evaluate_detections([_det([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.95, 0.9, 0.8])],
                                     truth)
    assert fp_first["mAP50"] == pytest.approx(2 / 3)
    # one of two missed: recall 0.5 is reached, so 51 of the 101 recall points (0, 0.01, ..., 0.5) have precision 1
    miss = B.evaluate_detections([_det([[0, 0, 10, 10]], [0.9])], truth)
    assert miss["mAP50"] == pytest.approx(51 / 101)
    none = B.evaluate_detections([_det(np.zeros((0, 4)), [])], truth)
    assert none["mAP50"] == 0.0 and none["f1_50"] == 0.0


def test_map50_95_counts_iou_thresholds_and_duplicates():
    # IoU 0.8 with the truth: a true positive at 0.50..0.80 (7 of the 10 thresholds), a miss above
    truth = [_gt([0, 0, 10, 10])]
    shifted = B.evaluate_detections([_det([[0, 0, 10, 8]], [0.9])], truth)
    assert shifted["mAP50"] == pytest.approx(1.0)
    assert shifted["mAP50-95"] == pytest.approx(7 / 10)
    assert shifted["ap_per_iou"]["0.80"] == pytest.approx(1.0) and shifted["ap_per_iou"]["0.85"] == 0.0
    # a duplicate of a matched box is a false positive (each truth box matches once)
    dup = B.evaluate_detections([_det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])], truth)
    assert dup["mAP50"] == pytest.approx(1.0) and dup["precision50"] == pytest.approx(0.5)


def test_map_is_pooled_over_images_and_averaged_over_classes():
    truths = [_gt([0, 0, 10, 10], classes=[0]), _gt([0, 0, 10, 10], [30, 30, 40, 40], classes=[0, 1])]
    dets = [_det([[0, 0, 10, 10]], [0.9], [0]), _det([[0, 0, 10, 10], [60, 60, 70, 70]], [0.8, 0.7], [0, 1])]
    m = B.evaluate_detections(dets, truths)
    # class 0: both found -> 1.0; class 1: its only detection is wrong -> 0.0
    assert m["ap50_per_class"] == {"0": pytest.approx(1.0), "1": 0.0}
    assert m["mAP50"] == pytest.approx(0.5)
    with pytest.raises(InputError, match="pair them per image"):
        B.evaluate_detections(dets, truths[:1])


@pytest.mark.parametrize("seed", range(3))
def test_connected_components_match_scipy(seed):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((90, 130)), 1.5 + seed) > 0.5
    expected, n = ndimage.label(mask)  # 4-connectivity, raster order: the same labels exactly
    np.testing.assert_array_equal(B.connected_components(mask), expected)
    assert n > 3


def test_threshold_baseline_boxes_bright_blobs():
    img = np.zeros((40, 60), np.float32)
    img[5:15, 10:20] = 1.0
    img[30:33, 40:50] = 0.5
    img[0, 0] = 1.0  # one pixel: below min_area
    found = B.threshold_boxes(img, 0.25, min_area=5)
    assert found.xyxy.tolist() == [[10, 5, 20, 15], [40, 30, 50, 33]]
    np.testing.assert_allclose(found.scores, [1.0, 0.5])
