"""The shared contract every registered architecture must honour, run on its ``*_tiny`` variant.

A new architecture gets all of these checks by registering ``<name>_tiny``; nothing here names a class.
Variants of a tiny model (other flags) can be added to VARIANTS when their code paths differ.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import torch

from biozoo.runtime import BiozooError
from biozoo.zoo import IOContract, create_model, list_models, measure_receptive_field

torch.set_num_threads(2)

TINY = list_models("*_tiny")
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "unet2d_tiny": [
        dict(n2v2=True, residual=True, batch_norm=False, final_activation="softmax", in_channels=2, out_channels=3),
        dict(residual=True, final_activation="sigmoid", convs_per_block=1, depth=1),
    ],
    "unet3d_tiny": [dict(n2v2=True, residual=True, final_activation="sigmoid")],
}
CASES = [pytest.param(name, {}, id=name) for name in TINY] + [
    pytest.param(name, ov, id=f"{name}-" + "-".join(f"{k}={v}" for k, v in ov.items()))
    for name, ovs in VARIANTS.items()
    if name in TINY
    for ov in ovs
]


def _build(name: str, overrides: dict[str, Any], seed: int = 0) -> Any:  # an nn.Module with io_contract()
    torch.manual_seed(seed)
    return create_model(name, **overrides)


def _odd_sizes(c: IOContract) -> list[tuple[int, ...]]:
    """Valid but unusual space sizes: the minimum, and non-square ones that are not powers of two."""
    m, s = c.min_size, c.size_step
    if c.spatial_dims == 2:
        return [(m, m), (m + 3 * s, m + 5 * s), (m + 5 * s, m + s)]
    return [(m, m, m), (m + s, m + 3 * s, m + 2 * s)]


def _input(c: IOContract, space: tuple[int, ...], batch: int = 1) -> torch.Tensor:
    return torch.randn(c.input_shape(space, batch=batch))


class _OnInputGrid(torch.nn.Module):
    """A strided model (``output_stride > 1``, e.g. head maps at stride 4) with each map cell repeated onto the input
    pixels it covers: the receptive-field and tiling checks then compare in input pixels, as for same-size models."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.stride = net.io_contract(measure=False).output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        for dim in range(2, y.ndim):
            y = y.repeat_interleave(self.stride, dim=dim)
        return y

    def io_contract(self, *, measure: bool = True) -> IOContract:
        return dataclasses.replace(self.net.io_contract(measure=measure), output_stride=1)


def _on_input_grid(model: Any) -> Any:
    return _OnInputGrid(model) if model.io_contract(measure=False).output_stride > 1 else model


def test_every_architecture_has_a_tiny_variant() -> None:
    full = [n for n in list_models() if not n.endswith("_tiny")]
    assert full, "no architecture registered"
    assert [f"{n}_tiny" for n in full] == TINY


