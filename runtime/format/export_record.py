"""`biozoo validate` checks of what a package claims about itself: the export record and halo-consistent sizes.

The export record (``config.biozoo``: parity and batch independence measured when biozoo wrote the package) is
checked for presence and consistency; third-party packages have none and get a skipped result, not a failure. The
halo check applies to every package: an output halo that the minimum tile cannot hold, or that is smaller than
half the recorded receptive field, makes tiled predictions wrong at tile borders.
"""
from __future__ import annotations

from typing import Any

from .description import ParameterizedSize, SizeReference


def _record(model) -> dict[str, Any]:
    cfg = model.description.config.get("biozoo")
    if not isinstance(cfg, dict):
        return {"name": "export-record", "passed": True, "skipped": True,
                "detail": "no config.biozoo (not written by biozoo): no recorded parity to check"}
    problems = []
    parity = cfg.get("parity") or {}
    if not parity:
        problems.append("config.biozoo.parity is missing (torch vs onnxruntime parity was not recorded)")
    elif not parity.get("passed") or "max_abs_error" not in parity:
        problems.append(f"recorded parity did not pass or has no error numbers: {parity}")
    formats = parity.get("weight_formats") if isinstance(parity, dict) else None
    if formats is not None:  # packages of biozoo >= 0.1 with several weight formats: each reproduced the tensors
        failed = [f for f, r in formats.items() if not (isinstance(r, dict) and r.get("passed"))] \
            if isinstance(formats, dict) else ["(not a mapping)"]
        if failed:
            problems.append(f"config.biozoo.parity.weight_formats: {', '.join(map(str, failed))} did not reproduce "
                            "the test tensors at export")
    independence = cfg.get("batch_independence") or {}
    if not independence.get("passed"):
        problems.append(f"recorded batch independence did not pass or is missing: {independence or 'absent'}")
    if problems:
        return {"name": "export-record", "passed": False,
                "detail": "; ".join(problems) + ". Re-export the run with `biozoo export`"}
    return {"name": "export-record", "passed": True,
            "detail": f"parity torch vs onnxruntime max abs {parity['max_abs_error']:.3g} (recorded at export), "
                      f"batch independence max {independence.get('max_abs_difference', 0):.3g}"
                      + (f"; test tensors reproduced by {', '.join(formats)}" if formats else "")}


def _halo(model) -> dict[str, Any]:
    d = model.description
    cfg = d.config.get("biozoo") if isinstance(d.config.get("biozoo"), dict) else {}
    rf = (cfg.get("training") or {}).get("receptive_field")
    problems, seen = [], 0
    for t in d.outputs:
        for a in t.axes:
            if not a.halo:
                continue
            seen += 1
            if isinstance(a.size, SizeReference):
                ref = d.tensor(a.size.tensor_id).axis(a.size.axis_id)
                if isinstance(ref.size, ParameterizedSize):
                    smallest = ref.size.min * ref.scale / a.scale + a.size.offset
                    if smallest - 2 * a.halo < 1:
                        problems.append(f"{t.id}.{a.id}: halo {a.halo} on each side leaves nothing of the smallest "
                                        f"tile ({smallest:g}); raise the input minimum to >= {2 * a.halo + 1}")
            if rf and 2 * a.halo + 1 < int(rf):
                problems.append(f"{t.id}.{a.id}: halo {a.halo} is below half the recorded receptive field ({rf} px); "
                                f"tiles would differ from the whole image near their borders; use halo >= {int(rf) // 2}")
    if problems:
        return {"name": "halo-sizes", "passed": False, "detail": "; ".join(problems)}
    detail = f"{seen} output axes with a halo; sizes and receptive field consistent" if seen else "no output halo declared"
    return {"name": "halo-sizes", "passed": True, "detail": detail}


def export_record_checks(model) -> list[dict[str, Any]]:
    return [_record(model), _halo(model)]
