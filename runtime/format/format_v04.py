"""Read a format-0.4 model description: convert its raw dict once, at the edge, into the format-0.5 form that
`description.parse_description` reads, so nothing deeper branches on the format version.

The rules are those of bioimageio.spec's `_ModelConv` (`bioimageio.spec.model.v0_5`), written here without
bioimageio.spec (the runtime stays light), with four deliberate differences where the spec's updater breaks:
- a fixed batch size 1 (shape `[1, ...]`, or min 1 / step 0) stays 1 (the updater drops it, and core's test of the
  result then feeds a batch the graph cannot take);
- an output of fixed size with a halo (the updater raises NotImplementedError) becomes a size reference to the
  input axis of the same letter and the same fixed size; failing that it keeps its int size and halo, which the
  runtime honours (format 0.5 has no spelling for it);
- `mode: per_dataset` of scale_range and scale_mean_variance becomes dataset statistics (`batch` in `axes`), as it
  does for zero_mean_unit_variance (the updater drops the mode for these two, and scale_range's reference_tensor);
- axis letters in processing kwargs map to 0.5 axis ids (`c` -> `channel`, `b` -> `batch`), not to ids `c`/`b`.
"""
from __future__ import annotations

import string
from typing import Any, Mapping, Optional, Sequence

from ..errors import PackageError
from . import rdf_fields as F

AXIS_TYPES = {"b": "batch", "t": "time", "i": "index", "c": "channel", "x": "space", "y": "space", "z": "space"}
AXIS_IDS = {"b": "batch", "t": "time", "i": "index", "c": "channel"}
TARGET_FORMAT = "0.5.12"
MAX_CHANNELS = 65536  # 0.5 lists channel names: a claimed 2**63 channels must not become a list in memory
_NAME_CHARS = set(string.ascii_letters + string.digits + "_+- ()")
_COPIED = ("description", "license", "tags", "version", "git_repo", "links", "config", "timestamp", "training_data",
           "maintainers", "uploader", "packaged_by", "run_mode", "id", "id_emoji", "parent")


def is_v04(rdf: Mapping[str, Any]) -> bool:
    return str(rdf.get("format_version", "")).startswith("0.4.")


def convert_v04(rdf: Mapping[str, Any]) -> dict[str, Any]:
    """A format-0.5 model rdf dict equivalent to the format-0.4 `rdf` (file references unchanged). The result is
    read by the typed 0.5 parser; what cannot even be converted is a PackageError here."""
    try:
        return _convert(rdf)
    except PackageError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as e:
        raise PackageError(f"rdf.yaml (format 0.4) is malformed and cannot be read ({type(e).__name__}: {e}); "
                           "check it with `bioimageio validate rdf.yaml` or get a valid copy") from None


def _convert(rdf: Mapping[str, Any]) -> dict[str, Any]:
    inputs = _listed(rdf, "inputs")
    outputs = _listed(rdf, "outputs")
    fixed = {(t["name"], a): n for t in inputs for a, n in _input_sizes(t).items() if isinstance(n, int)}
    tests_in, tests_out = _listed_files(rdf, "test_inputs", len(inputs)), _listed_files(rdf, "test_outputs", len(outputs))
    samples_in = _listed_files(rdf, "sample_inputs", len(inputs), required=False)
    samples_out = _listed_files(rdf, "sample_outputs", len(outputs), required=False)
    by_name = {t["name"]: t for t in inputs}
    out: dict[str, Any] = {k: rdf[k] for k in _COPIED if rdf.get(k) is not None}
    out.update(
        type="model",
        format_version=TARGET_FORMAT,
        name="".join(c if c in _NAME_CHARS else " " for c in str(rdf.get("name", "unnamed model"))),
        authors=list(rdf.get("authors") or ()),
        cite=[_citation(c) for c in rdf.get("cite") or ()],
        covers=[{"source": c} for c in rdf.get("covers") or ()],
        inputs=[_input(t, f"inputs[{i}]", tests_in[i], samples_in[i]) for i, t in enumerate(inputs)],
        outputs=[_output(t, f"outputs[{i}]", tests_out[i], samples_out[i], by_name, fixed)
                 for i, t in enumerate(outputs)],
        weights=_weights(rdf.get("weights")),
    )
    if rdf.get("documentation"):
        out["documentation"] = {"source": rdf["documentation"]}
    if rdf.get("icon"):
        out["icon"] = {"source": rdf["icon"]} if "." in str(rdf["icon"]) else rdf["icon"]
    attachments = rdf.get("attachments") or {}
    files = attachments.get("files") if isinstance(attachments, Mapping) else None
    if files:
        out["attachments"] = [{"source": f} for f in files]
    return out


