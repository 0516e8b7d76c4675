"""biozoo.zoo: model architectures, their IO contracts, data, and training.

Imports are lazy (the CLI loads `biozoo.zoo.data.cli` without torch); `create_model` and `list_models` load
every architecture module on first use. Never imports biozoo.exporters or biozoo.runtime internals.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported: no telemetry, no ~/.cache

if __name__ != "biozoo.zoo":  # a bare `import zoo` would build a second, separate model registry
    raise ImportError(f"import this package as 'biozoo.zoo', not {__name__!r} (see DESIGN.md section 2)")

_EXPORTS = {
    "IOContract": ".io_contract",
    "ReceptiveField": ".receptive_field",
    "measure_receptive_field": ".receptive_field",
    "receptive_field_of": ".receptive_field",
    "create_model": ".registry",
    "list_models": ".registry",
    "register_model": ".registry",
    "UNet": ".unet",
    "UNetConfig": ".unet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'biozoo.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
