"""The zoo's networks in plain PyTorch: this file imports torch and nothing else.

biozoo trains these modules (zoo/unet.py and zoo/stardist.py add configs, validation and IO contracts on top) and
copies this very file into every package with ``pytorch_state_dict`` weights as the architecture source, so a
consumer without biozoo (bioimageio.core, BiaPy, ilastik) builds the network with ``build(**kwargs)`` from the rdf
and loads the state dict. Keep it free of any import but torch and the standard library: a test imports it in a
virtual environment that has only torch.

- ``UNetNetwork``: 2D/3D U-Net, 'same' 3x3(x3) convolutions, 2x2 up-convolutions, skips by concatenation;
  ``n2v2``: max-blur-pool and no top-level skip (N2V2, Hoeck et al. 2022).
- ``StarDistNetwork``: ``log2(grid)`` stem levels, a U-Net on the grid raster, a 3x3 convolution and two 1x1 heads
  (object probability, ``n_rays`` distances), as stardist's own 2D model.
- ``build(network, output, **config)``: the network as packaged, with the output step the package's graph has
  (softmax over channels; channels last for StarDist's post-processing).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(dims: int, cin: int, cout: int, kernel: int, bias: bool = True) -> nn.Module:
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, padding=kernel // 2, bias=bias)


class ConvBlock(nn.Module):
    """``convs_per_block`` x (conv, [BN], ReLU); residual: the last ReLU acts on body + (1x1-projected) input."""

    def __init__(self, dims: int, cin: int, cout: int, n_convs: int, batch_norm: bool, residual: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers.append(_conv(dims, cin if i == 0 else cout, cout, 3, bias=not batch_norm))
            if batch_norm:
                layers.append((nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(cout))
            layers.append(nn.ReLU(inplace=False))
        self.residual = residual
        if residual:
            layers.pop()  # the ReLU comes after the sum
            self.shortcut: nn.Module = nn.Identity() if cin == cout else _conv(dims, cin, cout, 1)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.relu(self.body(x) + self.shortcut(x))
        return self.body(x)


class MaxBlurPool(nn.Module):
    """N2V2's max-blur-pool: max over 2x2 windows at stride 1, then a [1,2,1]-binomial blur at stride 2.

    The stride-1 max is an ``nn.MaxPool`` module (not a functional call) so the receptive-field probe can see it.
    The blur kernel is a non-persistent buffer: a constant, kept out of checkpoints.
    """

    def __init__(self, dims: int, channels: int) -> None:
        super().__init__()
        self.dims = dims
        self.max = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2, stride=1)
        k1 = torch.tensor([1.0, 2.0, 1.0])
        kernel = k1[:, None] * k1[None, :] if dims == 2 else k1[:, None, None] * k1[None, :, None] * k1[None, None, :]
        kernel = (kernel / kernel.sum()).expand(channels, 1, *kernel.shape).contiguous()
        self.kernel: torch.Tensor
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.max(x)
        conv = F.conv2d if self.dims == 2 else F.conv3d
        return conv(x, self.kernel.to(x.dtype), stride=2, padding=1, groups=self.kernel.shape[0])


class UNetNetwork(nn.Module):
    """Encoder of ``depth`` pooling levels, bottleneck, decoder with skips, 1x1 head and final activation."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, depth: int = 4,
                 base_channels: int = 32, convs_per_block: int = 2, batch_norm: bool = True, residual: bool = False,
                 final_activation: str = "none", n2v2: bool = False) -> None:
        super().__init__()
        dims = spatial_dims
        self.n2v2 = n2v2
        ch = [base_channels * 2**level for level in range(depth + 1)]
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            self.encoders.append(ConvBlock(dims, cin, ch[level], convs_per_block, batch_norm, residual))
            self.downs.append(MaxBlurPool(dims, ch[level]) if n2v2 else pool(2))
            cin = ch[level]
        self.bottom = ConvBlock(dims, cin, ch[depth], convs_per_block, batch_norm, residual)
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(up(ch[level + 1], ch[level], 2, stride=2))
            skip = 0 if (n2v2 and level == 0) else ch[level]
            self.decoders.append(ConvBlock(dims, ch[level] + skip, ch[level], convs_per_block, batch_norm, residual))
        self.head = _conv(dims, ch[0], out_channels, 1)
        activations = {"none": nn.Identity, "sigmoid": nn.Sigmoid, "softmax": lambda: nn.Softmax(dim=1)}
        if final_activation not in activations:
            raise ValueError(f"final_activation {final_activation!r} is unknown; expected one of {sorted(activations)}")
        self.activation: nn.Module = activations[final_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encode, down in zip(self.encoders, self.downs):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        top = len(self.decoders) - 1
        for i, (up, decode) in enumerate(zip(self.ups, self.decoders)):
            x = up(x)
            skip = skips.pop()
            if not (self.n2v2 and i == top):
                x = torch.cat([skip, x], dim=1)
            x = decode(x)
        return self.activation(self.head(x))


class StarDistNetwork(nn.Module):
    """``forward``: (B, 1 + n_rays, Y / grid, X / grid); channel 0 the sigmoid probability, 1.. the distances."""

    def __init__(self, in_channels: int = 1, n_rays: int = 32, grid: int = 2, depth: int = 3, base_channels: int = 32,
                 convs_per_block: int = 2, batch_norm: bool = False, residual: bool = False,
                 features: int = 128) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        cin = in_channels
        for _ in range(grid.bit_length() - 1):
            stem += [ConvBlock(2, cin, base_channels, convs_per_block, batch_norm, residual), nn.MaxPool2d(2)]
            cin = base_channels
        self.stem = nn.Sequential(*stem)
        self.body = UNetNetwork(spatial_dims=2, in_channels=cin, out_channels=features, depth=depth,
                                base_channels=base_channels, convs_per_block=convs_per_block, batch_norm=batch_norm,
                                residual=residual)
        self.after = nn.Sequential(nn.ReLU(), nn.Conv2d(features, features, 3, padding=1), nn.ReLU())
        self.prob = nn.Conv2d(features, 1, 1)
        self.dist = nn.Conv2d(features, n_rays, 1)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability logits (B, 1, y, x), distances (B, n_rays, y, x)) on the grid raster."""
        features = self.after(self.body(self.stem(x)))
        return self.prob(features), self.dist(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, dist = self.heads(x)
        return torch.cat([torch.sigmoid(logits), dist], dim=1)


class Softmax(nn.Module):
    """Logits -> class probabilities over the channel axis, so the package outputs what users threshold."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class ChannelsLast(nn.Module):
    """(B, C, Y, X) maps -> (B, Y, X, C), the layout of the StarDist post-processing's input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).permute(0, 2, 3, 1)


NETWORKS: dict[str, Any] = {"unet": UNetNetwork, "stardist2d": StarDistNetwork}
OUTPUTS: dict[str, Any] = {"network": lambda net: net, "softmax": Softmax, "channels_last": ChannelsLast}


def wrap(net: nn.Module, output: str) -> nn.Module:
    """``net`` with the package's output step (one of OUTPUTS)."""
    if output not in OUTPUTS:
        raise ValueError(f"output {output!r} is unknown; expected one of {sorted(OUTPUTS)}")
    return OUTPUTS[output](net)


def build(network: str, output: str = "network", **config: Any) -> nn.Module:
    """The packaged network, untrained: ``network`` one of NETWORKS, ``output`` one of OUTPUTS, ``config`` the
    network's keyword arguments. Load the package's state dict into what this returns."""
    if network not in NETWORKS:
        raise ValueError(f"network {network!r} is unknown; expected one of {sorted(NETWORKS)}")
    return wrap(NETWORKS[network](**config), output)
