"""Unpack an untrusted zip into a folder: limits checked from the central directory before a byte is written
(member paths: no absolute paths, '..', drive letters, control characters, duplicates, symlinks, encryption,
unknown compression; at most MAX_MEMBERS members, at most max_package_bytes() uncompressed in all, no member above
RATIO_MIN_BYTES compressed more than MAX_RATIO:1) and again while extracting (bytes actually written are counted,
member by member); the folder appears atomically, and an existing unpack is used only while it still matches the
archive (file set, sizes, the description's bytes).
"""
from __future__ import annotations

import logging
import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

from ..errors import PackageError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_HASH_CHUNK = 1 << 20
log = logging.getLogger("biozoo")

# Zip limits, all checked from the central directory before extracting and again while extracting. The biggest
# zoo packages are a few GB; 8 GiB leaves room and still stops a bomb from filling the disk.
MAX_PACKAGE_BYTES = 8 * 2**30  # total uncompressed size; $BIOZOO_MAX_PACKAGE_BYTES overrides
MAX_MEMBERS = 10_000  # a package has tens of files
MAX_RATIO = 1000  # deflate tops out at ~1032:1, reached only by (nearly) constant data
RATIO_MIN_BYTES = 16 * 2**20  # smaller members may be constant (an empty mask): only the total limit applies
_COMPRESSION = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}
_MARKER = ".complete"
# what reading a damaged member can raise (bz2 raises OSError, lzma LZMAError, deflate zlib.error, CRC BadZipFile)
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib.error, lzma.LZMAError, ValueError,
                RuntimeError)


def max_package_bytes() -> int:
    """The most bytes an archive may unpack to: $BIOZOO_MAX_PACKAGE_BYTES, else MAX_PACKAGE_BYTES (8 GiB)."""
    value = os.environ.get("BIOZOO_MAX_PACKAGE_BYTES", "").strip()
    if not value:
        return MAX_PACKAGE_BYTES
    if not value.isdigit():
        raise PackageError(f"BIOZOO_MAX_PACKAGE_BYTES is '{value}'; expected a number of bytes, e.g. 17179869184")
    return int(value)


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # normalized path inside the package

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def unpack(zip_path: Path, target: Path) -> Path:
    """Unpack into the cache, keyed by the archive's hash, so a package is unpacked once per content; a cached
    unpack is used only while it still matches the archive."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _checked_members(archive, zip_path)
            if target.exists() or target.is_symlink():
                problem = _cache_problem(target, archive, members)
                if problem is None:
                    return target
                log.warning("the cached unpack of %s was modified (%s); unpacking it again", zip_path.name, problem)
                _discard(target)
            return _extract(archive, members, zip_path, target)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib.error, ValueError) as e:
        raise PackageError(f"cannot unpack '{zip_path}': {e}; the zip is corrupted: get or export it again") from None
    except OSError as e:
        raise PackageError(f"cannot read '{zip_path}': {e}; check the file and get or export it again") from None


def _checked_members(archive: zipfile.ZipFile, zip_path: Path) -> list[_Member]:
    """Every member, refused before any work when one is unsafe or the whole exceeds the limits."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise PackageError(
            f"'{zip_path.name}' has {len(infos)} members; a package has at most {MAX_MEMBERS}: refusing to unpack it"
        )
    limit = max_package_bytes()
    total = sum(info.file_size for info in infos)
    if total > limit:
        raise PackageError(
            f"'{zip_path.name}' unpacks to {total} bytes, more than the {limit} accepted: refusing to unpack it "
            "(a zip bomb or an unusually large package; set BIOZOO_MAX_PACKAGE_BYTES to raise the limit)"
        )
    members, seen, folders = [], {}, set()
    for info in infos:
        member = _check_member(info, zip_path)
        if not member.parts:
            continue  # the archive's root folder ('./')
        key = member.name.casefold()  # case-insensitive file systems would merge these
        if key in seen and not (info.is_dir() and seen[key].info.is_dir()):
            raise PackageError(
                f"'{zip_path.name}' contains {info.orig_filename!r} twice (as {seen[key].info.orig_filename!r}); "
                "an archive with duplicate members is ambiguous: refusing to unpack it"
            )
        seen[key] = member
        folders.update("/".join(member.parts[:i]).casefold() for i in range(1, len(member.parts)))
        members.append(member)
    for key in folders:
        if key in seen and not seen[key].info.is_dir():
            raise PackageError(
                f"'{zip_path.name}' has {seen[key].info.orig_filename!r} both as a file and as a folder of other "
                "members: refusing to unpack an inconsistent archive"
            )
    return members


