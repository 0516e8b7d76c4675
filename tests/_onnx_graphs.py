"""Tiny ONNX graphs for the test fixture packages, built with ``onnx.helper`` (no torch).

Every builder returns the serialized model (opset 17, IR version 8 so that onnxruntime 1.31
loads it although onnx 1.23 defaults to IR 14).  Weights are drawn from
``np.random.default_rng(seed)`` so the packages are byte-for-byte reproducible.
Graph input/output names equal the bioimage.io tensor ids of the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

Dims = Sequence["int | str"]


class Graph:
    """Minimal graph builder: every method appends a node and returns its output name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def input(self, name: str, dims: Dims) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims)))
        return name

    def output(self, name: str, x: str, dims: Dims) -> None:
        self.nodes.append(helper.make_node("Identity", [x], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims)))

    def const(self, value: "np.ndarray | Sequence[float]", dtype=np.float32) -> str:
        name = self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        out = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, *, nd: int = 2, stride: int = 1,
             pad: "int | None" = None) -> str:
        fan_in = cin * k**nd
        w = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(cout, cin) + (k,) * nd)
        b = self.rng.normal(0.0, 0.1, size=cout)
        pad = k // 2 if pad is None else pad
        return self.op("Conv", [x, self.const(w), self.const(b)], kernel_shape=[k] * nd,
                       pads=[pad] * (2 * nd), strides=[stride] * nd)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def maxpool(self, x: str, nd: int = 2) -> str:
        return self.op("MaxPool", [x], kernel_shape=[2] * nd, strides=[2] * nd)

    def upsample(self, x: str, nd: int = 2) -> str:
        scales = self.const([1.0, 1.0] + [2.0] * nd)
        return self.op("Resize", [x, "", scales], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def concat(self, *xs: str) -> str:
        return self.op("Concat", list(xs), axis=1)

    def serialize(self, name: str) -> bytes:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="biozoo-tests")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model.SerializeToString()


def unet2d(seed: int = 0, width: int = 8) -> bytes:
    """2-level U-Net: raw (batch,1,y,x) -> prob (batch,1,y,x); y, x divisible by 4. `width`: first-level channels."""
    g = Graph(seed)
    dims = ["batch", 1, "y", "x"]
    w = width
    x = g.input("raw", dims)
    e1 = g.relu(g.conv(x, 1, w))
    e2 = g.relu(g.conv(g.maxpool(e1), w, 2 * w))
    bottom = g.relu(g.conv(g.maxpool(e2), 2 * w, 2 * w))
    d2 = g.relu(g.conv(g.concat(g.upsample(bottom), e2), 4 * w, w))
    out = g.conv(g.concat(g.upsample(d2), e1), 2 * w, 1)
    g.output("prob", out, dims)
    return g.serialize("unet2d")


def unet3d(seed: int = 7) -> bytes:
    """1-level 3D U-Net-like net: raw (batch,1,z,y,x) -> prob; z, y, x even."""
    g = Graph(seed)
    dims = ["batch", 1, "z", "y", "x"]
    x = g.input("raw", dims)
    e1 = g.relu(g.conv(x, 1, 4, nd=3))
    e2 = g.relu(g.conv(g.maxpool(e1, nd=3), 4, 8, nd=3))
    out = g.conv(g.concat(g.upsample(e2, nd=3), e1), 12, 1, nd=3)
    g.output("prob", out, dims)
    return g.serialize("unet3d")


def single_conv(seed: int, dims: Dims, inp: str = "raw", out: str = "out", *, k: int = 3,
                cin: int = 1, cout: int = 1, hidden: int = 0) -> bytes:
    """conv(k) [-> relu -> conv(1x1)] on a (batch, channel, y, x) tensor with fixed or symbolic dims."""
    g = Graph(seed)
    x = g.input(inp, dims)
    if hidden:
        y = g.conv(g.relu(g.conv(x, cin, hidden, k)), hidden, cout, 1)
    else:
        y = g.conv(x, cin, cout, k)
    g.output(out, y, [dims[0], cout, *dims[2:]])
    return g.serialize(f"conv_{inp}_{out}")


def identity(inp: str, out: str, dims: Dims) -> bytes:
    """The input passed through (e.g. maps that a package's post-processing turns into labels)."""
    g = Graph(0)
    g.output(out, g.input(inp, dims), dims)
    return g.serialize(f"identity_{inp}_{out}")


def every_second_pixel(inp: str, out: str, dims: Dims, out_dims: Dims) -> bytes:
    """(batch, y, x, c) -> every second row and column from the first (a StarDist network's grid-2 raster)."""
    g = Graph(0)
    x = g.input(inp, dims)
    c = g.const
    sub = g.op("Slice", [x, c([0, 0], dtype=np.int64), c([2**31 - 1] * 2, dtype=np.int64),
                         c([1, 2], dtype=np.int64), c([2, 2], dtype=np.int64)])
    g.output(out, sub, out_dims)
    return g.serialize(f"every_second_pixel_{inp}_{out}")


def multi_io(seed: int = 3) -> bytes:
    """Inputs a, b (batch,1,y,x); outputs sum = conv3x3(a) + b and prod = a * b."""
    g = Graph(seed)
    dims = ["batch", 1, "y", "x"]
    a = g.input("a", dims)
    b = g.input("b", dims)
    g.output("sum", g.op("Add", [g.conv(a, 1, 1), b]), dims)
    g.output("prod", g.op("Mul", [a, b]), dims)
    return g.serialize("multi_io")


