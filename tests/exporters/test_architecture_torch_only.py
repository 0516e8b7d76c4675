"""The architecture file inside a package (pytorch_state_dict weights) builds the network in a fresh virtual
environment that has torch and nothing else (no biozoo, no numpy, no yaml), as a consumer without biozoo would:
the rebuilt network with the package's state dict reproduces the package's test output.

Slow (it builds a venv; torch comes from the local wheel cache, ~30 s): `make test-compat`, which CI runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]

_CONSUMER = """
import importlib.util, json, sys
import torch
try:
    import biozoo  # noqa: F401
    sys.exit("biozoo is importable: the check would prove nothing")
except ImportError:
    pass
folder = sys.argv[1]
arch = json.load(open(folder + "/architecture.json"))
spec = importlib.util.spec_from_file_location("packaged_architecture", folder + "/" + arch["source"])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
net = getattr(module, arch["callable"])(**arch["kwargs"])
net.load_state_dict(torch.load(folder + "/" + arch["weights"], map_location="cpu", weights_only=True), strict=True)
with torch.no_grad():
    out = net.eval()(torch.load(folder + "/input.pt", weights_only=True))
torch.save(out, folder + "/output.pt")
print(sorted(m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("numpy", "yaml", "biozoo")))
"""


def _torch_only_venv(where: Path) -> Path:
    python = where / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
                       check=True)
    return python


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("recipe", ["unet-nuclei-2d", "n2v-nuclei-2d"])
def test_architecture_file_builds_the_network_with_torch_alone(recipe, quick_run, tmp_path):
    from biozoo.exporters import export_run

    package = tmp_path / "model.zip"
    export_run(quick_run(recipe), package)
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    entry = rdf["weights"]["pytorch_state_dict"]
    (folder / "architecture.json").write_text(json.dumps({**entry["architecture"], "weights": entry["source"]}))
    test_input = np.load(folder / rdf["inputs"][0]["test_tensor"]["source"])
    expected = np.load(folder / rdf["outputs"][0]["test_tensor"]["source"])
    # the network's input: the package's scale_range preprocessing of the raw test input (what consumers apply)
    pre = next(p["kwargs"] for p in rdf["inputs"][0]["preprocessing"] if p["id"] == "scale_range")
    lo, hi = np.percentile(test_input, [pre["min_percentile"], pre["max_percentile"]])
    x = ((test_input - lo) / (hi - lo + pre.get("eps", 1e-6))).astype(np.float32)
    torch.save(torch.from_numpy(x), folder / "input.pt")
    python = _torch_only_venv(Path(os.environ.get("BIOZOO_TORCH_ONLY_VENV", ROOT / ".venv-torch-only")))
    done = subprocess.run([str(python), "-c", _CONSUMER, str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == "[]"  # neither numpy, yaml nor biozoo was imported
    got = torch.load(folder / "output.pt", weights_only=True).numpy()
    tol = rdf["config"]["bioimageio"]["reproducibility_tolerance"][0]
    np.testing.assert_allclose(got, expected, atol=tol["absolute_tolerance"], rtol=tol["relative_tolerance"])
