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


class ExportError(BiozooError):
    """A trained model could not be turned into a valid package."""


class TrainingError(BiozooError):
    """Training cannot start or cannot go on."""