@pytest.mark.parametrize("name,overrides", CASES)
def test_forward_on_valid_sizes(name: str, overrides: dict[str, Any]) -> None:
    model = _build(name, overrides).eval()
    c = model.io_contract(measure=False)
    assert c.axes in ("bcyx", "bczyx") and c.min_size % c.size_step == 0
    with torch.no_grad():
        for space in _odd_sizes(c):
            x = _input(c, space, batch=2)
            y = model(x)
            assert tuple(y.shape) == c.output_shape(tuple(x.shape))
            assert torch.isfinite(y).all()
    if overrides.get("final_activation") == "softmax":
        assert torch.allclose(y.sum(dim=1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("name,overrides", CASES)
def test_backward_gives_finite_gradients_to_every_parameter(name: str, overrides: dict[str, Any]) -> None:
    model = _build(name, overrides).train()
    c = model.io_contract(measure=False)
    x = _input(c, _odd_sizes(c)[1], batch=2)
    y = model(x)
    (y * torch.randn_like(y)).sum().backward()  # a random target: softmax outputs sum to a constant
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,overrides", CASES)
def test_state_dict_round_trip_and_rebuild_from_config(name: str, overrides: dict[str, Any]) -> None:
    model = _build(name, overrides, seed=0)
    c = model.io_contract(measure=False)
    x = _input(c, _odd_sizes(c)[-1])
    model.train()
    with torch.no_grad():
        model(x * 3 + 1)  # move BatchNorm running statistics away from their defaults: buffers must travel too
    model.eval()
    config = getattr(model, "config", None)
    is_config = dataclasses.is_dataclass(config) and not isinstance(config, type)
    rebuilt_args = dataclasses.asdict(config) if is_config else overrides  # type: ignore[arg-type]
    clone = _build(name, rebuilt_args, seed=1)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize("name,overrides", CASES)
def test_batch_independence_in_eval_mode(name: str, overrides: dict[str, Any]) -> None:
    model = _build(name, overrides).eval()
    c = model.io_contract(measure=False)
    space = _odd_sizes(c)[1]
    x = _input(c, space)
    other = 1000 * torch.rand(c.input_shape(space)) + 50
    with torch.no_grad():
        alone = model(x)
        together = model(torch.cat([x, other]))[:1]
    assert torch.allclose(alone, together, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,overrides", CASES)
def test_receptive_field_is_measured_and_the_halo_covers_it(name: str, overrides: dict[str, Any]) -> None:
    model = _build(name, overrides)
    c = model.io_contract()
    assert c.receptive_field is not None
    assert 3 <= c.receptive_field <= 64 * c.size_step
    assert (c.receptive_field - 1) / 2 <= c.halo < c.receptive_field
    assert c.valid_size(c.min_tile) and c.min_tile - 2 * c.halo >= c.size_step
    # the cached value (measured on a cheap proxy config) equals a direct measurement of this very model
    direct = measure_receptive_field(_on_input_grid(model))
    assert (direct.size, direct.halo) == (c.receptive_field, c.halo)
    assert model.io_contract() == c  # cached, stable


@pytest.mark.parametrize("name,overrides", CASES)
def test_tiling_with_the_halo_reproduces_the_whole_image(name: str, overrides: dict[str, Any]) -> None:
    """What the runtime relies on: tiles starting on the size step, cut `halo` pixels inside, equal the full run."""
    model = _on_input_grid(_build(name, overrides)).double().eval()
    c = model.io_contract()
    h, s = c.halo, c.size_step
    tile = c.min_tile
    start = s * (-(-h // s))  # an aligned start with a full halo of real pixels before it
    full_len = c.next_valid(start + tile + h + s)
    for axis in range(c.spatial_dims):
        space = [c.min_size] * c.spatial_dims
        space[axis] = full_len
        x = _input(c, tuple(space)).double()
        cut = [slice(None)] * (2 + c.spatial_dims)
        cut[2 + axis] = slice(start, start + tile)
        with torch.no_grad():
            whole = model(x)
            tiled = model(x[tuple(cut)])
        keep_whole, keep_tile = list(cut), list(cut)
        keep_whole[2 + axis] = slice(start + h, start + tile - h)
        keep_tile[2 + axis] = slice(h, tile - h)
        torch.testing.assert_close(tiled[tuple(keep_tile)], whole[tuple(keep_whole)], rtol=1e-9, atol=1e-9)


def test_measured_receptive_field_matches_a_hand_count() -> None:
    """Depth-1 U-Net, 2 convs per block: decoder convs reach 2 px, the bottleneck convs 2 coarse px (4 px) plus the
    pooling cell (1 px on the far side), the encoder convs 2 px: reach 2 + 4 + 1 + 2 = 9, diameter 18."""
    c = create_model("unet2d_tiny", depth=1, convs_per_block=2).io_contract()
    assert (c.receptive_field, c.halo) == (18, 9)


def test_unknown_model_name_lists_close_matches() -> None:
    with pytest.raises(BiozooError, match=r"unknown model 'unet2'.*'unet2d'") as err:
        create_model("unet2")
    assert "available:" in str(err.value)
    with pytest.raises(BiozooError, match=r"unknown hyperparameter 'dpth'.*'depth'"):
        create_model(TINY[0], dpth=3)


def test_bad_hyperparameters_and_sizes_are_clear_errors() -> None:
    with pytest.raises(BiozooError, match="final_activation"):
        create_model("unet2d_tiny", final_activation="relu")
    with pytest.raises(BiozooError, match="depth must be an int >= 1"):
        create_model("unet2d_tiny", depth=0)
    with pytest.raises(BiozooError, match="conflicts with the model name"):
        create_model("unet2d_tiny", spatial_dims=3)
    c = create_model("unet2d_tiny").io_contract(measure=False)
    assert [c.valid_size(n) for n in (4, 8, 10, 12)] == [False, True, False, True]
    assert [c.next_valid(n) for n in (1, 8, 9, 12, 13)] == [8, 8, 12, 12, 16]
    with pytest.raises(BiozooError, match=r"x=30 .*multiples of 4.*pad to x=32"):
        c.check_space((12, 30))


def test_importing_the_zoo_pulls_in_neither_runtime_internals_nor_exporters() -> None:
    code = (
        "import sys, biozoo.zoo\n"
        "bad = [m for m in sys.modules if m.startswith(('biozoo.exporters', 'onnxruntime'))"
        " or (m.startswith('biozoo.runtime.') and m != 'biozoo.runtime.errors')]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
