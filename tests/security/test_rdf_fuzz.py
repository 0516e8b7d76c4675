"""Property-based fuzzing of rdf descriptions (hypothesis): every field of valid packages mutated (types, ranges,
missing and extra keys, deep nesting, lists where mappings belong); only biozoo's own errors may come out of
reading the description, building its processing ops and planning tiles. No file IO: the reading half of `load`.
"""
from __future__ import annotations

import copy
import pathlib
import zipfile

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from biozoo.runtime.engine.tiling import output_shapes, plan_tiles  # noqa: E402
from biozoo.runtime.errors import BiozooError  # noqa: E402
from biozoo.runtime.format.description import parse_description  # noqa: E402
from biozoo.runtime.format.description_checks import check_consistency  # noqa: E402
from biozoo.runtime.format.format_v04 import convert_v04, is_v04  # noqa: E402
from biozoo.runtime.ops import build_chain, network_description  # noqa: E402

CORPUS = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "thirdparty"
BASE_KINDS = ("unet2d", "multi_io", "softmax3", "scaled", "unet3d")


def read_description(rdf: dict) -> None:
    """What `biozoo.runtime.load` does with an rdf before touching a file or onnxruntime."""
    if is_v04(rdf):
        rdf = convert_v04(rdf)
    description = parse_description(rdf)
    check_consistency(description)
    chains = {t.id: build_chain(t, t.id) for t in (*description.inputs, *description.outputs)}
    network = network_description(description, chains)
    shapes = {}
    for t in network.inputs:
        dims = []
        for a in t.axes:
            size = a.size
            dims.append(size if isinstance(size, int) else getattr(size, "min", 1) or 1)
        shapes[t.id] = tuple(dims)
    output_shapes(network, shapes)
    plan_tiles(network, shapes)


def _paths(node, prefix=()):
    """Every key/index path in a nested rdf (the places a mutation can hit)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["batch", "channel", "x", "y", "space", "index", "raw", "input", "b"]),
)
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


def _deep(depth: int):
    node: object = 1
    for _ in range(depth):
        node = {"a": [node]}
    return node


@st.composite
def mutated(draw, base: dict):
    rdf = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(rdf) if p]
        path = draw(st.sampled_from(paths))
        parent = rdf
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "extra", "wrap", "deep", "copy"]))
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "extra" and isinstance(parent[last], dict):
            parent[last][draw(st.text(max_size=8))] = draw(values)
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif action == "deep":
            parent[last] = _deep(draw(st.integers(50, 400)))
        elif action == "copy":  # a valid value from elsewhere in the same rdf, in the wrong place
            source = rdf
            for key in draw(st.sampled_from(paths)):
                source = source[key]
            parent[last] = copy.deepcopy(source)
    return rdf


def _bases(rdf) -> list[dict]:
    found = [yaml.safe_load(rdf(kind).read_text()) for kind in BASE_KINDS]
    for z in sorted(CORPUS.glob("*.zip")) if CORPUS.is_dir() else []:
        with zipfile.ZipFile(z) as archive:
            found.append(yaml.safe_load(archive.read("rdf.yaml")))
    return found


def _fuzz(rdf, examples: int) -> None:
    for base in _bases(rdf):
        read_description(base)  # the base itself is valid

        @settings(max_examples=examples, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(mutated(base))
        def only_biozoo_errors(candidate):
            try:
                read_description(candidate)
            except BiozooError as e:
                assert "\n" not in str(e).strip(), str(e)  # one line, for the CLI
            except RecursionError:  # pragma: no cover - reported as a failure with the input
                raise AssertionError("RecursionError instead of a PackageError")

        only_biozoo_errors()


def test_mutated_descriptions_raise_only_biozoo_errors(rdf):
    _fuzz(rdf, examples=40)


@pytest.mark.slow
def test_mutated_descriptions_raise_only_biozoo_errors_many(rdf):
    _fuzz(rdf, examples=int(__import__("os").environ.get("BIOZOO_FUZZ_EXAMPLES", "1500")))


def test_a_claimed_huge_channel_count_is_refused_not_allocated():
    """Found by the fuzzing above: a format-0.4 shape claiming 2**63 channels became a list of names (OOM)."""
    from biozoo.runtime.errors import PackageError

    rdf = {"format_version": "0.4.10", "type": "model", "name": "huge",
           "inputs": [{"name": "raw", "axes": "bcyx", "shape": [1, 2**63, 64, 64]}],
           "outputs": [{"name": "out", "axes": "bcyx", "shape": [1, 1, 64, 64]}],
           "test_inputs": ["a.npy"], "test_outputs": ["b.npy"], "weights": {"onnx": {"source": "w.onnx"}}}
    with pytest.raises(PackageError, match="channel axis of 9223372036854775808 channels"):
        read_description(rdf)
