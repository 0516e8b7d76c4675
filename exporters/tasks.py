"""What differs between tasks when a run is packaged: the output tensor, its meaning, citations, tags, the wrapper.

One ``TaskExport`` per task in ``TASKS``; the exporter reads everything task-specific from it, so adding a task
(StarDist, a detector) means registering one more entry, not branching in the exporter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

UNET_CITE = ("Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
             "MICCAI 2015", "10.1007/978-3-319-24574-4_28")
CARE_CITE = ("Weigert et al.: Content-aware image restoration: pushing the limits of fluorescence microscopy. "
             "Nature Methods 2018", "10.1038/s41592-018-0216-7")
N2V_CITE = ("Krull, Buchholz, Jug: Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019",
            "10.1109/CVPR.2019.00223")
N2V2_CITE = ("Hoeck et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling Strategies and a "
             "Tweaked Network Architecture. ECCV Workshops 2022", "10.1007/978-3-031-25069-9_33")


class Softmax(torch.nn.Module):
    """Logits -> class probabilities inside the graph, so the package outputs what users threshold."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@dataclass(frozen=True)
class TaskExport:
    """Task-specific parts of a package.

    ``wrap`` turns the trained network into the exported one (e.g. adds softmax); ``channel_names(recipe)`` names
    the output channels; ``cover(output)`` picks the 2D image shown in the cover next to the input; ``metrics_text``
    turns test_metrics.json into README lines; ``extra_rdf`` may add task-specific rdf parts (post-ops, outputs).
    """

    task: str
    output_id: str
    output_description: str
    tags: tuple[str, ...]
    cite: tuple[tuple[str, str], ...]
    channel_names: Callable[[Any], list[str]]
    cover: Callable[[np.ndarray], np.ndarray]
    metrics_text: Callable[[dict], list[str]]
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda net: net
    citations_for: Optional[Callable[[Any], tuple[tuple[str, str], ...]]] = None
    notes: tuple[str, ...] = field(default=())

    def citations(self, recipe: Any) -> tuple[tuple[str, str], ...]:
        return self.citations_for(recipe) if self.citations_for else self.cite


def _segmentation_metrics(m: dict) -> list[str]:
    b = m.get("baseline", {})
    return [f"foreground IoU on the held-out test split: **{m['foreground_iou']:.3f}** "
            f"(baseline {b.get('name', '?')}: {b.get('foreground_iou', float('nan')):.3f})"]


def _restoration_metrics(m: dict) -> list[str]:
    b = m.get("baseline", {})
    return [f"PSNR on the held-out test split: **{m['psnr']:.2f} dB** (noisy input {m['psnr_noisy_input']:.2f} dB; "
            f"baseline {b.get('name', '?')} with sigma {b.get('sigma_chosen_on_val', '?')} chosen on val: "
            f"{b.get('psnr', float('nan')):.2f} dB)"]


def _first_channel(out: np.ndarray) -> np.ndarray:
    return out[0]


TASKS: dict[str, TaskExport] = {}


def register_task(spec: TaskExport) -> TaskExport:
    TASKS[spec.task] = spec
    return spec


register_task(TaskExport(
    task="segmentation", output_id="probabilities",
    output_description="class probabilities (softmax over the channel axis), one channel per class",
    tags=("semantic-segmentation", "nuclei", "fluorescence-light-microscopy", "unet", "2d", "biozoo"),
    cite=(UNET_CITE,), channel_names=lambda r: list(r.classes), wrap=Softmax,
    cover=lambda out: out[1] if out.shape[0] > 1 else out[0], metrics_text=_segmentation_metrics,
    notes=("Channel 0 is background; threshold channel 1 (foreground) at 0.5 or take the argmax over channels.",),
))
register_task(TaskExport(
    task="care", output_id="restored",
    output_description="restored image, in the input's normalized units (0 = its 1st, 1 = its 99.8th percentile)",
    tags=("denoising", "restoration", "care", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo"),
    cite=(CARE_CITE, UNET_CITE), channel_names=lambda r: ["restored"], cover=_first_channel,
    metrics_text=_restoration_metrics,
))
register_task(TaskExport(
    task="n2v", output_id="denoised",
    output_description="denoised image, in the input's normalized units (0 = its 1st, 1 = its 99.8th percentile)",
    tags=("denoising", "noise2void", "self-supervised", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo"),
    cite=(N2V_CITE, UNET_CITE), channel_names=lambda r: ["denoised"], cover=_first_channel,
    metrics_text=_restoration_metrics,
    citations_for=lambda r: (N2V_CITE, N2V2_CITE, UNET_CITE) if getattr(r, "n2v2", False) else (N2V_CITE, UNET_CITE),
))
