"""The dock widget: pick a package, see what it takes, map layers to its inputs, predict in a worker thread (progress
bar, cancel), see every input check, get layers back. The viewer never waits for the network.

Errors biozoo raises on purpose (a damaged package, an input that does not fit) are napari notifications with the
CLI's one-line message; a pixel-size mismatch also enables "Rescale and run".
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                            QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from biozoo.runtime.errors import BiozooError, InputError, PixelSizeError

from .layers import (Cancelled, LayerGeometry, layer_axes, merged_checks, output_layers, predict_from_file,
                     predict_layers, why_not_from_file)
from .models import INPUT_KEY, PACKAGE_KEY, SOURCE_KEY, load_model, summary, summary_html

log = logging.getLogger("biozoo")
NO_MASK = "(no mask)"
STATUS_COLOURS = {"error": "#e05555", "warning": "#e0a040", "ok": "#60b060", "skipped": "#909090"}


@dataclass(frozen=True)
class Job:
    """One run, read from the widget in the GUI thread: the worker thread touches no widget."""

    arrays: dict[str, Any]  # layer data by input id (full resolution)
    axes: dict[str, str]
    geometry: LayerGeometry  # of the primary input's layer: outputs overlay it
    shape: tuple[int, ...]
    mask: Optional[np.ndarray]
    pixel_size: Optional[str]
    rescale: bool
    memory: Optional[str]
    from_file: Optional[str]  # the OME-Zarr to predict from, block by block (a lazily read layer)


class _Progress(QObject):
    """Carries the worker thread's progress to the widget (a queued signal: Qt delivers it in the GUI thread)."""

    changed = Signal(int, int)


