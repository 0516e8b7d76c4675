"""The base of every processing op (one frozen dataclass per op id): its own module so that ops defined elsewhere
(stardist_post) derive from it without importing the registry that lists them (ops.OPS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from .stats import Measure, StatsContext

Axes = Sequence[str]


@dataclass(frozen=True)
class Op:
    """Base: subclasses set `op_id`, parse kwargs in `build`, and implement `__call__`."""

    op_id: ClassVar[str]
    tensor_id: str
    where: str

    @property
    def measures(self) -> tuple[Measure, ...]:
        return ()

    def __call__(self, x: np.ndarray, axes: Axes, stats: StatsContext) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError
