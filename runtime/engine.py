"""What the checks and the test need from a loaded model: the description, its ops, and the run steps
(prepare -> preprocess -> run tiled -> postprocess). `model.Model` provides it; conditions, testing and the
batch-independence check are written against this protocol, so they never import the facade that calls them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Protocol

import numpy as np

if TYPE_CHECKING:
    from .description import ModelDescription
    from .ops.base import Op
    from .package import Package
    from .stats import DatasetStatistics


class Engine(Protocol):
    package: "Package"
    description: "ModelDescription"
    network: "ModelDescription"  # the network's own outputs (before shape-changing post-processing)
    preprocessing: Mapping[str, tuple["Op", ...]]

    @property
    def provider(self) -> str: ...

    def prepare_inputs(self, inputs: Any, axes: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]: ...

    def preprocess(self, arrays: Mapping[str, np.ndarray], dataset_stats: Optional["DatasetStatistics"] = None,
                   masks: Optional[Mapping[str, np.ndarray]] = None) -> dict[str, np.ndarray]: ...

    def run_model_layout(self, arrays: Mapping[str, np.ndarray], **options: Any) -> dict[str, np.ndarray]: ...

    def run_processed(self, processed: Mapping[str, np.ndarray], raw_arrays: Mapping[str, np.ndarray],
                      **options: Any) -> dict[str, np.ndarray]: ...
