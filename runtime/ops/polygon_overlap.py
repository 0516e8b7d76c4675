"""Exact intersection areas of StarDist's integer polygons, vectorized over all candidates near a kept polygon.

stardist's C++ NMS builds each candidate polygon from float32 vertices truncated to integers (Clipper's integer
points) and asks Clipper for intersection areas. Here the same integer polygons are intersected exactly with
Green's theorem, which needs no polygon clipping and vectorizes:

    area(P ∩ Q) = 1/2 * sum over edges (a -> b) of P of cross(a, b) * (fraction of the edge inside Q)
                + 1/2 * the same over the edges of Q, with P.

The fractions follow from where the edges cross (entering or leaving the other polygon) and whether one vertex lies
inside. P, the kept polygon, is star-shaped around its centre (checked), so each edge of Q is tested only against
the one or two edges of P whose angular span meets its own (a lookup table over a cheap pseudo-angle), not all 32.

Q is shifted by ~1e-7 px (irrational ratio) so that no vertex lies exactly on an edge and no edges overlap: integer
polygons share vertices and edges all the time, and this removes every tie at the cost of an area error below
1e-6 * perimeter. Clipper rounds intersection points to integers; ``bound`` bounds the resulting difference so that
the caller can send the rare pairs near its threshold to Clipper itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

_SHIFT = (1e-7 * 2**0.5, 1e-7 * 3**0.5)
_EPS = 1e-9


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _pseudo_angle(x, y):
    """A monotone stand-in for the angle of (x, y), in [0, 4) (4x cheaper than arctan2); +pi maps to +2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = x / (np.abs(x) + np.abs(y))
    return np.where(y >= 0, 1 - r, 3 + r)