def _listed(rdf: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = rdf.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(t, Mapping) for t in value):
        raise PackageError(f"rdf.yaml (format 0.4) field '{key}' must be a non-empty list of tensors; got {value!r}")
    for i, t in enumerate(value):
        if not isinstance(t.get("name"), str) or not t["name"] or not isinstance(t.get("axes"), str) \
                or t.get("shape") is None:
            raise PackageError(f"{key}[{i}] (format 0.4) needs 'name', 'axes' (a string like 'bcyx') and 'shape'; "
                               f"got keys {sorted(t)}")
        bad = sorted(set(t["axes"]) - set(AXIS_TYPES))
        if bad or len(set(t["axes"])) != len(t["axes"]):
            raise PackageError(f"{key}[{i}].axes is '{t['axes']}'; expected distinct letters of {''.join(AXIS_TYPES)}")
    return value


def _listed_files(rdf: Mapping[str, Any], key: str, n: int, required: bool = True) -> list[Optional[str]]:
    value = rdf.get(key)
    if not value and not required:
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise PackageError(f"rdf.yaml (format 0.4) field '{key}' must list {n} file(s), one per tensor; got {value!r}")
    return [str(v) for v in value]


def _input_sizes(t: Mapping[str, Any]) -> dict[str, Any]:
    """Axis letter -> int (fixed) or {min, step} for a 0.4 input shape."""
    shape, axes, where = t["shape"], t["axes"], f"input '{t['name']}'.shape"
    if isinstance(shape, Mapping):
        lo, step = shape.get("min"), shape.get("step")
        if not (isinstance(lo, list) and isinstance(step, list) and len(lo) == len(step) == len(axes)):
            raise PackageError(f"{where} is {dict(shape)}; expected min and step lists of {len(axes)} ints")
        lo = [F.integer(m, f"{where}.min[{i}]", minimum=0) for i, m in enumerate(lo)]
        step = [F.integer(m, f"{where}.step[{i}]", minimum=0) for i, m in enumerate(step)]
        return {a: m if not s else {"min": m, "step": s} for a, m, s in zip(axes, lo, step)}
    if not isinstance(shape, list) or len(shape) != len(axes):
        raise PackageError(f"{where} is {shape!r}; expected {len(axes)} ints or {{min, step}}")
    return {a: F.integer(n, f"{where}[{i}]", minimum=0) for i, (a, n) in enumerate(zip(axes, shape))}


def _axis(letter: str, size: Any, *, scale: float = 1.0, halo: int = 0) -> dict[str, Any]:
    kind = AXIS_TYPES[letter]
    if kind == "batch":
        return {"type": "batch", **({"size": 1} if size == 1 else {})}
    if kind == "channel":
        if not isinstance(size, int) or not 1 <= size <= MAX_CHANNELS:
            raise PackageError(f"a channel axis of {size!r} channels (format 0.4 shape); expected 1 to {MAX_CHANNELS}")
        return {"type": "channel", "channel_names": [f"channel{i}" for i in range(size)]}
    axis: dict[str, Any] = {"type": kind, "id": AXIS_IDS.get(letter, letter), "size": size}
    if scale != 1.0:
        axis["scale"] = scale
    if halo:
        axis["halo"] = int(halo)
    return axis


def _input(t: Mapping[str, Any], where: str, test: Optional[str], sample: Optional[str]) -> dict[str, Any]:
    sizes = _input_sizes(t)
    axes = [_axis(a, sizes[a]) for a in t["axes"]]
    prep = [_processing(p, t["axes"], f"{where}.preprocessing[{j}]") for j, p in enumerate(t.get("preprocessing") or ())]
    prep.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})  # as the spec's updater does
    return _tensor(t, axes, test, sample, "preprocessing", prep)


