"""How much memory a tile costs, and the largest tile a byte budget (`--memory 2GB`) allows.

A tile's cost is dominated by the network's own activations, not by its input: a 16-channel U-Net holds tens of
float32 feature maps per pixel. We measure it, once per model and probe shape, by running the ONNX graph with
onnxruntime on a probe tile in a fresh child process (so that nothing allocated earlier hides the growth): on
Linux the child resets its peak resident size (writes "5" to /proc/self/clear_refs) after building the session,
runs once, and reports VmHWM - VmRSS from /proc/self/status: the peak growth of one run, every onnxruntime
allocation included (with the CPU arena, as OnnxSession runs: session.cpu_memory_options). Divided by the probe's
pixels it is bytes per pixel, an upper bound at larger tiles (the fixed part of the growth is spread over more
pixels). The result is cached as JSON under $BIOZOO_CACHE_DIR/activation-memory/, keyed by the weights' sha256, the
probe shape and the onnxruntime version. Where /proc is missing the figure is an estimate
(ESTIMATED_BYTES_PER_PIXEL per input channel) and says so. On CUDA the activations live in device memory; the budget
bounds host memory only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from ..errors import InputError
from ..format.description import ParameterizedSize
from ..format.package import cache_dir

if TYPE_CHECKING:
    from .engine import Engine

PROBE_PIXELS = 512 * 512  # probe tile: the smallest valid shape with at least this many pixels per space plane
ESTIMATED_BYTES_PER_PIXEL = 400  # fallback per input channel (no /proc): ~100 float32 feature maps
IO_COPIES = 4  # per tile, besides activations: the read block (raw), float32, preprocessed, padded
OUTPUT_COPIES = 3  # the network's output tile, its post-processed copy, the block written
_SAFETY = 1.25  # measured peaks vary a little between runs (allocator rounding)


def _status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def resident_bytes() -> Optional[int]:
    """This process's resident memory now (Linux), or None."""
    try:
        return _status()["VmRSS"]
    except (OSError, KeyError, ValueError):
        return None


def peak_resident_bytes() -> Optional[int]:
    """This process's peak resident memory so far (Linux), or None."""
    try:
        return _status()["VmHWM"]
    except (OSError, KeyError, ValueError):
        return None


def probe_shapes(engine: "Engine") -> dict[str, tuple[int, ...]]:
    """Input shapes (model layout) of the probe tile: every space axis at the smallest valid length with the
    plane reaching PROBE_PIXELS, other axes at their fixed or minimal sizes."""
    desc = engine.description
    primary = desc.inputs[0]
    space = [a for a in primary.axes if a.type == "space"]
    side = max(1, round(PROBE_PIXELS ** (1 / max(1, len(space)))))
    lengths: dict[tuple[str, str], int] = {}
    shapes = {}
    for t in desc.inputs:
        dims = []
        for a in t.axes:
            if isinstance(a.size, int):
                n = a.size
            elif isinstance(a.size, ParameterizedSize):
                n = a.size.valid_at_least(side if a.type == "space" else a.size.min)
            elif a.type == "space":
                n = lengths.get((primary.id, a.id), side)
            else:
                n = 1
            if a.type == "batch":
                n = 1
            dims.append(n)
            lengths[(t.id, a.id)] = n
        shapes[t.id] = tuple(dims)
    return shapes


def _key(engine: "Engine", shapes: Mapping[str, tuple[int, ...]]) -> str:
    import onnxruntime

    sha = str(engine.description.onnx.get("sha256") or "")
    if not sha:
        weights = engine.package.file(engine.description.onnx, "weights.onnx")
        sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    # "arena": measured with session.cpu_memory_options (figures measured without the arena are not reused)
    text = json.dumps([sha, {k: list(v) for k, v in sorted(shapes.items())}, onnxruntime.__version__, "arena"])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def activation_profile(engine: "Engine", measure: bool = True) -> dict[str, Any]:
    """{'bytes_per_pixel', 'probe_shape', 'source' (measured | cached | estimated), 'cache'}: the network's peak
    memory per pixel of the primary input's space axes, from the cache or measured now (about a second, once)."""
    shapes = probe_shapes(engine)
    primary = engine.description.inputs[0]
    pixels = math.prod(n for a, n in zip(primary.axes, shapes[primary.id]) if a.type == "space")
    channels = math.prod(n for a, n in zip(primary.axes, shapes[primary.id]) if a.type != "space")
    folder = cache_dir() / "activation-memory"
    path = folder / f"{_key(engine, shapes)}.json"
    try:
        cached = json.loads(path.read_text())
        return {**cached, "source": "cached", "cache": str(path)}
    except (OSError, ValueError):
        pass
    growth = _measure(engine, shapes) if measure else None
    if growth is None:
        return {"bytes_per_pixel": ESTIMATED_BYTES_PER_PIXEL * channels, "probe_shape": shapes[primary.id],
                "source": "estimated", "cache": None}
    record = {"bytes_per_pixel": math.ceil(growth / pixels), "probe_shape": list(shapes[primary.id]),
              "peak_growth_bytes": growth}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: measured again next time, still correct
        pass
    return {**record, "source": "measured", "cache": str(path)}


