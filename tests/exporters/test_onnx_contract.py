"""The export half of the shared model contract: every registered ``*_tiny`` architecture exports to ONNX (IR 8,
opset 17, dynamic batch and space axes), matches torch under onnxruntime at several valid sizes, has no
training-mode nodes, and keeps samples independent of their batch mates."""
from __future__ import annotations

import onnx
import pytest
import torch

from biozoo.exporters import check_batch_independence, check_parity, export_onnx
from biozoo.exporters.parity import onnx_forward, torch_forward
from biozoo.zoo import create_model, list_models

torch.set_num_threads(2)


def _first(forward):
    """Multi-output models: compare their first output (the dense map every zoo model has)."""
    def run(x):
        y = forward(x)
        return y[0] if isinstance(y, (tuple, list)) else y
    return run


@pytest.mark.parametrize("name", list_models("*_tiny"))
def test_tiny_model_exports_with_parity_and_batch_independence(name, tmp_path):
    torch.manual_seed(0)
    net = create_model(name).eval()
    contract = net.io_contract()
    base = max(contract.min_size, contract.size_step * 2)
    example = torch.randn(1, contract.in_channels, *([base] * contract.spatial_dims))
    with torch.no_grad():
        n_out = len(y) if isinstance(y := net(example), (tuple, list)) else 1
    names = ("output",) if n_out == 1 else tuple(f"output{i}" for i in range(n_out))
    info = export_onnx(net, example, tmp_path / "m.onnx", output_names=names)
    proto = onnx.load(str(info.path))
    assert proto.ir_version == 8 and {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert "BatchNormalization" not in info.node_types or all(
        len(n.output) == 1 for n in proto.graph.node if n.op_type == "BatchNormalization")
    step = contract.size_step
    sizes = [base, base + step, base + 3 * step]  # odd multiples too: sizes must not be traced as constants
    inputs = [torch.randn(2, contract.in_channels, *([s] * (contract.spatial_dims - 1)), sizes[(i + 1) % 3]).numpy()
              for i, s in enumerate(sizes)]
    reference, candidate = _first(torch_forward(net)), _first(onnx_forward(info.path))
    report = check_parity(reference, candidate, inputs)
    assert report.max_abs_error <= report.abs_tolerance
    for forward in (reference, candidate):
        assert check_batch_independence(forward, inputs[0][0], name) <= 1e-5


def test_parity_and_independence_checks_fail_on_real_differences():
    from biozoo.runtime import ExportError

    torch.manual_seed(0)
    net = create_model("unet2d_tiny").eval()
    x = torch.randn(1, 1, 32, 32).numpy()
    reference = torch_forward(net)
    with pytest.raises(ExportError, match="parity failed"):
        check_parity(reference, lambda a: reference(a) + 1e-2, [x])
    with pytest.raises(ExportError, match="shape"):
        check_parity(reference, lambda a: reference(a)[..., :-1], [x])
    with pytest.raises(ExportError, match="same batch"):
        check_batch_independence(lambda a: reference(a - a.mean(0, keepdims=True)), x[0], "mixing")


class _BatchStatsNorm(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.batch_norm(x, torch.zeros(1), torch.ones(1), training=True)


def test_training_mode_batch_norm_node_is_refused(tmp_path):
    from biozoo.runtime import ExportError

    with pytest.raises(ExportError, match="training mode"):
        export_onnx(_BatchStatsNorm(), torch.randn(1, 1, 16, 16), tmp_path / "bn.onnx")
    assert not (tmp_path / "bn.onnx").exists()
