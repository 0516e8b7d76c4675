"""N2V masking: stratified, ~0.2%, centre excluded, values from the neighbourhood, reproducible."""
from __future__ import annotations

import torch

from biozoo.zoo.n2v import expected_masked, n2v_loss, n2v_mask


def test_masking_is_stratified_and_reproducible():
    x = torch.rand(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    a, mask_a = n2v_mask(x, torch.Generator().manual_seed(1))
    b, mask_b = n2v_mask(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    per_patch = mask_a[0, 0].sum().item()
    assert per_patch == expected_masked((128, 128), 0.002)
    assert 0.001 < per_patch / 128**2 < 0.004
    assert torch.equal(a[~mask_a], x[~mask_a]), "only masked pixels change"


def test_replacement_comes_from_the_neighbourhood_not_the_centre():
    # every pixel unique: the replaced value identifies where it came from
    x = torch.arange(64 * 64, dtype=torch.float32).reshape(1, 1, 64, 64)
    out, mask = n2v_mask(x, torch.Generator().manual_seed(2), fraction=0.01, neighbourhood=5)
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    src = out[0, 0, ys, xs].long()
    sy, sx = src // 64, src % 64
    assert torch.all(src != x[0, 0, ys, xs].long()), "the centre value must never be kept"
    assert torch.all((sy - ys).abs() <= 2) and torch.all((sx - xs).abs() <= 2)


def test_n2v2_median_and_masked_loss():
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    out, mask = n2v_mask(x, torch.Generator().manual_seed(0), fraction=0.01, neighbourhood=3, median=True)
    assert mask.sum() > 0 and out.shape == x.shape
    assert n2v_loss(x, x, mask).item() == 0
    assert n2v_loss(out, x, mask).item() > 0
