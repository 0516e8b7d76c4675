"""The weight formats of a package beside ONNX: ``pytorch_state_dict`` (with zoo/networks.py as the architecture
source) and ``torchscript``, each checked against the package's test tensors before anything is written.

Why three formats: every bioimage.io consumer runs a different subset (BiaPy needs a state dict, deepImageJ runs
torchscript, biozoo runs ONNX; see runtime/format/consumers). The state dict is the source the others were converted
from (``parent: pytorch_state_dict``); without it, ONNX is. The runtime never runs these files: they are for other
consumers (and `biozoo convert`).

The torchscript file is traced in a fresh Python process from the package's own architecture file and state dict:
TorchScript names the classes it compiles with a per-process counter (``___torch_mangle_N``), so a second export in
the same process would write other bytes, and the zip would not be deterministic. Tracing what the package ships
also proves the architecture file and state dict rebuild the network.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from biozoo.runtime import ExportError

from .export_steps import file_sha256
from .parity import Forward, torch_forward

FORMATS = ("onnx", "torchscript", "pytorch_state_dict")
ROOT_PREFERENCE = ("pytorch_state_dict", "onnx", "torchscript")  # the first one present is the others' parent
ARCHITECTURE_FILE = "networks.py"
ARCHITECTURE_CALLABLE = "build"
STATE_DICT_FILE = "weights_state_dict.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
_TRACE_TIMEOUT_S = 900


@dataclass(frozen=True)
class WeightsFile:
    """One weights entry of the package, as written and checked."""

    format: str
    source: str
    sha256: str
    parity: dict[str, Any]
    parent: Optional[str] = None
    architecture: Optional[dict[str, Any]] = None  # pytorch_state_dict: source, sha256, callable, kwargs


def parse_formats(text: str, supported: Sequence[str], task: str) -> tuple[str, ...]:
    """``--weights onnx,torchscript`` -> the formats in canonical order; ExportError for unknown or unsupported ones."""
    asked = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(asked) - set(FORMATS))
    if unknown:
        raise ExportError(f"--weights {text!r}: unknown weight format(s) {unknown}; expected a comma-separated list "
                          f"of {', '.join(FORMATS)}")
    if "onnx" not in asked:
        raise ExportError(f"--weights {text!r} has no onnx: biozoo's runtime (and `biozoo test` of the written "
                          "package) runs ONNX weights; add onnx, e.g. --weights onnx,torchscript")
    missing = sorted(set(asked) - set(supported))
    if missing:
        raise ExportError(f"--weights {text!r}: the {task} task exports {', '.join(supported)} only ({missing} not "
                          f"available: its graph holds steps only ONNX expresses); use --weights {','.join(supported)}")
    return tuple(f for f in FORMATS if f in asked)


def parents(formats: Sequence[str]) -> dict[str, Optional[str]]:
    """The spec wants exactly one entry without ``parent``: the state dict when present (the others come from it)."""
    root = next(f for f in ROOT_PREFERENCE if f in formats)
    return {f: (None if f == root else root) for f in formats}


def architecture_kwargs(net: torch.nn.Module, output: str) -> dict[str, Any]:
    """What ``networks.build`` needs to rebuild ``net`` with the package's output step."""
    name = getattr(net, "network_name", None)
    if name is None or not dataclasses.is_dataclass(getattr(net, "config", None)):
        raise ExportError(f"{type(net).__name__} is not one of zoo/networks.py's networks; export it with "
                          "--weights onnx")
    return {"network": name, "output": output, **dataclasses.asdict(net.config)}


def load_architecture(folder: Path) -> Callable[..., torch.nn.Module]:
    """The package's own architecture file, imported from the export's scratch folder (biozoo's file, copied)."""
    spec = importlib.util.spec_from_file_location("biozoo_packaged_networks", folder / ARCHITECTURE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, ARCHITECTURE_CALLABLE)


def write_state_dict(exported: torch.nn.Module, kwargs: dict[str, Any], folder: Path) -> tuple[Forward, dict]:
    """Write the state dict and the architecture file; the forward of the network rebuilt from both."""
    from biozoo.zoo import networks

    shutil.copyfile(networks.__file__, folder / ARCHITECTURE_FILE)
    torch.save(exported.state_dict(), folder / STATE_DICT_FILE)
    rebuilt = load_architecture(folder)(**kwargs)
    state = torch.load(folder / STATE_DICT_FILE, map_location="cpu", weights_only=True)
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as e:  # keys or shapes differ: the kwargs do not describe the exported network
        raise ExportError(f"the architecture file built with {kwargs} does not take the exported state dict: "
                          f"{str(e)[:600]}; this is a biozoo bug (please report it with the run's recipe.yaml)") from None
    architecture = {"source": ARCHITECTURE_FILE, "sha256": file_sha256(folder / ARCHITECTURE_FILE),
                    "callable": ARCHITECTURE_CALLABLE, "kwargs": kwargs}
    return torch_forward(rebuilt.eval()), architecture


