"""StarDist post-processing: candidates -> greedy polygon NMS -> label image; the `stardist_postprocessing` op.

Same result as stardist's reference (``stardist.non_maximum_suppression`` + ``polygons_to_label``, which is what
bioimageio.core runs) on the same maps, without stardist, numba or a C++ build:

- Candidates: ``prob > prob_threshold`` outside a border of ``b`` grid pixels, ordered exactly as stardist orders
  them (``np.argsort(scores)[::-1]``, ties included), scaled to full-resolution positions by ``grid``.
- Overlap as stardist's C++ computes it: the polygon vertices are computed in float32 and truncated to integers
  (Clipper's integer points), areas are those of the integer polygons, overlap = intersection / smaller area in
  float32, and candidate j is suppressed when a kept candidate i before it has overlap > nms_threshold. Pairs are
  prefiltered by the same centre radius and bounding boxes.
- Intersection areas are computed exactly (crossings of edges + winding, Green's theorem; only the few edges of
  the kept polygon in the angular window of each edge are tested): compiled with numba when it is installed
  (``stardist_jit``, 2x faster than stardist's C++ NMS), else vectorized with numpy over all candidates near a
  kept polygon (``polygon_overlap``). Clipper rounds intersection points to integers, so its area differs from the
  exact one by a bounded amount; a pair whose exact overlap lies within that bound of the threshold (rare) is
  recomputed with pyclipper (the same Clipper library), which makes the kept sets identical.
- Rendering matches ``skimage.draw.polygon`` (pixel centres by its crossing rule) and stardist's draw order (higher
  probability painted last, label = rank in the NMS output + 1).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence, Union

import numpy as np

from ..errors import PackageError
from .base import Op
from .polygon_overlap import StarPolygons

log = logging.getLogger("biozoo")
Border = Union[int, Sequence[Sequence[int]], None]


# ---- candidates and polygons -----------------------------------------------------------------------------------
def candidates(prob: np.ndarray, dist: np.ndarray, prob_threshold: float, b: Border = 2,
               grid: Sequence[int] = (1, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 2) full-resolution yx, scores (N,), dist (N, n_rays)) above threshold, best first, in stardist's
    order."""
    mask = prob > prob_threshold
    if b is not None:
        borders = ((b, b),) * prob.ndim if np.isscalar(b) else b
        inner = np.zeros_like(mask)
        inner[tuple(slice(lo if lo > 0 else None, -hi if hi > 0 else None) for lo, hi in borders)] = True
        mask &= inner
    points = np.stack(np.where(mask), axis=1)
    scores, d = prob[mask], dist[mask]
    order = np.argsort(scores)[::-1]  # stardist's exact call: equal scores keep its order
    return points[order] * np.asarray(grid).reshape(1, 2), scores[order], d[order]