def _measure(engine: "Engine", shapes: Mapping[str, tuple[int, ...]]) -> Optional[int]:
    if not Path("/proc/self/clear_refs").exists():
        return None
    weights = engine.package.file(engine.description.onnx, "weights.onnx")
    feeds = {engine.session.graph_input(tid): [list(shape), np.dtype(engine.session.input_types[tid]).str]
             for tid, shape in shapes.items()}
    job = json.dumps({"weights": str(weights), "feeds": feeds})
    try:
        done = subprocess.run([sys.executable, "-m", "biozoo.runtime.engine.memory", job], capture_output=True,
                              text=True, timeout=600)
        return int(json.loads(done.stdout.strip().splitlines()[-1])["growth"]) if done.returncode == 0 else None
    except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired):
        return None


def _probe_main(job: dict) -> int:
    """In the child: build the session, reset the peak, run once on zeros, report the peak growth."""
    import onnxruntime as ort

    from .session import cpu_memory_options

    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu_memory_options(options)  # as OnnxSession runs
    session = ort.InferenceSession(job["weights"], sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {name: np.zeros(shape, dtype=np.dtype(dtype)) for name, (shape, dtype) in job["feeds"].items()}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status()["VmRSS"]
    session.run(None, feeds)
    return _status()["VmHWM"] - before


def tile_bytes_per_pixel(engine: "Engine", profile: Mapping[str, Any]) -> int:
    """Bytes one pixel of a tile costs: activations plus the tile's input and output copies."""
    per_input = sum(math.prod(a.size if isinstance(a.size, int) and a.type not in ("space", "batch") else 1
                              for a in t.axes) for t in engine.description.inputs)
    per_output = sum(math.prod(a.size if isinstance(a.size, int) and a.type not in ("space", "batch") else 1
                               for a in t.axes) for t in engine.network.outputs
                     if any(a.type == "space" for a in t.axes))  # lists (e.g. boxes [K, 4]) cost no bytes per pixel
    return int(_SAFETY * profile["bytes_per_pixel"]) + 4 * (IO_COPIES * per_input + OUTPUT_COPIES * per_output)


def tile_budget(engine: "Engine", budget: int, held: int = 0, profile: Optional[Mapping[str, Any]] = None
                ) -> tuple[int, dict[str, Any]]:
    """The tile budget in input elements (what plan_tiles takes) for a process that may use `budget` bytes in all,
    of which `held` are taken by whole-image arrays (0 when streamed) and the process's resident memory now by
    Python, onnxruntime and the weights. Raises InputError when not even a minimal tile fits."""
    profile = profile or activation_profile(engine)
    per_pixel = tile_bytes_per_pixel(engine, profile)
    baseline = resident_bytes() or 0
    usable = budget - baseline - held
    primary = engine.description.inputs[0]
    channels = math.prod(a.size if isinstance(a.size, int) and a.type != "space" else 1 for a in primary.axes)
    minimal = 64 ** sum(a.type == "space" for a in primary.axes)  # a tile smaller than 64 px a side is useless
    if usable < minimal * per_pixel:
        raise InputError(
            f"a memory budget of {_mib(budget)} is too small for this model: Python, onnxruntime and the weights "
            f"take {_mib(baseline)}, whole-image arrays {_mib(held)}, and one pixel of a tile {per_pixel} bytes "
            f"(network activations {profile['bytes_per_pixel']} B/px, {profile['source']}), so not even a "
            f"{minimal}-pixel tile fits; expected at least {_mib(baseline + held + minimal * per_pixel)}: raise "
            "--memory (or $BIOZOO_MEMORY_LIMIT)")
    info = {"bytes_per_pixel": per_pixel, "usable": usable, "baseline": baseline, "held": held,
            "activation_bytes_per_pixel": profile["bytes_per_pixel"], "source": profile["source"],
            "probe_shape": list(profile["probe_shape"]), "cache": profile.get("cache")}
    return max(1, usable // per_pixel) * channels, info


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def tile_shape(engine: "Engine", elements: int, length: int = 1 << 16) -> dict[str, int]:
    """The tile (length per space axis id) plan_tiles picks for a large image (`length` a side) at `elements`."""
    from .tiling import plan_tiles

    shapes = probe_shapes(engine)
    primary = engine.description.inputs[0]
    big = {tid: tuple(length if a.type == "space" and not isinstance(a.size, int) else n
                      for a, n in zip(engine.description.input(tid).axes, shape)) for tid, shape in shapes.items()}
    plan = plan_tiles(engine.network, big, None, elements)
    tiles = {p.axis_id: p.tile for p in plan.tiled}
    return {a.id: tiles.get(a.id, n) for a, n in zip(primary.axes, big[primary.id]) if a.type == "space"}


def whole_image_bytes(engine: "Engine", shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Bytes the in-memory path holds besides the caller's arrays: per input its float32, preprocessed and padded
    copies, the network's outputs and their post-processed copies (float32)."""
    from .tiling import output_shapes

    held = sum(3 * 4 * math.prod(s) for s in shapes.values())
    outs = output_shapes(engine.network, shapes)
    return held + sum(2 * 4 * math.prod(s) for s in outs.values() if s)


if __name__ == "__main__":  # the measuring child (see _measure)
    print(json.dumps({"growth": _probe_main(json.loads(sys.argv[1]))}))
