"""The StarDist NMS inner loop compiled with numba (optional: used when numba imports, which it does wherever
stardist or bioimageio.core's stardist op is installed). Same mathematics as ``polygon_overlap`` (exact areas by
edge crossings and Green's theorem, Q shifted by ~1e-7 px, the same Clipper band), one kept polygon per call:
numpy's per-call overhead is what limits the vectorized path on small candidate sets; here a pair costs ~0.2 us.

Compiled once per machine (``cache=True`` stores the machine code beside this file or in numba's cache folder).
"""
from __future__ import annotations

import numba as nb
import numpy as np

_EPS = 1e-9
KEEP, SUPPRESS, UNSURE = 0, 1, 2


@nb.njit(cache=True, nogil=True)
def _pseudo(x, y):
    s = abs(x) + abs(y)
    if s == 0.0:
        return np.nan
    r = x / s
    return 1.0 - r if y >= 0 else 3.0 + r


@nb.njit(cache=True, nogil=True)
def _lookup(px, py, bins):
    """first/last positions (over 4 turns, relative to turn 1) of the P edges meeting each pseudo-angle bin."""
    n = px.shape[0]
    u = np.empty(4 * n)
    u[0] = _pseudo(px[0], py[0])
    for k in range(1, n):
        step = _pseudo(px[k], py[k]) - _pseudo(px[k - 1], py[k - 1])
        u[k] = u[k - 1] + (step % 4.0)
    for k in range(n):
        u[k + n] = u[k] + 4.0
        u[k + 2 * n] = u[k] + 8.0
        u[k + 3 * n] = u[k] + 12.0
    for k in range(4 * n):
        u[k] -= 4.0
    width = 4.0 / bins
    first = np.empty(2 * bins, np.int64)
    last = np.empty(2 * bins, np.int64)
    for b in range(2 * bins):
        first[b] = np.searchsorted(u, b * width - _EPS, side="right") - 1 - n
        last[b] = np.searchsorted(u, (b + 1) * width + _EPS, side="right") - 1 - n
    return first, last, width, u


@nb.njit(cache=True, nogil=True)
def _inside(x, y, ex, ey, dx, dy):
    """Even-odd test of (x, y) against the closed polygon with edges (ex, ey) + t (dx, dy)."""
    c = False
    for k in range(ex.shape[0]):
        y0, y1 = ey[k], ey[k] + dy[k]
        if (y0 > y) != (y1 > y):  # then dy != 0; x < ex + (y - y0) * dx / dy without the division:
            lhs, rhs = (x - ex[k]) * dy[k], (y - y0) * dx[k]
            if (lhs < rhs) if dy[k] > 0 else (lhs > rhs):
                c = not c
    return 1.0 if c else 0.0


