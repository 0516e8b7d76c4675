"""Axis scales that bioimageio.spec's halo check accepts (exporters/rdf.py spec_safe_scale)."""
from __future__ import annotations

import pytest

from biozoo.exporters.rdf import spec_safe_scale


@pytest.mark.parametrize("scale", [0.645, 1.29, 0.325, 0.1, 0.17, 2.6, 0.5, 0.0645])
@pytest.mark.parametrize("halo", [0, 8, 24, 56, 112])
def test_the_scale_moves_by_ulps_at_most_and_gives_the_halo_back(scale, halo):
    got = spec_safe_scale(scale, halo)
    assert abs(got - scale) <= 64 * abs(scale) * 2.2e-16
    assert not halo or halo * got / got == halo  # the spec's own arithmetic (halo * out.scale / in.scale)
    if not halo or halo * scale / scale == halo:
        assert got == scale  # nothing to fix: the pixel size stays as the user wrote it
