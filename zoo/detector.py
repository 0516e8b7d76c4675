"""A small anchor-free single-stage 2D detector (CenterNet/FCOS style) and its NMS'd export form.

Design choices a caller must know:

- Backbone: U-Net-like encoder of ``depth`` stride-2 levels (the U-Net's ConvBlocks, max-pooling), decoder with
  skip connections back up to the output stride (``stride``, 4 by default), then a shared 3x3 conv and two 1x1
  heads. ``forward`` returns the DENSE head maps ``[B, num_classes + 4, H / stride, W / stride]``: per class an
  objectness logit (a peak at each object's centre cell), then ``log(distance / stride)`` from the cell centre to
  the box's left, top, right and bottom edges. Dense maps are what training, the receptive-field probe and the
  shared contract test use; they are same-grid predictions, so tiling them would be exact.
- ``decode`` turns the maps into candidate boxes: sigmoid scores, kept only at 3x3 local maxima (CenterNet's
  "peak NMS"), box edges from the distances. ``DetectorWithNMS`` appends greedy box NMS; exported with
  ``export_detector_onnx`` the NMS is ONNX ``NonMaxSuppression`` inside the graph, and the outputs are
  ``boxes [K, 4]`` (x_min, y_min, x_max, y_max in input pixels, pixel edges as in biozoo.zoo.boxes),
  ``scores [K]`` and ``labels [K]`` (int64), sorted by decreasing score. K is a FIXED capacity
  (``max_detections``, for all classes together): the detections fill the first rows, the rest are padding rows
  (score 0, label 0, box 0, 0, 0, 0), as end-to-end exported detectors do. Why not a data-dependent K: an image
  without objects would give empty outputs, and bioimage.io forbids a data-dependent axis of length 0
  (bioimageio.core's test_model fails the package). A real detection always has score > score_threshold >= 0, so
  "score 0" marks padding unambiguously (``PADDING``, recorded in the package). Labels follow torchvision's
  detection convention: 1 = the first class, 0 = background (only in padding rows); YOLO files use ``label - 1``.
  Why not 0-based class ids: a one-class detector's would be all zeros, and bioimageio.spec refuses a test tensor
  whose values are all ~0. The graph takes one image at a time (batch 1): box lists of several images cannot share
  one tensor.
- Inputs: multiples of ``2**depth`` from ``2 * 2**depth``, as for the U-Net.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from biozoo.runtime import BiozooError

from .io_contract import IOContract
from .receptive_field import contract_with_receptive_field, receptive_field_of
from .registry import build_config, register_model
from .networks import ConvBlock

PADDING = "rows with score 0"  # how the graph marks unused rows (config.biozoo.detection.padding; runtime reads it)
MAX_LOG_DISTANCE = 8.0  # exp(8) * stride: far beyond any image; keeps exp finite for wild logits
NMS_KEEPS_ALL = 2**31 - 1  # NonMaxSuppression's max_output_boxes_per_class: no cap (see DetectorWithNMS)
PRIOR = 0.1  # initial objectness probability (CenterNet: bias -2.19): training starts from "little here"


@dataclass(frozen=True)
class DetectorConfig:
    """Every hyperparameter of a detector; ``dataclasses.asdict(model.config)`` rebuilds it via ``create_model``."""

    in_channels: int = 1
    num_classes: int = 1
    depth: int = 4
    stride: int = 4
    base_channels: int = 8
    max_channels: int = 128
    convs_per_block: int = 2
    batch_norm: bool = True
    residual: bool = False

    def __post_init__(self) -> None:
        ints = {"in_channels": 1, "num_classes": 1, "depth": 1, "stride": 1, "base_channels": 1, "max_channels": 1,
                "convs_per_block": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BiozooError(f"detector {name} must be an int >= {low}, got {value!r}")
        if self.depth > 6:
            raise BiozooError(f"detector depth {self.depth} is too deep: inputs would need multiples of "
                              f"2**{self.depth}")
        if self.stride & (self.stride - 1) or self.stride > 2**self.depth:
            raise BiozooError(f"detector stride {self.stride} must be a power of two <= 2**depth = {2**self.depth}; "
                              "use 4 (the usual choice) or raise depth")
        for name in ("batch_norm", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise BiozooError(f"detector {name} must be true or false, got {getattr(self, name)!r}")

    @property
    def channels(self) -> list[int]:
        return [min(self.base_channels * 2**level, self.max_channels) for level in range(self.depth + 1)]

    @property
    def out_level(self) -> int:
        return self.stride.bit_length() - 1


class Detector(nn.Module):
    """Backbone + decoder to ``stride`` + objectness and box-distance heads (dense maps, see the module doc)."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = c = config
        ch = c.channels
        self.encoders = nn.ModuleList()
        cin = c.in_channels
        for level in range(c.depth + 1):
            self.encoders.append(ConvBlock(2, cin, ch[level], c.convs_per_block, c.batch_norm, c.residual))
            cin = ch[level]
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(c.out_level, c.depth)):
            self.ups.append(nn.ConvTranspose2d(ch[level + 1], ch[level], 2, stride=2))
            self.decoders.append(ConvBlock(2, 2 * ch[level], ch[level], c.convs_per_block, c.batch_norm, c.residual))
        top = ch[c.out_level]
        self.neck = nn.Sequential(nn.Conv2d(top, top, 3, padding=1), nn.ReLU(inplace=True))
        self.objectness = nn.Conv2d(top, c.num_classes, 1)
        self.distances = nn.Conv2d(top, 4, 1)
        with torch.no_grad():
            self.objectness.bias.fill_(-float(torch.log(torch.tensor((1 - PRIOR) / PRIOR))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encode in enumerate(self.encoders):
            x = encode(x if level == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, decode in zip(self.ups, self.decoders):
            x = decode(torch.cat([skips.pop(), up(x)], dim=1))
        x = self.neck(x)
        return torch.cat([self.objectness(x), self.distances(x)], dim=1)

    def io_contract(self, *, measure: bool = True) -> IOContract:
        """Axes, sizes (``2**depth`` steps from ``2 * 2**depth``), output stride and, when ``measure``, the receptive
        field and halo in input pixels (measured on the maps upsampled to the input grid, see ``_SameGrid``)."""
        c = self.config
        step = 2**c.depth
        contract = IOContract(axes="bcyx", in_channels=c.in_channels, out_channels=c.num_classes + 4,
                              size_step=step, min_size=2 * step, output_stride=c.stride)
        if not measure:
            return contract
        rf = receptive_field_of(_same_grid_proxy, self.receptive_field_config())
        return contract_with_receptive_field(contract, rf)

    def receptive_field_config(self) -> DetectorConfig:
        """The cheapest config with this model's connectivity (channels and BN never change the receptive field)."""
        return dataclasses.replace(self.config, in_channels=1, num_classes=1, base_channels=1, max_channels=1,
                                   batch_norm=False)


class _SameGrid(nn.Module):
    """The head maps repeated ``stride`` times along y and x: one value per input pixel, so the receptive-field
    probe (which needs same-size outputs) measures, per input pixel, the input region its map cell depends on."""

    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.net.config.stride
        return self.net(x).repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)

    def io_contract(self, *, measure: bool = False) -> IOContract:
        return dataclasses.replace(self.net.io_contract(measure=False), output_stride=1)


def _same_grid_proxy(config: DetectorConfig) -> _SameGrid:
    return _SameGrid(Detector(config))


def same_grid(net: Detector) -> nn.Module:
    """``net`` with its head maps repeated onto the input grid (for tests and probes that need same-size maps)."""
    return _SameGrid(net)


# ------------------------------------------------------------------------------------------- decode and NMS
def decode(maps: torch.Tensor, num_classes: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense head maps -> candidate ``boxes [B, N, 4]`` (xyxy, input pixels) and ``scores [B, C, N]`` (0 except at
    3x3 local maxima of each class's sigmoid map), N = map height x width. Shape-agnostic (exports with dynamic
    sizes): the cell-centre grids come from cumulative sums, not from Python ints."""
    heat = torch.sigmoid(maps[:, :num_classes])
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    dist = torch.exp(torch.clamp(maps[:, num_classes:num_classes + 4], max=MAX_LOG_DISTANCE)) * stride
    ones = torch.ones_like(maps[:, :1])
    cy = (torch.cumsum(ones, 2) - 0.5) * stride
    cx = (torch.cumsum(ones, 3) - 0.5) * stride
    boxes = torch.cat([cx - dist[:, 0:1], cy - dist[:, 1:2], cx + dist[:, 2:3], cy + dist[:, 3:4]], dim=1)
    return boxes.flatten(2).transpose(1, 2), peaks.flatten(2)


def nms_indices(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
    """ONNX NonMaxSuppression's semantics in torch (eager reference): ``[K, 3]`` rows (batch, class, box index).

    Per batch and class: candidates with score > ``score_threshold``, by decreasing score; a candidate is dropped
    when its IoU with an already kept box is > ``iou_threshold``; at most ``max_per_class`` kept.
    """
    rows = []
    for b in range(boxes.shape[0]):
        xyxy = boxes[b].to(torch.float64)
        lo = torch.minimum(xyxy[:, :2], xyxy[:, 2:])  # NonMaxSuppression accepts either diagonal
        hi = torch.maximum(xyxy[:, :2], xyxy[:, 2:])
        area = (hi - lo).prod(1)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            cand = torch.nonzero(s > score_threshold).flatten()
            cand = cand[torch.argsort(s[cand], descending=True, stable=True)]
            kept: list[int] = []
            for i in cand.tolist():
                if len(kept) >= max_per_class:
                    break
                if kept:
                    k = torch.tensor(kept)
                    inter = (torch.minimum(hi[k], hi[i]) - torch.maximum(lo[k], lo[i])).clamp(min=0).prod(1)
                    iou = inter / (area[k] + area[i] - inter).clamp(min=1e-12)
                    if bool((iou > iou_threshold).any()):
                        continue
                kept.append(i)
            rows.extend((b, c, i) for i in kept)
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


class _NonMaxSuppression(torch.autograd.Function):
    """Eager: ``nms_indices``; exported (TorchScript exporter): one ONNX NonMaxSuppression node."""

    @staticmethod
    def forward(ctx: Any, boxes, scores, max_per_class, iou_threshold, score_threshold):  # type: ignore[override]
        return nms_indices(boxes, scores, int(max_per_class), float(iou_threshold), float(score_threshold))

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):  # pragma: no cover - export
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_threshold, score_threshold,
                    center_point_box_i=0)


class DetectorWithNMS(nn.Module):
    """The exported form: one image ``[1, C, H, W]`` -> ``(boxes [K, 4], scores [K], labels [K] int64, 1-based)``.

    ``score_threshold`` drops weak peaks, ``iou_threshold`` is the NMS overlap limit, ``max_detections`` is K, the
    fixed number of rows of every output (all classes together): the detections by decreasing score (the best K
    when there are more), then padding rows of zeros (see ``PADDING``).
    """

    def __init__(self, net: Detector, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 max_detections: int = 1000) -> None:
        super().__init__()
        if not 0 <= score_threshold < 1 or not 0 < iou_threshold <= 1 or max_detections < 1:
            raise BiozooError(f"score_threshold {score_threshold} must be in [0, 1), iou_threshold {iou_threshold} in "
                              f"(0, 1], max_detections {max_detections} >= 1")
        self.net = net
        self.settings = {"score_threshold": float(score_threshold), "iou_threshold": float(iou_threshold),
                         "max_detections": int(max_detections)}
        # NMS itself keeps every surviving box: capping it at K would let NonMaxSuppression's own order among tied
        # scores (not specified by ONNX, not eager's) choose which K survive; the capacity cut comes after the sort
        self.register_buffer("max_per_class", torch.tensor([NMS_KEEPS_ALL], dtype=torch.int64), persistent=False)
        self.register_buffer("iou_threshold", torch.tensor([iou_threshold], dtype=torch.float32), persistent=False)
        self.register_buffer("score_threshold", torch.tensor([score_threshold], dtype=torch.float32),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not torch.jit.is_tracing() and x.shape[0] != 1:
            raise BiozooError(f"DetectorWithNMS takes one image at a time (batch 1), got a batch of {x.shape[0]}")
        c = self.net.config
        boxes, scores = decode(self.net(x), c.num_classes, c.stride)
        selected = _NonMaxSuppression.apply(boxes, scores, self.max_per_class, self.iou_threshold,
                                            self.score_threshold)
        # One order whatever NonMaxSuppression did with tied scores: by (class, box index), then by decreasing
        # score with ties kept in that order (ONNX TopK's documented tie-break; a stable sort in eager mode).
        flat = selected[:, 1] * scores.shape[2] + selected[:, 2]
        _, first = torch.topk(-flat.to(torch.float64), flat.shape[0])  # unique keys: no ties here
        flat = flat[first]
        out_scores = scores[0].reshape(-1).index_select(0, flat)
        if torch.jit.is_tracing():  # exports as TopK (torch.sort does not export)
            _, order = torch.topk(out_scores, out_scores.shape[0])
        else:
            _, order = torch.sort(out_scores, descending=True, stable=True)
        flat = flat[order]
        cells = scores.shape[2]
        return self._pad(boxes[0].index_select(0, flat % cells), out_scores[order], flat // cells + 1)

    def _pad(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exactly K rows: append K rows of zeros, keep the first K. The rows come sorted by decreasing score and
        every real score is > 0, so this keeps the best K detections and puts the padding last; as graph ops
        (Concat + Slice with constant ends) the output length is K whatever NonMaxSuppression found."""
        k = self.settings["max_detections"]
        return (torch.cat([boxes, boxes.new_zeros(k, 4)])[:k], torch.cat([scores, scores.new_zeros(k)])[:k],
                torch.cat([labels, labels.new_zeros(k)])[:k])


OUTPUT_NAMES = ("boxes", "scores", "labels")


def export_detector_onnx(model: DetectorWithNMS, example: torch.Tensor, path: Union[str, Path], *,
                         input_name: str = "raw", output_names: tuple[str, str, str] = OUTPUT_NAMES,
                         opset: int = 17) -> Path:
    """Write ``model`` as ONNX with NonMaxSuppression in the graph: dynamic y/x input sizes, batch fixed to 1,
    outputs of the fixed length K = ``model.settings["max_detections"]``. IR version 8 (what onnxruntime >= 1.16
    reads)."""
    import io
    import warnings

    if example.ndim != 4 or example.shape[0] != 1:
        raise BiozooError(f"the example input must be one image [1, C, Y, X], got shape {tuple(example.shape)}")
    model.eval()
    dynamic = {input_name: {2: "y", 3: "x"}}  # outputs: K rows at every input size (padded in the graph)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation and tracer notes; the graph is checked
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=list(output_names), dynamic_axes=dynamic, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL)
    data = buffer.getvalue()
    import onnx  # lazily: only exporting needs it

    proto = onnx.load_from_string(data)
    if "NonMaxSuppression" not in {n.op_type for n in proto.graph.node}:
        raise BiozooError("the exported detector graph has no NonMaxSuppression node; the export is broken")
    # ONNX shape inference cannot see that Slice(Concat(found, K zeros), 0, K) has K rows (it names the length
    # symbolically): declare it, so the graph says what the rdf says (exporter and tests check the real shapes)
    for output in proto.graph.output:
        first = output.type.tensor_type.shape.dim[0]
        first.ClearField("dim_param")
        first.dim_value = model.settings["max_detections"]
    proto.ir_version = min(proto.ir_version, 8)
    path = Path(path)
    path.write_bytes(proto.SerializeToString())
    return path


def _detector(defaults: dict[str, Any], overrides: dict[str, Any], name: str) -> Detector:
    return Detector(build_config(DetectorConfig, {**defaults, **overrides}, model=name))


@register_model("detector2d")
def detector2d(**overrides: Any) -> Detector:
    """2D detector, depth 4, 8 base channels (up to 128), output stride 4: ~0.5 M parameters."""
    return _detector({}, overrides, "detector2d")


@register_model("detector2d_tiny")
def detector2d_tiny(**overrides: Any) -> Detector:
    """Depth 3, 2 base channels, stride 4 (one decoder level, so every code path runs), for tests."""
    return _detector({"depth": 3, "base_channels": 2, "max_channels": 8}, overrides, "detector2d_tiny")