@nb.njit(cache=True, nogil=True)
def suppress_from(i, ex, ey, edx, edy, cx, cy, area, box, ibox, radius, star, simple, perimeter, by_y, ys, keep,
                  reach, thresh, shift_x, shift_y, out_j, out_code, out_area):
    """For kept candidate i: decisions for every alive j > i that stardist would compare with it (centres closer
    than reach + radius[i], float bounding boxes touching). Writes j, code (KEEP / SUPPRESS / UNSURE: Clipper
    decides) and the exact area into the out arrays; returns how many."""
    n = ex.shape[1]
    count = 0
    r = np.float32(reach + radius[i])
    r2 = np.float32(r * r)
    lo = np.searchsorted(ys, cy[i] - r - 1.0)
    hi = np.searchsorted(ys, cy[i] + r + 1.0, side="right")
    pvx, pvy, pdx, pdy = ex[i], ey[i], edx[i], edy[i]
    bins = 16 * n
    if star[i]:
        first, last, width, turns = _lookup(pvx, pvy, bins)
    else:
        first, last, width = np.zeros(2 * bins, np.int64), np.full(2 * bins, n - 1, np.int64), 4.0 / bins
        turns = np.zeros(4 * n)
    cp_sum = 0.0
    cp = np.empty(n)
    for k in range(n):
        cp[k] = pvx[k] * pdy[k] - pvy[k] * pdx[k]
        cp_sum += cp[k]
    area_p = 0.5 * cp_sum
    s_p = np.empty(n)
    f_p = np.empty(n)
    s_q = np.empty(n)
    f_q = np.empty(n)
    qx = np.empty(n)
    qy = np.empty(n)
    qpsi = np.empty(n)
    for idx in range(lo, hi):
        j = by_y[idx]
        if j <= i or not keep[j]:
            continue
        dyf = np.float32(np.float32(cy[j]) - np.float32(cy[i]))
        dxf = np.float32(np.float32(cx[j]) - np.float32(cx[i]))
        if not (np.float32(dyf * dyf + dxf * dxf) < r2):
            continue
        if not (box[i, 0] <= box[j, 1] and box[j, 0] <= box[i, 1]
                and box[i, 2] <= box[j, 3] and box[j, 2] <= box[i, 3]):
            continue
        smaller = min(area[i] + 1e-10, area[j] + 1e-10)
        w = min(ibox[i, 1], ibox[j, 1]) - max(ibox[i, 0], ibox[j, 0])
        h = min(ibox[i, 3], ibox[j, 3]) - max(ibox[i, 2], ibox[j, 2])
        if max(w, 0) * max(h, 0) < thresh * smaller * (1 - 1e-6):
            continue  # the bounding boxes cannot hold enough overlap
        ox = float(cx[j] - cx[i]) + shift_x
        oy = float(cy[j] - cy[i]) + shift_y
        for k in range(n):
            s_p[k] = 0.0
            f_p[k] = 0.0
            s_q[k] = 0.0
            f_q[k] = 0.0
            qx[k] = ex[j, k] + ox
            qy[k] = ey[j, k] + oy
        bound = 0.0
        cq_sum = 0.0
        for l in range(n):
            qpsi[l] = _pseudo(qx[l], qy[l])
        for l in range(n):
            ax, ay, dx, dy = qx[l], qy[l], edx[j, l], edy[j, l]
            cq = ax * dy - ay * dx
            cq_sum += cq
            pa, pb = qpsi[l], qpsi[(l + 1) % n]
            if cq >= 0:
                start, span = pa, (pb - pa) % 4.0
            else:
                start, span = pb, (pa - pb) % 4.0
            b0 = min(max(int((start - _EPS) / width), 0), 2 * bins - 1)
            b1 = min(max(int((start + span + _EPS) / width), 0), 2 * bins - 1)
            k_first = first[b0]
            todo = min(last[b1] - k_first + 1, n)
            if not star[i] or np.isnan(start) or np.isnan(span):
                k_first, todo = 0, n
            for t_ in range(todo):
                k = (k_first + t_) % n
                den = pdx[k] * dy - pdy[k] * dx
                if den == 0.0:
                    continue
                rx, ry = ax - pvx[k], ay - pvy[k]
                tn = rx * dy - ry * dx
                un = rx * pdy[k] - ry * pdx[k]
                if den > 0:
                    if tn < 0.0 or tn > den or un < 0.0 or un > den:
                        continue
                elif tn > 0.0 or tn < den or un > 0.0 or un < den:
                    continue
                t, u = tn / den, un / den
                s = 1.0 if den < 0 else -1.0  # +1: P's edge enters Q (and Q's edge leaves P)
                s_p[k] += s
                f_p[k] += s * (1.0 - t)
                s_q[l] -= s
                f_q[l] -= s * (1.0 - u)
                bound += 0.5 * (np.sqrt(pdx[k] ** 2 + pdy[k] ** 2) + np.sqrt(dx * dx + dy * dy))
        area_q = 0.5 * cq_sum
        if star[i] and not np.isnan(qpsi[0]):  # Q's vertex 0 inside P: the P edge at its angle decides
            k = (np.searchsorted(turns, qpsi[0], side="right") - 1) % n
            in_p = 1.0 if pdx[k] * (qy[0] - pvy[k]) - pdy[k] * (qx[0] - pvx[k]) > 0 else 0.0
        else:
            in_p = _inside(qx[0], qy[0], pvx, pvy, pdx, pdy)
        total_p = 0.0
        run = 0.0
        for k in range(n):
            total_p += cp[k] * (run + f_p[k])
            run += s_p[k]
        total_q = 0.0
        run = in_p
        for l in range(n):
            total_q += (qx[l] * edy[j, l] - qy[l] * edx[j, l]) * (run + f_q[l])
            run += s_q[l]
        rest = 0.5 * (total_p + total_q)
        # P's vertex 0 inside Q? Where boundaries cross, 0 < area < area(P): the sign of `rest` decides unless the
        # area is ~0 or ~area(P) (touching polygons); there, and without crossings, the even-odd test.
        if bound == 0.0 or abs(rest) < 1e-2:
            in_q = _inside(pvx[0], pvy[0], qx, qy, edx[j], edy[j])
        else:
            in_q = 1.0 if rest < 0 else 0.0
        inter = rest + in_q * area_p
        bound += 1e-4 + 1e-6 * perimeter[j]
        if inter < -1e-3 or inter > min(area_p, area_q) + 1e-3 or not simple[j]:
            bound = np.inf
        if min(area[i], area[j]) <= 0:
            inter = 0.0
        out_j[count] = j
        out_area[count] = inter
        if abs(inter - thresh * smaller) <= bound + 1e-6 * smaller:
            out_code[count] = UNSURE
        elif np.float32(inter / smaller) > np.float32(thresh):
            out_code[count] = SUPPRESS
        else:
            out_code[count] = KEEP
        count += 1
    return count


