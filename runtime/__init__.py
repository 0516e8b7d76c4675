"""biozoo.runtime: load, verify and run bioimage.io model packages with ONNX weights.

Torch-free by design. Heavy modules (onnxruntime, the model class) load on first use, so that
`import biozoo.runtime` stays cheap and other layers can import the errors alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BiozooError, ExportError, InputError, PackageError, TrainingError

if TYPE_CHECKING:
    from .model import Model, load

__all__ = ["BiozooError", "ExportError", "InputError", "Model", "PackageError", "TrainingError", "load"]


def __getattr__(name: str) -> Any:
    if name in ("Model", "load"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'biozoo.runtime' has no attribute {name!r}")
