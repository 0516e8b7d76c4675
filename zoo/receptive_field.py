"""Measure a model's receptive field empirically, by the gradient of single output pixels w.r.t. the input.

What is measured is the *architectural* receptive field: the set of input pixels that can influence an output pixel
for SOME weights. That is the quantity the halo must cover, because the halo has to hold for whatever weights
training produces. A plain gradient on the trained (or random) model underestimates it: on a zero input every ReLU
sits at its kink and PyTorch passes no gradient, and on a random input dead ReLUs, max-pool argmaxes and cancelling
weights hide whole paths. So the measurement runs on a float64 *proxy* copy in eval mode:

- every weight is positive (``1/fan_in``), biases are zero, normalisation layers are identities, the input is all
  ones: every activation is positive, every ReLU passes its gradient, and no two paths can cancel, so an input pixel
  has a non-zero gradient exactly when some path connects it to the output pixel;
- max-pools become average pools of the same window (a max can pick any pixel of its window);
- channel-wise softmax becomes an identity (it changes nothing spatially, but with identical channels its gradient
  is exactly zero).

The receptive field of a pooling network depends on the output pixel's position relative to the pooling grid, so
every phase (``size_step`` consecutive output pixels, one per batch sample) is measured and the worst is reported.
Along each space axis the input is long (doubled until the gradient no longer reaches its ends) and the other space
axes have the minimum size: every op here reaches its own position (3x3 convs, pooling cells and their upsampling),
so the line through the output pixel sees the full extent while the cost stays that of a 1D problem.

Halo choice: ``halo`` is the largest one-sided reach in pixels (``>= (diameter - 1) / 2``), NOT rounded up to a
multiple of ``size_step``. The runtime already aligns tile starts to the step and keeps, from each tile, only the
pixels more than ``halo`` away from a cut; with that, a tiled prediction equals the whole-image one as soon as the
halo covers the reach, and rounding up would only add overlap (compute) for no accuracy.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import torch
import torch.nn as nn

from biozoo.runtime import BiozooError

from .io_contract import IOContract

_MAX_LENGTH = 8192


@dataclass(frozen=True)
class ReceptiveField:
    """Per space axis: the widest receptive field (``diameter``) and the farthest one-sided reach, over all phases."""

    diameter: tuple[int, ...]
    reach: tuple[int, ...]

    @property
    def size(self) -> int:
        """The diameter along the worst axis (what IOContract.receptive_field holds)."""
        return max(self.diameter)

    @property
    def halo(self) -> int:
        """Pixels to discard on each side of a tile so that tiling equals whole-image prediction."""
        return max(self.reach)


@functools.lru_cache(maxsize=128)
def receptive_field_of(builder: Callable[[Hashable], nn.Module], config: Hashable) -> ReceptiveField:
    """The receptive field of ``builder(config)``, measured once per (architecture, config) in this process.

    Architectures pass the cheapest config with the same receptive field (one base channel, no batch norm): channel
    counts and pointwise layers never change which pixels are connected, and the measurement is then milliseconds.
    """
    return measure_receptive_field(builder(config))


def measure_receptive_field(model: nn.Module, contract: Optional[IOContract] = None) -> ReceptiveField:
    """Measure ``model``'s architectural receptive field (see the module docstring); ``model`` is not modified.

    ``contract`` defaults to ``model.io_contract(measure=False)``; the model must map a valid input to an output
    with the same space shape.
    """
    if contract is None:
        contract = model.io_contract(measure=False)  # type: ignore[operator]
    proxy = _positive_proxy(model)
    diameters, reaches = [], []
    for axis in range(contract.spatial_dims):
        length = contract.next_valid(max(4 * contract.min_size, 8 * contract.size_step))
        while True:
            found = _measure_axis(proxy, contract, axis, length)
            if found is not None:
                break
            if length >= _MAX_LENGTH:
                raise BiozooError(
                    f"receptive field along {contract.space_axes[axis]!r} is wider than {_MAX_LENGTH} pixels; "
                    "the architecture is not suitable for tiling"
                )
            length = contract.next_valid(2 * length)
        diameters.append(found[0])
        reaches.append(found[1])
    return ReceptiveField(diameter=tuple(diameters), reach=tuple(reaches))


def contract_with_receptive_field(contract: IOContract, rf: ReceptiveField) -> IOContract:
    return contract.with_receptive_field(rf.size, rf.halo)


def _measure_axis(proxy: nn.Module, contract: IOContract, axis: int, length: int) -> Optional[tuple[int, int]]:
    """(diameter, reach) along ``axis`` for an input ``length`` long, or None when the gradient reaches the ends."""
    step, dims = contract.size_step, contract.spatial_dims
    space = [contract.min_size] * dims
    space[axis] = length
    x = torch.ones((step, contract.in_channels, *space), dtype=torch.float64, requires_grad=True)
    out = proxy(x)
    if tuple(out.shape[2:]) != tuple(space):
        raise BiozooError(
            "receptive field measurement needs a same-size model; "
            f"input space {tuple(space)} gave output space {tuple(out.shape[2:])}"
        )
    centre = (length // 2) // step * step
    others = [n // 2 for n in space]
    picked = []
    for phase in range(step):
        index = list(others)
        index[axis] = centre + phase
        picked.append(out[(phase, 0, *index)])
    torch.stack(picked).sum().backward()
    assert x.grad is not None
    grad = x.grad.abs().sum(dim=1)  # (phase, *space)
    line_index: list[int | slice] = [slice(None), *others]
    line_index[1 + axis] = slice(None)
    lines = grad[tuple(line_index)]  # (phase, length)
    diameter = reach = 0
    for phase in range(step):
        hits = torch.nonzero(lines[phase] > 0).flatten()
        if hits.numel() == 0:
            raise BiozooError("the model's output does not depend on its input; cannot measure a receptive field")
        lo, hi = int(hits.min()), int(hits.max())
        if lo == 0 or hi == length - 1:
            return None
        pos = centre + phase
        diameter = max(diameter, hi - lo + 1)
        reach = max(reach, pos - lo, hi - pos)
    return diameter, reach


def _positive_proxy(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with positive weights, max-pools as average pools and no softmax."""
    proxy = copy.deepcopy(model).to(torch.float64).eval()
    _swap_modules(proxy)
    with torch.no_grad():
        for module in proxy.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
        for name, p in proxy.named_parameters():
            if p.ndim <= 1:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
            else:
                p.fill_(1.0 / p[0].numel())
    return proxy


_POOLS: dict[type, type] = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}


def _swap_modules(module: nn.Module) -> None:
    for name, child in module.named_children():
        if type(child) in _POOLS:
            pool: Any = child
            if pool.dilation not in (1, (1,) * 3, (1, 1)):
                raise BiozooError("receptive field measurement does not support dilated max-pooling")
            avg = _POOLS[type(child)](pool.kernel_size, pool.stride, pool.padding, ceil_mode=pool.ceil_mode)
            setattr(module, name, avg)
        elif isinstance(child, (nn.Softmax, nn.Softmax2d, nn.LogSoftmax)):
            setattr(module, name, nn.Identity())
        else:
            _swap_modules(child)
