"""Read YAML written by strangers: bounded size, regular files only, bounded alias expansion and nesting.

`yaml.safe_load` alone is not enough for hostile input: aliases expand into exponentially large structures
("billion laughs": seconds of CPU and gigabytes as soon as anything walks the result), deep nesting ends in a
RecursionError, and a path that is a FIFO or a device blocks `read()` forever. Every YAML file biozoo reads from a
package (and the zoo's recipes) goes through `load_yaml_file` / `load_yaml_text`:

- the file must be a regular file (checked before and after opening, opened non-blocking) of at most
  MAX_YAML_BYTES (16 MiB; override with $BIOZOO_MAX_YAML_BYTES): a bioimage.io rdf is a few kilobytes;
- the event stream is checked first (libyaml when available), with every alias counted as what it expands to
  (PyYAML's own writer emits aliases for shared values, so they are read; aliases that multiply are not): at most
  MAX_YAML_DEPTH (64) nested mappings/sequences and at most MAX_YAML_EVENTS (500,000) values in all, expanded
  (construction costs ~5 s per million, the check ~1 s);
- only then is it constructed with the safe loader (no Python tags).

Every refusal is raised as `error` (PackageError by default) with a one-line message.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import BiozooError, PackageError

MAX_YAML_BYTES = 16 * 2**20
MAX_YAML_DEPTH = 64
MAX_YAML_EVENTS = 500_000  # scalars + collections; a real rdf has a few thousand, constructing 1e6 takes ~5 s

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # same rules; libyaml is ~20x faster


def max_yaml_bytes() -> int:
    value = os.environ.get("BIOZOO_MAX_YAML_BYTES")
    return int(value) if value and value.isdigit() else MAX_YAML_BYTES


def read_regular_file(path: Path, max_bytes: int, what: str, error: type[BiozooError] = PackageError,
                      hint: str = "") -> bytes:
    """The bytes of `path`, refusing anything that is not a regular file or is larger than `max_bytes`.

    FIFOs, devices and directories are refused before the open (a FIFO would block it) and again after it (the
    path may have been swapped in between); the read stops one byte past the limit whatever the size claims."""
    hint = f"; {hint}" if hint else ""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"cannot read {what} '{path}': {e.strerror or e}{hint}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} '{path}' is not a regular file ({file_kind(st.st_mode)}); expected a plain file{hint}")
    if st.st_size > max_bytes:
        raise error(f"{what} '{path}' is {st.st_size} bytes; at most {max_bytes} are accepted{hint}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"cannot open {what} '{path}': {e.strerror or e}{hint}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} '{path}' is not a regular file ({file_kind(st.st_mode)}); expected a plain file{hint}")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {what} '{path}': {e.strerror or e}{hint}") from None
    if len(data) > max_bytes:
        raise error(f"{what} '{path}' is larger than {max_bytes} bytes, the most accepted{hint}")
    return data


def load_yaml_file(path: str | os.PathLike[str], what: str = "YAML file", *, error: type[BiozooError] = PackageError,
                   max_bytes: Optional[int] = None) -> Any:
    """Parse one YAML document from a regular file of bounded size, with bounded alias expansion and nesting.

    `what` names the file in messages ("rdf.yaml", "recipe"); `error` is the exception class raised (PackageError
    for packages; the zoo passes its own)."""
    path = Path(path)
    limit = max_yaml_bytes() if max_bytes is None else max_bytes
    data = read_regular_file(path, limit, what, error)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} '{path.name}' is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    return load_yaml_text(text, f"{what} '{path.name}'", error=error)


def load_yaml_text(text: str, what: str = "YAML text", *, error: type[BiozooError] = PackageError) -> Any:
    """Parse one YAML document from a string with the same rules as `load_yaml_file` (size is the caller's)."""
    try:
        _check_events(text, what, error)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader, aliases and depth checked above
    except yaml.YAMLError as e:
        raise error(f"{what} is not valid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise error(f"{what} nests too deeply; at most {MAX_YAML_DEPTH} levels are accepted") from None
    except (ValueError, OverflowError, TypeError) as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{what} holds a value that cannot be read: {_one_line(e)}") from None


def _check_events(text: str, what: str, error: type[BiozooError]) -> None:
    """Walk the event stream once, counting values as they would be after expanding every alias (an alias counts
    the values and the depth of what its anchor holds), so nesting and size are bounded before anything is built."""
    depth, expanded = 0, 0
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (expanded values, levels) of its node
    open_: list[list] = []  # per open collection: [anchor, expanded at start, depth at start, deepest level inside]
    for event in yaml.parse(text, Loader=_Loader):
        added, reached = 0, depth
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchored:
                raise error(f"{what} uses the YAML alias '*{event.anchor}' before (or inside) its anchor")
            added, levels = anchored[event.anchor]
            reached = depth + levels
        elif isinstance(event, yaml.ScalarEvent):
            added = 1
            if event.anchor:
                anchored[event.anchor] = (1, 0)
        elif isinstance(event, yaml.CollectionStartEvent):
            added = 1
            open_.append([event.anchor, expanded, depth, depth + 1])
            depth += 1
            reached = depth
        elif isinstance(event, yaml.CollectionEndEvent) and open_:
            anchor, at_start, depth_at_start, deepest = open_.pop()
            depth -= 1
            if anchor:
                anchored[anchor] = (expanded - at_start, deepest - depth_at_start)
            if open_:
                open_[-1][3] = max(open_[-1][3], deepest)
        expanded += added
        if open_:
            open_[-1][3] = max(open_[-1][3], reached)
        if reached > MAX_YAML_DEPTH:
            mark = event.start_mark
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise error(f"{what} nests more than {MAX_YAML_DEPTH} mappings/sequences deep{line} (aliases expanded); "
                        f"at most {MAX_YAML_DEPTH} levels are accepted: flatten the structure")
        if expanded > MAX_YAML_EVENTS:
            mark = event.start_mark
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise error(f"{what} holds more than {MAX_YAML_EVENTS} values with its aliases expanded{line}; a model "
                        "description needs a few thousand (aliases that multiply, 'billion laughs', are refused): "
                        "write the values out or move bulk data into files the description references")


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]