def write_torchscript(kwargs: dict[str, Any], example: np.ndarray, folder: Path) -> Forward:
    """Trace the package's architecture + state dict in a fresh process (see the module docstring)."""
    np.save(folder / ".trace_example.npy", example)
    (folder / ".trace_kwargs.json").write_text(json.dumps(kwargs))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        done = subprocess.run([sys.executable, "-m", "biozoo.exporters.trace_torchscript", str(folder)], env=env,
                              capture_output=True, text=True, timeout=_TRACE_TIMEOUT_S)
    finally:
        (folder / ".trace_example.npy").unlink(missing_ok=True)
        (folder / ".trace_kwargs.json").unlink(missing_ok=True)
    if done.returncode != 0:
        raise ExportError(f"tracing the torchscript weights failed: {done.stderr.strip()[-1500:]}; export with "
                          "--weights onnx,pytorch_state_dict to leave torchscript out")
    module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location="cpu")
    return torch_forward(module.eval())


def write_weights(task: Any, ctx: Any, graph: Any, formats: Sequence[str]) -> tuple[WeightsFile, ...]:
    """Write the formats beside the graph's ONNX into ``ctx.folder``, each checked against the test tensors (the
    ONNX entry's check is the self-test's, filled in by ``with_onnx_test``). ``task``: the run's ExportTask."""
    parent = parents(formats)
    written = [WeightsFile("onnx", graph.weights.name, file_sha256(graph.weights), {}, parent["onnx"])]
    if len(formats) == 1:
        return tuple(written)
    folder = ctx.folder
    ids, expected = [o.id for o in graph.outputs], [o.data for o in graph.outputs]
    kwargs = architecture_kwargs(ctx.net, task.packaged_output)
    forward, architecture = write_state_dict(task.wrap(ctx.net).eval(), kwargs, folder)
    if "pytorch_state_dict" in formats:
        parity = check_against_test_tensors("pytorch_state_dict", task.test_outputs(ctx, forward), expected, ids,
                                            task.tolerance)
        written.append(WeightsFile("pytorch_state_dict", STATE_DICT_FILE, file_sha256(folder / STATE_DICT_FILE),
                                   parity, parent["pytorch_state_dict"], architecture))
    if "torchscript" in formats:
        forward = write_torchscript(kwargs, ctx.x, folder)
        parity = check_against_test_tensors("torchscript", task.test_outputs(ctx, forward), expected, ids,
                                            task.tolerance)
        written.append(WeightsFile("torchscript", TORCHSCRIPT_FILE, file_sha256(folder / TORCHSCRIPT_FILE), parity,
                                   parent["torchscript"]))
    if "pytorch_state_dict" not in formats:  # only needed to trace the torchscript
        (folder / STATE_DICT_FILE).unlink()
        (folder / ARCHITECTURE_FILE).unlink()
    return tuple(written)


def with_onnx_test(weights: Sequence[WeightsFile], test: dict[str, Any]) -> tuple[WeightsFile, ...]:
    """The ONNX entry's parity: biozoo's test of the written package (onnxruntime on the test tensors)."""
    outputs = test.get("outputs") or {}
    worst = {key: max((float(r.get(key, 0.0)) for r in outputs.values()), default=0.0)
             for key in ("max_abs_error", "max_rel_error", "mismatched_per_million")}
    parity = {**worst, "passed": test.get("status") == "passed",
              "compared_with": "the package's test tensors (biozoo test, onnxruntime)"}
    return tuple(dataclasses.replace(w, parity=parity) if w.format == "onnx" else w for w in weights)


def parity_record(weights: Sequence[WeightsFile]) -> dict[str, dict[str, Any]]:
    """config.biozoo.parity.weight_formats: per format, its errors against the test tensors."""
    return {w.format: w.parity for w in weights}


def check_against_test_tensors(fmt: str, produced: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                               ids: Sequence[str], tolerance: dict[str, float]) -> dict[str, Any]:
    """The spec's reproducibility rule per output; ExportError when a format does not reproduce a test tensor."""
    from biozoo.runtime.engine.test_tensors import compare

    tol = SimpleNamespace(absolute=tolerance["absolute_tolerance"], relative=tolerance["relative_tolerance"],
                          mismatched_per_million=tolerance["mismatched_elements_per_million"])
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0, "mismatched_per_million": 0.0}
    for tid, got, want in zip(ids, produced, expected):
        r = compare(np.asarray(got), np.asarray(want), tol)
        if not r["passed"]:
            detail = r.get("reason") or (f"max abs error {r['max_abs_error']:.3g}, {r['mismatched_per_million']:.1f} "
                                         f"mismatched elements per million")
            raise ExportError(f"the {fmt} weights do not reproduce test output '{tid}' within the package's tolerance "
                              f"(abs {tol.absolute:g}, rel {tol.relative:g}, {tol.mismatched_per_million:g} per "
                              f"million): {detail}; the conversion changed what the network computes")
        for key in worst:
            worst[key] = max(worst[key], float(r[key]))
    return {**worst, "passed": True, "compared_with": "the package's test tensors"}


def pytorch_version() -> str:
    return torch.__version__
