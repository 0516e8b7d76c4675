"""The dense tasks: one image in, one image of the same size out (semantic segmentation, CARE, Noise2Void).

They take every default of `ExportTask`; what is left is their output's name and meaning, citations, tags, the
softmax wrapper (segmentation) and how the README reports their test metrics.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import ExportContext, ExportTask

UNET_CITE = ("Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation. "
             "MICCAI 2015", "10.1007/978-3-319-24574-4_28")
CARE_CITE = ("Weigert et al.: Content-aware image restoration: pushing the limits of fluorescence microscopy. "
             "Nature Methods 2018", "10.1038/s41592-018-0216-7")
N2V_CITE = ("Krull, Buchholz, Jug: Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019",
            "10.1109/CVPR.2019.00223")
N2V2_CITE = ("Hoeck et al.: N2V2 - Fixing Noise2Void Checkerboard Artifacts with Modified Sampling Strategies and a "
             "Tweaked Network Architecture. ECCV Workshops 2022", "10.1007/978-3-031-25069-9_33")


def _segmentation_metrics(m: dict) -> list[str]:
    b = m.get("baseline", {})
    return [f"foreground IoU on the held-out test split: **{m['foreground_iou']:.3f}** "
            f"(baseline {b.get('name', '?')}: {b.get('foreground_iou', float('nan')):.3f})"]


def _restoration_metrics(m: dict) -> list[str]:
    b = m.get("baseline", {})
    return [f"PSNR on the held-out test split: **{m['psnr']:.2f} dB** (noisy input {m['psnr_noisy_input']:.2f} dB; "
            f"baseline {b.get('name', '?')} with sigma {b.get('sigma_chosen_on_val', '?')} chosen on val: "
            f"{b.get('psnr', float('nan')):.2f} dB)"]


class SegmentationExport(ExportTask):
    name = "segmentation"
    output_id = "probabilities"
    output_description = "class probabilities (softmax over the channel axis), one channel per class"
    tags = ("semantic-segmentation", "nuclei", "fluorescence-light-microscopy", "unet", "2d", "biozoo")
    cite = (UNET_CITE,)
    records_object_size = True
    cover_range = (0.0, 1.0)
    packaged_output = "softmax"
    notes = ("Channel 0 is background; threshold channel 1 (foreground) at 0.5 or take the argmax over channels.",)

    def channel_names(self, recipe: Any) -> list[str]:
        return list(recipe.classes)

    def cover_image(self, output: np.ndarray) -> np.ndarray:
        return output[1] if output.shape[0] > 1 else output[0]

    def metrics_lines(self, ctx: ExportContext) -> list[str]:
        return _segmentation_metrics(ctx.run.test_metrics)


class _RestorationExport(ExportTask):
    """CARE and Noise2Void: an image in the input's normalized units, reported by PSNR."""

    def metrics_lines(self, ctx: ExportContext) -> list[str]:
        return _restoration_metrics(ctx.run.test_metrics)


class CareExport(_RestorationExport):
    name = "care"
    output_id = "restored"
    output_description = "restored image, in the input's normalized units (0 = its 1st, 1 = its 99.8th percentile)"
    tags = ("denoising", "restoration", "care", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")
    cite = (CARE_CITE, UNET_CITE)


class N2VExport(_RestorationExport):
    name = "n2v"
    output_id = "denoised"
    output_description = "denoised image, in the input's normalized units (0 = its 1st, 1 = its 99.8th percentile)"
    tags = ("denoising", "noise2void", "self-supervised", "nuclei", "fluorescence-light-microscopy", "2d", "biozoo")
    cite = (N2V_CITE, UNET_CITE)

    def citations(self, recipe: Any) -> tuple[tuple[str, str], ...]:
        return (N2V_CITE, N2V2_CITE, UNET_CITE) if getattr(recipe, "n2v2", False) else self.cite


PLUGINS = (SegmentationExport(), CareExport(), N2VExport())  # what biozoo.exporters.tasks registers from this module
