"""Which onnxruntime releases can load an ONNX file: a portability fact about a package, not a validity rule.

The table is onnxruntime's own compatibility matrix (onnxruntime.ai, docs/reference/compatibility.html: "ONNX
opset support"): each release with the newest default-domain opset and IR version it reads. biozoo supports
onnxruntime >= 1.16, so older rows are folded into the first.
"""
from __future__ import annotations

from typing import Optional

# (onnxruntime release, newest opset, newest IR version), oldest first
ORT_RELEASES: tuple[tuple[str, int, int], ...] = (
    ("1.16", 19, 9),
    ("1.17", 20, 9),
    ("1.18", 21, 10),
    ("1.19", 21, 10),
    ("1.20", 21, 10),
)


def oldest_onnxruntime(ir: int, opset: int) -> Optional[str]:
    """The oldest release in the table that loads IR `ir` / opset `opset`; None when newer than the table."""
    for release, max_opset, max_ir in ORT_RELEASES:
        if ir <= max_ir and opset <= max_opset:
            return release
    return None


def portability_note(ir: int, opset: int) -> str:
    release = oldest_onnxruntime(ir, opset)
    newest = ORT_RELEASES[-1]
    if release is None:
        return (f"IR {ir}, opset {opset}: newer than onnxruntime {newest[0]} reads (IR {newest[2]}, opset "
                f"{newest[1]}); only recent onnxruntime releases load it")
    return f"IR {ir}, opset {opset}: loadable by onnxruntime >= {release}"
