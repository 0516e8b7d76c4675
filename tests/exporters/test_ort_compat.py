"""A package biozoo writes loads and reproduces its test tensors under the oldest onnxruntime it promises (1.16),
in an isolated venv with only the runtime's dependencies (no torch, no onnx), and under the latest one.

Slow (it builds a venv from PyPI): `make test-compat`, which CI runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OLDEST_ORT = "1.16.3"


def _venv(where: Path) -> Path:
    if not (where / "bin" / "biozoo").exists():
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"onnxruntime=={OLDEST_ORT}", "numpy<2", "pyyaml", "tifffile"], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    return where / "bin"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_package_reproduces_test_tensors_under_onnxruntime_1_16_and_latest(quick_run, tmp_path):
    from biozoo.exporters import export_run

    package = tmp_path / "unet.zip"
    export_run(quick_run("unet-nuclei-2d"), package)
    bin_dir = _venv(Path(os.environ.get("BIOZOO_ORT_COMPAT_VENV", ROOT / ".venv-ort116")))
    version = subprocess.run([str(bin_dir / "python"), "-c", "import onnxruntime, sys; print(onnxruntime.__version__, "
                              "'torch' in sys.modules)"], capture_output=True, text=True, check=True).stdout.split()
    assert version == [OLDEST_ORT, "False"]
    for biozoo in (bin_dir / "biozoo", Path(sys.executable).parent / "biozoo"):  # oldest, then this env's latest
        done = subprocess.run([str(biozoo), "test", str(package), "--device", "cpu", "--json"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["status"] == "passed"
