"""The parts of a format-0.5 model description the runtime needs, as frozen dataclasses.

Built once from the rdf dict at load time; everything downstream (ops, sizes, tiling, tests) reads these
instead of branching on raw YAML. Unknown or unsupported content is refused here, at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from ..errors import PackageError
from . import rdf_fields as F

DEFAULT_AXIS_IDS = {"batch": "batch", "channel": "channel", "index": "index", "time": "time", "space": "x"}
AXIS_LETTERS = {"batch": "b", "channel": "c", "index": "i", "time": "t"}
DTYPES = ("float32", "float64", "float16", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
          "bool")


@dataclass(frozen=True)
class ParameterizedSize:
    """Valid sizes are min + n * step, n >= 0."""

    min: int
    step: int

    def valid_at_least(self, size: int) -> int:
        """The smallest valid size >= size."""
        if size <= self.min or self.step == 0:
            return self.min
        return self.min + -(-(size - self.min) // self.step) * self.step

    def valid_at_most(self, size: int) -> int:
        """The largest valid size <= size (min when size < min)."""
        if size <= self.min or self.step == 0:
            return self.min
        return self.min + (size - self.min) // self.step * self.step


@dataclass(frozen=True)
class SizeReference:
    """Size taken from another tensor's axis: ref * ref_scale / scale + offset."""

    tensor_id: str
    axis_id: str
    offset: int = 0


@dataclass(frozen=True)
class DataDependentSize:
    """Known only after running the model (e.g. a list of detected boxes)."""

    min: int = 1
    max: Optional[int] = None


AxisSize = Union[int, ParameterizedSize, SizeReference, DataDependentSize, None]


@dataclass(frozen=True)
class Axis:
    id: str
    type: str  # batch | channel | index | time | space
    size: AxisSize
    scale: float = 1.0
    unit: Optional[str] = None
    halo: int = 0
    channel_names: tuple[str, ...] = ()
    concatenable: bool = False
    # internal, never read from an rdf: a coarser raster of the network (StarDist's grid) keeps its last partial
    # cell (ceil(443 / 2) = 222 rows, as stardist crops its padded maps), where the spec's sizes round down
    round_up: bool = False

    @property
    def letter(self) -> str:
        """The caller-facing name: b, c, i, t, or the space axis id (x, y, z)."""
        return AXIS_LETTERS.get(self.type, self.id)


@dataclass(frozen=True)
class Processing:
    """One pre/post-processing step as written in the rdf (built into an op by ops.build_op)."""

    id: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class Tensor:
    id: str
    axes: tuple[Axis, ...]
    processing: tuple[Processing, ...]
    test_tensor: Optional[Mapping[str, Any]]
    dtype: str = "float32"
    optional: bool = False
    description: str = ""

    @property
    def letters(self) -> str:
        return "".join(a.letter for a in self.axes)

    @property
    def discrete(self) -> bool:
        return self.dtype.startswith(("int", "uint", "bool"))

    def axis(self, axis_id: str) -> Axis:
        for a in self.axes:
            if a.id == axis_id:
                return a
        raise PackageError(
            f"tensor '{self.id}' has no axis '{axis_id}' (it has {[a.id for a in self.axes]}); the rdf.yaml refers to "
            "an axis that does not exist: fix the reference in the package description"
        )

    def index(self, axis_id: str) -> int:
        return [a.id for a in self.axes].index(self.axis(axis_id).id)


DISCRETE_OUTPUTS, CONTINUOUS_OUTPUTS = "any_discrete_output", "any_continuous_output"  # spec 0.5.14 selectors


