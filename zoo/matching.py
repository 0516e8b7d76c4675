"""Instance segmentation metrics: match predicted to true objects at IoU thresholds with an optimal assignment.

For each threshold t a true and a predicted object can be matched when their IoU >= t; the assignment maximizes
first the number of matches and then their total IoU (``scipy.optimize.linear_sum_assignment``, as stardist's
``matching``). From the counts: precision tp / (tp + fp), recall tp / (tp + fn), accuracy tp / (tp + fp + fn)
(the "average precision" of the cell-segmentation challenges), F1, and panoptic quality = sum of matched IoUs /
(tp + fp / 2 + fn / 2). Over a dataset the counts and matched IoUs are summed first, then the ratios are taken.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from biozoo.runtime import BiozooError


@dataclass(frozen=True)
class Matching:
    threshold: float
    tp: int
    fp: int
    fn: int
    matched_iou_sum: float

    @property
    def n_true(self) -> int:
        return self.tp + self.fn

    @property
    def n_pred(self) -> int:
        return self.tp + self.fp

    def as_dict(self) -> dict[str, float]:
        tp, fp, fn = self.tp, self.fp, self.fn
        div = lambda a, b: float(a / b) if b else 0.0  # noqa: E731  (empty images: 0, as stardist)
        return {
            **{k: v for k, v in asdict(self).items() if k != "matched_iou_sum"},
            "precision": div(tp, tp + fp), "recall": div(tp, tp + fn), "accuracy": div(tp, tp + fp + fn),
            "f1": div(2 * tp, 2 * tp + fp + fn), "mean_matched_iou": div(self.matched_iou_sum, tp),
            "panoptic_quality": div(self.matched_iou_sum, tp + fp / 2 + fn / 2),
            "n_true": self.n_true, "n_pred": self.n_pred,
        }

    def __add__(self, other: "Matching") -> "Matching":
        if other.threshold != self.threshold:
            raise BiozooError(f"cannot add matchings at IoU {self.threshold} and {other.threshold}")
        return Matching(self.threshold, self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                        self.matched_iou_sum + other.matched_iou_sum)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU (n_true, n_pred) between the objects of two label images (ids in any order; 0 is background)."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise BiozooError(f"label images differ in shape: true {true.shape}, predicted {pred.shape}")
    for name, a in (("true", true), ("predicted", pred)):
        if a.dtype.kind not in "iub" or (a.size and a.min() < 0):
            raise BiozooError(f"{name} labels must be non-negative integers (0 = background); got dtype {a.dtype}")
    t_ids, t = np.unique(true, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    overlap = np.bincount(t * len(p_ids) + p, minlength=len(t_ids) * len(p_ids)).reshape(len(t_ids), len(p_ids))
    t_keep, p_keep = t_ids != 0, p_ids != 0
    inter = overlap[t_keep][:, p_keep].astype(np.float64)
    area_t, area_p = overlap.sum(1)[t_keep], overlap.sum(0)[p_keep]
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5,)) -> list[Matching]:
    """One ``Matching`` per IoU threshold for one image."""
    from scipy.optimize import linear_sum_assignment

    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    out = []
    for thr in thresholds:
        if not 0 < thr <= 1:
            raise BiozooError(f"IoU threshold {thr} must be in (0, 1]")
        if n_true == 0 or n_pred == 0:
            out.append(Matching(float(thr), 0, n_pred, n_true, 0.0))
            continue
        ok = iou >= thr
        # more matches first, then more IoU: a match is worth 1, all the IoUs together add less than 1/2
        cost = -(ok + ok * iou / (2 * min(n_true, n_pred)))
        rows, cols = linear_sum_assignment(cost)
        hits = ok[rows, cols]
        tp = int(hits.sum())
        out.append(Matching(float(thr), tp, n_pred - tp, n_true - tp, float(iou[rows, cols][hits].sum())))
    return out


def match_dataset(trues: Iterable[np.ndarray], preds: Iterable[np.ndarray],
                  thresholds: Sequence[float] = (0.5,)) -> list[Matching]:
    """Counts summed over all image pairs, per threshold."""
    total = None
    for t, p in zip(trues, preds, strict=True):
        per = match(t, p, thresholds)
        total = per if total is None else [a + b for a, b in zip(total, per)]
    return total if total is not None else [Matching(float(t), 0, 0, 0, 0.0) for t in thresholds]


def metrics_table(matchings: Sequence[Matching]) -> dict[str, dict[str, float]]:
    """``{"0.5": {...}, ...}`` for test_metrics.json."""
    return {f"{m.threshold:g}": m.as_dict() for m in matchings}
