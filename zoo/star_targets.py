"""StarDist training targets from instance labels, and the StarDist loss.

- ``star_distances``: for every pixel of an object, the distance along ``n_rays`` equally spaced rays to the object's
  boundary, computed as stardist's C++ ``star_dist`` does (float32 steps of one pixel, ``lrint`` rounding, the
  half-pixel overshoot correction), vectorized over pixels and rays. Background pixels get 0. Ray k points at angle
  2*pi*k/n_rays from the +x axis towards +y (row), the convention the runtime's polygons use.
- ``object_probabilities``: per-object normalized Euclidean distance transform (1 at each object's most interior
  pixel, small at its border, 0 on background), StarDist's probability target. As in stardist, the image border
  is not a boundary, so a nucleus cut by it is not "all border".
- ``stardist_loss``: BCE on the probability logits + ``dist_weight`` * probability-weighted mean absolute error of
  the distances (StarDist's weighting: pixels deep inside objects count most), plus StarDist's tiny pull of
  background distances towards 0.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from biozoo.runtime import TrainingError


def _labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise TrainingError(f"StarDist targets need a 2D label image (Y, X); got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        if not np.array_equal(lab, np.round(lab)):
            raise TrainingError(f"label image has dtype {lab.dtype} with fractional values; expected integer "
                                "instance ids")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise TrainingError(f"label image has negative ids (min {lab.min()}); expected 0 = background, 1.. objects")
    return lab


def _window(lab: np.ndarray, window: Optional[Sequence[int]], grid: Sequence[int]) -> tuple[slice, slice]:
    """The slices of ``window`` = (top, left, height, width) (whole image: None); top and left on the grid."""
    if window is None:
        return slice(0, lab.shape[0]), slice(0, lab.shape[1])
    top, left, h, w = (int(v) for v in window)
    if top % grid[0] or left % grid[1] or min(top, left) < 0 or h <= 0 or w <= 0:
        raise TrainingError(f"target window {tuple(window)}: expected (top, left, height, width) inside the image "
                            f"with top and left multiples of the grid {tuple(grid)}")
    return slice(top, top + h), slice(left, left + w)


def star_distances(labels: np.ndarray, n_rays: int = 32, grid: Sequence[int] = (1, 1),
                   window: Optional[Sequence[int]] = None) -> np.ndarray:
    """(Y // gy, X // gx, n_rays) float32 ray lengths at the grid pixels (i * gy, j * gx), in full-resolution pixels.
    ``window`` = (top, left, height, width): only the grid pixels of that window (rays still run through the
    whole label image), as the same crop of the whole image's distances, at a fraction of the cost."""
    lab = _labels(labels)
    if n_rays < 3:
        raise TrainingError(f"n_rays must be >= 3, got {n_rays}")
    gy, gx = (int(g) for g in grid)
    wy, wx = _window(lab, window, (gy, gx))
    sub = lab[wy.start:wy.stop:gy, wx.start:wx.stop:gx]
    out = np.zeros(sub.shape + (n_rays,), np.float32)
    iy, ix = np.nonzero(sub)
    if not len(iy):
        return out
    py, px = (iy * gy + wy.start).astype(np.float32), (ix * gx + wx.start).astype(np.float32)
    value = sub[iy, ix]
    step = np.float32(2 * np.pi / n_rays)
    phi = step * np.arange(n_rays, dtype=np.float32)
    dy = np.cos(phi.astype(np.float64)).astype(np.float32)  # stardist's names: dy moves the row offset "x"
    dx = np.sin(phi.astype(np.float64)).astype(np.float32)
    H, W = lab.shape
    # march every (pixel, ray) one step at a time until it leaves its object; most stop within a few steps
    x = np.zeros((len(iy), n_rays), np.float32)
    y = np.zeros((len(iy), n_rays), np.float32)
    active = np.ones((len(iy), n_rays), bool)
    a_pix, a_ray = np.nonzero(active)
    corr = (np.float32(0.5) / np.maximum(np.abs(dx), np.abs(dy)) - np.float32(1)).astype(np.float32)
    while len(a_pix):
        xs = x[a_pix, a_ray] + dx[a_ray]
        ys = y[a_pix, a_ray] + dy[a_ray]
        x[a_pix, a_ray], y[a_pix, a_ray] = xs, ys
        ii = np.rint(py[a_pix] + xs).astype(np.int64)
        jj = np.rint(px[a_pix] + ys).astype(np.int64)
        inside = (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
        same = np.zeros(len(a_pix), bool)
        same[inside] = lab[ii[inside], jj[inside]] == value[a_pix[inside]]
        done = ~same
        if done.any():
            dp, dr = a_pix[done], a_ray[done]
            fx = xs[done] + corr[dr] * dx[dr]
            fy = ys[done] + corr[dr] * dy[dr]
            out[iy[dp], ix[dp], dr] = np.sqrt(fx * fx + fy * fy)
        a_pix, a_ray = a_pix[same], a_ray[same]
    return out


def object_probabilities(labels: np.ndarray, grid: Sequence[int] = (1, 1),
                         window: Optional[Sequence[int]] = None) -> np.ndarray:
    """(Y // gy, X // gx) float32 per-object normalized distance transform, sampled on the grid (stardist's
    ``edt_prob``: the image border is not a boundary, so a nucleus cut by it keeps high values there).
    ``window`` as in ``star_distances``: only the objects seen in it are transformed, its crop is returned."""
    from scipy import ndimage

    lab = _labels(labels)
    gy, gx = (int(g) for g in grid)
    wy, wx = _window(lab, window, (gy, gx))
    seen = None if window is None else set(np.unique(lab[wy, wx]).tolist())
    prob = np.zeros(lab.shape, np.float32)
    for index, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or (seen is not None and index not in seen):
            continue
        # one pixel around the object, where the image has one: other labels and background bound it there
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, lab.shape))
        mask = lab[sl] == index
        if mask.all():  # the object fills the image: assume background around it
            edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        else:
            edt = ndimage.distance_transform_edt(mask)
        prob[sl][mask] = edt[mask] / (edt[mask].max() + 1e-10)
    return np.ascontiguousarray(prob[wy.start:wy.stop:gy, wx.start:wx.stop:gx])


def stardist_targets(labels: np.ndarray, n_rays: int = 32, grid: Sequence[int] = (1, 1),
                     window: Optional[Sequence[int]] = None) -> np.ndarray:
    """(1 + n_rays, Y // gy, X // gx) float32: probability, then distances (the network output's layout); with
    ``window`` (top, left, height, width) only that crop of them (computed on the whole label image)."""
    prob = object_probabilities(labels, grid, window)
    dist = star_distances(labels, n_rays, grid, window)
    return np.concatenate([prob[None], np.moveaxis(dist, -1, 0)], axis=0)


def stardist_loss(prob_logits, dist_pred, target, dist_weight: float = 0.2, background_reg: float = 1e-4):
    """BCE(prob) + dist_weight * prob-weighted MAE(dist) (normalized by the mean weight) + background_reg * |dist| on
    background. ``prob_logits`` (B, 1, Y, X), ``dist_pred`` (B, n, Y, X), ``target`` (B, 1 + n, Y, X)."""
    import torch.nn.functional as F

    prob_true, dist_true = target[:, :1], target[:, 1:]
    bce = F.binary_cross_entropy_with_logits(prob_logits, prob_true)
    mae = (prob_true * (dist_pred - dist_true).abs()).mean() / (prob_true.mean() + 1e-7)
    reg = ((1 - prob_true) * dist_pred.abs()).mean()
    return bce + dist_weight * mae + background_reg * reg