def nobatch(seed: int = 5) -> bytes:
    """Rank-3 graph raw (1,y,x) -> out (1,y,x) via Unsqueeze -> conv -> relu -> conv -> Squeeze."""
    g = Graph(seed)
    x = g.input("raw", [1, "y", "x"])
    axes0 = g.const([0], dtype=np.int64)
    x4 = g.op("Unsqueeze", [x, axes0])
    y4 = g.conv(g.relu(g.conv(x4, 1, 4)), 4, 1)
    g.output("out", g.op("Squeeze", [y4, axes0]), [1, "y", "x"])
    return g.serialize("nobatch")


def scaled(seed: int = 11, crop: int = 4) -> bytes:
    """raw (batch,1,y,x) -> down: stride-2 conv3x3 (y/2, x/2); inner: conv3x3 cropped by `crop` per side."""
    g = Graph(seed)
    x = g.input("raw", ["batch", 1, "y", "x"])
    g.output("down", g.conv(x, 1, 1, 3, stride=2), ["batch", 1, "y2", "x2"])
    full = g.conv(x, 1, 1, 3)
    starts, ends = g.const([crop, crop], dtype=np.int64), g.const([-crop, -crop], dtype=np.int64)
    inner = g.op("Slice", [full, starts, ends, g.const([2, 3], dtype=np.int64)])
    g.output("inner", inner, ["batch", 1, "yc", "xc"])
    return g.serialize("scaled")


def heads(seed: int, names: Sequence[str]) -> bytes:
    """raw (batch,1,y,x) -> one conv3x3 -> relu -> conv1x1 head per output name."""
    g = Graph(seed)
    dims = ["batch", 1, "y", "x"]
    x = g.relu(g.conv(g.input("raw", dims), 1, 4))
    for name in names:
        g.output(name, g.conv(x, 4, 1, 1), dims)
    return g.serialize("heads")


def blob_segmenter(layers: int = 7, gain: float = 12.0) -> bytes:
    """raw (batch,1,y,x) -> logits: `layers` 3x3 box filters, then gain * (smoothed - 0.5).

    A deterministic "segmenter" (foreground = bright after normalization) with a known receptive field of
    1 + 2 * layers pixels, for tests of the input checks that need meaningful objects in the output."""
    g = Graph(0)
    dims = ["batch", 1, "y", "x"]
    x = g.input("raw", dims)
    box = np.full((1, 1, 3, 3), 1.0 / 9.0)
    for _ in range(layers):
        x = g.op("Conv", [x, g.const(box), g.const([0.0])], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    out = g.op("Add", [g.op("Mul", [x, g.const([gain])]), g.const([-gain / 2])])
    g.output("prob", out, dims)
    return g.serialize("blob_segmenter")


def skewed_segmenter(layers: int = 7, gain: float = 12.0, skew: float = 6.0) -> bytes:
    """blob_segmenter plus `skew` * (the right neighbour - the pixel): a term that only fine texture makes large and
    that a flip turns around. On smooth blobs the prediction hardly changes under a flip; on noise it is arbitrary
    (for the out-of-distribution check)."""
    g = Graph(0)
    dims = ["batch", 1, "y", "x"]
    raw = x = g.input("raw", dims)
    box = np.full((1, 1, 3, 3), 1.0 / 9.0)
    for _ in range(layers):
        x = g.op("Conv", [x, g.const(box), g.const([0.0])], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    step = np.zeros((1, 1, 3, 3))
    step[0, 0, 1, 1], step[0, 0, 1, 2] = -skew, skew
    texture = g.op("Conv", [raw, g.const(step), g.const([0.0])], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    out = g.op("Add", [g.op("Add", [g.op("Mul", [x, g.const([gain])]), g.const([-gain / 2])]), texture])
    g.output("prob", out, dims)
    return g.serialize("skewed_segmenter")


def batch_mixing(seed: int = 13) -> bytes:
    """raw (batch,1,y,x) -> out: subtracts the mean over batch AND space (ReduceMean axes [0, 2, 3]) before a
    conv: a normalization across the batch inside the graph, so each sample's output depends on the others."""
    g = Graph(seed)
    dims = ["batch", 1, "y", "x"]
    x = g.input("raw", dims)
    mean = g.op("ReduceMean", [x], axes=[0, 2, 3], keepdims=1)
    g.output("out", g.conv(g.op("Sub", [x, mean]), 1, 1), dims)
    return g.serialize("batch_mixing")


def batchnorm_training_mode(seed: int = 17) -> bytes:
    """conv -> BatchNorm2d -> relu -> conv exported from torch with TrainingMode.TRAINING: the BatchNormalization
    node has training_mode=1 and normalizes with the statistics of the batch it is given (the classic export bug).
    Needs torch (imported here only)."""
    import io

    import torch

    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Conv2d(4, 1, 1)

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))

    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "y", 3: "x"}
    torch.onnx.export(Net().train(), (torch.randn(2, 1, 32, 32),), buffer, opset_version=OPSET, dynamo=False,
                      input_names=["raw"], output_names=["prob"], dynamic_axes={"raw": dynamic, "prob": dynamic},
                      training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
