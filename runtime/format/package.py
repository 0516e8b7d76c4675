"""Open a model package (zip, folder, or rdf.yaml path) safely and verify the files it references.

A package is hostile until verified. Zip archives are unpacked by archive.py (limits from the central directory and
while extracting) only into biozoo's cache folder, atomically, keyed by the archive's sha256, and a cached unpack is
re-checked against the archive on every reuse: a modified cache is unpacked again. YAML is read through safe_yaml (size,
aliases, nesting); http(s) sources are never fetched; every file with a sha256 in the description is hashed before
use. Only the ONNX weights are ever resolved: other weight formats are ignored.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional

from ..errors import PackageError
from .archive import RDF_NAMES, unpack
from .format_v04 import convert_v04, is_v04
from .safe_yaml import load_yaml_file

_HASH_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where unpacked packages live: $BIOZOO_CACHE_DIR, else ~/.cache/biozoo."""
    root = os.environ.get("BIOZOO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "biozoo"
    )
    return Path(root)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Package:
    """An opened package: its folder, the raw rdf dict, and verified access to its files."""

    source: Path
    root: Path
    rdf_path: Path
    rdf: Mapping[str, Any]
    converted_from: Optional[str] = None  # the format version read when the rdf was converted at the edge (0.4)
    _verified: dict[str, Path] = field(default_factory=dict, repr=False)

    def file(self, entry: Any, where: str) -> Path:
        """Resolve a file reference (a path string or {source, sha256}) inside the package; verify its sha256."""
        source, expected = (entry.get("source"), entry.get("sha256")) if isinstance(entry, Mapping) else (entry, None)
        if not isinstance(source, str) or not source:
            raise PackageError(f"{where} has no 'source'; expected a file name inside the package")
        key = f"{source}|{expected}"
        if key in self._verified:
            return self._verified[key]
        if source.startswith(("http://", "https://")):
            raise PackageError(
                f"{where} points to {source}: biozoo works offline and never downloads. Download the file yourself, "
                f"put it next to {self.rdf_path.name} and set {where}.source to its file name"
            )
        path = self.inside(source, where)
        if not path.is_file():
            raise PackageError(f"{where} names '{source}', which is missing from the package ({self.source})")
        if expected:
            actual = sha256_of(path)
            if actual != str(expected).lower():
                raise PackageError(
                    f"sha256 mismatch for '{source}' ({where}): the description says {expected}, the file has {actual}. "
                    "The package was modified or corrupted: get an intact copy or re-export it"
                )
        self._verified[key] = path
        return path

    def inside(self, relative: str, where: str) -> Path:
        """A path inside the package folder, refusing anything that escapes it."""
        pure = PurePosixPath(relative.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
            raise PackageError(f"{where} is '{relative}': paths must stay inside the package (no absolute paths, no '..')")
        path = self.root.joinpath(*pure.parts)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise PackageError(f"{where} is '{relative}', which resolves outside the package through a link")
        return path


def open_package(source: str | os.PathLike[str]) -> Package:
    """Open a .zip, a folder, or an rdf.yaml / bioimageio.yaml path; nothing is fetched from the network."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        raise PackageError(f"'{text}' is a URL: biozoo works offline. Download the package and pass the local .zip")
    path = Path(source).expanduser()
    if not path.exists():
        raise PackageError(f"package '{path}' does not exist; expected a .zip, a folder, or an rdf.yaml path")
    if path.is_dir():
        rdf_path = _find_rdf(path)
    elif not path.is_file():  # a FIFO or a device would block or never end
        raise PackageError(
            f"package '{path}' is not a regular file or folder; expected a .zip, a folder, or an rdf.yaml"
        )
    elif path.suffix.lower() in (".yaml", ".yml"):
        rdf_path = path
    elif zipfile.is_zipfile(path):
        rdf_path = _find_rdf(unpack(path, cache_dir() / "packages" / sha256_of(path)[:32]))
    else:
        raise PackageError(
            f"'{path}' is not a package: expected a valid .zip, a folder, or an rdf.yaml (the file may be a corrupted "
            "or truncated zip; download or export it again)"
        )
    rdf = _read_rdf(rdf_path)
    converted_from = None
    if is_v04(rdf):  # converted here, once: nothing downstream sees format 0.4
        converted_from, rdf = str(rdf["format_version"]), convert_v04(rdf)
    return Package(source=path, root=rdf_path.parent, rdf_path=rdf_path, rdf=rdf, converted_from=converted_from)


def _find_rdf(folder: Path) -> Path:
    for name in RDF_NAMES:
        if (folder / name).is_file():
            return folder / name
    named = sorted(folder.glob("*.bioimageio.yaml"))
    if named:
        return named[0]
    raise PackageError(f"no rdf.yaml or bioimageio.yaml in '{folder}'; is this a bioimage.io model package?")


def _read_rdf(rdf_path: Path) -> Mapping[str, Any]:
    rdf = load_yaml_file(rdf_path, "package description")  # bounded, regular file only, no aliases, bounded depth
    if not isinstance(rdf, Mapping):
        raise PackageError(f"{rdf_path.name} must hold a mapping; got {type(rdf).__name__}")
    if rdf.get("type") != "model":
        raise PackageError(f"{rdf_path.name} describes a '{rdf.get('type')}', not a model; biozoo runs model packages")
    version = str(rdf.get("format_version", "?"))
    if not version.startswith(("0.5.", "0.4.")):
        raise PackageError(
            f"{rdf_path.name} has format_version {version}; biozoo reads formats 0.4.x and 0.5.x. Update the "
            "description with bioimageio.spec ('bioimageio update-format rdf.yaml') and try again"
        )
    return rdf

