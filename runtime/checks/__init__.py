"""The input checks and `biozoo test`: the registry and report (report.py), each check (input_checks, masking,
pixelsize, objects, batch_independence), a prediction under the checks (conditions) and the package test
(testing). All take the engine (biozoo.runtime.engine), never the facade that calls them.

`InputWarning`, `CheckReport`, `CHECKS` and `parse_no_check` are public here (``biozoo.runtime.checks.InputWarning``
is what `Model.predict` warns with).
"""
from __future__ import annotations

from .report import CHECKS, CheckReport, CheckResult, InputWarning, parse_no_check

__all__ = ["CHECKS", "CheckReport", "CheckResult", "InputWarning", "parse_no_check"]
