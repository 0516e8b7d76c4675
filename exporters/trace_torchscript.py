"""`python -m biozoo.exporters.trace_torchscript FOLDER`: trace a package's torchscript weights from its own
architecture file and state dict, in this fresh process (exporters/weight_formats.py says why).

Reads FOLDER/.trace_kwargs.json (the architecture's kwargs) and FOLDER/.trace_example.npy (one valid input), writes
FOLDER/weights_torchscript.pt. The architecture file is compiled under its package-relative name, so the debug
information in the archive names ``networks.py``, never the export's scratch folder (the bytes stay the same).
"""
from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import torch

from .weight_formats import ARCHITECTURE_CALLABLE, ARCHITECTURE_FILE, STATE_DICT_FILE, TORCHSCRIPT_FILE


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    module = types.ModuleType("networks")
    source = (folder / ARCHITECTURE_FILE).read_text(encoding="utf-8")
    exec(compile(source, ARCHITECTURE_FILE, "exec"), module.__dict__)  # biozoo's own file, copied a moment ago
    sys.modules["networks"] = module
    kwargs = json.loads((folder / ".trace_kwargs.json").read_text())
    net = getattr(module, ARCHITECTURE_CALLABLE)(**kwargs)
    net.load_state_dict(torch.load(folder / STATE_DICT_FILE, map_location="cpu", weights_only=True), strict=True)
    example = torch.from_numpy(np.load(folder / ".trace_example.npy"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for python-side shape arithmetic (none changes the graph)
        traced = torch.jit.trace(net.eval(), example, check_trace=False, _store_inputs=False)
    torch.jit.save(traced, str(folder / TORCHSCRIPT_FILE))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
