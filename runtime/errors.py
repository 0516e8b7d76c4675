"""The error hierarchy shared by every biozoo layer.

Messages follow one pattern: what is wrong, what was received, what was expected, how to fix it.
The CLI prints them without a traceback and exits with code 2 (bad input) or 1 (a check failed).
"""
from __future__ import annotations


class BiozooError(Exception):
    """Base of every error biozoo raises on purpose."""


class PackageError(BiozooError):
    """A model package is unreadable, inconsistent, unsafe or unsupported."""


class InputError(BiozooError, ValueError):
    """The caller's data or arguments do not fit the model."""


class PixelSizeError(InputError):
    """The input's pixel size differs from the training one; resampling (`rescale`) would fix it. Its own class so
    that front ends (the napari widget) can offer that fix instead of only showing the message."""

    def __init__(self, message: str, ratios: "dict[str, float]"):
        super().__init__(message)
        self.ratios = dict(ratios)  # input / training pixel size, per space axis


class ExportError(BiozooError):
    """A trained model could not be turned into a valid package."""


class TrainingError(BiozooError):
    """Training cannot start or cannot go on."""
