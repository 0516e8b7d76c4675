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


def tensor_info(t: Tensor) -> dict[str, Any]:
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
        "inputs": [tensor_info(t) for t in d.inputs],
        "outputs": [tensor_info(t) for t in d.outputs],
        "weights": {"formats": list(d.weights_formats), "runs": "onnx", "opset": d.onnx.get("opset_version")},
        "provider": model.provider,
        "source": str(model.package.source),
        "memory": memory_info(model),
        "training": training_info(model),
    }


def training_info(model: Model) -> dict[str, Any]:
    """What the input checks compare with: the package's training record (config.biozoo.training), or where a
    check takes its reference from when the package records nothing (third-party packages)."""
    from ..checks.report import training_conditions

    t = training_conditions(model.description.config)
    ood = t.get("out_of_distribution") if isinstance(t.get("out_of_distribution"), dict) else None
    flip = ({tid: v.get("agreement") for tid, v in (ood.get("flip_agreement") or {}).items()} if ood else None)
    return {"pixel_size_um": t.get("pixel_size"), "receptive_field_px": t.get("receptive_field"),
            "out_of_distribution": ({"flip_agreement": flip, "measured_on": ood.get("measured_on")} if flip else
                                    {"flip_agreement": None, "measured_on": "the package's test tensors, at the "
                                                                            "first prediction"})}


def memory_info(model: Model) -> dict[str, Any]:
    """How `biozoo predict` sizes tiles for this model: the network's activation memory per pixel (measured once
    with onnxruntime and cached, see engine/memory.py) and the tile the default budget gives a large image."""
    from ..checks.input_checks import available_memory
    from ..engine.memory import activation_profile, tile_budget, tile_bytes_per_pixel, tile_shape
    from ..engine.instance_blocks import stardist_step, why_not_blockwise

    profile = activation_profile(model.engine)
    budget, source = available_memory()
    info: dict[str, Any] = {
        "activation_bytes_per_pixel": profile["bytes_per_pixel"], "measured": profile["source"],
        "probe_shape": list(profile["probe_shape"]), "cache": profile.get("cache"),
        "tile_bytes_per_pixel": tile_bytes_per_pixel(model.engine, profile),
        "default_budget": budget, "default_budget_source": source,
        "streamed": why_not_blockwise(model.engine) or ("yes (.npy/TIFF/Zarr in and out" + (
            "; StarDist: objects found block by block)" if stardist_step(model.engine) is not None else
            "; box lists: found block by block, merged into box files)" if model.engine.box_lists is not None
            else ")")),
    }
    if budget is not None:
        try:
            info["default_tile"] = tile_shape(model.engine, tile_budget(model.engine, budget, profile=profile)[0])
        except Exception as e:  # a budget too small for any tile, or an unusual description: say so, no crash
            info["default_tile"] = None
            info["default_tile_note"] = str(e)
    return info


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
    tr = info.get("training") or {}
    if tr:
        size = ", ".join(f"{a} {v:g}" for a, v in (tr["pixel_size_um"] or {}).items()) or "not recorded"
        ood = tr["out_of_distribution"]
        flip = ", ".join(f"{k} {v:.3f}" for k, v in (ood["flip_agreement"] or {}).items())
        rf = f"{tr['receptive_field_px']} px" if tr["receptive_field_px"] else "not recorded"
        lines.append(f"training: pixel size {size} (µm), receptive field {rf}; out-of-distribution reference: "
                     f"{f'flip agreement {flip} on ' if flip else ''}{ood['measured_on']}")
    w = info["weights"]
    lines.append(f"weights: {', '.join(w['formats'])} (biozoo runs onnx, opset {w['opset']}) on {info['provider']}")
    lines.append(f"  {info['binding']}")
    mem = info.get("memory")
    if mem:
        budget = f"{mem['default_budget'] / 2**30:.1f} GiB" if mem["default_budget"] else "unknown"
        tile = "x".join(map(str, mem["default_tile"].values())) if mem.get("default_tile") else "none fits"
        lines.append(f"memory: network activations {mem['activation_bytes_per_pixel']} B/px ({mem['measured']} on a "
                     f"{'x'.join(map(str, mem['probe_shape']))} probe), {mem['tile_bytes_per_pixel']} B/px per tile "
                     f"with its copies; default budget {budget} ({mem['default_budget_source']}) -> tile {tile} "
                     "(biozoo predict --memory BYTES to change it; --tile wins)")
        if mem["streamed"] != "yes (.npy in and out)":
            lines.append(f"  images above the budget cannot be streamed: {mem['streamed']}")
    if info["authors"]:
        lines.append(f"authors: {', '.join(info['authors'])}")
    for c in info["cite"]:
        lines.append(f"cite: {c}")
    return "\n".join(lines)