# ---- greedy suppression ---------------------------------------------------------------------------------------------
def _clipper_area(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area as stardist's C++ gets it from Clipper (a = clip, b = subject; invalid paths are dropped)."""
    import pyclipper

    pc = pyclipper.Pyclipper()
    for path, kind in ((a, pyclipper.PT_CLIP), (b, pyclipper.PT_SUBJECT)):
        try:
            pc.AddPath(path.tolist(), kind, True)
        except pyclipper.ClipperException:
            pass
    try:
        result = pc.Execute(pyclipper.CT_INTERSECTION, pyclipper.PFT_NONZERO, pyclipper.PFT_NONZERO)
    except pyclipper.ClipperException:
        return 0.0
    return float(np.float32(sum(abs(pyclipper.Area(r)) for r in result)))


@functools.lru_cache(maxsize=1)  # warn once per process
def _have_pyclipper() -> bool:
    try:
        import pyclipper  # noqa: F401
    except ImportError:
        log.warning("pyclipper is not installed: StarDist NMS uses exact polygon overlaps, which can differ from "
                    "stardist's (Clipper-rounded) ones for pairs right at the threshold; pip install pyclipper")
        return False
    return True


def _jit() -> Any:
    try:
        from . import stardist_jit
    except ImportError:  # numba is optional: the vectorized numpy path gives the same result
        return None
    return stardist_jit


def suppress(points: np.ndarray, dist: np.ndarray, nms_thresh: float, engine: str = "auto") -> np.ndarray:
    """Keep-mask of candidates (best first) after stardist's greedy NMS: candidate j is dropped when a kept i < j
    overlaps it by more than ``nms_thresh`` (overlap = intersection / smaller area, both of the integer polygons).

    Only pairs stardist itself compares are compared: centres closer than the largest ray plus i's longest ray,
    float bounding boxes intersecting. Pairs whose integer bounding boxes cannot hold enough overlap are skipped.
    ``engine``: "numba" (compiled loop, when numba is installed), "numpy" (vectorized per kept polygon) or "auto".
    """
    count = len(points)
    keep = np.ones(count, bool)
    if count < 2:
        return keep
    clipper = _have_pyclipper()
    jit = _jit() if engine in ("auto", "numba") else None
    if engine == "numba" and jit is None:
        raise ImportError("engine='numba' needs numba (pip install numba)")
    if jit is not None:
        return _suppress_jit(jit, points, dist, nms_thresh, clipper)
    polys = StarPolygons.from_rays(points, dist)
    pos = points.astype(np.float32)
    reach = np.float32(polys.radius.max())
    by_y = np.argsort(points[:, 0], kind="stable")
    ys = points[by_y, 0]
    box, ibox, area, simple = polys.box, polys.ibox, polys.area, polys.simple
    thresh = np.float32(nms_thresh)
    for i in range(count - 1):
        if not keep[i]:
            continue
        radius = reach + polys.radius[i]  # float32, as stardist's kd-tree query
        lo, hi = np.searchsorted(ys, [pos[i, 0] - radius - 1, pos[i, 0] + radius + 1])
        js = by_y[lo:hi]
        js = js[(js > i) & keep[js]]
        if not len(js):
            continue
        d2 = (pos[js, 0] - pos[i, 0]) ** 2 + (pos[js, 1] - pos[i, 1]) ** 2
        b, bj = box[i], box[js]
        near = ((d2 < radius * radius) & (b[0] <= bj[:, 1]) & (bj[:, 0] <= b[1])
                & (b[2] <= bj[:, 3]) & (bj[:, 2] <= b[3]))
        js = js[near]
        smaller = np.minimum(area[i] + 1e-10, area[js] + 1e-10)
        # the intersection lies inside both integer bounding boxes (Clipper's rounded one too)
        w = np.minimum(ibox[i, 1], ibox[js, 1]) - np.maximum(ibox[i, 0], ibox[js, 0])
        h = np.minimum(ibox[i, 3], ibox[js, 3]) - np.maximum(ibox[i, 2], ibox[js, 2])
        possible = np.maximum(w, 0) * np.maximum(h, 0) >= nms_thresh * smaller * (1 - 1e-6)
        js, smaller = js[possible], smaller[possible]
        if not len(js):
            continue
        if simple[i]:
            inter, bound = polys.overlap_areas(i, js)
        else:
            inter, bound = np.zeros(len(js)), np.full(len(js), np.inf)
        inter = np.where(np.minimum(area[i], area[js]) > 0, inter, 0.0)  # degenerate polygons overlap nothing
        if clipper:
            unsure = np.flatnonzero(np.abs(inter - nms_thresh * smaller) <= bound + 1e-6 * smaller)
            for k in unsure:
                inter[k] = _clipper_area(polys.vertices(i), polys.vertices(js[k]))
        keep[js[(inter / smaller).astype(np.float32) > thresh]] = False
    return keep


def _suppress_jit(jit: Any, points: np.ndarray, dist: np.ndarray, nms_thresh: float, clipper: bool) -> np.ndarray:
    from .polygon_overlap import _SHIFT

    count, n = dist.shape
    angle = np.float32(2 * np.pi / n) * np.arange(n, dtype=np.float32)
    sin = np.sin(angle.astype(np.float64)).astype(np.float32)
    cos = np.cos(angle.astype(np.float64)).astype(np.float32)
    points = np.ascontiguousarray(points, np.int64)
    ex, ey, edx, edy, area, box, ibox, star, perimeter = jit.prepare(points, np.ascontiguousarray(dist, np.float32),
                                                                     sin, cos)
    simple = star.copy()
    if not star.all():
        simple[~star] = jit.simple(ex[~star], ey[~star])
    radius = dist.max(1).astype(np.float32)
    reach = np.float32(radius.max())
    by_y = np.argsort(points[:, 0], kind="stable")
    ys = np.ascontiguousarray(points[by_y, 0])
    cx, cy = np.ascontiguousarray(points[:, 1]), np.ascontiguousarray(points[:, 0])
    keep = np.ones(count, bool)
    out_j, out_code, out_area = np.empty(count, np.int64), np.empty(count, np.int8), np.empty(count)
    thresh = float(nms_thresh)

    def vertices(k: int) -> np.ndarray:
        return np.stack([ex[k] + cx[k], ey[k] + cy[k]], axis=-1).astype(np.int64)

    for i in range(count - 1):
        if not keep[i]:
            continue
        found = jit.suppress_from(i, ex, ey, edx, edy, cx, cy, area, box, ibox, radius, star, simple, perimeter,
                                  by_y, ys, keep, reach, thresh, _SHIFT[0], _SHIFT[1], out_j, out_code, out_area)
        codes, js = out_code[:found], out_j[:found]
        for k in np.flatnonzero(codes == jit.UNSURE):
            j = js[k]
            inter = _clipper_area(vertices(i), vertices(j)) if clipper else out_area[k]
            smaller = min(area[i] + 1e-10, area[j] + 1e-10)
            codes[k] = jit.SUPPRESS if np.float32(inter / smaller) > np.float32(thresh) else jit.KEEP
        keep[js[codes == jit.SUPPRESS]] = False
    return keep


def non_maximum_suppression(dist: np.ndarray, prob: np.ndarray, grid: Sequence[int] = (1, 1), b: Border = 2,
                            nms_thresh: float = 0.5, prob_thresh: float = 0.5, engine: str = "auto"
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop-in for ``stardist.non_maximum_suppression``: (points, scores, dist) of the kept polygons, best first.

    ``dist`` is (Y, X, n_rays) in full-resolution pixels, ``prob`` (Y, X), both on the ``grid``-subsampled raster.
    """
    if prob.ndim != 2 or dist.ndim != 3 or dist.shape[:2] != prob.shape:
        raise ValueError(f"expected prob (Y, X) and dist (Y, X, n_rays) on one raster; got {prob.shape} and "
                         f"{dist.shape}")
    points, scores, d = candidates(prob, dist, prob_thresh, b, grid)
    keep = suppress(points, d, nms_thresh, engine)
    return points[keep], scores[keep], d[keep]


# ---- rendering --------------------------------------------------------------------------------------------------
def _render_coords(dist: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column vertex coordinates (K, n) in float32 exactly as stardist's ``dist_to_coord`` makes them."""
    n = dist.shape[1]
    phis = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rows = (dist * np.sin(phis)).astype(np.float32)  # float32 * float64 -> float64, then rounded once
    cols = (dist * np.cos(phis)).astype(np.float32)
    rows = (rows + points[:, :1]).astype(np.float32)  # stardist adds the int points in place: one more rounding
    cols = (cols + points[:, 1:]).astype(np.float32)
    return rows.astype(np.float64), cols.astype(np.float64)


def polygon_spans(rows: np.ndarray, cols: np.ndarray, shape: Sequence[int], chunk: int = 2**20
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel runs (polygon, row, first col, end col) inside each polygon, as ``skimage.draw.polygon`` decides:
    pixel (r, c) is inside when an odd number of edges (i, j) have r in [min, max) of their rows and
    c < (c_j - c_i) * (r - r_i) / (r_j - r_i) + c_i, clipped to the image."""
    K, n = rows.shape
    r0 = np.clip(np.floor(rows.min(1)), 0, shape[0] - 1).astype(np.int64)
    r1 = np.clip(np.ceil(rows.max(1)), 0, shape[0] - 1).astype(np.int64)
    heights = np.maximum(r1 - r0 + 1, 0)
    out = []
    order = np.argsort(heights, kind="stable")  # similar heights together: little padding
    start = 0
    while start < K:
        stop = start + 1
        while stop < K and heights[order[stop]] * (stop - start + 1) * n <= chunk:
            stop += 1
        sel = order[start:stop]
        h = int(heights[sel].max()) if len(sel) else 0
        start = stop
        if h == 0:
            continue
        y = (r0[sel, None] + np.arange(h))[:, :, None].astype(np.float64)  # (k, h, 1)
        ri, ci = rows[sel][:, None, :], cols[sel][:, None, :]
        rj, cj = np.roll(ri, 1, axis=2), np.roll(ci, 1, axis=2)  # j = i - 1, as skimage
        cond = ((ri <= y) & (y < rj)) | ((rj <= y) & (y < ri))
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = np.where(cond, (cj - ci) * (y - ri) / (rj - ri) + ci, np.inf)
        xs.sort(axis=2)
        valid = np.arange(h)[None, :] < heights[sel][:, None]
        even = 2 * (n // 2)  # a row meets an even number of edges
        lo, hi = xs[..., 0:even:2], xs[..., 1:even:2]  # inside: x_(2l-1) <= c < x_(2l)
        c0 = np.maximum(np.ceil(lo), 0)
        c1 = np.minimum(np.ceil(hi), shape[1])
        keep = (c0 < c1) & np.isfinite(hi) & valid[..., None]
        k_idx, y_idx, _ = np.nonzero(keep)
        out.append((sel[k_idx], r0[sel][k_idx] + y_idx, c0[keep].astype(np.int64), c1[keep].astype(np.int64)))
    if not out:
        e = np.zeros(0, np.int64)
        return e, e, e, e
    return tuple(np.concatenate(parts) for parts in zip(*out))  # type: ignore[return-value]


def polygons_to_label(dist: np.ndarray, points: np.ndarray, shape: Sequence[int],
                      prob: Optional[np.ndarray] = None, origin: Sequence[int] = (0, 0)) -> np.ndarray:
    """Drop-in for ``stardist.polygons_to_label``: int32 labels, polygon k gets k + 1, the more probable on top.
    `origin`: the image position of the window of `shape` to render (the polygons' vertices are computed at their
    image positions, then shifted, which is exact: the same pixels as a render of the whole image)."""
    shape = tuple(int(s) for s in shape)
    labels = np.zeros(shape, np.int32)
    if len(points) == 0:
        return labels
    prob = np.full(len(points), np.inf) if prob is None else np.asarray(prob)
    rank = np.empty(len(points), np.int64)
    rank[np.argsort(prob, kind="stable")] = np.arange(len(points))  # stardist paints in this order
    rows, cols = _render_coords(np.asarray(dist), np.asarray(points))
    if any(origin):
        rows, cols = rows - origin[0], cols - origin[1]
    poly, row, c0, c1 = polygon_spans(rows, cols, shape)
    lengths = c1 - c0
    pix = np.repeat(row * shape[1] + c0 - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    owner = np.repeat(poly, lengths)
    if not len(pix):
        return labels
    order = np.lexsort((rank[owner], pix))  # per pixel, the last painted polygon wins
    last = np.r_[pix[order][1:] != pix[order][:-1], True]
    labels.ravel()[pix[order][last]] = owner[order][last] + 1
    return labels


def instances(prob: np.ndarray, dist: np.ndarray, prob_threshold: float, nms_threshold: float,
              grid: Sequence[int] = (1, 1), b: Border = 2, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Label image from one probability map (Y, X) and distance map (Y, X, n_rays) on the ``grid`` raster."""
    points, scores, d = non_maximum_suppression(dist, prob, grid, b, nms_threshold, prob_threshold)
    if shape is None:
        shape = tuple(s * g for s, g in zip(prob.shape, grid))
    return polygons_to_label(d, points, shape, prob=scores)


# ---- the bioimage.io op -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StardistPostprocessing(Op):
    """``stardist_postprocessing`` (format 0.5.12): the network's (1 + n_rays) channels -> instance labels.

    Channel 0 is the object probability, channels 1.. the ray distances (full-resolution pixels) on the ``grid``
    raster; the result has one channel and the full resolution (each space axis times its grid factor). Runs on
    the stitched maps of a tiled prediction, so objects on tile borders are found once.
    """

    op_id: ClassVar[str] = "stardist_postprocessing"
    prob_threshold: float = 0.5
    nms_threshold: float = 0.4
    n_rays: int = 32
    grid: Any = (1, 1)
    b: Any = 2
    anisotropy: Any = None
    overlap_label: Any = None

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 2:
            raise PackageError(f"{self.where}: stardist_postprocessing with grid {list(grid)} is 3D; biozoo supports "
                               "2D StarDist (grid of two factors) only; run 3D StarDist packages with bioimageio.core")
        if min(grid) < 1 or self.n_rays < 3:
            raise PackageError(f"{self.where}: stardist_postprocessing needs grid factors >= 1 and n_rays >= 3; got "
                               f"grid {list(grid)}, n_rays {self.n_rays}")
        b = self.b if self.b is None or np.isscalar(self.b) else tuple(tuple(int(v) for v in pair) for pair in self.b)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "b", b)

    def network_axes(self, axes: Sequence[Any]) -> tuple[Any, ...]:
        """The network output's axes for the labels' ``axes``: 1 + n_rays channels, space axes on the grid raster
        (scale times grid, so a size reference gives input size / grid, rounded up; halo in raster pixels, rounded
        up)."""
        import dataclasses

        scale = dict(zip(("y", "x"), self.grid))
        out = []
        for a in axes:
            if a.type == "channel":
                a = dataclasses.replace(a, size=1 + self.n_rays, channel_names=())
            elif a.id in scale and scale[a.id] > 1:
                g = scale[a.id]
                a = dataclasses.replace(a, scale=a.scale * g, halo=-(-a.halo // g), round_up=True)
            out.append(a)
        return tuple(out)

    def __call__(self, x, axes, stats):
        axes = list(axes)
        extra = [a for a in axes if a not in ("batch", "channel", "y", "x")]
        if extra or not {"channel", "y", "x"} <= set(axes):
            raise PackageError(f"{self.where}: stardist_postprocessing needs axes channel, y, x (and batch); the "
                               f"tensor has {axes}")
        if x.shape[axes.index("channel")] != 1 + self.n_rays:
            raise PackageError(f"{self.where}: the network gives {x.shape[axes.index('channel')]} channels, but "
                               f"stardist_postprocessing with n_rays {self.n_rays} needs {1 + self.n_rays} "
                               "(probability + one distance per ray); the package's rdf.yaml does not match its "
                               "weights")
        order = [a for a in ("batch", "y", "x", "channel") if a in axes]
        maps = np.transpose(x, [axes.index(a) for a in order])
        if "batch" not in axes:
            maps = maps[None]
        labels = np.stack([
            instances(m[..., 0], m[..., 1:], self.prob_threshold, self.nms_threshold, self.grid, self.b)
            for m in maps.astype(np.float32, copy=False)
        ])[..., None]
        if "batch" not in axes:
            labels = labels[0]
        return np.transpose(labels, [order.index(a) for a in axes])


