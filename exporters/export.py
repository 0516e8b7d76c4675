"""`biozoo export RUN_DIR -o PACKAGE.zip`: a training run -> a validated, deterministic bioimage.io package.

Order matters: every check that can refuse the model (ONNX export, parity, batch independence, spec validation,
biozoo's own test of the written folder) runs in a scratch folder before the zip is written, atomically; a refused
export leaves nothing at the destination.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from biozoo.runtime.errors import ExportError

from .documents import write_cover, write_readme
from .export_steps import (INPUT_ID, TOLERANCE, ExportReport, attach_curves, biozoo_config, check_graph,
                           file_sha256, model_input, package_timestamp, self_test, training_rows)
from .onnx_export import DEFAULT_OPSET, export_onnx
from .parity import onnx_forward, torch_forward
from .rdf import RdfParts, TensorFiles, build_model_descr, write_rdf
from .run_dir import open_run
from .tasks import TASKS
from .zipper import write_deterministic_zip


def export_run(run_dir: Union[str, Path], out: Union[str, Path], *, authors: Sequence[str] = ("biozoo",),
               license: str = "CC-BY-4.0", opset: int = DEFAULT_OPSET, name: Optional[str] = None) -> ExportReport:
    """Package the training run in ``run_dir`` as ``out`` (a .zip); raises ExportError when a check refuses it."""
    out = Path(out)
    if out.suffix != ".zip":
        raise ExportError(f"output '{out}' must end in .zip (a bioimage.io package is a zip file)")
    run = open_run(Path(run_dir))
    if run.recipe.task == "detection":  # box-list outputs: its own graph (NMS inside), outputs and test tensors
        from .detection import export_detection

        return export_detection(run, out, authors=authors, license=license, opset=opset, name=name)
    if run.recipe.task == "stardist":  # maps in the graph, labels from the stardist_postprocessing op
        from .stardist import export_stardist

        return export_stardist(run, out, authors=authors, license=license, opset=opset, name=name)
    spec = TASKS.get(run.recipe.task)
    if spec is None:
        raise ExportError(f"run '{run.root}' is a '{run.recipe.task}' run; biozoo exports {', '.join(sorted(TASKS))}")
    net = run.trained_model()
    exported = spec.wrap(net).eval()
    contract = run.contract(net)
    raw, x = model_input(run, contract)
    percentiles = tuple(run.recipe.data.percentiles)
    with tempfile.TemporaryDirectory(prefix="biozoo-export-") as tmp:
        folder = Path(tmp)
        reference = torch_forward(exported)
        expected = reference(x)
        info = export_onnx(exported, torch.from_numpy(x), folder / "weights.onnx", input_name=INPUT_ID,
                           output_names=(spec.output_id,), opset=opset)
        candidate = onnx_forward(info.path)
        parity, independence = check_graph(reference, candidate, x, contract)
        files = TensorFiles("test_input.npy", "test_output.npy", "sample_input.tif", "sample_output.tif")
        _write_tensors(folder, files, raw[None, None].astype(np.float32), expected)
        write_cover(folder / "cover.png", raw, spec.cover(expected[0]),
                    (0.0, 1.0) if run.recipe.task == "segmentation" else None)
        attachments = attach_curves(run, folder)
        config = biozoo_config(run, contract, parity, independence)
        write_readme(folder / "README.md", name=name or run.recipe.name,
                     description=run.recipe.description or spec.output_description,
                     task_notes=list(spec.notes), metrics_lines=spec.metrics_text(run.test_metrics),
                     training_rows=training_rows(run, contract), parity=parity, independence=independence,
                     tolerance=TOLERANCE, input_id=INPUT_ID, output_id=spec.output_id, axes=contract.axes,
                     has_curves=bool(attachments))
        parts = RdfParts(
            name=name or run.recipe.name, description=run.recipe.description or spec.output_description,
            authors=authors, license=license, tags=spec.tags, cite=spec.citations(run.recipe),
            documentation="README.md", covers=["cover.png"], attachments=attachments, input_id=INPUT_ID,
            output_id=spec.output_id, input_description="raw image; normalized inside the package (scale_range)",
            output_description=spec.output_description, space_axes=contract.space_axes,
            in_channels=[f"channel{i}" for i in range(x.shape[1])], out_channels=spec.channel_names(run.recipe),
            min_size=contract.min_tile, size_step=contract.size_step, halo=contract.halo,
            pixel_size=run.recipe.data.pixel_size, percentiles=percentiles, files=files, onnx_file="weights.onnx",
            onnx_sha256=file_sha256(info.path), opset=info.opset, tolerance=TOLERANCE, biozoo_config=config,
            timestamp=package_timestamp(run),
        )
        write_rdf(build_model_descr(parts, folder), folder / "rdf.yaml")
        test = self_test(folder)
        write_deterministic_zip(folder, out)
    return ExportReport(out, file_sha256(out), parity, independence, test)


def _write_tensors(folder: Path, files: TensorFiles, test_input: np.ndarray, test_output: np.ndarray) -> None:
    import tifffile

    np.save(folder / files.test_input, test_input)
    np.save(folder / files.test_output, test_output)
    # sample tensors are for humans and the website: plain TIFFs without a timestamp (deterministic bytes)
    for name, data in ((files.sample_input, test_input), (files.sample_output, test_output)):
        tifffile.imwrite(folder / name, data, metadata=None, datetime=False, software=False)