def _output(t: Mapping[str, Any], where: str, test: Optional[str], sample: Optional[str],
            inputs: Mapping[str, Mapping[str, Any]], fixed: Mapping[tuple[str, str], int]) -> dict[str, Any]:
    shape, letters = t["shape"], t["axes"]
    halo = [F.integer(h, f"{where}.halo[{i}]", minimum=0)
            for i, h in enumerate(F.listing(t.get("halo"), f"{where}.halo", default=[0] * len(letters)))]
    if len(halo) != len(letters):
        raise PackageError(f"{where}.halo is {halo}; expected one int per axis of '{letters}'")
    axes = []
    if isinstance(shape, Mapping):
        ref_name = str(shape.get("reference_tensor", ""))
        scales, offsets = shape.get("scale"), shape.get("offset")
        ref_tensor, _, ref_axis_letter = ref_name.partition(".")
        if ref_tensor not in inputs:
            raise PackageError(f"{where}.shape.reference_tensor is '{ref_name}'; expected an input name of "
                               f"{sorted(inputs)}")
        if not (isinstance(scales, list) and isinstance(offsets, list) and len(scales) == len(offsets) == len(letters)):
            raise PackageError(f"{where}.shape needs scale and offset lists of {len(letters)} values; got {dict(shape)}")
        scales = [None if v is None else F.number(v, f"{where}.shape.scale[{i}]") for i, v in enumerate(scales)]
        offsets = [F.number(v, f"{where}.shape.offset[{i}]") for i, v in enumerate(offsets)]
        ref_sizes = _input_sizes(inputs[ref_tensor])
        for a, s, off, h in zip(letters, scales, offsets, halo):
            ref_letter = ref_axis_letter or a
            if AXIS_TYPES[a] == "batch":
                axes.append(_axis(a, ref_sizes.get("b")))
            elif not s:  # the 0.4 way to add a new axis: its length is 2 * offset
                axes.append(_axis(a, int(2 * float(off)), halo=h))
            elif AXIS_TYPES[a] in ("channel", "index"):  # no scale in 0.5: an int size from the reference's
                ref = ref_sizes.get(ref_letter)
                ref_n = ref if isinstance(ref, int) else (ref or {}).get("min", 0)
                axes.append(_axis(a, int(float(s) * ref_n + 2 * float(off))))
            else:
                if ref_letter not in ref_sizes:
                    raise PackageError(f"{where}.shape refers to axis '{ref_letter}' of '{ref_tensor}', which has "
                                       f"axes '{inputs[ref_tensor]['axes']}'")
                size = {"tensor_id": ref_tensor, "axis_id": AXIS_IDS.get(ref_letter, ref_letter),
                        "offset": int(2 * float(off))}
                axes.append(_axis(a, size, scale=1 / float(s), halo=h))
    elif isinstance(shape, list) and len(shape) == len(letters):
        for a, n, h in zip(letters, shape, halo):
            size: Any = int(n)
            if h and AXIS_TYPES[a] == "space":  # a fixed size with a halo: follow the input that has this size
                ref = next((name for (name, letter), m in fixed.items() if letter == a and m == int(n)), None)
                size = {"tensor_id": ref, "axis_id": a} if ref else size
            axes.append(_axis(a, size, halo=h))
    else:
        raise PackageError(f"{where}.shape is {shape!r}; expected {len(letters)} ints or "
                           "{reference_tensor, scale, offset}")
    post = [_processing(p, letters, f"{where}.postprocessing[{j}]") for j, p in enumerate(t.get("postprocessing") or ())]
    return _tensor(t, axes, test, sample, "postprocessing", post)


def _tensor(t: Mapping[str, Any], axes: list, test: Optional[str], sample: Optional[str], key: str,
            processing: list) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(t["name"]), "axes": axes, "test_tensor": {"source": test},
                           "data": {"type": str(t.get("data_type") or "float32")}, key: processing}
    if t.get("description"):
        out["description"] = t["description"]
    if sample:
        out["sample_tensor"] = {"source": sample}
    return out


def _axis_ids(letters: Optional[str]) -> Optional[list[str]]:
    return None if letters is None else [AXIS_IDS.get(a, a) for a in str(letters)]


def _complement(tensor_axes: str, axes: Optional[str], where: str) -> Optional[str]:
    """The one axis a 0.4 per-axis parameter list runs along: the tensor's axes minus `axes` and batch."""
    if axes is None:
        return None
    rest = [a for a in tensor_axes if a not in set(axes) | {"b"}]
    if len(rest) > 1:
        raise PackageError(f"{where}: kwargs.axes '{axes}' of a tensor with axes '{tensor_axes}' leaves {rest}; "
                           "expected at most one axis for per-channel values")
    return AXIS_IDS.get(rest[0], rest[0]) if rest else None


def _scalar_or_along(kwargs: dict[str, Any], names: Sequence[str], axis: Optional[str], where: str) -> dict:
    values = {n: kwargs[n] for n in names if n in kwargs}
    if axis is None:
        for n, v in values.items():
            if isinstance(v, list):
                if len(v) != 1:
                    raise PackageError(f"{where}: kwargs.{n} is a list {v} but kwargs.axes leaves no axis to run along")
                values[n] = v[0]
        return values
    return {"axis": axis, **{n: v if isinstance(v, list) else [v] for n, v in values.items()}}


