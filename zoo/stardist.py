"""StarDist 2D (Schmidt et al., MICCAI 2018): a U-Net whose output is, per pixel of a ``grid``-subsampled raster,
the probability of being an object's centre region and ``n_rays`` distances to the object's boundary.

Layout as stardist's own model: ``log2(grid)`` stem levels (convolutions, then 2x2 max-pooling) bring the input to
the grid raster, a U-Net runs there, one 3x3 convolution follows it, and two 1x1 heads give the probability logit
and the distances. ``forward`` returns one tensor (B, 1 + n_rays, Y / grid, X / grid): channel 0 is the sigmoid
probability, channels 1.. the distances in input pixels (linear; the loss wants them, the runtime's
``stardist_postprocessing`` turns them into polygons). ``heads`` returns the logit instead, for a stable BCE.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from biozoo.runtime import BiozooError

from .io_contract import IOContract
from .networks import StarDistNetwork
from .receptive_field import contract_with_receptive_field, receptive_field_of
from .registry import build_config, register_model


@dataclass(frozen=True)
class StarDistConfig:
    """Every hyperparameter; ``dataclasses.asdict(model.config)`` rebuilds the model via ``create_model``."""

    in_channels: int = 1
    n_rays: int = 32
    grid: int = 2
    depth: int = 3
    base_channels: int = 32
    convs_per_block: int = 2
    batch_norm: bool = False
    residual: bool = False
    features: int = 128

    def __post_init__(self) -> None:
        ints = {"in_channels": 1, "n_rays": 3, "grid": 1, "depth": 1, "base_channels": 1, "convs_per_block": 1,
                "features": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BiozooError(f"StarDist {name} must be an int >= {low}, got {value!r}")
        if self.grid & (self.grid - 1) or self.grid > 8:
            raise BiozooError(f"StarDist grid must be 1, 2, 4 or 8 (a power of two, the subsampling of the output "
                              f"raster); got {self.grid}")
        if self.depth > 6:
            raise BiozooError(f"StarDist depth {self.depth} is too deep: inputs would need multiples of "
                              f"{2**self.depth * self.grid}")
        for name in ("batch_norm", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise BiozooError(f"StarDist {name} must be true or false, got {getattr(self, name)!r}")


class StarDist2D(StarDistNetwork):
    """The StarDist network of zoo/networks.py (the packaged architecture) built from a validated config."""

    network_name = "stardist2d"  # its name in networks.NETWORKS

    def __init__(self, config: StarDistConfig) -> None:
        super().__init__(**dataclasses.asdict(config))
        self.config = config

    def io_contract(self, *, measure: bool = True) -> IOContract:
        """Sizes (multiples of ``2**depth * grid`` from twice that), output stride ``grid`` and, when ``measure``,
        the receptive field and halo in input pixels (measured on the maps repeated onto the input grid)."""
        c = self.config
        step = 2**c.depth * c.grid
        contract = IOContract(axes="bcyx", in_channels=c.in_channels, out_channels=1 + c.n_rays, size_step=step,
                              min_size=2 * step, output_stride=c.grid)
        if not measure:
            return contract
        rf = receptive_field_of(_input_grid_proxy, self.receptive_field_config())
        return contract_with_receptive_field(contract, rf)

    def receptive_field_config(self) -> StarDistConfig:
        """The cheapest config with this model's connectivity (channels and BN never change the receptive field)."""
        return dataclasses.replace(self.config, in_channels=1, n_rays=3, base_channels=1, features=1, batch_norm=False)


class _OnInputGrid(nn.Module):
    """The output repeated ``grid`` times along y and x (one value per input pixel), for the receptive-field probe."""

    def __init__(self, net: StarDist2D) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.net.config.grid
        return self.net(x).repeat_interleave(g, dim=2).repeat_interleave(g, dim=3)

    def io_contract(self, *, measure: bool = False) -> IOContract:
        return dataclasses.replace(self.net.io_contract(measure=False), output_stride=1)


def _input_grid_proxy(config: StarDistConfig) -> _OnInputGrid:
    return _OnInputGrid(StarDist2D(config))


def _stardist(defaults: dict[str, Any], overrides: dict[str, Any], name: str) -> StarDist2D:
    return StarDist2D(build_config(StarDistConfig, {**defaults, **overrides}, model=name))


@register_model("stardist2d")
def stardist2d(**overrides: Any) -> StarDist2D:
    """StarDist 2D: 32 rays, grid 2, U-Net of depth 3 with 32 base channels (stardist's 2D defaults)."""
    return _stardist({}, overrides, "stardist2d")


@register_model("stardist2d_tiny")
def stardist2d_tiny(**overrides: Any) -> StarDist2D:
    """StarDist 2D with 8 rays, depth 1, 4 base channels and 8 features, for tests."""
    return _stardist({"n_rays": 8, "depth": 1, "base_channels": 4, "features": 8}, overrides, "stardist2d_tiny")
