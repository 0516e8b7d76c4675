"""U-Net for 2D and 3D images (segmentation, CARE restoration, Noise2Void / N2V2).

Design choices a caller must know:

- 'same' 3x3(x3) convolutions, so the output has the input's space shape; valid sizes are multiples of
  ``2**depth`` (the pooling factor) from ``2 * 2**depth`` (two pixels at the bottom, so the deepest convs see
  neighbours and not only padding). See ``UNet.io_contract``.
- Upsampling by 2x2 transposed convolutions (the original U-Net "up-conv"); skip connections by concatenation.
- ``n2v2=True`` is the N2V2 variant (Hoeck et al. 2022): max-blur-pool instead of max-pool and no skip connection at
  the top level, both of which remove the checkerboard artefacts of plain Noise2Void.
- Nothing behaves differently in training mode except BatchNorm (no dropout), so eval outputs are deterministic
  and independent of the other samples of a batch.
- The final activation is a module (``model.activation``), never a functional call: the receptive-field probe and
  exporters can see and replace it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from biozoo.runtime import BiozooError

from .io_contract import IOContract
from .networks import UNetNetwork
from .receptive_field import contract_with_receptive_field, receptive_field_of
from .registry import build_config, register_model

FINAL_ACTIVATIONS = ("none", "sigmoid", "softmax")


@dataclass(frozen=True)
class UNetConfig:
    """Every hyperparameter of a U-Net; ``dataclasses.asdict(model.config)`` rebuilds it via ``create_model``."""

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    depth: int = 4
    base_channels: int = 32
    convs_per_block: int = 2
    batch_norm: bool = True
    residual: bool = False
    final_activation: str = "none"
    n2v2: bool = False

    def __post_init__(self) -> None:
        ints = {"in_channels": 1, "out_channels": 1, "depth": 1, "base_channels": 1, "convs_per_block": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BiozooError(f"U-Net {name} must be an int >= {low}, got {value!r}")
        if self.spatial_dims not in (2, 3):
            raise BiozooError(f"U-Net spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        if self.depth > 8:
            raise BiozooError(f"U-Net depth {self.depth} is too deep: inputs would need multiples of 2**{self.depth}")
        for name in ("batch_norm", "residual", "n2v2"):
            if not isinstance(getattr(self, name), bool):
                raise BiozooError(f"U-Net {name} must be true or false, got {getattr(self, name)!r}")
        if self.final_activation not in FINAL_ACTIVATIONS:
            raise BiozooError(
                f"U-Net final_activation {self.final_activation!r} is unknown; expected one of {FINAL_ACTIVATIONS}"
            )
        if self.final_activation == "softmax" and self.out_channels < 2:
            raise BiozooError("U-Net final_activation 'softmax' needs out_channels >= 2 (one per class); use 'sigmoid'")


class UNet(UNetNetwork):
    """The U-Net of zoo/networks.py (the packaged architecture) built from a validated ``UNetConfig``."""

    network_name = "unet"  # its name in networks.NETWORKS

    def __init__(self, config: UNetConfig) -> None:
        super().__init__(**dataclasses.asdict(config))
        self.config = config

    def io_contract(self, *, measure: bool = True) -> IOContract:
        """Axes, sizes (``2**depth`` steps from ``2 * 2**depth``) and, when ``measure``, receptive field and halo.

        The receptive field is measured once per process and per architecture on a one-channel proxy with the same
        connectivity (see biozoo.zoo.receptive_field); it does not depend on the weights.
        """
        c = self.config
        step = 2**c.depth
        contract = IOContract(
            axes="bcyx" if c.spatial_dims == 2 else "bczyx",
            in_channels=c.in_channels,
            out_channels=c.out_channels,
            size_step=step,
            min_size=2 * step,
        )
        if not measure:
            return contract
        return contract_with_receptive_field(contract, receptive_field_of(UNet, self.receptive_field_config()))

    def receptive_field_config(self) -> UNetConfig:
        """The cheapest config with this model's connectivity (channels and BN never change the receptive field)."""
        return dataclasses.replace(
            self.config, in_channels=1, out_channels=1, base_channels=1, batch_norm=False, final_activation="none"
        )


def _unet(spatial_dims: int, defaults: dict[str, Any], overrides: dict[str, Any]) -> UNet:
    if overrides.get("spatial_dims", spatial_dims) != spatial_dims:  # asdict(model.config) passes it back: allowed
        raise BiozooError(
            f"spatial_dims={overrides['spatial_dims']!r} conflicts with the model name (unet{spatial_dims}d is "
            f"{spatial_dims}D); choose the model by name instead: unet2d or unet3d (or their _tiny variants)"
        )
    values = {**defaults, **overrides, "spatial_dims": spatial_dims}
    return UNet(build_config(UNetConfig, values, model=f"unet{spatial_dims}d"))


_TINY = {"depth": 2, "base_channels": 4, "convs_per_block": 2}


@register_model("unet2d")
def unet2d(**overrides: Any) -> UNet:
    """2D U-Net, depth 4, 32 base channels: the usual choice for nuclei segmentation, CARE and N2V."""
    return _unet(2, {}, overrides)


@register_model("unet2d_tiny")
def unet2d_tiny(**overrides: Any) -> UNet:
    """2D U-Net of depth 2 with 4 base channels, for tests: same code paths, milliseconds per step."""
    return _unet(2, _TINY, overrides)


@register_model("unet3d")
def unet3d(**overrides: Any) -> UNet:
    """3D U-Net, depth 3, 16 base channels (3D feature maps are 8x larger per level than 2D ones)."""
    return _unet(3, {"depth": 3, "base_channels": 16}, overrides)


@register_model("unet3d_tiny")
def unet3d_tiny(**overrides: Any) -> UNet:
    """3D U-Net of depth 2 with 2 base channels, for tests."""
    return _unet(3, {**_TINY, "base_channels": 2}, overrides)
