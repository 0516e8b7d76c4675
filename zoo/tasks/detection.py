"""`biozoo train` for task `detection`: labels -> split -> box patches -> CenterNet targets -> loop -> mAP.

Data: a folder with images/ and either masks/ (instance labels; YOLO labels are derived into labels/ once, and
re-derived when a mask changes) or labels/ (YOLO .txt, one per image stem). Training reads boxes back from the
label files, so the YOLO round trip is what trains.

Targets at the head's stride (CenterNet): per class a Gaussian heatmap with a 1 at each box's centre cell (focal
loss with the usual penalty reduction near centres), and the box itself at cells close to the centre (GIoU loss).
Boxes cut by a patch border keep being targets while ``min_visible`` of their area is inside; less visible ones
become "don't care" regions (no positive, no negative loss), so the net is never punished for seeing half a nucleus.

Run dir: what every run writes (tasks/base.py); test_metrics.json holds mAP50 / mAP50-95 on the held-out test
split beside the Otsu + connected-components baseline, and the post-processing the package should use (score
threshold = the best-F1 threshold at IoU 0.5 on the validation split unless the recipe fixes one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from biozoo.runtime import TrainingError

from .. import boxes as B
from ..config import DetectionRecipe
from ..detector import decode
from .base import Evaluation, SplitData, create_recipe_model, data_folder

LABELS_FORMAT = "biozoo-yolo-from-masks/1"
EVAL_SCORE_THRESHOLD = 0.01  # mAP is computed over (almost) all detections, as COCO does
EVAL_MAX_CANDIDATES = 3000  # per image, before NMS: bounds the cost of validating an untrained net
BOX_LOSS_WEIGHT = 2.0


# ---------------------------------------------------------------------------------------------- labels
def ensure_labels(folder: Path) -> Path:
    """``folder/labels``: derived from masks/ (recorded in labels.json, redone when a mask changed), or given."""
    import tifffile

    from ..data import list_files

    labels = folder / "labels"
    masks = folder / "masks"
    if not masks.is_dir():
        if not labels.is_dir():
            raise TrainingError(f"{folder} has neither masks/ (instance labels) nor labels/ (YOLO .txt per image); "
                                "detection needs one of them")
        return labels
    _, hashes = list_files(folder)
    record = labels / "labels.json"
    wanted = {"format": LABELS_FORMAT, "masks": {n: h["masks"] for n, h in sorted(hashes.items())}}
    if record.is_file() and json.loads(record.read_text()) == wanted:
        return labels
    for name in sorted(hashes):
        mask = np.asarray(tifffile.imread(masks / name))
        if mask.ndim != 2:
            raise TrainingError(f"{masks / name} has shape {mask.shape}; detection needs 2D (Y, X) instance masks")
        B.write_yolo(labels / f"{Path(name).stem}.txt", B.masks_to_boxes(mask), *mask.shape)
    record.write_text(json.dumps(wanted, indent=1) + "\n")
    return labels


def load_detection_data(folder: Path, names: Sequence[str], percentiles: tuple[float, float]
                        ) -> tuple[list[np.ndarray], list[B.Boxes]]:
    """Normalized images and their boxes (read from the YOLO label files)."""
    import tifffile

    from ..data import percentile_normalize

    labels = folder / "labels"
    images, truths = [], []
    for name in names:
        raw = np.squeeze(np.asarray(tifffile.imread(folder / "images" / name)))
        if raw.ndim != 2:
            raise TrainingError(f"{folder / 'images' / name} has shape {raw.shape}; the detector takes 2D grayscale")
        images.append(percentile_normalize(raw, *percentiles)[0])
        truths.append(B.read_yolo(labels / f"{Path(name).stem}.txt", *raw.shape))
    return images, truths


# ---------------------------------------------------------------------------------------------- patches
def augment_boxes(rng: np.random.Generator, image: np.ndarray, boxes: np.ndarray, intensity: float = 0.1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, rot90 (square patches) and intensity jitter of ``image`` [Y, X]; ``boxes`` [N, 4] follow."""
    h, w = image.shape
    b = boxes.copy()
    if rng.random() < 0.5:
        image, b = image[:, ::-1], np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    if rng.random() < 0.5:
        image, b = image[::-1], np.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], 1)
    if h == w:
        for _ in range(int(rng.integers(4))):  # np.rot90: pixel (r, c) -> (w - 1 - c, r)
            image, b = np.rot90(image), np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], 1)
    if intensity > 0:
        scale, shift = 1 + rng.uniform(-intensity, intensity), rng.uniform(-intensity, intensity)
        image = image * np.float32(scale) + np.float32(shift)
    return np.ascontiguousarray(image, np.float32), b.reshape(-1, 4).astype(np.float32)