def _check_member(member: zipfile.ZipInfo, zip_path: Path) -> _Member:
    raw = member.orig_filename  # zipfile cuts .filename at a NUL; the original keeps it
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in raw):
        raise PackageError(
            f"'{zip_path.name}' contains a member named {raw!r}, with NUL or control characters: refusing to "
            "unpack an unsafe archive"
        )
    name = raw.replace("\\", "/")
    pure = PurePosixPath(name)
    mode = member.external_attr >> 16
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise PackageError(
            f"'{zip_path.name}' contains the member {raw!r}, whose path escapes the package "
            "(absolute or '..'): refusing to unpack an unsafe archive"
        )
    if stat.S_ISLNK(mode):
        raise PackageError(f"'{zip_path.name}' contains a symbolic link {raw!r}: refusing to unpack it")
    if any(len(part.encode("utf-8")) > 255 for part in pure.parts):
        raise PackageError(f"'{zip_path.name}' contains a member name longer than 255 bytes ({raw[:60]!r}...)")
    if member.flag_bits & 0x1:
        raise PackageError(
            f"'{zip_path.name}' contains the encrypted member {raw!r}; packages must not be encrypted: "
            "zip it again without a password"
        )
    if member.compress_type not in _COMPRESSION:
        raise PackageError(
            f"'{zip_path.name}' compresses {raw!r} with method {member.compress_type}; expected one of "
            f"{', '.join(_COMPRESSION.values())}: zip it again with deflate"
        )
    if member.file_size > RATIO_MIN_BYTES and member.file_size > MAX_RATIO * max(member.compress_size, 1):
        raise PackageError(
            f"'{zip_path.name}' member {raw!r} expands {member.compress_size} bytes to {member.file_size} (more than "
            f"{MAX_RATIO}:1): refusing a likely zip bomb"
        )
    return _Member(member, tuple(p for p in pure.parts if p != "."))


def _extract(archive: zipfile.ZipFile, members: list[_Member], zip_path: Path, target: Path) -> Path:
    """Member by member into a staging folder, counting the bytes written; then one atomic rename."""
    limit = max_package_bytes()
    needed = sum(m.info.file_size for m in members)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
    except OSError as e:
        raise _cache_error(target.parent, e) from None
    if needed > free:
        raise PackageError(
            f"'{zip_path.name}' unpacks to {needed} bytes, but the cache folder '{target.parent}' has {free} free: "
            "free disk space or set BIOZOO_CACHE_DIR to a folder with room"
        )
    try:
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    except OSError as e:
        raise _cache_error(target.parent, e) from None
    try:
        written = 0
        for member in members:
            dest = staging.joinpath(*member.parts)
            try:
                if member.info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _cache_error(staging, e) from None
            written += _copy_member(archive, member, dest, limit - written, zip_path)
        try:
            (staging / _MARKER).touch()
            staging.rename(target)
        except OSError as e:  # another process finished first; its copy is identical
            if not (target / _MARKER).exists():
                raise _cache_error(target, e) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _copy_member(archive: zipfile.ZipFile, member: _Member, dest: Path, budget: int, zip_path: Path) -> int:
    """Copy one member, never writing more than its declared size nor than the remaining budget."""
    declared = member.info.file_size
    written = 0
    try:
        src = archive.open(member.info)
    except _READ_ERRORS as e:
        raise _corrupt(zip_path, member, e) from None
    with src:
        try:
            dst = open(dest, "xb")  # exclusive: a member never overwrites another
        except OSError as e:
            raise _cache_error(dest.parent, e) from None
        with dst:
            while True:
                try:
                    chunk = src.read(_HASH_CHUNK)
                except _READ_ERRORS as e:
                    raise _corrupt(zip_path, member, e) from None
                if not chunk:
                    break
                written += len(chunk)
                if written > declared or written > budget:
                    raise PackageError(
                        f"'{zip_path.name}' member {member.info.orig_filename!r} holds more than the {declared} bytes "
                        f"its header declares (or than the {budget} left of the limit): refusing a lying archive"
                    )
                try:
                    dst.write(chunk)
                except OSError as e:
                    raise _cache_error(dest.parent, e) from None
    if written != declared:
        raise PackageError(
            f"'{zip_path.name}' member {member.info.orig_filename!r} holds {written} bytes, its header declares "
            f"{declared}; the zip is corrupted: get or export it again"
        )
    return written


