"""Hostile packages at the package layer (issue 13, part A): zip bombs and unsafe archives, a tampered cache, YAML
denial of service, ONNX external data reachable through any TensorProto, hostile .npy headers, terminal escapes.

Every hostile package is built small in a temp dir; each must be refused with a PackageError (exit 2 through the
CLI) with a one-line message, no traceback, bounded time and memory, nothing written outside the temp and cache
folders."""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import pytest
import yaml

from tests import packages
from biozoo.runtime import PackageError, load
from biozoo.runtime.format.onnx_scan import MAX_GRAPH_DEPTH, external_data_locations
from biozoo.runtime.format.package import open_package
from biozoo.runtime.format.safe_yaml import load_yaml_file, load_yaml_text

pytestmark = pytest.mark.timeout(120)
MiB, GiB = 2**20, 2**30


# ------------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """(folder, zip) of the small real 'fixed' fixture package, built once for this module."""
    dest = tmp_path_factory.mktemp("hostile-src")
    z = packages.build_package("fixed", dest, zip=True)
    return dest / "fixed", z


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("BIOZOO_CACHE_DIR", str(folder))
    return folder


def _copy(fixed, tmp_path):
    dest = tmp_path / "pkg"
    shutil.copytree(fixed[0], dest)
    return dest


def _edit_rdf(folder, edit):
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(data)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def cli(tmp_path, *args):
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _refused_by_cli(tmp_path, *args, match: str):
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("biozoo: error: ") and match in lines[-1], proc.stderr
    return lines[-1]


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _tree_bytes(folder) -> int:
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# ------------------------------------------------------------------------------ zip members written by hand
_ZEROS = bytes(16 * MiB)
_c = zlib.compressobj(9, zlib.DEFLATED, -15)
_ZERO_BLOCK = _c.compress(_ZEROS) + _c.flush(zlib.Z_FULL_FLUSH)  # 16 MiB of zeros, ~16 KB, self-contained
_ZERO_END = _c.flush()


def _zip(path, members):
    """Write a zip by hand: members are (name bytes, method, flags, crc, compressed chunks, compressed size,
    declared uncompressed size). Lets a test declare what zipfile would never write (sizes, flags, names)."""
    central = []
    with open(path, "wb") as f:
        for name, method, flags, crc, chunks, csize, usize in members:
            offset = f.tell()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, csize, usize,
                                len(name), 0))
            f.write(name)
            for chunk in chunks:
                f.write(chunk)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc, csize,
                                       usize, len(name), 0, 0, 0, 0, 0o100644 << 16, offset) + name)
        start = f.tell()
        blob = b"".join(central)
        f.write(blob)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(blob), start, 0))
    return path


def _file_member(name: str, data: bytes, flags: int = 0):
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = c.compress(data) + c.flush()
    return (name.encode("utf-8"), zipfile.ZIP_DEFLATED, flags, zlib.crc32(data), [raw], len(raw), len(data))


def _zeros_member(name: str, blocks: int, declared: int | None = None, crc: int = 0):
    """`blocks` x 16 MiB of zeros deflated (~16 KB each), declaring `declared` bytes (default: the truth)."""
    size = len(_ZERO_BLOCK) * blocks + len(_ZERO_END)
    chunks = [_ZERO_BLOCK] * blocks + [_ZERO_END]
    usize = blocks * 16 * MiB if declared is None else declared
    return (name.encode(), zipfile.ZIP_DEFLATED, 0, crc, chunks, size, usize)


def _package_zip(fixed, path, *extra):
    files = [_file_member(p.name, p.read_bytes()) for p in sorted(fixed[0].iterdir())]
    return _zip(path, files + list(extra))


# ------------------------------------------------------------------------------------------------ zip bombs
def test_zip_bomb_of_12_gib_in_a_12_mb_package_is_refused_before_writing(fixed, tmp_path, cache):
    """The issue's case with the default limits: unreferenced members declaring 12 GiB of zeros, ~12 MB on disk."""
    bomb = _package_zip(fixed, tmp_path / "bomb.zip", *[_zeros_member(f"pad{i}.bin", 255) for i in range(3)])
    assert bomb.stat().st_size < 16 * MiB
    rss, start = _maxrss_mib(), time.monotonic()
    with pytest.raises(PackageError) as e:
        load(bomb, device="cpu")
    assert "unpacks to" in _one_line(e.value) and "BIOZOO_MAX_PACKAGE_BYTES" in str(e.value)
    assert time.monotonic() - start < 30 and _maxrss_mib() - rss < 200
    assert _tree_bytes(cache) == 0  # refused from the central directory: not a byte written