@dataclass(frozen=True)
class Tolerance:
    """One `config.bioimageio.reproducibility_tolerance` entry; `output_ids` empty = every output, or one of the
    selectors DISCRETE_OUTPUTS / CONTINUOUS_OUTPUTS (bioimageio.spec 0.5.14) = every output of that kind."""

    relative: float = 1e-3
    absolute: float = 1e-3
    mismatched_per_million: float = 100
    output_ids: Union[tuple[str, ...], str] = ()

    def applies_to(self, tensor: "Tensor") -> bool:
        if not self.output_ids:
            return True
        if self.output_ids == DISCRETE_OUTPUTS:
            return tensor.discrete
        if self.output_ids == CONTINUOUS_OUTPUTS:
            return not tensor.discrete
        return tensor.id in self.output_ids


# spec 0.5.14's defaults when a package lists no tolerance (0.5.12's single default equals the continuous one)
DEFAULT_TOLERANCES = (Tolerance(output_ids=CONTINUOUS_OUTPUTS),
                      Tolerance(0.0, 0.0, 1000, output_ids=DISCRETE_OUTPUTS))


@dataclass(frozen=True)
class ModelDescription:
    name: str
    format_version: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    weights_formats: tuple[str, ...]
    onnx: Mapping[str, Any]
    tolerances: tuple[Tolerance, ...] = ()
    description: str = ""
    license: str = ""
    authors: tuple[str, ...] = ()
    cite: tuple[str, ...] = ()
    version: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    def input(self, tensor_id: str) -> Tensor:
        return _find(self.inputs, tensor_id, "input")

    def output(self, tensor_id: str) -> Tensor:
        return _find(self.outputs, tensor_id, "output")

    def tensor(self, tensor_id: str) -> Tensor:
        for t in (*self.inputs, *self.outputs):
            if t.id == tensor_id:
                return t
        raise PackageError(f"the description refers to tensor '{tensor_id}', which is neither an input nor an output")

    def tolerance_for(self, output_id: str) -> Tolerance:
        """The first entry that applies to the output (the spec's rule), else the spec's default for its kind."""
        tensor = self.output(output_id)
        for tol in (*self.tolerances, *DEFAULT_TOLERANCES):
            if tol.applies_to(tensor):
                return tol
        return Tolerance()


def _find(tensors: tuple[Tensor, ...], tensor_id: str, kind: str) -> Tensor:
    for t in tensors:
        if t.id == tensor_id:
            return t
    raise PackageError(f"no {kind} tensor '{tensor_id}'; the model's {kind}s are {[t.id for t in tensors]}")


def parse_description(rdf: Mapping[str, Any]) -> ModelDescription:
    """Read a format-0.5 model rdf dict; every field is read typed (rdf_fields), so a malformed package raises a
    PackageError naming the field, never a TypeError from deep inside."""
    weights = F.mapping(rdf.get("weights"), "weights", default={})
    if not weights:
        raise PackageError("rdf.yaml has no 'weights' entry; expected at least 'weights: {onnx: {source: ...}}'")
    if "onnx" not in weights:
        raise PackageError(
            f"the package has no ONNX weights (it has: {', '.join(sorted(weights))}); biozoo runs only 'onnx' weights. "
            "Convert it once with `biozoo convert PACKAGE -o NEW.zip` (needs: pip install 'biozoo[train]'; add "
            "--trust-code for pytorch_state_dict weights, whose architecture is Python code from the package), then "
            "run NEW.zip"
        )
    onnx = F.mapping(weights["onnx"], "weights.onnx")
    F.text(onnx.get("source"), "weights.onnx.source")
    if onnx.get("opset_version") is not None:
        F.integer(onnx["opset_version"], "weights.onnx.opset_version", minimum=1)
    config = F.mapping(rdf.get("config"), "config", default={})
    bioimageio = F.mapping(config.get("bioimageio"), "config.bioimageio", default={})
    entries = F.listing(bioimageio.get("reproducibility_tolerance"), "config.bioimageio.reproducibility_tolerance",
                        default=[])
    tolerances = tuple(_tolerance(t, f"config.bioimageio.reproducibility_tolerance[{i}]")
                       for i, t in enumerate(entries))
    return ModelDescription(
        name=F.text(rdf.get("name"), "name", default="unnamed model"),
        format_version=F.text(rdf.get("format_version"), "format_version"),
        inputs=tuple(_parse_tensor(t, "inputs", i, "preprocessing") for i, t in enumerate(_listed(rdf, "inputs"))),
        outputs=tuple(_parse_tensor(t, "outputs", i, "postprocessing") for i, t in enumerate(_listed(rdf, "outputs"))),
        weights_formats=tuple(weights),
        onnx=dict(onnx),
        tolerances=tuple(t for t in tolerances if t is not None),
        description=F.text(rdf.get("description"), "description", default=""),
        license=F.text(rdf.get("license"), "license", default=""),
        authors=tuple(_author(a, f"authors[{i}]") for i, a in enumerate(F.listing(rdf.get("authors"), "authors",
                                                                                 default=[]))),
        cite=tuple(_citation(c, f"cite[{i}]") for i, c in enumerate(F.listing(rdf.get("cite"), "cite", default=[]))),
        version=F.text(rdf.get("version"), "version", default=""),
        config=dict(config),
    )


