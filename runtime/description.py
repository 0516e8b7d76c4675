"""The parts of a format-0.5 model description the runtime needs, as frozen dataclasses.

Built once from the rdf dict at load time; everything downstream (ops, sizes, tiling, tests) reads these
instead of branching on raw YAML. Unknown or unsupported content is refused here, at the edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .errors import PackageError

DEFAULT_AXIS_IDS = {"batch": "batch", "channel": "channel", "index": "index", "time": "time", "space": "x"}
AXIS_LETTERS = {"batch": "b", "channel": "c", "index": "i", "time": "t"}


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
    """Read a format-0.5 model rdf dict; raise PackageError naming the field when it cannot be used."""
    weights = rdf.get("weights") or {}
    if not isinstance(weights, Mapping) or not weights:
        raise PackageError("rdf.yaml has no 'weights' entry; expected at least 'weights: {onnx: {source: ...}}'")
    if "onnx" not in weights:
        raise PackageError(
            f"the package has no ONNX weights (it has: {', '.join(sorted(weights))}); biozoo runs only 'onnx' weights. "
            "Convert it once with `biozoo convert PACKAGE -o NEW.zip` (needs: pip install 'biozoo[train]'; add "
            "--trust-code for pytorch_state_dict weights, whose architecture is Python code from the package), then "
            "run NEW.zip"
        )
    config = rdf.get("config") or {}
    tolerances = tuple(
        Tolerance(
            relative=float(t.get("relative_tolerance", 1e-3)),
            absolute=float(t.get("absolute_tolerance", 1e-3)),
            mismatched_per_million=float(t.get("mismatched_elements_per_million", 100)),
            output_ids=_output_ids(t.get("output_ids")),
        )
        for t in ((config.get("bioimageio") or {}).get("reproducibility_tolerance") or ())
        if isinstance(t, Mapping) and (not t.get("weights_formats") or "onnx" in t.get("weights_formats"))
    )
    return ModelDescription(
        name=str(rdf.get("name", "unnamed model")),
        format_version=str(rdf.get("format_version")),
        inputs=tuple(_parse_tensor(t, "inputs", i, "preprocessing") for i, t in enumerate(_listed(rdf, "inputs"))),
        outputs=tuple(_parse_tensor(t, "outputs", i, "postprocessing") for i, t in enumerate(_listed(rdf, "outputs"))),
        weights_formats=tuple(weights),
        onnx=dict(weights["onnx"]),
        tolerances=tolerances,
        description=str(rdf.get("description", "")),
        license=str(rdf.get("license", "")),
        authors=tuple(str(a.get("name", a)) if isinstance(a, Mapping) else str(a) for a in rdf.get("authors") or ()),
        cite=tuple(_citation(c) for c in rdf.get("cite") or ()),
        version=str(rdf.get("version") or ""),
        config=dict(config),
    )


def _output_ids(raw: Any) -> Union[tuple[str, ...], str]:
    if raw in (DISCRETE_OUTPUTS, CONTINUOUS_OUTPUTS):
        return str(raw)
    if isinstance(raw, str):
        return (raw,)
    return tuple(str(i) for i in raw or ())


def _listed(rdf: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = rdf.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise PackageError(f"rdf.yaml field '{key}' must be a non-empty list of tensor descriptions; got {value!r}")
    return value


def _citation(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return str(entry)
    ref = entry.get("doi") and f"doi:{entry['doi']}" or entry.get("url") or ""
    return f"{entry.get('text', '')} {ref}".strip()


def _parse_tensor(raw: Mapping[str, Any], field_name: str, index: int, proc_key: str) -> Tensor:
    """One tensor, with the spec's defaults for what bioimageio.spec's writer leaves out (id, data type, the
    ensure_dtype steps that bracket every processing chain)."""
    where = f"{field_name}[{index}]"
    if not isinstance(raw.get("axes"), list) or not raw["axes"]:
        raise PackageError(f"{where} needs a non-empty 'axes' list (format 0.5); got keys {sorted(raw)}")
    if not all(isinstance(a, Mapping) for a in raw["axes"]):
        raise PackageError(f"{where}.axes must list axis mappings ({{type: space, id: y, ...}}); got {raw['axes']!r}")
    axes = tuple(_parse_axis(a, f"{where}.axes[{j}]") for j, a in enumerate(raw["axes"]))
    ids = [a.id for a in axes]
    if len(set(ids)) != len(ids):
        raise PackageError(f"{where}.axes has duplicate axis ids {ids}")
    entries = raw.get(proc_key) or ()
    if not isinstance(entries, (list, tuple)) or not all(isinstance(p, Mapping) and "id" in p for p in entries):
        raise PackageError(f"{where}.{proc_key} must be a list of {{id, kwargs}} entries; got {entries!r}")
    processing = [Processing(id=str(p["id"]), kwargs=dict(p.get("kwargs") or {})) for p in entries]
    data = raw.get("data")
    if isinstance(data, list) and data and isinstance(data[0], Mapping):  # one data description per channel
        data = data[0]
    dtype = str(data.get("type", "float32")) if isinstance(data, Mapping) else "float32"
    if dtype != "float32":  # the spec brackets each chain with ensure_dtype(data.type); a no-op for float32
        if proc_key == "preprocessing" and (not processing or processing[0].id != "ensure_dtype"):
            processing.insert(0, Processing("ensure_dtype", {"dtype": dtype}))
        if not processing or processing[-1].id not in ("ensure_dtype", "binarize"):
            processing.append(Processing("ensure_dtype", {"dtype": dtype}))
    return Tensor(
        id=str(raw.get("id") or ("input" if field_name == "inputs" else "output")),
        axes=axes,
        processing=tuple(processing),
        test_tensor=raw.get("test_tensor"),
        dtype=dtype,
        optional=bool(raw.get("optional", False)),
        description=str(raw.get("description", "")),
    )


def _parse_axis(raw: Mapping[str, Any], where: str) -> Axis:
    kind = raw.get("type")
    if kind not in DEFAULT_AXIS_IDS:
        raise PackageError(f"{where}.type is {kind!r}; expected one of {sorted(DEFAULT_AXIS_IDS)} (format 0.5)")
    names = tuple(str(n) for n in raw.get("channel_names") or ())
    if kind == "channel":
        size: AxisSize = len(names) if names else _parse_size(raw.get("size"), where)
    else:
        size = _parse_size(raw.get("size"), where)
    return Axis(
        id=str(raw.get("id") or DEFAULT_AXIS_IDS[kind]),
        type=kind,
        size=size,
        scale=float(raw.get("scale") or 1.0),
        unit=raw.get("unit"),
        halo=int(raw.get("halo") or 0),
        channel_names=names,
        concatenable=bool(raw.get("concatenable", False)),
    )


def _parse_size(raw: Any, where: str) -> AxisSize:
    if raw is None or isinstance(raw, int):
        return raw
    if isinstance(raw, Mapping):
        if "tensor_id" in raw or "axis_id" in raw:
            if not raw.get("tensor_id") or not raw.get("axis_id"):
                raise PackageError(f"{where}.size {dict(raw)} is a size reference without both tensor_id and axis_id")
            return SizeReference(str(raw["tensor_id"]), str(raw["axis_id"]), int(raw.get("offset") or 0))
        if "step" in raw:
            return ParameterizedSize(int(raw.get("min", 1)), int(raw["step"]))
        return DataDependentSize(int(raw.get("min", 1)), raw.get("max"))
    raise PackageError(f"{where}.size is {raw!r}; expected an int, {{min, step}}, or {{tensor_id, axis_id, offset}}")