def test_zip_bomb_member_above_the_ratio_is_refused(fixed, tmp_path, cache):
    bomb = _package_zip(fixed, tmp_path / "ratio.zip", _zeros_member("zeros.bin", 4))  # 64 MiB in ~64 KB
    with pytest.raises(PackageError, match=r"'zeros.bin' expands \d+ bytes to 67108864 .*1000:1.*zip bomb"):
        load(bomb, device="cpu")
    assert _tree_bytes(cache) == 0


def test_total_size_limit_is_overridable_and_checked_before_writing(fixed, tmp_path, cache, monkeypatch):
    members = [_file_member(f"data{i}.bin", bytes(8 * MiB)) for i in range(3)]  # under the ratio rule's 16 MiB
    z = _package_zip(fixed, tmp_path / "big.zip", *members)
    monkeypatch.setenv("BIOZOO_MAX_PACKAGE_BYTES", str(16 * MiB))
    with pytest.raises(PackageError, match=r"more than the 16777216 accepted.*BIOZOO_MAX_PACKAGE_BYTES"):
        load(z, device="cpu")
    assert _tree_bytes(cache) == 0
    monkeypatch.setenv("BIOZOO_MAX_PACKAGE_BYTES", str(64 * MiB))
    assert load(z, device="cpu").name  # the same package within a raised limit


def test_lying_header_never_writes_more_than_it_declares(fixed, tmp_path, cache):
    """A member whose stream holds 1 GiB of zeros but whose header declares 1 MiB: extraction counts the bytes it
    writes and stops at the declared size (the rest is never inflated to disk)."""
    liar = _zeros_member("liar.bin", 64, declared=MiB, crc=zlib.crc32(bytes(MiB)))
    z = _package_zip(fixed, tmp_path / "liar.zip", liar)
    start = time.monotonic()
    model = load(z, device="cpu")  # harmless once bounded: the package itself is fine
    assert time.monotonic() - start < 30
    assert (model.package.root / "liar.bin").stat().st_size == MiB
    assert _tree_bytes(cache) < 4 * MiB


def test_lying_header_with_a_bad_crc_is_refused_and_leaves_no_staging(fixed, tmp_path, cache):
    liar = _zeros_member("liar.bin", 64, declared=MiB, crc=1234)
    z = _package_zip(fixed, tmp_path / "liar.zip", liar)
    with pytest.raises(PackageError, match=r"cannot unpack 'liar.bin'.*corrupted"):
        load(z, device="cpu")
    assert _tree_bytes(cache) == 0 and not list((cache / "packages").glob(".unpack-*"))


def test_too_many_members_are_refused(fixed, tmp_path, cache):
    z = tmp_path / "many.zip"
    shutil.copy(fixed[1], z)
    with zipfile.ZipFile(z, "a") as archive:
        for i in range(10_001):
            archive.writestr(f"f/{i}", b"")
    with pytest.raises(PackageError, match=r"has 10\d\d\d members; a package has at most 10000"):
        load(z, device="cpu")
    assert _tree_bytes(cache) == 0


def _patched(zip_path, old: bytes, new: bytes, count: int):
    data = zip_path.read_bytes()
    assert data.count(old) == count, data.count(old)
    zip_path.write_bytes(data.replace(old, new))
    return zip_path