def float_vertices(points: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex x, y (N, n) in float32 as stardist's C++ NMS computes them: float angle step, float products."""
    n = dist.shape[1]
    angle = np.float32(2 * np.pi / n) * np.arange(n, dtype=np.float32)
    sin = np.sin(angle.astype(np.float64)).astype(np.float32)  # correctly rounded, as glibc's sinf
    cos = np.cos(angle.astype(np.float64)).astype(np.float32)
    p = points.astype(np.float32)
    d = dist.astype(np.float32)
    return p[:, 1:2] + d * cos, p[:, 0:1] + d * sin


@dataclass
class StarPolygons:
    """N integer polygons of n vertices (stardist's NMS polygons) and what their overlaps need."""

    points: np.ndarray  # (N, 2) int64 yx centres
    area: np.ndarray  # (N,) float64, exact
    box: np.ndarray  # (N, 4) float32 x1, x2, y1, y2 of the float vertices (stardist's bbox prefilter)
    ibox: np.ndarray  # (N, 4) int64 x1, x2, y1, y2 of the integer vertices
    radius: np.ndarray  # (N,) float32 longest ray
    star: np.ndarray  # (N,) bool: star-shaped around its centre (so simple and counter-clockwise)
    simple: np.ndarray  # (N,) bool: no self-intersection
    edges: np.ndarray  # (N, n, 4) float64 x, y (relative to the centre), dx, dy of each edge
    perimeter: np.ndarray  # (N,) float64

    @classmethod
    def from_rays(cls, points: np.ndarray, dist: np.ndarray) -> "StarPolygons":
        """stardist's NMS polygons: float32 vertices truncated to integers; the bbox prefilter uses the float ones."""
        fx, fy = float_vertices(points, dist)
        xy = np.stack([np.trunc(fx), np.trunc(fy)], axis=-1)
        box = np.stack([fx.min(1), fx.max(1), fy.min(1), fy.max(1)], axis=1)
        return cls.from_vertices(points, xy, box, dist.max(1).astype(np.float32))

    @classmethod
    def from_vertices(cls, points: np.ndarray, xy: np.ndarray, box: Optional[np.ndarray] = None,
                      radius: Optional[np.ndarray] = None) -> "StarPolygons":
        """Polygons from integer vertices ``xy`` (N, n, 2), x then y, around integer centres ``points`` (N, 2) yx."""
        points = np.asarray(points, np.int64)
        rel = np.asarray(xy, np.float64) - points[:, None, ::-1]  # exact: small integers in float64
        nrel = np.concatenate([rel[:, 1:], rel[:, :1]], axis=1)
        edges = np.concatenate([rel, nrel - rel], axis=-1)
        turn = _cross(rel[..., 0], rel[..., 1], nrel[..., 0], nrel[..., 1])
        area = 0.5 * np.abs(turn.sum(1))  # the shoelace sum does not depend on the origin
        # star-shaped: every edge turns counter-clockwise around the centre by less than half a turn (or runs
        # along a ray, or has zero length), and all of them together turn exactly once
        psi = _pseudo_angle(rel[..., 0], rel[..., 1])
        step = np.mod(np.concatenate([psi[:, 1:], psi[:, :1]], axis=1) - psi, 4.0)
        star = ((turn >= 0) & (step < 2)).all(1) & (np.abs(step.sum(1) - 4) < 1e-6)
        simple = star.copy()
        if not star.all():
            simple[~star] = _simple(rel[~star])
        x, y = np.asarray(xy)[..., 0], np.asarray(xy)[..., 1]
        ibox = np.stack([x.min(1), x.max(1), y.min(1), y.max(1)], axis=1).astype(np.int64)
        box = ibox.astype(np.float32) if box is None else box
        radius = np.hypot(rel[..., 0], rel[..., 1]).max(1).astype(np.float32) if radius is None else radius
        perimeter = np.hypot(edges[..., 2], edges[..., 3]).sum(1)
        return cls(points, area, box, ibox, radius, star, simple, edges, perimeter)

    def vertices(self, i: int) -> np.ndarray:
        """Polygon i's integer vertices (n, 2), x then y, as Clipper gets them."""
        return (self.edges[i, :, :2] + self.points[i, ::-1]).astype(np.int64)

    def overlap_areas(self, i: int, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact areas of polygon i ∩ polygon j for each j in ``js`` (i must be simple), and a bound on how far
        Clipper's area can be from each (inf where the computation is not trustworthy, e.g. Q not simple)."""
        n = self.edges.shape[1]
        J = len(js)
        v = self.edges[i]  # P: relative to its own centre
        vx, vy, dvx, dvy = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
        q = np.take(self.edges, js, axis=0)  # (J, m, 4)
        m = q.shape[1]
        off = (self.points[js, ::-1] - self.points[i, ::-1]).astype(np.float64) + _SHIFT
        wx, wy = q[..., 0] + off[:, :1], q[..., 1] + off[:, 1:]
        dwx, dwy = q[..., 2], q[..., 3]
        cq = _cross(wx, wy, dwx, dwy)  # cross(w_l, w_l+1), relative to P's centre
        psi = _pseudo_angle(wx, wy)
        if self.star[i]:
            ext = _unwrapped(_pseudo_angle(vx, vy))
            first, last, step = _edge_lookup(ext, 16 * n)
            nxt = np.concatenate([psi[:, 1:], psi[:, :1]], axis=1)
            start = np.where(cq >= 0, psi, nxt)
            stop = start + np.mod(np.where(cq >= 0, nxt - psi, psi - nxt), 4.0)
            lo = first[np.clip(((start - _EPS) / step).astype(np.int64), 0, len(first) - 1)]
            hi = last[np.clip(((stop + _EPS) / step).astype(np.int64), 0, len(last) - 1)]
            k0, count = lo.ravel(), np.minimum(hi - lo + 1, n).ravel()
        else:
            k0, count = np.zeros(J * m, np.int64), np.full(J * m, n)
        # one row per (Q edge, P edge) pair to test for a crossing
        row = np.repeat(np.arange(J * m), count)
        k = (np.repeat(k0 - (np.cumsum(count) - count), count) + np.arange(len(row))) % n
        qx, qy = wx.ravel()[row], wy.ravel()[row]
        qdx, qdy = dwx.ravel()[row], dwy.ravel()[row]
        rx, ry = qx - vx[k], qy - vy[k]
        pdx, pdy = dvx[k], dvy[k]
        den = _cross(pdx, pdy, qdx, qdy)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = _cross(rx, ry, qdx, qdy) / den
            u = _cross(rx, ry, pdx, pdy) / den
        hit = np.flatnonzero((t >= 0) & (t <= 1) & (u >= 0) & (u <= 1))
        t, u, k, row = t[hit], u[hit], k[hit], row[hit]
        s = np.where(den[hit] < 0, 1.0, -1.0)  # +1: P's edge enters Q here (and Q's edge leaves P)
        j = row // m
        jk = j * n + k
        s_p = np.bincount(jk, s, J * n).reshape(J, n)
        frac_p = np.bincount(jk, s * (1 - t), J * n).reshape(J, n)
        s_q = np.bincount(row, -s, J * m).reshape(J, m)
        frac_q = np.bincount(row, -s * (1 - u), J * m).reshape(J, m)
        cp = _cross(vx, vy, dvx, dvy)
        area_p, area_q = 0.5 * cp.sum(), 0.5 * cq.sum(axis=1)
        # inside-status of every vertex = that of vertex 0 + the crossings before it
        rest = 0.5 * ((np.cumsum(s_p, axis=1) - s_p + frac_p) @ cp
                      + ((np.cumsum(s_q, axis=1) - s_q + frac_q) * cq).sum(1))
        if self.star[i]:
            pos = np.searchsorted(ext, psi[:, 0], side="right") - 1
            kk = pos % n
            in_p = _cross(dvx[kk], dvy[kk], wx[:, 0] - vx[kk], wy[:, 0] - vy[kk]) > 0
        else:
            in_p = _even_odd(wx[:, 0], wy[:, 0], vx[None], vy[None], dvx[None], dvy[None])
        rest += in_p * area_q
        # P's vertex 0 inside Q? Where the boundaries cross, 0 < area < area(P), so the sign of `rest` decides,
        # unless the area is ~0 or ~area(P) (touching polygons); there and without crossings, the even-odd test.
        in_q = (rest < 0).astype(np.float64)
        crossed = np.bincount(j, minlength=J) > 0
        unsure = np.flatnonzero(~crossed | (np.abs(rest) < 1e-2))
        if len(unsure):
            in_q[unsure] = _even_odd(np.full(len(unsure), vx[0]), np.full(len(unsure), vy[0]), wx[unsure],
                                     wy[unsure], dwx[unsure], dwy[unsure])
        area = rest + in_q * area_p
        # Clipper moves an intersection point by about a pixel at most, off one of its two edges: the area changes
        # by less than half that times the two edge lengths; plus the shift of Q.
        lengths = np.hypot(dvx[k], dvy[k]) + np.hypot(qdx[hit], qdy[hit])
        bound = 0.5 * np.bincount(j, lengths, J) + 1e-4 + 1e-6 * self.perimeter[js]
        bound[(area < -1e-3) | (area > np.minimum(area_p, area_q) + 1e-3) | ~self.simple[js]] = np.inf
        return area, bound


def _unwrapped(psi: np.ndarray) -> np.ndarray:
    """Pseudo-angles of a star polygon's vertices, made non-decreasing, over four turns from one turn below."""
    u = psi[0] + np.concatenate([[0.0], np.cumsum(np.mod(np.diff(psi), 4.0))])
    return np.concatenate([u - 4, u, u + 4, u + 8])


def _edge_lookup(ext: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, float]:
    """For pseudo-angle bins over [0, 8): positions in ``ext`` of the first and last edge whose span meets the bin
    (edges touching a bin's border count: a conservative choice costs a test, a missed edge a wrong area)."""
    step = 4.0 / bins
    borders = np.arange(2 * bins + 1) * step
    first = np.searchsorted(ext, borders[:-1] - _EPS, side="right") - 1 - len(ext) // 4
    last = np.searchsorted(ext, borders[1:] + _EPS, side="right") - 1 - len(ext) // 4
    return first, last, step


def _even_odd(px, py, ex, ey, dx, dy) -> np.ndarray:
    """Even-odd test of points (J,) against polygons given by edges (J, m) (start ex, ey and direction dx, dy)."""
    px, py = px[:, None], py[:, None]
    straddle = (ey > py) != (ey + dy > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = ex + (py - ey) * dx / dy
    return (np.count_nonzero(straddle & (px < xs), axis=1) % 2).astype(np.float64)


def _simple(xy: np.ndarray) -> np.ndarray:
    """Whether each polygon (K, n, 2) of integer vertices is simple: no two non-adjacent edges touch (repeated
    vertices are merged first)."""
    K, n = xy.shape[:2]
    out = np.ones(K, bool)
    for g in range(K):  # few polygons fail the star test: the quadratic check runs on those only
        v = xy[g][np.any(xy[g] != np.roll(xy[g], -1, axis=0), axis=1)]
        c = len(v)
        if c < 3:
            out[g] = False
            continue
        d = np.roll(v, -1, axis=0) - v
        a, b = np.triu_indices(c, 2)
        keep = ~((a == 0) & (b == c - 1))
        a, b = a[keep], b[keep]
        r = v[b] - v[a]
        den = _cross(d[a, 0], d[a, 1], d[b, 0], d[b, 1])
        tn = _cross(r[:, 0], r[:, 1], d[b, 0], d[b, 1])
        un = _cross(r[:, 0], r[:, 1], d[a, 0], d[a, 1])
        sg = np.sign(den)
        crossing = (den != 0) & (tn * sg >= 0) & (tn * sg <= np.abs(den)) & (un * sg >= 0) & (un * sg <= np.abs(den))
        collinear = (den == 0) & (tn == 0)
        if collinear.any():  # collinear edges: do their extents overlap?
            da = d[a[collinear]]
            s0 = (r[collinear] * da).sum(1) / (da * da).sum(1)
            s1 = ((v[b[collinear]] + d[b[collinear]] - v[a[collinear]]) * da).sum(1) / (da * da).sum(1)
            crossing[collinear] = (np.maximum(s0, s1) >= 0) & (np.minimum(s0, s1) <= 1)
        out[g] = not crossing.any()
    return out
