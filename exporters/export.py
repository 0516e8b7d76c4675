"""`biozoo export RUN_DIR -o PACKAGE.zip`: a training run -> a validated, deterministic bioimage.io package.

One pipeline for every task; what differs comes from the run's `ExportTask` (exporters/tasks, looked up by the
recipe's task id). Order matters: every check that can refuse the model (ONNX export, parity, batch independence,
spec validation, biozoo's own test of the written folder) runs in a scratch folder before the zip is written,
atomically; a refused export leaves nothing at the destination.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from biozoo.runtime import ExportError

from .documents import weights_section, write_cover
from .export_steps import (INPUT_ID, ExportReport, attach_curves, biozoo_config, file_sha256, model_input,
                           flip_reference, package_timestamp, self_test)
from .onnx_export import DEFAULT_OPSET
from .rdf import RdfParts, build_model_descr, write_rdf
from .run_dir import open_run
from .tasks import ExportContext, ExportTask, Graph, get_export_task
from .weight_formats import WeightsFile, parity_record, parse_formats, with_onnx_test, write_weights
from .zipper import write_deterministic_zip


def export_run(run_dir: Union[str, Path], out: Union[str, Path], *, authors: Sequence[str] = ("biozoo",),
               license: str = "CC-BY-4.0", opset: int = DEFAULT_OPSET, name: Optional[str] = None,
               weights: Optional[str] = None) -> ExportReport:
    """Package the training run in ``run_dir`` as ``out`` (a .zip); raises ExportError when a check refuses it.

    ``weights``: comma-separated weight formats (default: every format the task exports, see weight_formats)."""
    out = Path(out)
    if out.suffix != ".zip":
        raise ExportError(f"output '{out}' must end in .zip (a bioimage.io package is a zip file)")
    run = open_run(Path(run_dir))
    task = get_export_task(run.recipe.task, run.root)
    formats = parse_formats(weights or ",".join(task.weight_formats), task.weight_formats, task.name)
    post = task.postprocessing(run)
    net = run.trained_model()
    contract = run.contract(net)
    raw, x = model_input(run, contract)
    title = name or run.recipe.name
    with tempfile.TemporaryDirectory(prefix="biozoo-export-") as tmp:
        folder = Path(tmp)
        ctx = ExportContext(run, net, contract, raw, x, folder, opset, post)
        graph = task.graph(ctx)
        written = write_weights(task, ctx, graph, formats)
        _write_tensors(folder, raw[None, None].astype(np.float32), graph)
        write_cover(folder / "cover.png", raw, *task.cover(ctx, graph))
        attachments = attach_curves(run, folder)
        config = {**biozoo_config(run, contract, graph.parity, graph.independence, task.records_object_size),
                  **task.config(ctx)}
        (folder / "README.md").write_text(task.readme(ctx, graph, title, bool(attachments)), encoding="utf-8")

        def write_description() -> None:
            parts = _rdf_parts(task, ctx, graph, title, authors, license, attachments, config, written)
            write_rdf(build_model_descr(parts, folder, lambda m: task.output_descrs(m, ctx, graph), task.name),
                      folder / "rdf.yaml")

        write_description()
        test = self_test(folder)
        # measured on the package itself, then recorded: the out-of-distribution check's reference, and the ONNX
        # weights' reproduction of the test tensors (the other formats' were checked before writing)
        reference = flip_reference(folder, ctx.run)
        if reference is not None:
            config["training"]["out_of_distribution"] = reference
        written = with_onnx_test(written, test)
        config["parity"] = {**config["parity"], "weight_formats": parity_record(written)}
        (folder / "README.md").write_text(task.readme(ctx, graph, title, bool(attachments))
                                          + weights_section(written, task.tolerance), encoding="utf-8")
        write_description()
        write_deterministic_zip(folder, out)
    return ExportReport(out, file_sha256(out), graph.parity, graph.independence, test, parity_record(written))


def _rdf_parts(task: ExportTask, ctx: ExportContext, graph: Graph, title: str, authors: Sequence[str], license: str,
               attachments: list[str], config: dict, weights: Sequence[WeightsFile]) -> RdfParts:
    recipe, contract = ctx.recipe, ctx.contract
    return RdfParts(
        name=title, description=recipe.description or task.description, authors=authors, license=license,
        tags=task.tags, cite=task.citations(recipe), attachments=attachments, input_id=INPUT_ID,
        input_description=task.input_description, batch_size=task.batch_size, space_axes=contract.space_axes,
        in_channels=[f"channel{i}" for i in range(ctx.x.shape[1])], min_size=contract.min_tile,
        size_step=contract.size_step, pixel_size=recipe.data.pixel_size, halo=contract.halo,
        percentiles=tuple(recipe.data.percentiles),
        test_input="test_input.npy", sample_input="sample_input.tif", weights=weights, opset=graph.opset, tolerance=task.tolerance, biozoo_config=config,
        timestamp=package_timestamp(ctx.run))


def _write_tensors(folder: Path, test_input: np.ndarray, graph: Graph) -> None:
    import tifffile

    np.save(folder / "test_input.npy", test_input)
    samples = [("sample_input.tif", test_input)]
    for out in graph.outputs:
        np.save(folder / out.test_file, out.data)
        if out.sample_file:
            samples.append((out.sample_file, out.data))
    # sample tensors are for humans and the website: plain TIFFs without a timestamp (deterministic bytes)
    for name, data in samples:
        tifffile.imwrite(folder / name, data, metadata=None, datetime=False, software=False)
