"""Boxes in numpy: YOLO label files, instance masks -> boxes, IoU, greedy NMS, COCO-style mAP, and the baseline.

Conventions every caller must know:

- A box is ``(x_min, y_min, x_max, y_max)`` in pixel *edge* coordinates of the image (x = column): the pixel in
  column ``c`` spans ``[c, c + 1)``, so a mask covering columns 3..7 has ``x_min = 3, x_max = 8``. Width = x_max -
  x_min, no "+1" anywhere. The package's ``boxes`` output and the runtime's writers use the same convention.
- YOLO label files hold one object per line, ``cls xc yc w h``, centre and size normalized by the image width
  (x, w) and height (y, h), class ids from 0; an empty file is an image without objects.
- mAP follows COCO (pycocotools ``COCOeval``): per class and IoU threshold, detections of all images sorted by
  score, each matched greedily to the unmatched ground-truth box of highest IoU >= threshold, precision made
  monotone from the right and read at the 101 recall points 0, 0.01, ..., 1 (0 where the recall is never reached).
  mAP50 = mean over classes at IoU 0.5; mAP50-95 = mean over IoU 0.50, 0.55, ..., 0.95. Unlike COCO there is no
  area range and no 100-detections cap (a microscope frame often holds more than 100 nuclei): the cap is the
  caller's ``max_detections``.

Only numpy here: the runtime's writers and the trainer's metrics share these definitions without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from biozoo.runtime import InputError

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # COCO's 0.50:0.05:0.95
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Boxes:
    """Objects of one image: ``xyxy`` float32 [N, 4] (pixel edges), ``classes`` int64 [N], ``scores`` float32 [N]
    (1 for ground truth)."""

    xyxy: np.ndarray
    classes: np.ndarray
    scores: np.ndarray

    @staticmethod
    def make(xyxy, classes=None, scores=None) -> "Boxes":
        b = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(b)
        c = np.zeros(n, np.int64) if classes is None else np.asarray(classes, np.int64).reshape(n)
        s = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(n)
        return Boxes(b, c, s)

    def __len__(self) -> int:
        return len(self.xyxy)

    def subset(self, keep) -> "Boxes":
        return Boxes(self.xyxy[keep], self.classes[keep], self.scores[keep])


# ---------------------------------------------------------------------------------------------- YOLO label files
def format_yolo(boxes: Boxes, height: int, width: int) -> str:
    """YOLO text for ``boxes`` of an image of ``height`` x ``width`` pixels (6 decimals: < 1e-3 px at 1000 px)."""
    lines = []
    for (x0, y0, x1, y1), c in zip(boxes.xyxy.astype(np.float64), boxes.classes):
        xc, yc, w, h = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{int(c)} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_yolo(text: str, height: int, width: int, source: str = "labels") -> Boxes:
    """Boxes (pixel edges) from YOLO text; a malformed line raises an InputError naming the line and the fix."""
    xyxy, classes = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError(f"{len(parts)} fields")
            c = int(parts[0])
            xc, yc, w, h = (float(p) for p in parts[1:])
            if c < 0 or min(w, h) < 0 or not all(np.isfinite([xc, yc, w, h])):
                raise ValueError("negative class or size, or a non-finite number")
        except ValueError as e:
            raise InputError(f"{source}, line {number}: {line.strip()!r} is not a YOLO label ({e}); expected "
                             "'cls xc yc w h' with an integer class >= 0 and the box centre and size normalized "
                             "to 0..1 by the image width and height") from None
        classes.append(c)
        xyxy.append(((xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height))
    return Boxes.make(np.asarray(xyxy, np.float64).reshape(-1, 4), classes)


def write_yolo(path: Union[str, Path], boxes: Boxes, height: int, width: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(format_yolo(boxes, height, width))
    tmp.replace(path)


def read_yolo(path: Union[str, Path], height: int, width: int) -> Boxes:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label file '{path}' does not exist; every image needs a YOLO .txt of the same stem "
                         "(an empty file for an image without objects)")
    return parse_yolo(path.read_text(), height, width, str(path))


# ---------------------------------------------------------------------------------------------- masks -> boxes
def masks_to_boxes(labels: np.ndarray, class_id: int = 0) -> Boxes:
    """One box per instance id > 0 of a 2D label image (pixel edges), in increasing id order."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InputError(f"instance mask has shape {lab.shape}; expected a 2D (Y, X) label image")
    if lab.dtype.kind not in "iub":
        if not np.array_equal(lab, np.round(lab)):
            raise InputError(f"mask has dtype {lab.dtype} with fractional values; expected integer instance labels")
    lab = lab.astype(np.int64)
    ys, xs = np.nonzero(lab > 0)
    if ys.size == 0:
        return Boxes.make(np.zeros((0, 4)))
    ids, inverse = np.unique(lab[ys, xs], return_inverse=True)
    n = len(ids)
    y0 = np.full(n, np.iinfo(np.int64).max)
    x0 = y0.copy()
    y1 = np.full(n, -1)
    x1 = y1.copy()
    np.minimum.at(y0, inverse, ys)
    np.minimum.at(x0, inverse, xs)
    np.maximum.at(y1, inverse, ys)
    np.maximum.at(x1, inverse, xs)
    return Boxes.make(np.stack([x0, y0, x1 + 1, y1 + 1], 1), np.full(n, class_id))


