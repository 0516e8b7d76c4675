# Both targets create or refresh .venv by themselves (a fresh machine needs nothing else).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NAPARI_STAMP := $(VENV)/.napari-stamp

.PHONY: install install-napari test test-slow test-compat test-instances test-distributed test-napari demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 first: on these machines it is a local CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# napari, Qt (PyQt6) and pytest-qt beside [dev], for the plugin's tests (about 1 minute).
$(NAPARI_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,napari-test]"
	touch $(NAPARI_STAMP)

install-napari: $(NAPARI_STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Real-data acceptance of the instance models (StarDist accuracy@0.5, detector mAP50), with their margins, and the
# napari widget on the trained StarDist package (~15 min).
test-instances: $(NAPARI_STAMP)
	$(BIN)/python -m pytest -q -m slow tests/zoo/test_stardist_real.py tests/exporters/test_detector_export.py

# Dask faults (a worker killed mid-run, a crashed run resumed: real processes killed) and StarDist block by block
# against the whole image (~1.5 min).
test-distributed: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/runtime/test_distributed.py

# Packages must load under the oldest onnxruntime biozoo supports (1.16, in its own venv) and the latest, and their
# architecture file must build the network in a venv with torch alone (no biozoo).
test-compat: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/exporters/test_ort_compat.py tests/exporters/test_architecture_torch_only.py

# The napari plugin in a real viewer: Qt on $$DISPLAY, or on an Xvfb the tests start (~30 s).
test-napari: $(NAPARI_STAMP)
	$(BIN)/python -m pytest -q -m napari tests/napari_plugin

demo: $(STAMP)
	$(BIN)/python benchmarks/demo.py demo-output

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_runtime.py --size 2048

clean:
	rm -rf $(VENV) .venv-ort116 .venv-torch-only demo-output .pytest_cache
