"""napari readers: a bioimage.io package (drop a .zip, a package folder or its rdf.yaml) opens its test inputs
and the biozoo widget with the package selected; an OME-Zarr image (biozoo's outputs among them) opens lazily,
every resolution level, labels as Labels layers."""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

PathArg = Union[str, Sequence[str]]
DESCRIPTIONS = ("rdf.yaml", "bioimageio.yaml")
WIDGET = ("biozoo", "Run a bioimage.io model")  # (plugin, widget display name) of napari.yaml


def _one(path: PathArg) -> Optional[Path]:
    if isinstance(path, (list, tuple)):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def is_package(path: Path) -> bool:
    """A package napari may hand us: a .zip holding a description, a folder with one, or the description."""
    name = path.name.lower()
    if path.is_file() and (name in DESCRIPTIONS or name.endswith(".bioimageio.yaml")):
        return True
    if path.is_dir():
        return any((path / d).is_file() for d in DESCRIPTIONS)
    if path.is_file() and name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path) as z:
                return any(n in DESCRIPTIONS or n.endswith(".bioimageio.yaml") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def is_ome_zarr(path: Path) -> bool:
    return path.is_dir() and path.suffix.lower() == ".zarr" and any(
        (path / f).is_file() for f in ("zarr.json", ".zattrs"))


def get_reader(path: PathArg) -> Optional[Callable[[PathArg], list]]:
    """npe2 reader hook: a reader for what biozoo opens, None for anything else (napari then asks others)."""
    one = _one(path)
    if one is None:
        return None
    if is_package(one):
        return read_package
    if is_ome_zarr(one):
        return read_ome_zarr
    return None


def read_package(path: PathArg) -> list:
    """The package's test inputs, after every hash is checked (a damaged package is a notification, not layers);
    the widget is docked and selects the package when the layers arrive."""
    from biozoo.runtime.errors import BiozooError

    from .models import load_model, test_input_layers

    source = _one(path)
    try:
        model = load_model(source)
        layers = test_input_layers(model, source)
    except BiozooError as e:
        _notify_error(str(e))
        return [(None,)]  # npe2's null layer: the reader handled the file, nothing to add
    _dock_widget()
    return layers


def read_ome_zarr(path: PathArg) -> list:
    """An OME-Zarr image as a multiscale layer (zarr arrays, read slice by slice as napari draws), its channels
    split, pixel sizes as scale in µm; its NGFF label images as Labels layers."""
    from biozoo.runtime.commands.omezarr import open_pyramid
    from biozoo.runtime.errors import BiozooError

    from .models import SOURCE_KEY

    root = _one(path)
    try:
        arrays, axes, sizes, labels = open_pyramid(root)
        name = root.name.removesuffix(".zarr").removesuffix(".ome")
        layers = [_pyramid_layer(name, arrays, axes, sizes, "image")] if arrays else []
        for _, kwargs, _ in layers:
            kwargs["metadata"] = {SOURCE_KEY: str(root)}
        for name in labels:
            label_arrays, label_axes, label_sizes, _ = open_pyramid(root / "labels" / name)
            layers.append(_pyramid_layer(name, label_arrays, label_axes, label_sizes, "labels"))
    except BiozooError as e:
        _notify_error(str(e))
        return [(None,)]
    return layers


def _pyramid_layer(name: str, arrays: list, axes: Optional[str], sizes: list, kind: str) -> tuple:
    letters = axes or "".join("?" for _ in arrays[0].shape)
    pixel = sizes[0] or {}
    scale = [pixel.get(a, 1.0) for a in letters]
    kwargs: dict[str, Any] = {"name": name, "multiscale": len(arrays) > 1, "scale": scale}
    if axes:
        kwargs["axis_labels"] = tuple(axes)
    if pixel:
        kwargs["units"] = tuple("micrometer" if a in pixel else "pixel" for a in letters)
    data: Any = arrays if len(arrays) > 1 else arrays[0]
    if kind == "image" and axes and "c" in axes and arrays[0].shape[axes.index("c")] > 1:
        c = axes.index("c")
        keep = [i for i in range(len(letters)) if i != c]
        kwargs.update(channel_axis=c, scale=[scale[i] for i in keep],
                      axis_labels=tuple(letters[i] for i in keep), name=name)
        if "units" in kwargs:
            kwargs["units"] = tuple(kwargs["units"][i] for i in keep)
    return data, kwargs, kind


def _dock_widget() -> None:
    """Dock biozoo's widget in the current viewer (napari returns the open one if it is docked already)."""
    try:
        import napari

        viewer = napari.current_viewer()
        if viewer is not None:
            viewer.window.add_plugin_dock_widget(*WIDGET)
    except Exception as e:  # no window (a reader called without a viewer): the layers still open
        logging.getLogger("biozoo").info("biozoo: the widget was not docked: %s", e)


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)
