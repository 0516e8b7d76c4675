"""A minimal progress bar on stderr, shown only on a terminal (and not with --quiet)."""
from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, label: str, enabled: bool = True, min_total: int = 4):
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.min_total = min_total
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.min_total:
            return
        width = 30
        filled = int(width * done / total)
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({rate:.1f}/s)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
