"""Dataset widget: pick a dataset folder or the image + Labels layers to train on.

A folder (SCHISM or BiaPy layout) is summarised (images, shapes, dtypes, mask values,
classes) and any pair can be opened in the viewer. Layers already in the viewer, dense masks
or sparse scribbles painted by hand, can be paired up as training data instead or as well.
Problems become napari notifications naming the file; the viewer stays usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, Select, SpinBox, Table
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from ..data import mask_to_labels, read_image, read_mask
from ..data.io import choose_encoding, decode_mask
from ..data.summary import FolderSummary, summarize_folder
from ..errors import SchismError
from .relay import EventRelay, describe
from .session import Session, follow_layers, layer_choices, session_for, unwrap_viewer

if TYPE_CHECKING:
    import napari


class DatasetWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer, session: Session | None = None):
        super().__init__(labels=True)
        self.viewer = viewer = unwrap_viewer(viewer)
        self.session = session or session_for(viewer)
        self.folder = FileEdit(mode="d", label="dataset folder", value="")
        self.scan_button = PushButton(text="Scan folder")
        self.table = Table(label="datasets")
        self.classes_label = Label(value="", label="classes")
        self.dataset_choice = ComboBox(choices=[], label="open dataset")
        self.pair_index = SpinBox(min=0, max=0, label="image #")
        self.open_button = PushButton(text="Open pair in viewer")
        self.use_folder_button = PushButton(text="Train on this folder")
        self.clear_folder_button = PushButton(text="Don't train on a folder")
        self.image_layer = ComboBox(choices=layer_choices(viewer, Image), label="image layer")
        self.labels_layer = ComboBox(choices=layer_choices(viewer, Labels), label="labels layer")
        self.new_labels_button = PushButton(text="New scribble layer for image")
        self.add_pair_button = PushButton(text="Add image + labels to training set")
        self.pairs = Select(choices=[], label="training layers")
        self.remove_pair_button = PushButton(text="Remove selected")
        self.legend = Label(value="", label="classes")
        self.legend.tooltip = "Paint class k with label k + 1; 0 means not painted (ignored by training)."
        self.status = Label(value="", label="")
        self.extend(
            [
                self.folder,
                self.scan_button,
                self.table,
                self.classes_label,
                self.dataset_choice,
                self.pair_index,
                self.open_button,
                Container(
                    widgets=[self.use_folder_button, self.clear_folder_button], layout="horizontal", labels=False
                ),
                self.image_layer,
                self.labels_layer,
                self.new_labels_button,
                self.add_pair_button,
                self.pairs,
                self.remove_pair_button,
                self.legend,
                self.status,
            ]
        )
        self.summary: FolderSummary | None = None
        self.worker: Any = None
        self.relay = EventRelay()
        self.scan_button.changed.connect(self.scan)
        self.dataset_choice.changed.connect(self._update_index_range)
        self.open_button.changed.connect(self.open_pair)
        self.use_folder_button.changed.connect(self.use_folder)
        self.clear_folder_button.changed.connect(lambda: self.session.use_folder(None))
        self.new_labels_button.changed.connect(self.new_scribble_layer)
        self.add_pair_button.changed.connect(self.add_pair)
        self.remove_pair_button.changed.connect(self.remove_selected)
        self.session.data_changed.connect(self._show_pairs)
        for signal in (self.session.data_changed, self.session.config_changed, self.session.model_changed):
            signal.connect(self._show_legend)
        self._show_legend()
        follow_layers(viewer, self)

    # ---- folder ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Summarise the folder in a worker (reading every mask can take a while)."""
        folder = Path(self.folder.value)
        self.status.value = f"scanning {folder}…"
        self.worker = create_worker(summarize_folder, folder, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._show_summary)
        self.worker.errored.connect(lambda error: self._fail(error, "scan failed"))
        self.worker.finished.connect(self._scan_finished)
        self.scan_button.enabled = False
        self.worker.start()

    def _scan_finished(self) -> None:
        self.worker = None
        self.scan_button.enabled = True
        self.relay.finished.emit()

    def _show_summary(self, summary: FolderSummary) -> None:
        self.summary = summary
        rows = [d.row() for d in summary.datasets]
        columns = list(rows[0]) if rows else []
        self.table.value = {
            "data": [list(row.values()) for row in rows],
            "index": [str(i) for i in range(len(rows))],
            "columns": columns,
        }
        self.classes_label.value = summary.describe_classes()
        self.dataset_choice.choices = [d.name for d in summary.datasets]
        self._update_index_range()
        if summary.class_count is not None:
            self.session.set_class_count(summary.class_count)
        if summary.class_names:
            self.session.class_names, self.session.class_colors = summary.class_names, summary.class_colors
        self._show_legend()
        total = sum(len(d.folder.images) for d in summary.datasets)
        self.status.value = f"{len(summary.datasets)} dataset(s), {total} images"

    def _update_index_range(self) -> None:
        dataset = self._chosen_dataset()
        self.pair_index.max = max(0, len(dataset.folder.images) - 1) if dataset else 0

    def _chosen_dataset(self) -> Any:
        if self.summary is None:
            return None
        return next((d for d in self.summary.datasets if d.name == self.dataset_choice.value), None)

    def open_pair(self) -> None:
        dataset = self._chosen_dataset()
        if dataset is None or self.summary is None:
            show_error("scan a dataset folder first")
            return
        index = int(self.pair_index.value)
        image_path = dataset.folder.images[index]
        try:
            image = read_image(image_path)
            rgb = image.shape[-1] > 1
            data = image[0] if image.shape[0] == 1 else image
            if not rgb:
                data = data[..., 0]
            layer = self.viewer.add_image(data, name=image_path.stem, rgb=rgb)
            if dataset.folder.masks:
                mask_path = dataset.folder.masks[index]
                count = self.session.config.model.class_count
                ignore = self.session.config.data.ignore_index
                # decode with the encoding of the whole dataset, as training will
                encoding = (
                    choose_encoding(dataset.mask_values, count, ignore, dataset.name)
                    if dataset.mask_values.size
                    else None
                )
                mask = decode_mask(
                    read_mask(mask_path), count, ignore, str(mask_path), self.summary.class_colors, encoding
                )
                labels = mask_to_labels(mask[0] if mask.shape[0] == 1 else mask)
                labels_layer = self.viewer.add_labels(labels, name=f"{image_path.stem} mask")
                self.status.value = f"opened {image_path.name} (labels: class k shown as k + 1)"
                self.labels_layer.reset_choices()
                self.labels_layer.value = labels_layer
            self.image_layer.reset_choices()
            self.image_layer.value = layer
        except SchismError as error:
            show_error(str(error))

    def use_folder(self) -> None:
        folder = Path(self.folder.value)
        if self.summary is None or self.summary.root != folder:
            show_error("scan the folder first, so its classes and layout are checked")
            return
        self.session.use_folder(folder, self.summary.class_names, self.summary.class_colors)
        show_info(f"training data: {folder}")

    # ---- layers ------------------------------------------------------------------------------

    def new_scribble_layer(self) -> None:
        image = self.image_layer.value
        if image is None:
            show_error("choose an image layer first")
            return
        shape = image.data.shape[:-1] if image.rgb else image.data.shape
        layer = self.viewer.add_labels(
            np.zeros(shape, dtype=np.uint8),
            name=f"{image.name} scribbles",
            scale=image.scale[: len(shape)],
            translate=image.translate[: len(shape)],
        )
        layer.mode = "paint"
        layer.brush_size = 5
        self.labels_layer.reset_choices()
        self.labels_layer.value = layer
        self.add_pair()
        self.status.value = "paint with the labels listed under 'classes'"

    def add_pair(self) -> None:
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            show_error("choose an image layer and a labels layer")
            return
        try:
            self.session.add_pair(image, labels)
        except SchismError as error:
            show_error(str(error))

    def remove_selected(self) -> None:
        names = [p.name for p in self.session.pairs]
        for value in sorted((names.index(v) for v in self.pairs.value if v in names), reverse=True):
            self.session.remove_pair(value)

    def _show_legend(self, *_: Any) -> None:
        self.legend.value = self.session.legend_html()

    def _show_pairs(self) -> None:
        self.pairs.choices = [p.name for p in self.session.pairs]

    def _fail(self, error: Exception, context: str) -> None:
        message = describe(error)
        self.status.value = context
        show_error(message)