# ---------------------------------------------------------------------------------------------- IoU and NMS
def box_area(xyxy: np.ndarray) -> np.ndarray:
    b = np.asarray(xyxy, np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes (0 where both are empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: Optional[np.ndarray] = None
        ) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, by decreasing score (ties: lower index first).

    A box is dropped when its IoU with an already kept box of the same class is > ``iou_threshold`` (ONNX
    NonMaxSuppression's rule, so this matches the package's in-graph NMS).
    """
    xyxy = np.asarray(xyxy, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    cls = np.zeros(len(xyxy), np.int64) if classes is None else np.asarray(classes)
    suppressed = np.zeros(len(xyxy), bool)
    keep = []
    for i in order:  # one IoU row per kept box, not the full matrix: thousands of weak candidates stay cheap
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= (box_iou(xyxy[i], xyxy)[0] > iou_threshold) & (cls == cls[i])
    return np.asarray(keep, np.int64)


# ---------------------------------------------------------------------------------------------- mAP
def _match_image(det: Boxes, gt: Boxes, cls: int, thresholds: Sequence[float], max_detections: Optional[int]):
    """COCO evaluateImg for one image and class: (scores [D], tp [T, D] bool, number of ground-truth boxes)."""
    d = det.subset(det.classes == cls)
    g = gt.subset(gt.classes == cls)
    order = np.argsort(-d.scores, kind="mergesort")[:max_detections]
    d = d.subset(order)
    iou = box_iou(d.xyxy, g.xyxy)
    tp = np.zeros((len(thresholds), len(d)), bool)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(g), bool)
        for i in range(len(d) if len(g) else 0):
            cand = np.where(taken, -1.0, iou[i])[::-1]  # reversed: ties go to the last box, as in COCOeval
            j = len(g) - 1 - int(np.argmax(cand))
            if iou[i, j] >= min(thr, 1 - 1e-10) and not taken[j]:
                taken[j] = True
                tp[t, i] = True
    return d.scores, tp, len(g)


def average_precision(tp: np.ndarray, n_truth: int) -> float:
    """COCO's 101-point interpolated AP for detections already sorted by score (``tp`` flags in that order)."""
    if n_truth == 0:
        return float("nan")
    tps = np.cumsum(tp, dtype=np.float64)
    fps = np.cumsum(~tp, dtype=np.float64)
    recall = tps / n_truth
    precision = tps / (tps + fps + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    reached = idx < len(precision)
    q[reached] = precision[idx[reached]]
    return float(np.mean(q))


def evaluate_detections(detections: Sequence[Boxes], truths: Sequence[Boxes],
                        thresholds: Sequence[float] = IOU_THRESHOLDS, max_detections: Optional[int] = None
                        ) -> dict:
    """mAP50, mAP50-95 and AP per IoU threshold (see the module docstring); images paired by position.

    Classes without ground truth are left out of the means (as in COCO); with no ground truth at all the mAPs are
    NaN. Also returns precision/recall/F1 at IoU 0.5 over all detections given (useful after a score threshold).
    """
    if len(detections) != len(truths):
        raise InputError(f"{len(detections)} detection sets for {len(truths)} ground-truth sets; pair them per image")
    classes = sorted(set(np.concatenate([t.classes for t in truths] + [np.zeros(0, np.int64)]).tolist()))
    per_class = {}
    for cls in classes:
        scores, flags, n_truth = [], [], 0
        for det, gt in zip(detections, truths):
            s, tp, n = _match_image(det, gt, cls, thresholds, max_detections)
            scores.append(s)
            flags.append(tp)
            n_truth += n
        all_scores = np.concatenate(scores)
        order = np.argsort(-all_scores, kind="mergesort")
        tp_all = np.concatenate(flags, axis=1)[:, order]
        per_class[cls] = [average_precision(tp_all[t], n_truth) for t in range(len(thresholds))]
    ap = np.array([per_class[c] for c in classes]).reshape(len(classes), len(thresholds))
    i50 = list(thresholds).index(0.5) if 0.5 in thresholds else 0
    n_det = sum(len(d) for d in detections)
    n_gt = sum(len(t) for t in truths)
    tp50 = sum(int(_match_image(d, g, c, [thresholds[i50]], max_detections)[1].sum())
               for d, g in zip(detections, truths) for c in classes)
    precision = tp50 / n_det if n_det else float("nan")
    recall = tp50 / n_gt if n_gt else float("nan")
    return {
        "mAP50": float(np.mean(ap[:, i50])) if classes else float("nan"),
        "mAP50-95": float(np.mean(ap)) if classes else float("nan"),
        "ap_per_iou": {f"{t:.2f}": float(np.mean(ap[:, k])) for k, t in enumerate(thresholds)} if classes else {},
        "ap50_per_class": {str(c): float(ap[k, i50]) for k, c in enumerate(classes)},
        "precision50": precision, "recall50": recall,
        "f1_50": 2 * precision * recall / (precision + recall) if n_det and n_gt and precision + recall > 0 else 0.0,
        "detections": n_det, "ground_truth": n_gt, "images": len(truths),
    }


# ---------------------------------------------------------------------------------------------- the baseline
def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a 2D boolean mask: int64 labels 1..n in raster order of first pixels, 0 outside.

    Union-find over horizontal runs (runs of consecutive rows that share a column belong together): the Python
    loop is over runs, not pixels, which is fast for blob-like masks such as thresholded nuclei.
    """
    fg = np.asarray(mask, bool)
    if fg.ndim != 2:
        raise InputError(f"mask has shape {fg.shape}; expected 2D")
    h, w = fg.shape
    edges = np.diff(np.pad(fg, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # same raster order as starts: one end per start
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(h + 1))  # runs of row r: first[r] .. first[r + 1] - 1
    for r in range(1, h):
        i, i_end = int(first[r - 1]), int(first[r])
        j, j_end = int(first[r]), int(first[r + 1])
        while i < i_end and j < j_end:  # two sorted run lists: union every overlapping pair
            if starts[i] < ends[j] and starts[j] < ends[i]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(len(rows))], np.int64)
    _, ids = np.unique(roots, return_inverse=True)  # roots are the first run of each component: raster order
    out = np.zeros((h, w), np.int64)
    lengths = ends - starts
    run_of_pixel = np.repeat(np.arange(len(rows)), lengths)
    cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    out[rows[run_of_pixel], cols] = ids[run_of_pixel] + 1
    return out


def threshold_boxes(image: np.ndarray, threshold: float, min_area: int = 10) -> Boxes:
    """The classical baseline: foreground = image > threshold, one box per 4-connected component of at least
    ``min_area`` pixels; score = the component's mean intensity (brighter = more confident)."""
    img = np.asarray(image, np.float64)
    lab = connected_components(img > threshold)
    if lab.max() == 0:
        return Boxes.make(np.zeros((0, 4)))
    areas = np.bincount(lab.ravel())
    sums = np.bincount(lab.ravel(), weights=img.ravel())
    boxes = masks_to_boxes(lab)
    ids = np.arange(1, lab.max() + 1)
    keep = areas[ids] >= min_area
    return Boxes.make(boxes.xyxy[keep], None, (sums[ids] / np.maximum(areas[ids], 1))[keep])
