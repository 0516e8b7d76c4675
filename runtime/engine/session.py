"""One onnxruntime session per loaded model: explicit providers, quiet CPU fallback, IO binding on CUDA, the CPU
memory arena without onnxruntime's memory pattern (cpu_memory_options: fast, and a peak that a byte budget holds).

onnxruntime-gpu on a machine without CUDA libraries prints a wall of errors when asked for the CUDA provider.
We check for a usable CUDA driver first and silence onnxruntime's logger while probing, then say once, at
info level, which provider runs.
"""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import InputError, PackageError

log = logging.getLogger("biozoo")
DEVICES = ("auto", "cpu", "cuda")
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(uint16)": np.uint16, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


def cuda_driver_available() -> bool:
    """True when a CUDA driver with at least one device is present (no onnxruntime involved)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def cpu_memory_options(options, arena: bool = True) -> None:
    """How every CPU session of biozoo allocates (OnnxSession, and the activation probe of engine/memory.py, so that
    the probe measures what predict uses): onnxruntime's CPU arena on, its memory pattern off. Measured for a
    32-channel U-Net (one run each, 2 cores):

    | 1088^2 tile, 1 thread    | run 1  | run 2  | then   | peak     |
    |--------------------------|--------|--------|--------|----------|
    | no arena, pattern        | 0.85 s | 0.72 s | 0.70 s | 745 MB   |
    | arena, pattern           | 0.75 s | 0.83 s | 0.50 s | 1477 MB  |
    | arena, no pattern        | 0.75 s | 0.53 s | 0.50 s | 867 MB   |

    Without the arena every run maps and zeroes its buffers afresh (kernel time); with the pattern, the second run
    allocates the planned block beside the arena (twice the memory, and 2.2 s instead of 0.5 s when two processes
    fault in that memory at once, as Dask workers on one machine do). At 2048^2 with 2 threads the arena without the
    pattern runs in 0.98 s against 1.5-1.6 s and peaks at 2.2 GB against 2.4 GB. The arena keeps that peak resident
    while the session lives (a Model released frees it; a run larger than all before gets a fresh session:
    OnnxSession._fresh_arena_for); `arena=False` turns it off."""
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = not arena


class OnnxSession:
    """Wraps an InferenceSession; `run` takes and returns numpy arrays keyed by tensor name."""

    def __init__(self, weights: Path, device: str = "auto", threads: int = 0, arena: bool = True):
        import onnxruntime as ort

        if device not in DEVICES:
            raise InputError(f"device '{device}' is not one of {', '.join(DEVICES)}")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        want_cuda = device == "cuda" or (device == "auto" and cuda_driver_available())
        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        if device == "cuda" and not (has_cuda_ep and cuda_driver_available()):
            raise InputError(
                "--device cuda was requested but no usable CUDA is present (onnxruntime providers: "
                f"{ort.get_available_providers()}, CUDA driver found: {cuda_driver_available()}); "
                "use --device cpu or auto, or install onnxruntime-gpu with a CUDA driver"
            )
        providers: list = ["CPUExecutionProvider"]
        cpu_only = not (want_cuda and has_cuda_ep)
        if cpu_only:  # CUDA keeps onnxruntime's defaults: its arena is in device memory
            cpu_memory_options(options, arena)
        else:
            _preload_cuda_libraries(ort)
            providers.insert(0, "CUDAExecutionProvider")
        self._ort, self._build = ort, lambda: _inference_session(ort, weights, options, providers)
        self.session = self._build()
        # a CPU arena grown by a run larger than every earlier one keeps the regions the smaller runs left beside
        # the new one (512^2, 1024^2, 1536^2 then 2048^2 tiles of a 32-channel U-Net: 3.2 GB in one session, 2.2 GB
        # in a fresh one), which would break a byte budget: such a run gets a fresh session (0.04 s)
        self._fresh_arena_above = 0 if arena and cpu_only else None  # None: never rebuilt; else the largest run
        self.provider = self.session.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise InputError("the CUDA provider failed to start (CUDA/cuDNN libraries missing?); use --device cpu")
        if want_cuda and self.provider != "CUDAExecutionProvider":
            log.info("CUDA driver found but onnxruntime's CUDA provider could not start; running on CPU")
        log.info("onnxruntime runs on %s", self.provider)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._types = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self._ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        self._out_types = {o.name: _ORT_TYPES.get(o.type, np.float32) for o in self.session.get_outputs()}
        # until bind() is called, tensor ids are taken to be the graph names
        self._input_of = {n: n for n in self.input_names}
        self._output_of = {n: n for n in self.output_names}
        self.input_types, self.input_ranks = dict(self._types), dict(self._ranks)
        self.output_types = dict(self._out_types)
        self.binding_note: Optional[str] = None

    @property
    def on_cuda(self) -> bool:
        return self.provider == "CUDAExecutionProvider"

    def bind(self, inputs: Sequence[str], outputs: Sequence[str]) -> Optional[str]:
        """Bind described tensor ids to graph names, as bioimageio.core does: by name when the graph uses the ids,
        else by position when the counts match. Returns a note when bound by position (None when by name)."""
        self._input_of, note_in = _binding("input", list(inputs), self.input_names)
        self._output_of, note_out = _binding("output", list(outputs), self.output_names)
        notes = [n for n in (note_in, note_out) if n]
        self.input_types = {tid: self._types[name] for tid, name in self._input_of.items()}
        self.input_ranks = {tid: self._ranks[name] for tid, name in self._input_of.items()}
        self.output_types = {tid: self._out_types[name] for tid, name in self._output_of.items()}
        self.binding_note = "; ".join(notes) or None
        return self.binding_note

    def graph_input(self, tensor_id: str) -> str:
        """The ONNX graph's name for a described input (what a raw InferenceSession.run needs)."""
        return self._input_of.get(tensor_id, tensor_id)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on arrays keyed by tensor id; outputs come back keyed by tensor id."""
        named = {self._input_of.get(k, k): np.ascontiguousarray(v, dtype=self._types[self._input_of.get(k, k)])
                 for k, v in feeds.items()}
        self._fresh_arena_for(named)
        try:
            if self.on_cuda:
                values = self._run_bound(named)
            else:
                values = dict(zip(self.output_names, self.session.run(self.output_names, named)))
        except Exception as e:  # an ORT failure here means the data shape/type broke the graph
            shapes = {k: v.shape for k, v in feeds.items()}
            raise InputError(
                f"the model failed on inputs of shapes {shapes}: {_first_line(e)}. Check that the sizes are valid for "
                "this model (see `biozoo info`)"
            ) from None
        return {tid: values[name] for tid, name in self._output_of.items()}

    def _fresh_arena_for(self, feeds: Mapping[str, np.ndarray]) -> None:
        """A new session (same weights file, options and providers) before a run larger than every earlier one."""
        if self._fresh_arena_above is None:
            return
        size = sum(int(v.nbytes) for v in feeds.values())
        if self._fresh_arena_above and size > self._fresh_arena_above:
            self.session = self._build()  # built first (a failure keeps the old one); the old arena goes with it
        self._fresh_arena_above = max(self._fresh_arena_above, size)

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, self._ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))


def _inference_session(ort, weights: Path, options, providers: list):
    previous = ort.get_default_logger_severity() if hasattr(ort, "get_default_logger_severity") else 2
    ort.set_default_logger_severity(4)  # the probe for CUDA may log errors we turn into one info line
    try:
        return ort.InferenceSession(str(weights), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise PackageError(f"onnxruntime cannot load '{weights.name}': {_first_line(e)}") from None
    finally:
        ort.set_default_logger_severity(previous)


def _binding(kind: str, ids: list[str], names: list[str]) -> tuple[dict[str, str], Optional[str]]:
    """Tensor id -> graph name: by name when every id is a graph name, else by position when the counts match."""
    if all(i in names for i in ids):
        return {i: i for i in ids}, None
    if len(ids) == len(names):
        pairs = dict(zip(ids, names))
        shown = ", ".join(f"{i} -> {n}" for i, n in pairs.items())
        return pairs, f"ONNX {kind}s bound by position ({shown}): the graph names differ from the tensor ids"
    raise PackageError(
        f"the ONNX graph does not match the description: {len(ids)} described {kind}(s) {ids} vs {len(names)} graph "
        f"{kind}(s) {names}; they match neither by name nor by count. Fix the package's rdf.yaml {kind}s (their ids "
        "and order must follow the ONNX graph) or re-export the weights"
    )


def _preload_cuda_libraries(ort) -> None:
    """CUDA/cuDNN from the nvidia-* wheels are found only after preload_dlls (onnxruntime >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # best effort: a system-wide CUDA install works without it
            pass


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
