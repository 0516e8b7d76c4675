"""The model registry: one dict from name to factory, filled by ``@register_model`` at import of biozoo.zoo.

Recipes, run dirs and exporters refer to architectures by name and rebuild them with
``create_model(name, **hyperparameters)``; a typo gets the close matches back, as in segmentation_models_pytorch.
Every architecture also registers a ``<name>_tiny`` variant that the shared contract test runs in seconds.

Import this module only as ``biozoo.zoo.registry``: a second import under another name would make a second, empty
registry (DESIGN.md section 2).
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch.nn as nn

from biozoo.runtime import BiozooError

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)
C = TypeVar("C")

_MODELS: dict[str, Factory] = {}
# Modules whose import registers architectures; loaded on first use so that `import biozoo.zoo` stays light.
_ARCHITECTURE_MODULES = ("biozoo.zoo.unet", "biozoo.zoo.detector", "biozoo.zoo.stardist")


def _load_architectures() -> None:
    import importlib

    for module in _ARCHITECTURE_MODULES:
        importlib.import_module(module)


def register_model(name: str) -> Callable[[F], F]:
    """Decorator: register ``factory(**overrides) -> nn.Module`` under ``name``.

    A name registered twice is a programming error (two modules claiming one name, or a module imported twice under
    different names), so it raises instead of silently replacing the first factory.
    """

    def decorate(factory: F) -> F:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
        _MODELS[name] = factory
        return factory

    return decorate


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell-style filter such as ``"*_tiny"`` or ``"unet*"``."""
    _load_architectures()
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered architecture ``name`` with its defaults replaced by ``overrides``.

    Raises a BiozooError listing close matches for an unknown name; factories raise BiozooError for unknown or
    out-of-range hyperparameters (see ``build_config``).
    """
    _load_architectures()
    factory = _MODELS.get(name)
    if factory is None:
        raise BiozooError(unknown_name("model", name, list_models()))
    return factory(**overrides)


def build_config(cls: type[C], values: Mapping[str, Any], *, model: str) -> C:
    """Instantiate the frozen dataclass ``cls`` from ``values``, naming unknown keys and their close matches.

    Architectures keep their hyperparameters in such a dataclass so that a model can report exactly how it was
    built (``model.config``) and the exporter can rebuild it; this helper gives them all the same error message.
    """
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise BiozooError(
            f"{model}: " + "; ".join(unknown_name("hyperparameter", k, fields) for k in unknown)
        )
    return cls(**values)


def unknown_name(kind: str, name: str, known: list[str]) -> str:
    """The one message for an unknown name (model, hyperparameter, task): the close matches, then all known."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {kind} {name!r}; {hint}available: {', '.join(known) or '(none)'}"


def module_plugins(package: str, path: Any) -> list[Any]:
    """The ``PLUGINS`` of every public module of ``package`` (its ``__path__``) but ``base``, modules sorted by name.

    The task registries (biozoo.zoo.tasks, biozoo.exporters.tasks) read their members this way, so a new task is a
    new module and no list is kept by hand."""
    import importlib
    import pkgutil

    found: list[Any] = []
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        plugins = getattr(module, "PLUGINS", None)
        if not plugins:
            raise BiozooError(f"{module.__name__} lists no PLUGINS; a task module ends with PLUGINS = (MyTask(),)")
        found.extend(plugins)
    return found