@pytest.mark.parametrize("case, match", [
    ("encrypted", r"encrypted member 'README.md'.*without a password"),
    ("duplicate", r"contains 'rdf.yaml' twice"),
    ("duplicate-case", r"contains 'RDF.YAML' twice \(as 'rdf.yaml'\)"),
    ("nul", r"member named 'cover\\x00png'.*NUL or control characters"),
    ("escape", r"member named 'cover\\x1b\[2J'.*NUL or control characters"),
    ("file-and-folder", r"'README.md' both as a file and as a folder"),
    ("compression", r"compresses 'README.md' with method 99"),
])
def test_unsafe_members_are_refused_before_unpacking(fixed, tmp_path, cache, case, match):
    z = tmp_path / f"{case}.zip"
    members = [_file_member(p.name, p.read_bytes()) for p in sorted(fixed[0].iterdir())]
    if case == "encrypted":  # flag bit 0x1 (zipfile would ask for a password)
        _zip(z, [m if m[0] != b"README.md" else (m[0], m[1], 0x1, *m[3:]) for m in members])
    elif case == "duplicate":
        _package_zip(fixed, z, _file_member("rdf.yaml", b"type: model\n"))
    elif case == "duplicate-case":
        _package_zip(fixed, z, _file_member("RDF.YAML", b"type: model\n"))
    elif case == "nul":  # zipfile cuts names at a NUL: the raw central directory keeps it
        _package_zip(fixed, z, _file_member("coverXpng", b"x"))
        _patched(z, b"coverXpng", b"cover\x00png", 2)
    elif case == "escape":
        _package_zip(fixed, z, _file_member("coverX[2J", b"x"))
        _patched(z, b"coverX[2J", b"cover\x1b[2J", 2)
    elif case == "file-and-folder":
        _package_zip(fixed, z, _file_member("README.md/evil", b"x"))
    elif case == "compression":  # 99 is WinZip AES
        _zip(z, [m if m[0] != b"README.md" else (m[0], 99, *m[2:]) for m in members])
    with pytest.raises(PackageError, match=match) as e:
        load(z, device="cpu")
    _one_line(e.value)
    assert _tree_bytes(cache) == 0


def test_zip_bomb_through_the_cli_exits_2_without_traceback(fixed, tmp_path):
    bomb = _package_zip(fixed, tmp_path / "bomb.zip", *[_zeros_member(f"pad{i}.bin", 255) for i in range(3)])
    _refused_by_cli(tmp_path, "info", bomb, match="unpacks to")
    assert _tree_bytes(tmp_path / "cache") == 0


# --------------------------------------------------------------------------------------- the cache is checked
def _cached(model):
    root = model.package.root
    assert root.parent.name == "packages"
    return root


@pytest.mark.parametrize("tamper", ["edit-rdf", "same-size-rdf", "extra-file", "extra-rdf", "resized", "symlink",
                                    "missing"])
def test_a_modified_cached_unpack_is_unpacked_again(fixed, tmp_path, cache, tamper, caplog):
    first = load(fixed[1], device="cpu")
    root = _cached(first)
    rdf = root / "rdf.yaml"
    if tamper == "edit-rdf":
        rdf.write_text(rdf.read_text().replace(first.name, "tampered name, longer"))
    elif tamper == "same-size-rdf":  # same size, different bytes: only the content check sees it
        text = rdf.read_text()
        rdf.write_text(text.replace(first.name, "X" * len(first.name)))
    elif tamper == "extra-file":
        (root / "planted.onnx").write_bytes(b"x")
    elif tamper == "extra-rdf":  # a bioimageio.yaml planted next to the archive's rdf.yaml
        (root / "sub").mkdir()
        (root / "sub" / "x.bioimageio.yaml").write_text("type: model\n")
    elif tamper == "resized":
        with open(root / "weights.onnx", "ab") as f:
            f.write(b"\0")
    elif tamper == "symlink":
        (root / "README.md").unlink()
        (root / "README.md").symlink_to("/etc/hostname")
    elif tamper == "missing":
        (root / "cover.png").unlink()
    caplog.set_level("WARNING", logger="biozoo")
    again = load(fixed[1], device="cpu")
    assert again.name == first.name and _cached(again) == root
    assert "was modified" in caplog.text and "unpacking it again" in caplog.text
    assert rdf.read_bytes() == (fixed[0] / "rdf.yaml").read_bytes()
    assert not (root / "planted.onnx").exists() and not (root / "sub").exists()
    assert not (root / "README.md").is_symlink() and (root / "cover.png").is_file()
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no staging or stale copies left


def test_an_intact_cache_is_reused_without_unpacking(fixed, tmp_path, cache, caplog):
    root = _cached(load(fixed[1], device="cpu"))
    marker = (root / ".complete").stat().st_mtime_ns
    caplog.set_level("WARNING", logger="biozoo")
    assert _cached(load(fixed[1], device="cpu")) == root
    assert (root / ".complete").stat().st_mtime_ns == marker and "modified" not in caplog.text


