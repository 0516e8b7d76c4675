"""Noise2Void blind-spot masking and loss (Krull et al. 2019; N2V2: Hoeck et al. 2022).

Stratified sampling: the patch is divided into cells of about 1/fraction pixels and one pixel per cell is
masked, so masked pixels spread evenly (~0.2% of a patch by default). Each masked pixel is replaced by a random
neighbour from a square neighbourhood excluding the centre (N2V), or by the median of that neighbourhood without
the centre (N2V2, which removes the checkerboard artefacts of plain N2V together with blur-pool and no top skip).
The loss is the MSE between prediction and the ORIGINAL noisy value, on masked pixels only.
"""
from __future__ import annotations

import math

import torch


def _stratified_coords(shape: tuple[int, ...], fraction: float, g: torch.Generator) -> torch.Tensor:
    """(n, ndim) integer coordinates, one random pixel per grid cell of ~1/fraction pixels."""
    ndim = len(shape)
    cell = max(1, round((1.0 / fraction) ** (1.0 / ndim)))
    grid = [torch.arange(0, n, cell) for n in shape]
    starts = torch.stack(torch.meshgrid(*grid, indexing="ij"), dim=-1).reshape(-1, ndim)
    offsets = (torch.rand(starts.shape, generator=g) * cell).long()
    coords = starts + offsets
    inside = torch.all(coords < torch.tensor(shape), dim=1)
    return coords[inside]


def n2v_mask(
    x: torch.Tensor, g: torch.Generator, fraction: float = 0.002, neighbourhood: int = 5, median: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input, boolean mask of replaced pixels) for a batch [B, C, (Z,) Y, X]."""
    if neighbourhood % 2 == 0 or neighbourhood < 3:
        raise ValueError(f"neighbourhood must be odd and >= 3, got {neighbourhood}")
    spatial = tuple(x.shape[2:])
    radius = neighbourhood // 2
    out = x.clone()
    mask = torch.zeros_like(x, dtype=torch.bool)
    offsets = torch.stack(
        torch.meshgrid(*[torch.arange(-radius, radius + 1)] * len(spatial), indexing="ij"), dim=-1
    ).reshape(-1, len(spatial))
    offsets = offsets[offsets.abs().sum(dim=1) > 0]  # never the centre itself
    limit = torch.tensor(spatial) - 1
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            coords = _stratified_coords(spatial, fraction, g)
            if median:
                neigh = (coords[:, None, :] + offsets[None]).clamp(min=0)
                neigh = torch.minimum(neigh, limit)
                values = x[b, c][tuple(neigh.unbind(-1))].median(dim=1).values
            else:
                pick = offsets[torch.randint(len(offsets), (len(coords),), generator=g)]
                src = torch.minimum((coords + pick).clamp(min=0), limit)
                # a clamped neighbour can land on the centre at a border: step inwards instead
                same = torch.all(src == coords, dim=1)
                src[same] = torch.minimum((coords[same] - pick[same]).clamp(min=0), limit)
                values = x[b, c][tuple(src.unbind(-1))]
            index = tuple(coords.unbind(-1))
            out[b, c][index] = values
            mask[b, c][index] = True
    return out, mask


def n2v_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE on masked pixels only (the network never sees their true values)."""
    n = mask.sum()
    if n == 0:
        return prediction.sum() * 0.0
    return ((prediction - target) ** 2)[mask].sum() / n


def expected_masked(shape: tuple[int, ...], fraction: float) -> int:
    cell = max(1, round((1.0 / fraction) ** (1.0 / len(shape))))
    return math.prod(math.ceil(n / cell) for n in shape)