@nb.njit(cache=True, nogil=True)
def prepare(points, dist, sin, cos):
    """stardist's NMS polygons from centres (N, 2) yx and rays (N, n) float32: float32 vertices truncated to
    integers, kept relative to the centre (ex, ey) with edge vectors (edx, edy); exact areas; the float bounding
    boxes (x1, x2, y1, y2) stardist compares; integer boxes; star-shaped flags; perimeters."""
    N, n = dist.shape
    ex = np.empty((N, n))
    ey = np.empty((N, n))
    edx = np.empty((N, n))
    edy = np.empty((N, n))
    area = np.empty(N)
    box = np.empty((N, 4), np.float32)
    ibox = np.empty((N, 4), np.int64)
    star = np.empty(N, np.bool_)
    perimeter = np.empty(N)
    psi = np.empty(n)
    for p in range(N):
        py, px = np.float32(points[p, 0]), np.float32(points[p, 1])
        for k in range(n):
            fx = np.float32(px + np.float32(dist[p, k] * cos[k]))
            fy = np.float32(py + np.float32(dist[p, k] * sin[k]))
            if k == 0:
                box[p, 0] = box[p, 1] = fx
                box[p, 2] = box[p, 3] = fy
            else:
                box[p, 0] = min(box[p, 0], fx)
                box[p, 1] = max(box[p, 1], fx)
                box[p, 2] = min(box[p, 2], fy)
                box[p, 3] = max(box[p, 3], fy)
            ex[p, k] = float(int(fx)) - points[p, 1]  # int(): truncation towards zero, as Clipper's IntPoint
            ey[p, k] = float(int(fy)) - points[p, 0]
        for q in range(4):
            ibox[p, q] = int(box[p, q])
        total = 0.0
        turned = 0.0
        ok = True
        per = 0.0
        for k in range(n):
            psi[k] = _pseudo(ex[p, k], ey[p, k])
        for k in range(n):
            k1 = (k + 1) % n
            edx[p, k] = ex[p, k1] - ex[p, k]
            edy[p, k] = ey[p, k1] - ey[p, k]
            per += abs(edx[p, k]) + abs(edy[p, k])  # >= the perimeter: all the area bound needs
            turn = ex[p, k] * ey[p, k1] - ey[p, k] * ex[p, k1]
            total += turn
            step = (psi[k1] - psi[k]) % 4.0
            if not (turn >= 0 and step < 2):  # nan (a vertex on the centre) fails too
                ok = False
            turned += step
        area[p] = 0.5 * abs(total)
        star[p] = ok and abs(turned - 4.0) < 1e-6
        perimeter[p] = per
    return ex, ey, edx, edy, area, box, ibox, star, perimeter


@nb.njit(cache=True, nogil=True)
def simple(ex, ey):
    """Whether each polygon (rows of vertex x, y) is simple: no two non-adjacent edges touch (repeated vertices
    merged first). Only run on the few polygons that are not star-shaped around their centre."""
    N, n = ex.shape
    out = np.ones(N, np.bool_)
    vx = np.empty(n)
    vy = np.empty(n)
    for p in range(N):
        c = 0
        for k in range(n):
            k1 = (k + 1) % n
            if ex[p, k] != ex[p, k1] or ey[p, k] != ey[p, k1]:
                vx[c], vy[c] = ex[p, k], ey[p, k]
                c += 1
        if c < 3:
            out[p] = False
            continue
        for a in range(c):
            ax, ay = vx[a], vy[a]
            adx, ady = vx[(a + 1) % c] - ax, vy[(a + 1) % c] - ay
            for b in range(a + 2, c):
                if a == 0 and b == c - 1:
                    continue
                bx, by = vx[b], vy[b]
                bdx, bdy = vx[(b + 1) % c] - bx, vy[(b + 1) % c] - by
                den = adx * bdy - ady * bdx
                rx, ry = bx - ax, by - ay
                tn = rx * bdy - ry * bdx
                un = rx * ady - ry * adx
                if den != 0.0:
                    sg = 1.0 if den > 0 else -1.0
                    if 0 <= tn * sg <= abs(den) and 0 <= un * sg <= abs(den):
                        out[p] = False
                elif tn == 0.0:  # collinear: do the extents overlap?
                    dd = adx * adx + ady * ady
                    s0 = (rx * adx + ry * ady) / dd
                    s1 = ((bx + bdx - ax) * adx + (by + bdy - ay) * ady) / dd
                    if max(s0, s1) >= 0 and min(s0, s1) <= 1:
                        out[p] = False
                if not out[p]:
                    break
            if not out[p]:
                break
    return out