# ------------------------------------------------------------------------------------------------- YAML DoS
def _laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines)


def test_billion_laughs_in_the_name_is_refused_at_once(fixed, tmp_path):
    folder = _copy(fixed, tmp_path)
    text = (folder / "rdf.yaml").read_text()
    (folder / "rdf.yaml").write_text(_laughs() + "\n" + text.replace("name: ", "name: *l9\nold_name: ", 1))
    rss, start = _maxrss_mib(), time.monotonic()
    with pytest.raises(PackageError, match=r"more than 500000 values with its aliases expanded at line \d+") as e:
        load(folder, device="cpu")
    _one_line(e.value)
    assert time.monotonic() - start < 5 and _maxrss_mib() - rss < 100


@pytest.mark.parametrize("style", ["block", "flow", "flow-huge"])
def test_deep_nesting_is_a_package_error_not_a_recursion_error(fixed, tmp_path, style):
    folder = _copy(fixed, tmp_path)
    deep = {"block": "".join(" " * i + f"k{i}:\n" for i in range(3000)) + " " * 3000 + "v\n",
            "flow": "deep: " + "[" * 200 + "]" * 200 + "\n",
            "flow-huge": "deep: " + "[" * 200_000 + "\n"}[style]
    (folder / "rdf.yaml").write_text((folder / "rdf.yaml").read_text() + deep)
    with pytest.raises(PackageError, match=r"nest") as e:
        load(folder, device="cpu")
    _one_line(e.value)


def _fifo_reader(path, result):
    try:
        result.append(open_package(path))
    except PackageError as e:
        result.append(e)