class ModelWidget(QWidget):
    """biozoo in napari: one package at a time, any number of runs."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model: Any = None
        self.package_path: Optional[str] = None
        self.worker: Any = None
        self.last_result: Any = None  # the LayerPrediction of the last run (tests and scripts read it)
        self._cancel = threading.Event()
        self._progress = _Progress()
        self._progress.changed.connect(self._on_progress)
        self._inputs: dict[str, tuple[QComboBox, QLineEdit]] = {}
        self._prefilled: dict[str, str] = {}  # input id -> the layer its axes were prefilled from

        self.path_edit = QLineEdit(placeholderText="package .zip, folder or rdf.yaml")
        self.browse_button = QPushButton("Browse…")
        self.load_button = QPushButton("Load")
        self.info_label = QLabel("No package loaded.")
        self.info_label.setWordWrap(True)
        self.info_label.setTextFormat(Qt.TextFormat.RichText)
        self.info_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.inputs_form = QFormLayout()
        self.pixel_edit = QLineEdit(placeholderText="µm, e.g. 0.65 or 0.65,0.65 (empty: from the layer's scale)")
        self.mask_combo = QComboBox()
        self.memory_edit = QLineEdit(placeholderText="e.g. 2GB (empty: the memory available)")
        self.memory_edit.setToolTip("like biozoo predict --memory: tiles are sized to fit; a layer read lazily from "
                                    "an OME-Zarr is predicted block by block into a file when it does not fit")
        self.run_button = QPushButton("Run")
        self.rescale_button = QPushButton("Rescale and run")
        self.rescale_button.setToolTip("Resample to the training pixel size, predict, and resample back")
        self.cancel_button = QPushButton("Cancel")
        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.checks_table = QTableWidget(0, 2)  # check and status | message (wrapped: the dock is narrow)
        self.checks_table.setHorizontalHeaderLabels(["check", "message"])
        self.checks_table.horizontalHeader().setStretchLastSection(True)
        self.checks_table.verticalHeader().setVisible(False)
        self.checks_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.checks_table.setWordWrap(True)
        self.checks_table.horizontalHeader().sectionResized.connect(self.checks_table.resizeRowsToContents)
        self.setMinimumWidth(420)

        row = QHBoxLayout()
        for w in (self.path_edit, self.browse_button, self.load_button):
            row.addWidget(w)
        options = QFormLayout()
        options.addRow("pixel size", self.pixel_edit)
        options.addRow("mask", self.mask_combo)
        options.addRow("memory", self.memory_edit)
        buttons = QGridLayout()
        buttons.addWidget(self.run_button, 0, 0)
        buttons.addWidget(self.rescale_button, 0, 1)
        buttons.addWidget(self.cancel_button, 0, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.info_label)
        layout.addLayout(self.inputs_form)
        layout.addLayout(options)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.checks_table, stretch=1)

        self.browse_button.clicked.connect(self._browse)
        self.load_button.clicked.connect(lambda: self.load_package(self.path_edit.text()))
        self.path_edit.returnPressed.connect(lambda: self.load_package(self.path_edit.text()))
        self.run_button.clicked.connect(lambda: self.run(rescale=False))
        self.rescale_button.clicked.connect(lambda: self.run(rescale=True))
        self.cancel_button.clicked.connect(self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self._set_running(False)
        self._refresh_layers()
        self._adopt_tagged_layers()

    # ---- the package ---------------------------------------------------------------------------------------
    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "bioimage.io package", "", "packages (*.zip *.yaml)")
        if path:
            self.load_package(path)

    def load_package(self, path: str, select_layer: Any = None) -> bool:
        """Load (hashes checked, session built) and show a package; False, with a notification, if it fails."""
        path = str(path).strip()
        if not path:
            self._error("no package given: pick a .zip, a package folder or its rdf.yaml")
            return False
        self.path_edit.setText(path)
        try:
            model = load_model(path)
        except BiozooError as e:
            self._error(str(e))
            return False
        except OSError as e:
            self._error(f"cannot open '{path}': {e.strerror or e}")
            return False
        self.model, self.package_path = model, path
        self.info_label.setText(summary_html(summary(model)))
        self._build_inputs()
        if select_layer is not None:
            tid = select_layer.metadata.get(INPUT_KEY) or model.description.inputs[0].id
            if tid in self._inputs:
                self._inputs[tid][0].setCurrentText(select_layer.name)
        self._set_running(False)
        self.status_label.setText(f"loaded {model.description.name}")
        return True

    def _build_inputs(self) -> None:
        while self.inputs_form.rowCount():
            self.inputs_form.removeRow(0)
        self._inputs, self._prefilled = {}, {}
        for t in self.model.description.inputs:
            combo, axes = QComboBox(), QLineEdit(placeholderText=f"model: {t.letters}")
            axes.setToolTip("one letter per layer dimension (b, c, t, i, z, y, x), as biozoo predict --axes; letters "
                            "the model lacks are predicted one slice at a time")
            combo.currentTextChanged.connect(lambda _, tid=t.id: self._prefill_axes(tid))
            box = QHBoxLayout()
            box.addWidget(combo, stretch=2)
            box.addWidget(axes, stretch=1)
            self.inputs_form.addRow(f"{t.id} ({t.letters})", box)
            self._inputs[t.id] = (combo, axes)
        self._refresh_layers()

    # ---- layers --------------------------------------------------------------------------------------------
    def _image_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if type(layer).__name__ == "Image"]

    def _refresh_layers(self, *_: Any) -> None:
        images = [layer.name for layer in self._image_layers()]
        for tid, (combo, _) in self._inputs.items():
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(images)
            if current in images:
                combo.setCurrentText(current)
            combo.blockSignals(False)
            self._prefill_axes(tid)
        masks = [layer.name for layer in self.viewer.layers if type(layer).__name__ in ("Labels", "Shapes")]
        current = self.mask_combo.currentText()
        self.mask_combo.clear()
        self.mask_combo.addItems([NO_MASK, *masks])
        if current in masks:
            self.mask_combo.setCurrentText(current)

    def _prefill_axes(self, tid: str) -> None:
        """Axes (and the pixel size) from the chosen layer, once per choice: what the user typed for that layer
        stays when other layers come and go."""
        combo, edit = self._inputs[tid]
        layer = self._layer(combo.currentText())
        if layer is None or self._prefilled.get(tid) == layer.name:
            return
        self._prefilled[tid] = layer.name
        try:
            letters = layer_axes(self._layer_data(layer).shape, self.model.description.input(tid), rgb=layer.rgb,
                                 axis_labels=layer.axis_labels)
        except InputError:
            letters = ""
        edit.setText(letters)
        if tid == self.model.description.inputs[0].id and not self.pixel_edit.isModified():
            self.pixel_edit.setText(self._layer_pixel_size(layer, letters))

    @staticmethod
    def _layer_pixel_size(layer: Any, letters: str) -> str:
        """The layer's scale as a pixel size when its units say micrometers (OME-Zarr and calibrated layers);
        napari's default unit, the pixel, says nothing."""
        units = [str(u) for u in getattr(layer, "units", ())]
        values = [f"{s:g}" for a, s, u in zip(letters, layer.scale, units) if a in "zyx" and u == "micrometer"]
        spaces = [a for a in letters if a in "zyx"]
        return ",".join(values) if values and len(values) == len(spaces) else ""

    def _layer(self, name: str) -> Any:
        return next((layer for layer in self.viewer.layers if layer.name == name), None)

    @staticmethod
    def _layer_data(layer: Any) -> Any:
        return layer.data[0] if getattr(layer, "multiscale", False) else layer.data  # full resolution

    def _on_layer_inserted(self, event: Any) -> None:
        layer = event.value
        package = layer.metadata.get(PACKAGE_KEY) if hasattr(layer, "metadata") else None
        if package and package != self.package_path:
            self.load_package(package, select_layer=layer)
        elif package:
            self._refresh_layers()
            tid = layer.metadata.get(INPUT_KEY)
            if tid in self._inputs:
                self._inputs[tid][0].setCurrentText(layer.name)

    def _adopt_tagged_layers(self) -> None:
        """Docked after the reader opened a package: take the package of the newest tagged layer."""
        for layer in reversed(list(self.viewer.layers)):
            if layer.metadata.get(PACKAGE_KEY) and self.model is None:
                self.load_package(layer.metadata[PACKAGE_KEY], select_layer=layer)
                return

    def _mask(self, shape: tuple[int, ...], letters: str) -> Optional[np.ndarray]:
        name = self.mask_combo.currentText()
        layer = self._layer(name) if name and name != NO_MASK else None
        if layer is None:
            return None
        if type(layer).__name__ == "Shapes":
            space = tuple(n for a, n in zip(letters, shape) if a in "zyx")
            return np.asarray(layer.to_labels(labels_shape=space)) != 0
        return np.asarray(self._layer_data(layer)) != 0

    # ---- running -------------------------------------------------------------------------------------------
    def run(self, rescale: bool = False) -> None:
        """Predict in a worker thread; outputs are added as layers when it returns."""
        if self.model is None:
            self._error("no package loaded: load a .zip, a package folder or its rdf.yaml first")
            return
        if self.worker is not None:
            return
        try:
            job = self._job(rescale)
        except BiozooError as e:
            self._error(str(e))
            return
        from napari.qt.threading import create_worker

        self._cancel.clear()
        self.checks_table.setRowCount(0)
        self.status_label.setText("predicting…")
        self.progress_bar.setRange(0, 0)
        # errors are ours to show (_failed): without _ignore_errors napari re-raises them as a traceback dialog
        self.worker = create_worker(self._predict, job, _start_thread=False, _ignore_errors=True,
                                    _connect={"returned": lambda result, job=job: self._done(result, job),
                                              "errored": self._failed, "finished": lambda: self._set_running(False)})
        self._set_running(True)
        self.worker.start()

    def _job(self, rescale: bool) -> "Job":
        arrays, axes, geometry, shape, mask = {}, {}, None, (), None
        for tid, (combo, edit) in self._inputs.items():
            layer = self._layer(combo.currentText())
            if layer is None:
                raise InputError(f"no image layer chosen for input '{tid}'; add an image layer and pick it")
            data = self._layer_data(layer)
            letters = edit.text().strip().lower()
            if not letters:
                raise InputError(f"give the axes of layer '{layer.name}' (shape {tuple(data.shape)}) for input "
                                 f"'{tid}', one letter per dimension, e.g. "
                                 f"{self.model.description.input(tid).letters.replace('b', '')}")
            arrays[tid], axes[tid] = data, letters
            if geometry is None:
                geometry = LayerGeometry(letters, tuple(layer.scale), tuple(layer.translate))
                shape = tuple(data.shape)
                mask = self._mask(shape, letters)
        primary = self._layer(next(iter(self._inputs.values()))[0].currentText())
        source = primary.metadata.get(SOURCE_KEY) or getattr(primary.source, "path", None)
        letters = next(iter(axes.values()))
        lazy = why_not_from_file(self.model, next(iter(arrays.values())), source, letters, mask)
        return Job(arrays, axes, geometry, shape, mask, self.pixel_edit.text().strip() or None, rescale,
                   self.memory_edit.text().strip() or None, str(source) if lazy is None else None)

    def _predict(self, job: "Job") -> Any:
        def progress(done: int, total: int) -> None:
            self._progress.changed.emit(done, total)

        if job.from_file:  # a lazily read layer: block by block from its file, outputs opened lazily
            from biozoo.runtime.format.package import cache_dir

            return predict_from_file(self.package_path, job.from_file, next(iter(job.axes.values())),
                                     cache_dir() / "napari-outputs", pixel_size=job.pixel_size,
                                     rescale=job.rescale, memory=job.memory, progress=progress, cancel=self._cancel)
        return predict_layers(self.model, job.arrays, job.axes, pixel_size=job.pixel_size, rescale=job.rescale,
                              mask=job.mask, memory=job.memory, cancel=self._cancel, progress=progress)

    def cancel(self) -> None:
        """Stop the run at its next tile; nothing is added."""
        self._cancel.set()
        self.status_label.setText("cancelling…")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)

    def _done(self, result: Any, job: "Job") -> None:
        try:
            self._add_outputs(result, job)
        except Exception as e:  # napari would show a traceback dialog for what escapes a slot
            log.error("biozoo could not add the outputs", exc_info=e)
            self._error(f"biozoo could not add the outputs as layers: {type(e).__name__}: {e}")

    def _add_outputs(self, result: Any, job: "Job") -> None:
        self.last_result = result
        self._show_checks(merged_checks(result.checks))
        added = []
        made = output_layers(self.model, result, job.geometry, job.shape) if not result.written else \
            written_layers(self.model.description.name, result.written)
        for data, kwargs, kind in made:
            names = kwargs["name"] if isinstance(kwargs["name"], list) else [kwargs["name"]]
            for name in names:  # a rerun replaces the layers of the previous run
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            layers = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
            added.extend(layers if isinstance(layers, list) else [layers])
        warned = [c for c in result.checks if c["status"] in ("warning", "error")]
        where = f" ({result.slices} slices)" if result.slices > 1 else (
            f" (block by block into {', '.join(result.written.values())})" if result.written else "")
        self.status_label.setText(f"done{where}: {len(added)} layer(s) added"
                                  + (f"; {len(warned)} check warning(s), see below" if warned else ""))
        if warned:
            from napari.utils.notifications import show_warning

            first = warned[0]
            show_warning(f"biozoo [{first['name']}] {first['message']}")

    def _failed(self, error: BaseException) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        if isinstance(error, Cancelled):
            self.status_label.setText("cancelled: nothing was added")
            return
        if isinstance(error, PixelSizeError):
            self._show_checks([{"name": "pixel-size", "status": "error", "message": str(error)}])
            self.rescale_button.setEnabled(True)
            self._error(f"{error} (here: press 'Rescale and run', or correct the pixel size field)")
            return
        if isinstance(error, BiozooError):
            self._error(str(error))
            return
        log.error("biozoo failed unexpectedly", exc_info=error)  # the log keeps the traceback, the user a line
        self._error(f"biozoo failed unexpectedly: {type(error).__name__}: {error}")

    def _set_running(self, running: bool) -> None:
        if not running:
            self.worker = None
        loaded = self.model is not None
        self.run_button.setEnabled(loaded and not running)
        self.rescale_button.setEnabled(loaded and not running and self._rescale_possible())
        self.cancel_button.setEnabled(running)
        self.load_button.setEnabled(not running)

    def _rescale_possible(self) -> bool:
        pixel = summary(self.model)["training"].get("pixel_size_um") if self.model is not None else None
        return isinstance(pixel, dict) and bool(pixel)

    def _show_checks(self, checks: list[dict[str, Any]]) -> None:
        self.checks_table.setRowCount(len(checks))
        for i, c in enumerate(checks):
            where = f"{c['input']}: " if c.get("input") else ""
            many = f" ({c['count']} slices; the worst shown: {c['slice']})" if c.get("count", 1) > 1 and c.get(
                "slice") else ""
            name = QTableWidgetItem(f"{c['name']}\n{c['status']}")
            name.setData(Qt.ItemDataRole.UserRole, (str(c["name"]), str(c["status"])))
            name.setForeground(QColor(STATUS_COLOURS.get(c["status"], "#c0c0c0")))
            message = QTableWidgetItem(where + str(c["message"]) + many)
            message.setToolTip(message.text())
            self.checks_table.setItem(i, 0, name)
            self.checks_table.setItem(i, 1, message)
        self.checks_table.resizeColumnToContents(0)
        self.checks_table.resizeRowsToContents()

    def _error(self, message: str) -> None:
        """A notification with the CLI's one-line message, never a traceback dialog; the status line says it too."""
        from napari.utils.notifications import show_error

        self.status_label.setText(message)
        show_error(message)

    def checks(self) -> list[tuple[str, str, str]]:
        """The checks table as (check, status, message) rows."""
        return [(*self.checks_table.item(i, 0).data(Qt.ItemDataRole.UserRole), self.checks_table.item(i, 1).text())
                for i in range(self.checks_table.rowCount())]


def written_layers(model_name: str, written: dict[str, str]) -> list[tuple[Any, dict[str, Any], str]]:
    """The OME-Zarr outputs of a run from a file, opened lazily (the reader's layers), named and tagged like the
    in-memory ones."""
    from .reader import read_ome_zarr

    layers = []
    for tid, path in written.items():
        for data, kwargs, kind in read_ome_zarr(path):
            title = f"{model_name}: {tid}" if len(written) > 1 else model_name
            kwargs["name"] = [f"{title} [{i}]" for i in range(len(kwargs["name"]))] if isinstance(
                kwargs.get("name"), list) else title
            kwargs["metadata"] = {"biozoo": {"output": tid, "model": model_name, "path": path}}
            layers.append((data, kwargs, kind))
    if any(kind == "labels" for _, _, kind in layers):  # the file also holds the input image, for other viewers
        layers = [layer for layer in layers if layer[2] == "labels"]
    return layers