def _tolerance(raw: Any, where: str) -> Optional[Tolerance]:
    """One tolerance entry, or None when it is limited to weight formats other than onnx."""
    t = F.mapping(raw, where)
    formats = F.texts(t.get("weights_formats"), f"{where}.weights_formats")
    if formats and "onnx" not in formats:
        return None
    return Tolerance(
        relative=F.number(t.get("relative_tolerance"), f"{where}.relative_tolerance", minimum=0, default=1e-3),
        absolute=F.number(t.get("absolute_tolerance"), f"{where}.absolute_tolerance", minimum=0, default=1e-3),
        mismatched_per_million=F.number(t.get("mismatched_elements_per_million"),
                                        f"{where}.mismatched_elements_per_million", minimum=0, default=100),
        output_ids=_output_ids(t.get("output_ids"), f"{where}.output_ids"),
    )


def _output_ids(raw: Any, where: str) -> Union[tuple[str, ...], str]:
    if raw in (DISCRETE_OUTPUTS, CONTINUOUS_OUTPUTS):
        return str(raw)
    if isinstance(raw, str):
        return (raw,)
    return F.texts(raw, where)


def _listed(rdf: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = rdf.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise PackageError(f"rdf.yaml field '{key}' must be a non-empty list of tensor descriptions; got "
                           f"{F.shown(value)}")
    return value


def _author(entry: Any, where: str) -> str:
    if isinstance(entry, Mapping):
        return F.text(entry.get("name"), f"{where}.name", default="")
    return F.text(entry, where)


def _citation(entry: Any, where: str) -> str:
    if not isinstance(entry, Mapping):
        return F.text(entry, where)
    ref = F.text(entry.get("doi"), f"{where}.doi", default="") and f"doi:{entry['doi']}" or F.text(
        entry.get("url"), f"{where}.url", default="")
    return f"{F.text(entry.get('text'), f'{where}.text', default='')} {ref}".strip()


def _parse_tensor(raw: Mapping[str, Any], field_name: str, index: int, proc_key: str) -> Tensor:
    """One tensor, with the spec's defaults for what bioimageio.spec's writer leaves out (id, data type, the
    ensure_dtype steps that bracket every processing chain)."""
    where = f"{field_name}[{index}]"
    axes_raw = F.listing(raw.get("axes"), f"{where}.axes")
    if not axes_raw:
        raise PackageError(f"{where} needs a non-empty 'axes' list (format 0.5); got keys {sorted(raw)}")
    axes = tuple(_parse_axis(F.mapping(a, f"{where}.axes[{j}]"), f"{where}.axes[{j}]") for j, a in enumerate(axes_raw))
    ids = [a.id for a in axes]
    if len(set(ids)) != len(ids):
        raise PackageError(f"{where}.axes has duplicate axis ids {ids}; each axis of a tensor needs its own id")
    entries = F.listing(raw.get(proc_key), f"{where}.{proc_key}", default=[])
    processing = []
    for j, entry in enumerate(entries):
        p = F.mapping(entry, f"{where}.{proc_key}[{j}]")
        processing.append(Processing(id=F.text(p.get("id"), f"{where}.{proc_key}[{j}].id"),
                                     kwargs=dict(F.mapping(p.get("kwargs"), f"{where}.{proc_key}[{j}].kwargs",
                                                           default={}))))
    data = raw.get("data")
    if isinstance(data, list) and data:  # one data description per channel
        data = data[0]
    data = F.mapping(data, f"{where}.data", default={})
    dtype = F.text(data.get("type"), f"{where}.data.type", default="float32")
    if dtype not in DTYPES:
        raise F.refuse(f"{where}.data.type", dtype, f"one of {', '.join(DTYPES)}")
    if dtype != "float32":  # the spec brackets each chain with ensure_dtype(data.type); a no-op for float32
        if proc_key == "preprocessing" and (not processing or processing[0].id != "ensure_dtype"):
            processing.insert(0, Processing("ensure_dtype", {"dtype": dtype}))
        if not processing or processing[-1].id not in ("ensure_dtype", "binarize"):
            processing.append(Processing("ensure_dtype", {"dtype": dtype}))
    test_tensor = raw.get("test_tensor")
    if test_tensor is not None and not isinstance(test_tensor, str):
        F.text(F.mapping(test_tensor, f"{where}.test_tensor").get("source"), f"{where}.test_tensor.source")
    return Tensor(
        id=F.text(raw.get("id"), f"{where}.id", default="input" if field_name == "inputs" else "output"),
        axes=axes,
        processing=tuple(processing),
        test_tensor=test_tensor,
        dtype=dtype,
        optional=F.flag(raw.get("optional"), f"{where}.optional"),
        description=F.text(raw.get("description"), f"{where}.description", default=""),
    )


def _parse_axis(raw: Mapping[str, Any], where: str) -> Axis:
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in DEFAULT_AXIS_IDS:
        raise PackageError(f"{where}.type is {kind!r}; expected one of {sorted(DEFAULT_AXIS_IDS)} (format 0.5)")
    names = F.texts(raw.get("channel_names"), f"{where}.channel_names")
    if kind == "channel":
        size: AxisSize = len(names) if names else _parse_size(raw.get("size"), f"{where}.size")
    else:
        size = _parse_size(raw.get("size"), f"{where}.size")
    if kind == "batch" and size not in (None, 1):
        raise F.refuse(f"{where}.size", raw.get("size"), "nothing (any batch size) or 1 for a batch axis")
    unit = raw.get("unit")
    return Axis(
        id=F.text(raw.get("id"), f"{where}.id", default=DEFAULT_AXIS_IDS[kind]),
        type=kind,
        size=size,
        scale=F.number(raw.get("scale"), f"{where}.scale", default=1.0, strictly_positive=True),
        unit=None if unit is None else F.text(unit, f"{where}.unit"),
        halo=F.integer(raw.get("halo"), f"{where}.halo", minimum=0, default=0),
        channel_names=names,
        concatenable=F.flag(raw.get("concatenable"), f"{where}.concatenable"),
    )


def _parse_size(raw: Any, where: str) -> AxisSize:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        return F.integer(raw, where, minimum=1)
    if "tensor_id" in raw or "axis_id" in raw:
        return SizeReference(F.text(raw.get("tensor_id"), f"{where}.tensor_id"),
                             F.text(raw.get("axis_id"), f"{where}.axis_id"),
                             F.integer(raw.get("offset"), f"{where}.offset", default=0))
    if "step" in raw:
        return ParameterizedSize(F.integer(raw.get("min"), f"{where}.min", minimum=1),
                                 F.integer(raw["step"], f"{where}.step", minimum=0))
    lo = F.integer(raw.get("min"), f"{where}.min", minimum=1, default=1)
    hi = raw.get("max")
    return DataDependentSize(lo, None if hi is None else F.integer(hi, f"{where}.max", minimum=lo))