@pytest.mark.parametrize("how", ["rdf-path", "in-folder", "as-zip"])
def test_a_fifo_is_refused_instead_of_hanging(tmp_path, how):
    folder = tmp_path / "pkg"
    folder.mkdir()
    fifo = folder / {"rdf-path": "rdf.yaml", "in-folder": "rdf.yaml", "as-zip": "model.zip"}[how]
    os.mkfifo(fifo)
    result: list = []
    worker = threading.Thread(target=_fifo_reader, args=(folder if how == "in-folder" else fifo, result), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb"):
            pass
        pytest.fail(f"opening a package through a FIFO ({how}) blocked")
    assert isinstance(result[0], PackageError)
    assert "not a regular file" in str(result[0]) or "no rdf.yaml" in str(result[0])


def test_an_oversized_rdf_is_refused_from_its_size(fixed, tmp_path):
    folder = _copy(fixed, tmp_path)
    with open(folder / "rdf.yaml", "ab") as f:
        f.truncate(64 * MiB)  # sparse: costs no disk
    with pytest.raises(PackageError, match=r"is 67108864 bytes; at most 16777216 are accepted"):
        load(folder, device="cpu")


@pytest.mark.parametrize("text, match", [
    ("x: [" + ",".join(["1"] * 600_000) + "]", "more than 500000 values"),
    ("x: !!python/object/apply:os.system [echo pwned]", "not valid YAML"),
    ("x: " + "9" * 5000, "cannot be read"),
    ("a: 1\n---\nb: 2", "not valid YAML"),
])
def test_other_hostile_yaml_is_a_package_error(text, match):
    start = time.monotonic()
    with pytest.raises(PackageError, match=match) as e:
        load_yaml_text(text, "rdf.yaml")
    _one_line(e.value)
    assert time.monotonic() - start < 10


def test_the_safe_loader_reads_ordinary_yaml_and_takes_the_caller_error(tmp_path):
    from biozoo.runtime.errors import TrainingError

    path = tmp_path / "recipe.yaml"
    path.write_text("a: &x 1\nb: [1, {c: d}]\n")  # an anchor without alias is harmless
    assert load_yaml_file(path, "recipe") == {"a": 1, "b": [1, {"c": "d"}]}
    path.write_text("a: &x [1, 2]\nb: *x\n")  # what PyYAML's writer emits for a shared value
    assert load_yaml_file(path, "recipe") == {"a": [1, 2], "b": [1, 2]}
    path.write_text("a: *x\nb: &x 1\n")
    with pytest.raises(TrainingError, match="recipe 'recipe.yaml' uses the YAML alias '\\*x' before"):
        load_yaml_file(path, "recipe", error=TrainingError)
    path.write_text("a: &x [[[[[[[[[[1]]]]]]]]]]\n" + "".join(f"b{i}: &y{i} [*{'x' if i == 0 else f'y{i-1}'}]\n"
                                                          for i in range(60)))
    with pytest.raises(TrainingError, match="nests more than 64"):  # depth counted through aliases
        load_yaml_file(path, "recipe", error=TrainingError)


def test_yaml_dos_through_the_cli_exits_2(fixed, tmp_path):
    folder = _copy(fixed, tmp_path)
    text = (folder / "rdf.yaml").read_text()
    (folder / "rdf.yaml").write_text(_laughs() + "\n" + text.replace("name: ", "name: *l9\nx: ", 1))
    _refused_by_cli(tmp_path, "info", folder, match="aliases expanded")
    start = time.monotonic()  # validate fails the package (exit 1) at once, and never hands it to bioimageio.spec
    proc = cli(tmp_path, "validate", folder)
    assert proc.returncode == 1 and "aliases expanded" in proc.stdout and "Traceback" not in proc.stderr
    assert "not run: biozoo cannot open the package safely" in proc.stdout and time.monotonic() - start < 30


# -------------------------------------------------------------------------------------------- ONNX external data
try:  # the [train] extra; the runtime itself never imports onnx
    import onnx
    from onnx import TensorProto, helper
except ImportError:  # pragma: no cover
    onnx = None
needs_onnx = pytest.mark.skipif(onnx is None, reason="crafting ONNX files needs the onnx package (biozoo[train])")


def _ext(name: str, location: str | None, dims=(4,)) -> "TensorProto":
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.data_location = TensorProto.EXTERNAL
    if location is not None:
        entry = t.external_data.add()
        entry.key, entry.value = "location", location
        for key, value in (("offset", "0"), ("length", "16")):
            e = t.external_data.add()
            e.key, e.value = key, value
    return t


def _sparse(location: str | None):
    indices = helper.make_tensor("idx", TensorProto.INT64, (1,), [0])
    return helper.make_sparse_tensor(_ext("vals", location, (1,)), indices, [4])


def _nested_if(depth: int, inner_initializer=None) -> "onnx.GraphProto":
    """A graph holding an If whose branches hold an If ... `depth` levels down."""
    graph = helper.make_graph([], "leaf", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[inner_initializer] if inner_initializer is not None else [])
    leaf = helper.make_graph([], "else", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    for level in range(depth):
        cond = helper.make_tensor("cond", TensorProto.BOOL, (), [True])
        node = helper.make_node("If", ["cond"], ["y"], then_branch=graph, else_branch=leaf)
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph([node], f"level{level}", [], [out], initializer=[cond])
    return graph


def _plant(where: str, location: str | None):
    """A function that plants an external tensor pointing at `location` into one place of a ModelProto."""
    def plant(m) -> None:
        t = _ext("planted", location)
        if where == "initializer":
            m.graph.initializer.append(t)
        elif where == "sparse_initializer":
            m.graph.sparse_initializer.append(_sparse(location))
        elif where == "attribute.t":
            m.graph.node.append(helper.make_node("Constant", [], ["c"], value=t))
        elif where == "attribute.sparse_tensor":
            m.graph.node.append(helper.make_node("Constant", [], ["c"], sparse_value=_sparse(location)))
        elif where == "attribute.tensors":
            m.graph.node.append(helper.make_node("Evil", [], ["c"], domain="evil", ts=[_ext("a", "ok.bin"), t]))
        elif where == "attribute.sparse_tensors":
            m.graph.node.append(helper.make_node("Evil", [], ["c"], domain="evil", sts=[_sparse(location)]))
        elif where == "attribute.graphs":
            inner = helper.make_graph([], "g", [], [], initializer=[t])
            m.graph.node.append(helper.make_node("Evil", [], ["c"], domain="evil", gs=[inner, inner]))
        elif where == "nested-if":
            m.graph.node.append(helper.make_node("Evil", [], ["c"], domain="evil", g=_nested_if(8, t)))
        elif where == "function.node":
            f = helper.make_function("evil", "f", [], ["c"], [helper.make_node("Constant", [], ["c"], value=t)],
                                     [helper.make_opsetid("", 17)])
            m.functions.append(f)
        elif where == "function.attribute_proto":
            f = helper.make_function("evil", "f", [], [], [], [helper.make_opsetid("", 17)],
                                     attribute_protos=[helper.make_attribute("default", t)])
            m.functions.append(f)
        elif where in ("training_info.initialization", "training_info.algorithm"):
            info = onnx.TrainingInfoProto()
            getattr(info, where.split(".")[1]).CopyFrom(helper.make_graph([], "train", [], [], initializer=[t]))
            m.training_info.append(info)
        else:
            raise AssertionError(where)
    return plant


def _hostile_onnx(fixed, tmp_path, plant):
    folder = _copy(fixed, tmp_path)
    model = onnx.load(folder / "weights.onnx")
    plant(model)
    (folder / "weights.onnx").write_bytes(model.SerializeToString())
    _edit_rdf(folder, lambda d: d["weights"]["onnx"].update(sha256=_sha(folder / "weights.onnx")))
    return folder


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """Fails the test if onnxruntime would be handed the model: refusals must come before it."""
    import biozoo.runtime.model as model_mod

    def refuse(*a, **k):
        raise AssertionError("onnxruntime was reached")
    monkeypatch.setattr(model_mod, "OnnxSession", refuse)


PLACES = ["initializer", "sparse_initializer", "attribute.t", "attribute.sparse_tensor", "attribute.tensors",
          "attribute.sparse_tensors", "attribute.graphs", "nested-if", "function.node", "function.attribute_proto",
          "training_info.initialization", "training_info.algorithm"]


@needs_onnx
@pytest.mark.parametrize("where", PLACES)
@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/hostname"])
def test_external_data_outside_the_package_is_refused_wherever_the_tensor_is(fixed, tmp_path, no_onnxruntime,
                                                                           where, location):
    folder = _hostile_onnx(fixed, tmp_path, _plant(where, location))
    with pytest.raises(PackageError, match=r"names external data '(\.\./\.\./etc/passwd|/etc/hostname)'.*paths must "
                                           r"stay inside the package") as e:
        load(folder, device="cpu")
    _one_line(e.value)


@needs_onnx
@pytest.mark.parametrize("where", ["initializer", "function.node", "attribute.sparse_tensor"])
def test_external_tensor_without_a_location_is_refused(fixed, tmp_path, no_onnxruntime, where):
    folder = _hostile_onnx(fixed, tmp_path, _plant(where, None))
    with pytest.raises(PackageError, match=r"stored as external data without a 'location'"):
        load(folder, device="cpu")


@needs_onnx
@pytest.mark.parametrize("location", ["*/_ORT_MEM_ADDR_/*", "c:evil.bin", "ok.bin\x00../x", "a\x1b[2J"])
def test_locations_onnxruntime_would_misread_are_refused(fixed, tmp_path, no_onnxruntime, location):
    folder = _hostile_onnx(fixed, tmp_path, _plant("initializer", location))
    with pytest.raises(PackageError, match="paths must stay inside the package"):
        load(folder, device="cpu")


@needs_onnx
def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (protobuf's Python API refuses to build 100 nested levels)."""
    out, key, n = bytearray(), (number << 3) | 2, len(payload)
    for value in (key, n):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def test_deeply_nested_subgraphs_are_a_package_error(fixed, tmp_path, no_onnxruntime):
    graph = b""
    for _ in range(100):  # GraphProto.node(1) -> NodeProto.attribute(5) -> AttributeProto.g(6) -> GraphProto ...
        graph = _field(1, _field(5, _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, graph)))
    folder = _copy(fixed, tmp_path)
    weights = folder / "weights.onnx"
    weights.write_bytes(weights.read_bytes() + _field(7, graph))  # merged into ModelProto.graph by protobuf
    _edit_rdf(folder, lambda d: d["weights"]["onnx"].update(sha256=_sha(weights)))
    with pytest.raises(PackageError, match=rf"nests subgraphs more than {MAX_GRAPH_DEPTH} levels deep") as e:
        load(folder, device="cpu")
    _one_line(e.value)


@needs_onnx
def test_the_scanner_still_finds_legitimate_locations(tmp_path):
    m = helper.make_model(_nested_if(3, _ext("w", "weights.data")))
    m.functions.append(helper.make_function("d", "f", [], ["c"], [helper.make_node("Constant", [], ["c"],
                                            value=_ext("v", "sub/more.data"))], [helper.make_opsetid("", 17)]))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    assert external_data_locations(tmp_path / "m.onnx") == ["sub/more.data", "weights.data"]


@needs_onnx
def test_onnx_escape_through_the_cli_exits_2(fixed, tmp_path):
    folder = _hostile_onnx(fixed, tmp_path, _plant("function.node", "../../etc/passwd"))
    _refused_by_cli(tmp_path, "info", folder, match="paths must stay inside the package")


# ---------------------------------------------------------------------------------------------- hostile .npy
def _replace_test_input(folder, data: bytes):
    path = folder / "test_input_raw.npy"
    assert path.exists()
    path.write_bytes(data)
    _edit_rdf(folder, lambda d: d["inputs"][0]["test_tensor"].update(sha256=_sha(path)))


def _npy_header(shape, descr="<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


@pytest.mark.parametrize("data, match", [
    (b"this is not a .npy file at all", r"is not a readable \.npy file"),
    (_npy_header((40_000_000_000,)) + bytes(64), r"declares shape \(40000000000,\) of float32: 149\.0 GiB, more than"),
    (_npy_header((1000, 1000)) + bytes(64), r"declares shape \(1000, 1000\) of float32 \(4000000 bytes of data\) but "
                                            r"holds 64 bytes"),
    (_npy_header((2,), "|O") + bytes(16), r"holds dtype object; expected a numeric array"),
    (_npy_header((-1, 4)), r"declares the shape \(-1, 4\)"),
    (b"\x93NUMPY\x03\x00" + bytes(10), r"is \.npy format 3\.0"),
])
def test_hostile_test_tensors_are_package_errors(fixed, tmp_path, data, match):
    """Refused when the package is loaded (its test tensors are read then) or when `test` reads them."""
    from biozoo.runtime.engine.test_tensors import load_test_tensors

    folder = _copy(fixed, tmp_path)
    _replace_test_input(folder, data)
    rss = _maxrss_mib()
    with pytest.raises(PackageError, match=r"inputs\[0\]\.test_tensor 'test_input_raw\.npy' " + match) as e:
        load_test_tensors(load(folder, device="cpu"), "inputs")
    _one_line(e.value)
    assert _maxrss_mib() - rss < 100


def test_hostile_npy_through_the_cli_is_reported_without_traceback(fixed, tmp_path):
    folder = _copy(fixed, tmp_path)
    _replace_test_input(folder, _npy_header((40_000_000_000,)) + bytes(64))
    proc = cli(tmp_path, "test", folder)  # refused (2), or reported as a failed test (1): never a traceback
    assert proc.returncode in (1, 2), (proc.stdout, proc.stderr)
    assert "inputs[0].test_tensor 'test_input_raw.npy' declares shape (40000000000,) of float32: 149.0 GiB" in (
        proc.stdout + proc.stderr)


# ------------------------------------------------------------------------------------ terminal escape sequences
def test_escape_sequences_in_package_text_are_shown_escaped(fixed, tmp_path):
    folder = _copy(fixed, tmp_path)
    evil = "evil\x1b[2J\x07name\u202e\r\nforged line"
    _edit_rdf(folder, lambda d: d.update(name=evil, description="desc \x1b]0;title\x07",
                                         authors=[{"name": "bob\x1b[31m"}]))
    proc = cli(tmp_path, "info", folder)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    assert "evil\\x1b[2J\\x07name\\u202e\\r\\nforged line" in out and "bob\\x1b[31m" in out
    assert not any(line.startswith("forged line") for line in out.splitlines())
    as_json = cli(tmp_path, "info", folder, "--json")
    assert as_json.returncode == 0 and "\x1b" not in as_json.stdout
    import json
    assert json.loads(as_json.stdout)["name"] == evil  # --json keeps the data, escaped by JSON itself

    _edit_rdf(folder, lambda d: d.update(type="\x1b[2Jmodel\x07"))
    line = _refused_by_cli(tmp_path, "info", folder, match="not a model")
    assert "\x1b" not in line and "\\x1b[2Jmodel\\x07" in line