def _corrupt(zip_path: Path, member: _Member, e: BaseException) -> PackageError:
    return PackageError(f"cannot unpack {member.info.orig_filename!r} from '{zip_path}': {e}; the zip is corrupted: "
                        "get or export it again")


def _cache_error(where: Path, e: OSError) -> PackageError:
    return PackageError(f"cannot write into the cache folder '{where}': {e.strerror or e}; free disk space, fix its "
                        "permissions, or set BIOZOO_CACHE_DIR to another folder")


def _cache_problem(target: Path, archive: zipfile.ZipFile, members: list[_Member]) -> Optional[str]:
    """Why a cached unpack no longer matches its archive (None when it does): the same regular files with the same
    sizes, and the description's bytes identical. Other files are sha256-verified when used."""
    if target.is_symlink() or not target.is_dir():
        return "the cache folder is not a plain folder"
    if not (target / _MARKER).is_file():
        return "it is incomplete"
    expected = {m.name: m for m in members if not m.info.is_dir()}
    found = set()
    for rel, kind, size in _walk(target):
        if rel == _MARKER and rel not in expected:
            continue
        if kind != "file":
            return f"'{rel}' is {kind}"
        member = expected.get(rel)
        if member is None:
            return f"'{rel}' is not in the archive"
        if size != member.info.file_size:
            return f"'{rel}' has {size} bytes, the archive {member.info.file_size}"
        found.add(rel)
    missing = sorted(set(expected) - found)
    if missing:
        return f"'{missing[0]}' is missing"
    for name, member in expected.items():
        if "/" not in name and (name in RDF_NAMES or name.endswith(".bioimageio.yaml")):
            if not _same_bytes(archive, member, target / name):
                return f"'{name}' differs from the archive"
    return None


def _walk(root: Path) -> Iterator[tuple[str, str, int]]:
    """(relative posix path, 'file' | 'a link' | 'a special file', size) of everything below root except folders."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if stat.S_ISDIR(st.st_mode):
                continue
            kind = "file" if stat.S_ISREG(st.st_mode) else "a link" if stat.S_ISLNK(st.st_mode) else "a special file"
            yield rel, kind, st.st_size


def _same_bytes(archive: zipfile.ZipFile, member: _Member, path: Path) -> bool:
    with archive.open(member.info) as a, open(path, "rb") as b:
        while True:
            x, y = a.read(_HASH_CHUNK), b.read(_HASH_CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _discard(target: Path) -> None:
    """Move a stale cached unpack out of the way atomically, then delete it."""
    trash = target.with_name(f".stale-{target.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        return  # another process discarded it first
    except OSError as e:
        raise _cache_error(target.parent, e) from None
    if trash.is_symlink():
        trash.unlink()
    else:
        shutil.rmtree(trash, ignore_errors=True)
