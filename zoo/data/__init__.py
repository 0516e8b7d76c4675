"""biozoo.zoo.data: real datasets, leakage-proof splits, normalization, noise and patch datasets.

Names are re-exported lazily (PEP 562) so that `biozoo data fetch` and the split tools never import torch;
only touching `PatchDataset` & co. loads `datasets.py` and with it torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "fetch_dataset": "fetch", "list_datasets": "fetch", "default_data_dir": "fetch", "remove_dataset": "fetch",
    "extract_dataset": "fetch", "sha256_file": "fetch", "DATASETS": "fetch", "DatasetSpec": "fetch", "Member": "fetch",
    "Split": "split", "make_or_load_split": "split", "tile_dataset": "split", "list_files": "split",
    "percentile_normalize": "normalize",
    "add_poisson_gaussian": "noise", "make_noisy_pairs": "noise",
    "Augment": "augment", "Photometric": "augment", "zoom_pair": "augment", "gaussian_blur": "augment",
    "PatchDataset": "datasets", "folder_dataset": "datasets", "load_folder": "datasets",
    "labels_to_classes": "datasets", "CLASSES": "datasets",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
