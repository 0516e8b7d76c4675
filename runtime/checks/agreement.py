"""How much two predictions of one region agree: instance labels, masks, probabilities or restored images.

The out-of-distribution check (checks/reliability.py) compares a prediction with the prediction of the same region
under a flip; these are its measures, each 1.0 for identical outputs and lower the more they differ:

- instance labels (integer outputs with more than one object id): the mean of the F1 of the objects matched at
  IoU >= 0.5 (as stardist.matching) and the foreground IoU (objects and their outlines). An IoU above 0.5 makes a
  match unique on both sides, so counting the pairs is the optimal matching (no assignment solver, no scipy); at
  exactly 0.5 an object can tie with two halves of itself, counted once. Objects cut by the region's border count
  as they are cut in both.
- masks and probabilities (boolean, {0, 1}, or float outputs the package marks as segmentation): IoU of the
  foreground (> 0.5 for floats); 1.0 when both are empty.
- other float outputs (restored images): 1 - mean |a - b| / (p99 - p1 of a), clipped to 0..1.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

Kind = Literal["labels", "mask", "image"]


def output_kind(y: np.ndarray, segmentation: bool) -> Kind:
    """What an output holds, for choosing its measure (`segmentation`: the package marks it as masks/labels)."""
    if y.dtype.kind in "iu" and y.max(initial=0) > 1:
        return "labels"
    if y.dtype.kind in "biu" or segmentation:
        return "mask"
    return "image"


def agreement(a: np.ndarray, b: np.ndarray, kind: Kind) -> float:
    if a.shape != b.shape:
        raise ValueError(f"agreement of arrays of shapes {a.shape} and {b.shape}")
    if kind == "labels":
        return instance_f1(a, b)
    if kind == "mask":
        return foreground_iou(a, b)
    return image_agreement(a, b)


def pooled(kind: Kind, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """One agreement over several regions: objects and pixels are counted over all of them, then the ratio taken
    (small regions with one cut object would otherwise swing a mean of per-region values)."""
    if kind == "labels":  # objects and their outlines: the mean halves the noise of either on ~100 objects
        counts = np.array([matched_objects(a, b) for a, b in pairs]).reshape(-1, 3).sum(axis=0)
        return (f1_of(int(counts[0]), int(counts[1]), int(counts[2])) + pooled("mask", pairs)) / 2
    if kind == "mask":
        inter = sum(int(np.count_nonzero(_foreground(a) & _foreground(b))) for a, b in pairs)
        union = sum(int(np.count_nonzero(_foreground(a) | _foreground(b))) for a, b in pairs)
        return 1.0 if union == 0 else inter / union
    weights = [a.size for a, _ in pairs]
    return float(np.average([image_agreement(a, b) for a, b in pairs], weights=weights)) if sum(weights) else 1.0


def _foreground(y: np.ndarray) -> np.ndarray:
    return y > 0.5 if y.dtype.kind == "f" else y != 0


def foreground_iou(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = _foreground(a), _foreground(b)
    union = int(np.count_nonzero(fa | fb))
    return 1.0 if union == 0 else int(np.count_nonzero(fa & fb)) / union


def instance_f1(a: np.ndarray, b: np.ndarray) -> float:
    """F1 of the objects of two label images matched at IoU >= 0.5 (0 = background)."""
    return f1_of(*matched_objects(a, b))


def f1_of(matched: int, n_a: int, n_b: int) -> float:
    return 1.0 if n_a + n_b == 0 else 2.0 * matched / (n_a + n_b)


def matched_objects(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """(objects matched at IoU >= 0.5, objects in a, objects in b): counts that pool over several regions."""
    if a.size == 0:
        return 0, 0, 0
    ids_a, la = np.unique(a.ravel(), return_inverse=True)
    ids_b, lb = np.unique(b.ravel(), return_inverse=True)
    # compact ids: 0 stays background when present, so object k of a is la == k (k >= 1)
    la = la + (0 if ids_a[0] == 0 else 1)
    lb = lb + (0 if ids_b[0] == 0 else 1)
    n_a, n_b = int(la.max(initial=0)), int(lb.max(initial=0))
    if n_a == 0 or n_b == 0:
        return 0, n_a, n_b
    area_a = np.bincount(la, minlength=n_a + 1)
    area_b = np.bincount(lb, minlength=n_b + 1)
    both = (la > 0) & (lb > 0)
    pairs, overlap = np.unique(la[both].astype(np.int64) * (n_b + 1) + lb[both], return_counts=True)
    pa, pb = pairs // (n_b + 1), pairs % (n_b + 1)
    iou = overlap / (area_a[pa] + area_b[pb] - overlap)
    hit = iou >= 0.5
    return min(np.unique(pa[hit]).size, np.unique(pb[hit]).size), n_a, n_b


def image_agreement(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    finite = np.isfinite(a64) & np.isfinite(b64)
    if not finite.any():
        return 1.0
    lo, hi = np.percentile(a64[finite], [1, 99])
    spread = max(float(hi - lo), 1e-12)
    return float(np.clip(1.0 - np.mean(np.abs(a64[finite] - b64[finite])) / spread, 0.0, 1.0))
