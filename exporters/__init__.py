"""biozoo.exporters: a training run -> a bioimage.io package (ONNX + rdf.yaml + test tensors + covers + README).

Uses torch, onnx, bioimageio.spec and biozoo.zoo (to rebuild the network) and biozoo.runtime (to test what it
wrote). Imports are lazy so that the CLI can register `biozoo export` without loading torch.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported: no telemetry, no ~/.cache

_EXPORTS = {
    "export_run": ".export",
    "ExportReport": ".export",
    "export_onnx": ".onnx_export",
    "check_parity": ".parity",
    "check_batch_independence": ".parity",
    "TASKS": ".tasks",
    "ExportTask": ".tasks",
    "get_export_task": ".tasks",
    "list_export_tasks": ".tasks",
    "register_task": ".tasks",
    "write_deterministic_zip": ".zipper",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'biozoo.exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
