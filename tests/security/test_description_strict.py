"""A description that contradicts itself is refused when the package is read (issue: `test` was lenient): duplicate
tensor ids, sizes of min 0 or negative step, negative halos, halos that leave nothing, size references to axes that
do not exist or that form a cycle, processing that names missing tensors or axes, fields of the wrong type. Each is
checked through the real CLI: exit 2, one line naming the field, no traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml


def _cli(tmp_path, *args):
    env = {**os.environ, "BIOZOO_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "biozoo.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def _edited(rdf, kind, tmp_path, edit):
    folder = tmp_path / kind
    shutil.copytree(rdf(kind).parent, folder)
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    edit(data)
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    return folder


def _set(path, value):
    def edit(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


IN_Y = ("inputs", 0, "axes", 2)
OUT_Y = ("outputs", 0, "axes", 2)
CASES = {
    "duplicate tensor id": ("multi_io", _set(("outputs", 0, "id"), "a"), "used more than once"),
    "size min 0": ("unet2d", _set((*IN_Y, "size"), {"min": 0, "step": 8}), "size.min is 0"),
    "negative step": ("unet2d", _set((*IN_Y, "size"), {"min": 40, "step": -8}), "size.step is -8"),
    "negative halo": ("unet2d", _set((*OUT_Y, "halo"), -2), "halo is -2"),
    "halo leaves nothing": ("unet2d", _set((*OUT_Y, "halo"), 20), "nothing would be left between the halos"),
    "reference to a missing tensor": ("unet2d", _set((*OUT_Y, "size"), {"tensor_id": "nope", "axis_id": "y"}),
                                      "'nope.y', which does not exist"),
    "reference to a missing axis": ("unet2d", _set((*OUT_Y, "size"), {"tensor_id": "raw", "axis_id": "q"}),
                                    "'raw.q', which does not exist"),
    "reference cycle": ("multi_io", _set(("inputs", 0, "axes", 2, "size"), {"tensor_id": "b", "axis_id": "y"}),
                        "cycle of size references"),
    "size is text": ("unet2d", _set((*IN_Y, "size"), "big"), "size is 'big' (str); expected a whole number"),
    "axes is a mapping": ("unet2d", _set(("inputs", 0, "axes"), {"y": 1}), "axes is {'y': 1} (dict); expected a list"),
    "halo is a bool": ("unet2d", _set((*OUT_Y, "halo"), True), "halo is True (bool)"),
    "processing names a missing axis": ("unet2d", _set(("inputs", 0, "preprocessing", 0, "kwargs", "axes"), ["q"]),
                                        "kwargs.axes names ['q']"),
    "gain is text": ("fixed", _set(("inputs", 0, "preprocessing", 0, "kwargs", "gain"), "two"),
                     "kwargs.gain is 'two' (str); expected a finite number"),
    "percentile out of range": ("multi_io", _set(("inputs", 0, "preprocessing", 0, "kwargs", "max_percentile"), 300),
                                "a percentile between 0 and 100"),
    "three values for one channel": ("softmax3", _set(("inputs", 0, "preprocessing", 1, "kwargs", "gain"), [1, 2, 3]),
                                     "kwargs.gain has 3 values, but axis 'channel'"),
    "tolerance names a missing output": (
        "unet2d", _set(("config",), {"bioimageio": {"reproducibility_tolerance": [{"output_ids": ["nope"]}]}}),
        "names output(s) ['nope']"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_contradictory_description_is_refused_with_the_field(rdf, tmp_path, case):
    kind, edit, words = CASES[case]
    folder = _edited(rdf, kind, tmp_path, edit)
    for command in ("test", "info"):
        proc = _cli(tmp_path, command, folder)
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        error = [line for line in proc.stderr.splitlines() if line.startswith("biozoo: error:")]
        assert len(error) == 1 and words in error[0], (case, proc.stderr)


def test_a_package_that_cannot_run_its_own_test_input_says_why(rdf, tmp_path):
    """`biozoo test` text output names the reason, not only FAILED."""
    folder = _edited(rdf, "fixed", tmp_path, lambda d: None)
    np.save(folder / "test_input_raw.npy", np.zeros((1, 2, 64, 64), np.float32))  # the graph takes one channel
    data = yaml.safe_load((folder / "rdf.yaml").read_text())
    import hashlib

    data["inputs"][0]["test_tensor"]["sha256"] = hashlib.sha256((folder / "test_input_raw.npy").read_bytes()).hexdigest()
    (folder / "rdf.yaml").write_text(yaml.safe_dump(data))
    proc = _cli(tmp_path, "test", folder)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout and "error: the model failed on inputs of shapes" in proc.stdout, proc.stdout
