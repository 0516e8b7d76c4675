"""The IO contract of a zoo model: what shapes it accepts and how far its outputs look.

One frozen object per model answers every shape question the other layers ask: the exporter derives ONNX dynamic
axes and the rdf ``{min, step}`` sizes and halo from it, the runtime tiles with it, training picks patch sizes with
it, and tests build inputs with it. Keeping it in one place stops those answers from drifting apart.

Zoo models are dense predictors: the output has the input's space shape divided by ``output_stride`` (1 for
"same-size" models such as the U-Net; the subsampling grid for StarDist or a detector), offset 0; the channel count
may change.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from biozoo.runtime import BiozooError

_AXES = ("bcyx", "bczyx")


@dataclass(frozen=True)
class IOContract:
    """Shapes a model accepts: space sizes ``min_size + k * size_step`` (k >= 0) along every space axis.

    ``receptive_field`` is the diameter in pixels of the region of the input that one output pixel depends on (the
    largest over all space axes and all positions relative to the pooling grid); ``None`` until measured.
    ``halo`` is how many pixels on each side of a tile are unreliable when the tile is cut out of a larger image:
    the largest one-sided reach of the receptive field, so ``halo >= (receptive_field - 1) / 2``.
    """

    axes: str
    in_channels: int
    out_channels: int
    size_step: int
    min_size: int
    receptive_field: Optional[int] = None
    halo: int = 0
    output_stride: int = 1

    def __post_init__(self) -> None:
        if self.axes not in _AXES:
            raise BiozooError(f"IOContract axes {self.axes!r} are not supported; expected one of {_AXES}")
        for name in ("in_channels", "out_channels", "size_step", "min_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BiozooError(f"IOContract {name} must be a positive int, got {value!r}")
        if self.receptive_field is not None and self.receptive_field < 1:
            raise BiozooError(f"IOContract receptive_field must be >= 1 or None, got {self.receptive_field!r}")
        if self.halo < 0:
            raise BiozooError(f"IOContract halo must be >= 0, got {self.halo!r}")
        if not isinstance(self.output_stride, int) or self.output_stride < 1:
            raise BiozooError(f"IOContract output_stride must be a positive int, got {self.output_stride!r}")
        # Every valid input size must map to a whole output size, or tiles would not stitch exactly.
        if self.size_step % self.output_stride or self.min_size % self.output_stride:
            raise BiozooError(
                f"IOContract output_stride {self.output_stride} must divide size_step {self.size_step} and "
                f"min_size {self.min_size}; raise them to multiples of {self.output_stride}"
            )

    @property
    def space_axes(self) -> str:
        """The space axes in order, e.g. ``"yx"`` or ``"zyx"``."""
        return self.axes[2:]

    @property
    def spatial_dims(self) -> int:
        return len(self.space_axes)

    def valid_size(self, n: int) -> bool:
        """Whether a space axis of length ``n`` runs through the model without padding."""
        return n >= self.min_size and (n - self.min_size) % self.size_step == 0

    def next_valid(self, n: int) -> int:
        """The smallest valid size >= ``n`` (what a caller pads to)."""
        if n <= self.min_size:
            return self.min_size
        k = -(-(n - self.min_size) // self.size_step)
        return self.min_size + k * self.size_step

    @property
    def min_tile(self) -> int:
        """The smallest valid tile that still keeps at least one size step of pixels once the halo is cut off.

        bioimage.io rejects an output axis whose minimum size minus twice the halo is < 1, and the runtime refuses
        tiles below ``2 * halo + step``; exporters should publish this as the rdf minimum when a halo is set.
        """
        return self.next_valid(2 * self.halo + self.size_step)

    def input_shape(self, space: Sequence[int], batch: int = 1) -> tuple[int, ...]:
        """The full input shape for ``space`` sizes, after checking them (raises a BiozooError naming the fix)."""
        self.check_space(space)
        return (batch, self.in_channels, *space)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape for a valid input shape: same batch, space sizes ``// output_stride``, ``out_channels``."""
        if len(input_shape) != len(self.axes):
            raise BiozooError(f"input shape {tuple(input_shape)} does not match axes {self.axes!r}")
        self.check_space(input_shape[2:])
        return (input_shape[0], self.out_channels, *(int(n) // self.output_stride for n in input_shape[2:]))

    def check_space(self, space: Sequence[int]) -> None:
        """Raise a BiozooError saying what is wrong and the nearest valid sizes unless every size is valid."""
        if len(space) != self.spatial_dims:
            raise BiozooError(
                f"expected {self.spatial_dims} space sizes ({self.space_axes}), got {len(space)}: {tuple(space)}"
            )
        bad = [(a, n) for a, n in zip(self.space_axes, space) if not self.valid_size(int(n))]
        if bad:
            got = ", ".join(f"{a}={n}" for a, n in bad)
            fix = ", ".join(f"{a}={self.next_valid(int(n))}" for a, n in bad)
            raise BiozooError(
                f"space size {got} does not fit the model: it needs {self.min_size} + k*{self.size_step} "
                f"(multiples of {self.size_step}, at least {self.min_size}); pad to {fix}"
            )

    def with_receptive_field(self, receptive_field: int, halo: int) -> "IOContract":
        """A copy carrying a measured receptive field and halo."""
        return dataclasses.replace(self, receptive_field=receptive_field, halo=halo)
