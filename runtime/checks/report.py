"""The registry of input checks and the report they fill (issue 6: refuse garbage in).

Every check has a name (used by `--no-check NAME` and in every report) and yields one structured result per
input: status ok | warning | error | skipped, a message that says what was found, what was expected and what to do,
and the numbers behind it. Only `error` stops a prediction (an InputError, before anything is written);
warnings are logged by the CLI, listed in `--json` reports and raised as `InputWarning` by `Model.predict`.
"""
from __future__ import annotations

import difflib
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional

from ..errors import InputError

# name -> one line for --help and error messages. Order = the order in which reports list them.
CHECKS: dict[str, str] = {
    "pixel-size": "input pixel size (TIFF/OME/ImageJ metadata or --pixel-size) vs the training pixel size; "
                  "a mismatch over 10% is an error unless --rescale",
    "masked-normalization": "exclude --mask / --ignore-value pixels, or auto-detected large constant regions "
                            "(blacked-out or saturated, > 20% of the image), from the normalization statistics",
    "batch-effects": "dataset-wide normalization over inputs whose intensity distributions differ strongly",
    "distribution-shift": "the normalized input's intensity percentiles vs those of the training data",
    "receptive-field": "objects in the output larger than the network's receptive field, or far from the size of "
                       "the training objects",
    "out-of-distribution": "the prediction of flipped crops vs the prediction itself, against the same agreement on "
                           "training-like data (recorded at export, or the package's test tensors): a model out of "
                           "its depth disagrees with itself",
    "batch-independence": "a sample's output must not depend on the other samples of its batch "
                          "(batch norm in training mode, normalization across the batch inside the graph)",
}
STATUSES = ("ok", "warning", "error", "skipped")


class InputWarning(UserWarning):
    """An input check found something the user should look at (the prediction still ran)."""


@dataclass
class CheckResult:
    name: str
    status: str
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)
    input: Optional[str] = None  # which input (file name, sample) the result is about; None: all of them

    def __post_init__(self) -> None:
        if self.name not in CHECKS or self.status not in STATUSES:  # a programming error, not user input
            raise ValueError(f"bad check result {self.name!r}/{self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        fixed = {"name": self.name, "status": self.status, "message": self.message}
        if self.input is not None:
            fixed["input"] = self.input
        return {**fixed, **{k: v for k, v in self.numbers.items() if k not in fixed}}

    def line(self) -> str:
        where = f"{self.input}: " if self.input else ""
        return f"[{self.name}] {where}{self.message}"


class CheckReport:
    """The results of one call (or one `biozoo predict` over many files), in check order."""

    def __init__(self, skip: Iterable[str] = ()):
        self.skip = parse_no_check(skip)
        self.results: list[CheckResult] = []
        # wall seconds by phase of the call that filled this report ("checks", "preprocessing", "network and
        # postprocessing", "resampling"): what `biozoo bench` reports as the split; never part of the results
        self.seconds: dict[str, float] = {}

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def enabled(self, name: str) -> bool:
        return name not in self.skip

    def add(self, name: str, status: str, message: str, **numbers: Any) -> CheckResult:
        result = CheckResult(name, status, message, numbers)
        self.results.append(result)
        return result

    def extend(self, other: "CheckReport", input_name: Optional[str] = None) -> None:
        for r in other.results:
            if input_name is not None and r.input is None:
                r.input = input_name
            self.results.append(r)

    def disabled(self) -> None:
        """Record the checks turned off by --no-check (so reports say what was not looked at)."""
        for name in CHECKS:
            if name in self.skip:
                self.results.append(CheckResult(name, "skipped", "turned off (--no-check)"))

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def with_status(self, status: str) -> list[CheckResult]:
        return [r for r in self.results if r.status == status]

    def as_list(self) -> list[dict[str, Any]]:
        order = list(CHECKS)
        return [r.as_dict() for r in sorted(self.results, key=lambda r: order.index(r.name))]

    def warn(self) -> None:
        """Raise the warnings as Python warnings (for the plain `predict` API)."""
        for r in self.with_status("warning"):
            warnings.warn(r.line(), InputWarning, stacklevel=4)


def parse_no_check(names: Iterable[str] | str | None) -> frozenset[str]:
    """Validate --no-check names (comma-separated or repeated); unknown names are an InputError (exit 2)."""
    if names is None:
        return frozenset()
    if isinstance(names, str):
        names = [names]
    found = set()
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in CHECKS:
                close = difflib.get_close_matches(name, CHECKS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise InputError(f"unknown check '{name}'{hint}; valid names for --no-check: {', '.join(CHECKS)}")
            found.add(name)
    return frozenset(found)


def training_conditions(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """config.biozoo.training of a biozoo package; {} for third-party packages (checks needing it are skipped)."""
    biozoo = config.get("biozoo") if isinstance(config, Mapping) else None
    training = biozoo.get("training") if isinstance(biozoo, Mapping) else None
    return training if isinstance(training, Mapping) else {}


def help_text() -> str:
    return "; ".join(f"{name}: {text}" for name, text in CHECKS.items())