def _statistics_axes(kwargs: Mapping[str, Any], tensor_axes: str) -> Optional[list[str]]:
    """0.4 `axes` letters + `mode` -> 0.5 `axes` ids (per_dataset: with batch; no axes: every axis)."""
    letters = kwargs.get("axes")
    ids = _axis_ids(letters) if letters is not None else [AXIS_IDS.get(a, a) for a in tensor_axes if a != "b"]
    return ["batch", *ids] if kwargs.get("mode") == "per_dataset" else ids


def _processing(p: Any, tensor_axes: str, where: str) -> dict[str, Any]:
    if not isinstance(p, Mapping) or not p.get("name"):
        raise PackageError(f"{where} is {p!r}; expected {{name, kwargs}} (format 0.4)")
    name, kwargs = str(p["name"]), dict(p.get("kwargs") or {})
    if name in ("binarize", "sigmoid"):
        return {"id": name, **({"kwargs": {"threshold": kwargs["threshold"]}} if "threshold" in kwargs else {})}
    if name == "clip":
        return {"id": "clip", "kwargs": {k: kwargs[k] for k in ("min", "max") if k in kwargs}}
    if name == "scale_linear":
        axis = _complement(tensor_axes, kwargs.get("axes"), where)
        return {"id": "scale_linear", "kwargs": _scalar_or_along(kwargs, ("gain", "offset"), axis, where)}
    if name == "zero_mean_unit_variance":
        if kwargs.get("mode", "fixed") == "fixed":  # 0.4's default mode: mean/std given
            axis = _complement(tensor_axes, kwargs.get("axes"), where)
            if "mean" not in kwargs or "std" not in kwargs:
                raise PackageError(f"{where}: zero_mean_unit_variance with mode 'fixed' needs 'mean' and 'std'")
            fixed = _scalar_or_along(kwargs, ("mean", "std"), axis, where)
            return {"id": "fixed_zero_mean_unit_variance", "kwargs": fixed}
        return {"id": "zero_mean_unit_variance",
                "kwargs": {"axes": _statistics_axes(kwargs, tensor_axes), **_picked(kwargs, ("eps",))}}
    if name == "scale_range":
        return {"id": "scale_range", "kwargs": {
            "axes": _statistics_axes(kwargs, tensor_axes),
            **_picked(kwargs, ("min_percentile", "max_percentile", "eps", "reference_tensor"))}}
    if name == "scale_mean_variance":
        if not kwargs.get("reference_tensor"):
            raise PackageError(f"{where}: scale_mean_variance needs kwargs.reference_tensor")
        return {"id": "scale_mean_variance", "kwargs": {
            "axes": _statistics_axes(kwargs, tensor_axes), **_picked(kwargs, ("reference_tensor", "eps"))}}
    return {"id": name, "kwargs": kwargs}  # unknown ops are refused, by name, when the chain is built


def _picked(kwargs: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {n: kwargs[n] for n in names if kwargs.get(n) is not None}


def _citation(c: Any) -> Any:
    return {k: c[k] for k in ("text", "doi", "url") if c.get(k)} if isinstance(c, Mapping) else c


def _weights(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, Mapping) or not raw:
        raise PackageError("rdf.yaml (format 0.4) has no 'weights' entry")
    out: dict[str, Any] = {}
    for fmt, entry in raw.items():
        if not isinstance(entry, Mapping):
            raise PackageError(f"weights.{fmt} must be a mapping with 'source'; got {entry!r}")
        w = {k: entry[k] for k in ("source", "sha256", "authors", "parent", "comment") if entry.get(k) is not None}
        if fmt == "onnx":
            w["opset_version"] = int(entry.get("opset_version") or 15)  # the spec's default for 0.4
        elif fmt in ("pytorch_state_dict", "torchscript"):
            w["pytorch_version"] = str(entry.get("pytorch_version") or "1.10")
        elif fmt.startswith(("tensorflow", "keras")):
            w["tensorflow_version"] = str(entry.get("tensorflow_version") or "1.15")
        if fmt == "pytorch_state_dict" and entry.get("architecture"):
            w["architecture"] = _architecture(entry)
        if entry.get("dependencies"):
            w["dependencies"] = {"source": str(entry["dependencies"]).removeprefix("conda:")}
        out[fmt] = w
    return out


def _architecture(entry: Mapping[str, Any]) -> dict[str, Any]:
    arch, kwargs = str(entry["architecture"]), dict(entry.get("kwargs") or {})
    if ":" in arch.removeprefix("https:").removeprefix("http:"):
        source, _, name = arch.rpartition(":")
        return {"source": source, "callable": name, "kwargs": kwargs,
                **({"sha256": entry["architecture_sha256"]} if entry.get("architecture_sha256") else {})}
    module, _, name = arch.rpartition(".")
    return {"import_from": module, "callable": name, "kwargs": kwargs}
