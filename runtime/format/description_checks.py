"""Consistency of a parsed description: what each field allows alone (rdf_fields) is not enough. Tensor ids must be
unique, size references must point at an axis that exists and has a size, halos must leave something of the
smallest output, processing must name tensors and axes that exist. Checked once at load, before any work."""
from __future__ import annotations

from ..errors import PackageError
from .description import DataDependentSize, ModelDescription, ParameterizedSize, SizeReference, Tensor


def check_consistency(description: ModelDescription) -> None:
    tensors = (*description.inputs, *description.outputs)
    ids = [t.id for t in tensors]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PackageError(f"tensor id(s) {duplicates} are used more than once among inputs and outputs {ids}; "
                           "every tensor needs its own id: fix the package's rdf.yaml")
    for kind, group in (("inputs", description.inputs), ("outputs", description.outputs)):
        for i, t in enumerate(group):
            for j, a in enumerate(t.axes):
                where = f"{kind}[{i}].axes[{j}] ('{t.id}.{a.id}')"
                if a.type == "channel" and a.size is None:
                    raise PackageError(f"{where} is a channel axis without channel_names or size; add channel_names")
                if kind == "inputs" and isinstance(a.size, DataDependentSize):
                    raise PackageError(f"{where}.size {{min: {a.size.min}}} has no step: an input size must be an "
                                       "int, {min, step} or a {tensor_id, axis_id} reference")
                if isinstance(a.size, SizeReference):
                    _check_reference(description, t, a.id, where)
                if a.halo:
                    _check_halo(description, t, a.id, where)
            _check_processing(description, t, f"{kind}[{i}]")
    outputs = {t.id for t in description.outputs}
    for tol in description.tolerances:
        if isinstance(tol.output_ids, tuple) and set(tol.output_ids) - outputs:
            raise PackageError(f"config.bioimageio.reproducibility_tolerance names output(s) "
                               f"{sorted(set(tol.output_ids) - outputs)}, which do not exist (outputs: {sorted(outputs)})")


def _target(description: ModelDescription, tensor_id: str, axis_id: str, where: str):
    try:
        return description.tensor(tensor_id).axis(axis_id)
    except PackageError:
        raise PackageError(f"{where}.size refers to '{tensor_id}.{axis_id}', which does not exist; the tensors are "
                           f"{[t.id for t in (*description.inputs, *description.outputs)]}") from None


def _check_reference(description: ModelDescription, tensor: Tensor, axis_id: str, where: str) -> None:
    seen = {(tensor.id, axis_id)}
    size = tensor.axis(axis_id).size
    while isinstance(size, SizeReference):
        key = (size.tensor_id, size.axis_id)
        if key in seen:
            raise PackageError(f"{where}.size is part of a cycle of size references {sorted(seen)}; one of them "
                               "must be an int or {min, step}")
        seen.add(key)
        size = _target(description, *key, where).size
    if size is None or isinstance(size, DataDependentSize):
        raise PackageError(f"{where}.size refers to an axis of unknown or data-dependent size; refer to an input "
                           "axis with an int or {min, step} size")


def smallest(description: ModelDescription, tensor: Tensor, axis_id: str) -> float:
    """The smallest length an axis can have (references followed: ref * ref_scale / scale + offset)."""
    axis = tensor.axis(axis_id)
    size = axis.size
    if isinstance(size, int):
        return size
    if isinstance(size, ParameterizedSize):
        return size.min
    if isinstance(size, SizeReference):
        ref_tensor = description.tensor(size.tensor_id)
        ref_axis = ref_tensor.axis(size.axis_id)
        return smallest(description, ref_tensor, size.axis_id) * ref_axis.scale / axis.scale + size.offset
    return 1


def _check_halo(description: ModelDescription, tensor: Tensor, axis_id: str, where: str) -> None:
    halo = tensor.axis(axis_id).halo
    least = smallest(description, tensor, axis_id)
    if least - 2 * halo < 1:
        raise PackageError(f"{where}.halo is {halo}, but the axis can be as small as {least:g}: nothing would be "
                           "left between the halos (2 * halo must be smaller than the smallest size)")


def _check_processing(description: ModelDescription, tensor: Tensor, where: str) -> None:
    for j, p in enumerate(tensor.processing):
        here = f"{where}.{'preprocessing' if where.startswith('inputs') else 'postprocessing'}[{j}] ({p.id})"
        ref = p.kwargs.get("reference_tensor")
        target = tensor
        if ref is not None:
            if not isinstance(ref, str) or ref not in {t.id for t in (*description.inputs, *description.outputs)}:
                raise PackageError(f"{here}: kwargs.reference_tensor {ref!r} is not a tensor of this model")
            target = description.tensor(ref)
        axes = p.kwargs.get("axes")
        if axes is not None:
            if not isinstance(axes, (list, tuple)) or not all(isinstance(a, str) for a in axes):
                raise PackageError(f"{here}: kwargs.axes is {axes!r}; expected a list of axis ids")
            unknown = sorted(set(axes) - {a.id for a in target.axes})
            if unknown:
                raise PackageError(f"{here}: kwargs.axes names {unknown}, which '{target.id}' does not have "
                                   f"(its axes: {[a.id for a in target.axes]})")
        axis = p.kwargs.get("axis")
        if axis is not None and (not isinstance(axis, str) or axis not in {a.id for a in tensor.axes}):
            raise PackageError(f"{here}: kwargs.axis {axis!r} is not an axis of '{tensor.id}' "
                               f"({[a.id for a in tensor.axes]})")
