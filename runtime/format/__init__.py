"""The package format: reading a package (folder, zip, rdf.yaml) safely, its description (format 0.5, 0.4 read
through an edge conversion), the checks on it, and the files it holds (.npy, ONNX headers, the export record).

Nothing here runs a model. The names below are the format's public face for other layers (the converters read a
package's description, files and test tensors through them); they load on first use.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .description import ModelDescription, ParameterizedSize, SizeReference, Tensor, parse_description
    from .format_v04 import convert_v04
    from .npy import load_npy
    from .package import Package, open_package, sha256_of

_PUBLIC = {
    "ModelDescription": "description", "ParameterizedSize": "description", "SizeReference": "description",
    "Tensor": "description", "parse_description": "description", "convert_v04": "format_v04", "load_npy": "npy",
    "Package": "package", "open_package": "package", "sha256_of": "package",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
