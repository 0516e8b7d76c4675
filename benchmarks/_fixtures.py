"""Build the test-suite's real fixture packages for demos and benchmarks (until the exporters exist)."""
from __future__ import annotations

import pathlib
import sys

# benchmarks are scripts (python benchmarks/X.py): the repository root makes the test fixtures importable as `tests`
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.packages import build_package  # noqa: E402

__all__ = ["build_package"]
