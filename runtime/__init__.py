"""biozoo.runtime: load, verify and run bioimage.io model packages with ONNX weights.

Torch-free by design. Heavy modules (onnxruntime, the model class) load on first use, so that
`import biozoo.runtime` stays cheap and other layers can import the errors alone.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .errors import BiozooError, ExportError, InputError, PackageError, TrainingError
from .format.safe_yaml import load_yaml_file  # for other layers' YAML (recipes): size, alias and depth limits

# onnxruntime-gpu writes a device-id file under ~/.cache/Microsoft per session and long sessions resolve a
# telemetry host; this must be set before onnxruntime is first imported (biozoo never connects anywhere)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

if TYPE_CHECKING:
    from .model import Model, load
    from .ops.stardist import instances as stardist_instances

__all__ = ["BiozooError", "ExportError", "InputError", "Model", "PackageError", "TrainingError", "load",
           "load_yaml_file", "stardist_instances"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "load"):
        from . import model

        return getattr(model, name)
    if name == "stardist_instances":  # StarDist's NMS, shared by training (threshold choice) and the package's op
        from .ops.stardist import instances

        return instances
    raise AttributeError(f"module 'biozoo.runtime' has no attribute {name!r}")
