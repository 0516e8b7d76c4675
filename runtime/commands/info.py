"""`biozoo info`: what a package is, what it takes and gives, in text or as one JSON object."""
from __future__ import annotations

from typing import Any

from ..format.description import Axis, DataDependentSize, ParameterizedSize, SizeReference, Tensor
from ..model import Model


def describe_size(axis: Axis) -> str:
    size = axis.size
    if size is None:
        return "any"
    if isinstance(size, int):
        return str(size)
    if isinstance(size, ParameterizedSize):
        return f"{size.min}+{size.step}n"
    if isinstance(size, SizeReference):
        off = f"{size.offset:+d}" if size.offset else ""
        return f"={size.tensor_id}.{size.axis_id}{off}"
    if isinstance(size, DataDependentSize):
        return "data-dependent"
    return str(size)


def _tensor_info(t: Tensor) -> dict[str, Any]:
    return {
        "id": t.id,
        "axes": t.letters,
        "sizes": {a.id: describe_size(a) for a in t.axes},
        "halo": {a.id: a.halo for a in t.axes if a.halo},
        "scale": {a.id: a.scale for a in t.axes if a.type == "space" and a.scale != 1.0},
        "channel_names": next((list(a.channel_names) for a in t.axes if a.channel_names), []),
        "processing": [{"id": p.id, **({"kwargs": dict(p.kwargs)} if p.kwargs else {})} for p in t.processing],
    }


def model_info(model: Model) -> dict[str, Any]:
    d = model.description
    return {
        "name": d.name,
        "version": d.version,
        "format_version": model.package.converted_from or d.format_version,
        "read_as": f"format {d.format_version} (converted by biozoo)" if model.package.converted_from else None,
        "binding": model.session.binding_note or "ONNX inputs and outputs bound by name",
        "description": d.description,
        "license": d.license,
        "authors": list(d.authors),
        "cite": list(d.cite),
        "inputs": [_tensor_info(t) for t in d.inputs],
        "outputs": [_tensor_info(t) for t in d.outputs],
        "weights": {"formats": list(d.weights_formats), "runs": "onnx", "opset": d.onnx.get("opset_version")},
        "provider": model.provider,
        "source": str(model.package.source),
    }


def format_info(info: dict[str, Any]) -> str:
    read_as = f" (read as {info['read_as']})" if info.get("read_as") else ""
    lines = [f"{info['name']} {info['version']}".strip(),
             f"  format {info['format_version']}{read_as}, license {info['license']}"]
    if info["description"]:
        lines.append(f"  {info['description']}")
    for kind in ("inputs", "outputs"):
        lines.append(f"{kind}:")
        for t in info[kind]:
            sizes = "  ".join(f"{k}: {v}" for k, v in t["sizes"].items())
            lines.append(f"  {t['id']} [{t['axes']}] {sizes}")
            if t["halo"]:
                lines.append(f"    halo {t['halo']}")
            if t["channel_names"]:
                lines.append(f"    channels {t['channel_names']}")
            for p in t["processing"]:
                lines.append(f"    {'pre' if kind == 'inputs' else 'post'}: {p['id']} {p.get('kwargs', '')}".rstrip())
    w = info["weights"]
    lines.append(f"weights: {', '.join(w['formats'])} (biozoo runs onnx, opset {w['opset']}) on {info['provider']}")
    lines.append(f"  {info['binding']}")
    if info["authors"]:
        lines.append(f"authors: {', '.join(info['authors'])}")
    for c in info["cite"]:
        lines.append(f"cite: {c}")
    return "\n".join(lines)