def crop_boxes(boxes: B.Boxes, y0: int, x0: int, size: tuple[int, int], min_visible: float
               ) -> tuple[B.Boxes, np.ndarray]:
    """Boxes in crop coordinates, clipped: (kept targets, don't-care boxes [M, 4] seen less than ``min_visible``)."""
    h, w = size
    shifted = boxes.xyxy - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(shifted, 0, np.array([w, h, w, h], np.float32))
    area = B.box_area(shifted)
    visible = np.where(area > 0, B.box_area(clipped) / np.maximum(area, 1e-9), 0.0)
    keep = visible >= min_visible
    ignore = (visible > 0) & ~keep
    return B.Boxes(clipped[keep], boxes.classes[keep], boxes.scores[keep]), clipped[ignore]


def build_targets(boxes: B.Boxes, ignore: np.ndarray, shape: tuple[int, int], stride: int, num_classes: int
                  ) -> dict[str, np.ndarray]:
    """CenterNet targets on the ``shape // stride`` grid: ``heat`` [C, gy, gx], ``negative`` weights [gy, gx]
    (0 inside don't-care boxes), ``box`` [4, gy, gx] xyxy targets with their weights ``box_weight`` [gy, gx]."""
    gy, gx = shape[0] // stride, shape[1] // stride
    heat = np.zeros((num_classes, gy, gx), np.float32)
    negative = np.ones((gy, gx), np.float32)
    box = np.zeros((4, gy, gx), np.float32)
    box_weight = np.zeros((gy, gx), np.float32)
    ii, jj = np.mgrid[0:gy, 0:gx]
    cy, cx = (ii + 0.5) * stride, (jj + 0.5) * stride
    for x0, y0, x1, y1 in ignore:
        negative[(cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)] = 0
    for (x0, y0, x1, y1), c in zip(boxes.xyxy, boxes.classes):
        ci = min(max(int((y0 + y1) / 2 // stride), 0), gy - 1)
        cj = min(max(int((x0 + x1) / 2 // stride), 0), gx - 1)
        sigma = max(0.5, 0.15 * float(np.sqrt(max(x1 - x0, 1) * max(y1 - y0, 1))) / stride)
        g = np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * sigma**2)).astype(np.float32)
        heat[c] = np.maximum(heat[c], g)
        heat[c, ci, cj] = 1.0
        near = (g >= 0.5) & (g > box_weight)  # regress at the centre and its closest neighbours
        box[:, near] = np.array([x0, y0, x1, y1], np.float32)[:, None]
        box_weight[near] = g[near]
    return {"heat": heat, "negative": negative, "box": box, "box_weight": box_weight}


class BoxPatches:
    """Random square-or-not patches of normalized images with their targets; every random number comes from the
    training loop's torch Generator (exact resume), as in PatchDataset."""

    def __init__(self, images: Sequence[np.ndarray], truths: Sequence[B.Boxes], patch: Sequence[int], stride: int,
                 num_classes: int, min_visible: float, augment: bool = True) -> None:
        self.images, self.truths = list(images), list(truths)
        self.patch = (int(patch[0]), int(patch[1]))
        self.stride, self.num_classes, self.min_visible, self.augment = stride, num_classes, min_visible, augment
        for i, img in enumerate(self.images):
            if img.shape[0] < self.patch[0] or img.shape[1] < self.patch[1]:
                raise TrainingError(f"training image {i} is {img.shape[0]}x{img.shape[1]}, smaller than the patch "
                                    f"size {self.patch}; lower data.patch_size or use larger tiles")
        bad = [c for t in self.truths for c in t.classes.tolist() if c >= num_classes]
        if bad:
            raise TrainingError(f"labels use class id {max(bad)} but the recipe has {num_classes} class(es); list "
                                "every class under `classes:`")
        areas = np.array([img.size for img in self.images], np.float64)
        self.weights = torch.as_tensor(areas / areas.sum())

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        i = int(rng.choice(len(self.images), p=self.weights.numpy()))
        img, ph, pw = self.images[i], *self.patch
        y0, x0 = int(rng.integers(img.shape[0] - ph + 1)), int(rng.integers(img.shape[1] - pw + 1))
        kept, ignore = crop_boxes(self.truths[i], y0, x0, self.patch, self.min_visible)
        x = img[y0:y0 + ph, x0:x0 + pw]
        xyxy = np.concatenate([kept.xyxy, ignore])
        if self.augment:
            x, xyxy = augment_boxes(rng, x, xyxy)
        kept = B.Boxes(xyxy[:len(kept)], kept.classes, kept.scores)
        return x, build_targets(kept, xyxy[len(kept):], x.shape, self.stride, self.num_classes)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        seeds = torch.randint(0, 2**62, (batch_size,), generator=generator)
        items = [self.sample(np.random.default_rng(int(s))) for s in seeds]
        x = torch.from_numpy(np.stack([a for a, _ in items]))[:, None]
        return x, {k: torch.from_numpy(np.stack([t[k] for _, t in items])) for k in items[0][1]}


# ---------------------------------------------------------------------------------------------- loss
def detection_loss(maps: torch.Tensor, targets: dict[str, torch.Tensor], num_classes: int, stride: int
                   ) -> torch.Tensor:
    """Penalty-reduced focal loss on the heatmaps (CenterNet) + BOX_LOSS_WEIGHT x GIoU loss near centres."""
    logits = maps[:, :num_classes]
    heat = targets["heat"]
    p = torch.sigmoid(logits)
    pos = (heat >= 1).to(p.dtype)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    focal = -(pos * (1 - p) ** 2 * log_p + (1 - pos) * (1 - heat) ** 4 * p**2 * log_not_p
              * targets["negative"][:, None]).sum() / pos.sum().clamp(min=1)
    w = targets["box_weight"]
    if not bool((w > 0).any()):
        return focal
    boxes, _ = decode(maps, num_classes, stride)  # [B, N, 4]
    pred = boxes.reshape(-1, 4)[w.reshape(-1) > 0]
    true = targets["box"].flatten(2).transpose(1, 2).reshape(-1, 4)[w.reshape(-1) > 0]
    weights = w.reshape(-1)[w.reshape(-1) > 0]
    return focal + BOX_LOSS_WEIGHT * ((1 - giou(pred, true)) * weights).sum() / weights.sum()


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU of paired xyxy boxes [N, 4] -> [N]."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1), (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return inter / union.clamp(min=1e-6) - (hull - union) / hull.clamp(min=1e-6)


# ---------------------------------------------------------------------------------------------- prediction
def predict_maps(model: torch.nn.Module, image: np.ndarray, step: int) -> torch.Tensor:
    """Dense maps of a whole image, zero-padded at the high end to the model's size step (what the package does
    with config.biozoo.pad_mode: constant, after normalization)."""
    pad = [(0, (-n) % step) for n in image.shape]
    x = torch.from_numpy(np.pad(image, pad)[None, None].astype(np.float32))
    with torch.no_grad():
        return model(x)


def predict_boxes(model: torch.nn.Module, image: np.ndarray, step: int, num_classes: int, stride: int,
                  score_threshold: float, iou_threshold: float, max_detections: int) -> B.Boxes:
    """Decode + NMS (numpy, the graph's rule) for one image; boxes whose centre lies in the padding are dropped and
    the rest clipped to the image."""
    boxes, scores = decode(predict_maps(model, image, step), num_classes, stride)
    boxes, scores = boxes[0].numpy(), scores[0].numpy()  # [N, 4], [C, N]
    h, w = image.shape
    out = []
    for c in range(num_classes):
        cand = np.nonzero(scores[c] > score_threshold)[0]
        cand = cand[np.argsort(-scores[c, cand], kind="stable")[:EVAL_MAX_CANDIDATES]]
        keep = cand[B.nms(boxes[cand], scores[c, cand], iou_threshold)[:max_detections]]
        out.append(B.Boxes.make(boxes[keep], np.full(len(keep), c), scores[c, keep]))
    det = B.Boxes.make(np.concatenate([o.xyxy for o in out]), np.concatenate([o.classes for o in out]),
                       np.concatenate([o.scores for o in out]))
    det = det.subset(np.argsort(-det.scores, kind="stable")[:max_detections])  # the graph's capacity: all classes
    centre = (det.xyxy[:, :2] + det.xyxy[:, 2:]) / 2
    inside = (centre[:, 0] < w) & (centre[:, 1] < h)
    det = det.subset(inside)
    return B.Boxes(np.clip(det.xyxy, 0, np.array([w, h, w, h], np.float32)), det.classes, det.scores)


def best_f1_threshold(detections: Sequence[B.Boxes], truths: Sequence[B.Boxes]) -> tuple[float, float]:
    """(score threshold, F1 at IoU 0.5) maximizing F1 over the given images: the package's operating point."""
    best = (0.5, -1.0)
    for t in np.round(np.arange(0.05, 0.96, 0.05), 2):
        f1 = B.evaluate_detections([d.subset(d.scores > t) for d in detections], truths, thresholds=(0.5,))["f1_50"]
        if f1 > best[1]:
            best = (float(t), float(f1))
    return best


# ---------------------------------------------------------------------------------------------- the run
class DetectionTask:
    name = "detection"
    records_output_stride = True

    def prepare(self, recipe: DetectionRecipe) -> Path:
        """The data folder with its labels/ (derived from masks/ when given)."""
        if len(recipe.data.patch_size) != 2:
            raise TrainingError(f"data.patch_size {recipe.data.patch_size}: the detector is 2D; give two sizes, "
                                "e.g. [256, 256]")
        folder = data_folder(recipe)
        ensure_labels(folder)
        return folder

    def load(self, recipe: DetectionRecipe, folder: Path, split) -> SplitData:
        d = recipe.data
        train, val, test = (load_detection_data(folder, split.part(p), d.percentiles)
                            for p in ("train", "val", "test"))
        patches = BoxPatches(*train, d.patch_size, recipe.stride, len(recipe.classes), recipe.min_visible,
                             augment=d.augment)
        return SplitData(patches, train, val, test)  # truths: B.Boxes per image

    def build_model(self, recipe: DetectionRecipe, data: Optional[SplitData] = None) -> torch.nn.Module:
        return create_recipe_model(recipe, num_classes=len(recipe.classes), stride=recipe.stride)

    def objective(self, recipe: DetectionRecipe, data: SplitData, contract):
        nc, stride, step, val = len(recipe.classes), recipe.stride, contract.size_step, data.val

        def validate(model_) -> dict[str, float]:
            losses = []
            for x, t in zip(*val):
                maps = predict_maps(model_, x, step)
                targets = build_targets(t, np.zeros((0, 4)), tuple(n * stride for n in maps.shape[2:]), stride, nc)
                losses.append(detection_loss(maps, {k: torch.from_numpy(v)[None] for k, v in targets.items()}, nc,
                                             stride).item())
            m = B.evaluate_detections(_find(recipe, model_, val[0], step), val[1], thresholds=(0.5, 0.75))
            return {"val_loss": float(np.mean(losses)), "val_map50": m["mAP50"]}

        bs = recipe.training.batch_size
        return (lambda g: data.sampler.sample_batch(g, bs),
                lambda m_, b: detection_loss(m_(b[0]), b[1], nc, stride), validate)

    def evaluate(self, recipe: DetectionRecipe, model, data: SplitData, contract) -> Evaluation:
        """mAP50 / mAP50-95 on the test split beside Otsu + connected components, and the package's
        post-processing: score threshold = the best-F1 threshold at IoU 0.5 on val unless the recipe fixes one."""
        step, val, test = contract.size_step, data.val, data.test
        chosen_on = "fixed by the recipe"
        threshold = recipe.score_threshold
        if threshold is None:
            threshold, _ = best_f1_threshold(_find(recipe, model, val[0], step), val[1])
            chosen_on = "validation split: best F1 at IoU 0.5"
        test_det = _find(recipe, model, test[0], step)
        metrics = B.evaluate_detections(test_det, test[1], max_detections=recipe.max_detections)
        at = B.evaluate_detections([t.subset(t.scores > threshold) for t in test_det], test[1], thresholds=(0.5,))
        return Evaluation({
            **{k: metrics[k] for k in ("mAP50", "mAP50-95", "ap_per_iou", "ap50_per_class", "ground_truth", "images")},
            "at_score_threshold": {k: at[k] for k in ("precision50", "recall50", "f1_50", "detections")},
            "postprocessing": {"score_threshold": threshold, "score_threshold_chosen_on": chosen_on,
                               "iou_threshold": recipe.iou_threshold, "max_detections": recipe.max_detections,
                               "map_score_threshold": EVAL_SCORE_THRESHOLD},
            "baseline": _baseline(val, test),
        })

    def stats(self, recipe: DetectionRecipe, data: SplitData) -> dict[str, Any]:
        d, (images, truths) = recipe.data, data.train
        pixels = np.concatenate([x.ravel() for x in images])
        xyxy = np.concatenate([t.xyxy for t in truths]) if truths else np.zeros((0, 4))
        size = np.sqrt(np.prod(np.clip(xyxy[:, 2:] - xyxy[:, :2], 0, None), axis=1))  # geometric mean of w and h
        counts = np.bincount(np.concatenate([t.classes for t in truths]), minlength=len(recipe.classes))
        return {
            "normalization": {"percentiles": list(d.percentiles)},
            "normalized_intensity_percentiles": {str(q): float(np.percentile(pixels, q)) for q in (1, 50, 99)},
            "pixel_size": list(d.pixel_size) if d.pixel_size else None,
            "class_frequencies": {c: int(n) for c, n in zip(recipe.classes, counts)},
            "box_size": {"median_px": float(np.median(size)) if size.size else None,
                         "p95_px": float(np.percentile(size, 95)) if size.size else None, "count": int(size.size)},
            "sampling": {"images": len(images), "patch_size": list(d.patch_size), "min_visible": recipe.min_visible},
        }


def _find(recipe: DetectionRecipe, model: torch.nn.Module, images, step: int,
          score_threshold: float = EVAL_SCORE_THRESHOLD) -> list[B.Boxes]:
    return [predict_boxes(model, x, step, len(recipe.classes), recipe.stride, score_threshold, recipe.iou_threshold,
                          recipe.max_detections) for x in images]


def _baseline(val, test) -> dict[str, Any]:
    """Otsu threshold + 4-connected components -> boxes (score = mean intensity); min area tuned on val."""
    from ..metrics import otsu_threshold

    def run(images, min_area):
        return [B.threshold_boxes(x, otsu_threshold(x), min_area) for x in images]

    areas = (5, 10, 20, 40, 80, 160)
    best = max(areas, key=lambda a: B.evaluate_detections(run(val[0], a), val[1], thresholds=(0.5,))["mAP50"])
    m = B.evaluate_detections(run(test[0], best), test[1])
    return {"name": "otsu+connected-components", "min_area_chosen_on_val": best, "mAP50": m["mAP50"],
            "mAP50-95": m["mAP50-95"]}


PLUGINS = (DetectionTask(),)  # what biozoo.zoo.tasks registers from this module
