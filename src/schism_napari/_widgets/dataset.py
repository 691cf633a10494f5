"""Dataset widget: pick a dataset folder or the image + Labels layers to train on, and name the classes.

A folder (SCHISM or BiaPy layout) is summarised (images, shapes, dtypes, mask values,
classes) and any pair can be opened in the viewer. Layers already in the viewer, dense masks
or sparse scribbles painted by hand, can be paired up as training data instead or as well.
Problems become napari notifications naming the file; the viewer stays usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, Select, SpinBox, Table
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from ..data.io import choose_encoding
from ..data.layers import read_pair
from ..data.summary import FolderSummary, summarize_folder
from ..errors import DataError, SchismError
from .jobs import FollowsJob, Job, follow
from .relay import describe
from .session import Session, follow_layers, layer_choices, session_for, unwrap_viewer

if TYPE_CHECKING:
    import napari


class DatasetWidget(FollowsJob, Container):
    """The Dataset tab: what to train on (a folder, layer pairs) and what the classes are called.

    Reading is done by the core (:mod:`schism_napari.data.layers`, shared with the reader); a
    folder scan is the session's "scan" job.
    """

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
        self.class_names = LineEdit(value="", label="class names")
        self.class_names.tooltip = "Comma-separated, one per class (label 1 first); saved with the next run."
        self.class_colors = LineEdit(value="", label="class colours")
        self.class_colors.tooltip = "Comma-separated #rrggbb, one per class (optional); used by the Labels layers."
        self.apply_classes_button = PushButton(text="Apply class names")
        self.status = Label(value="", label="status")
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
                self.class_names,
                self.class_colors,
                self.apply_classes_button,
                self.status,
            ]
        )
        self.summary: FolderSummary | None = None
        self.job: Job = self.session.job("scan")
        self.apply_classes_button.changed.connect(self.apply_classes)
        self.scan_button.changed.connect(self.scan)
        self.dataset_choice.changed.connect(self._update_index_range)
        self.open_button.changed.connect(self.open_pair)
        self.use_folder_button.changed.connect(self.use_folder)
        self.clear_folder_button.changed.connect(lambda: self.session.use_folder(None))
        self.new_labels_button.changed.connect(self.new_scribble_layer)
        self.add_pair_button.changed.connect(self.add_pair)
        self.remove_pair_button.changed.connect(self.remove_selected)
        follow(self.native, self.session.data_changed, self._show_pairs)
        follow(self.native, self.job.state_changed, self._on_state)
        for signal in (
            self.session.data_changed,
            self.session.config_changed,
            self.session.model_changed,
            self.session.classes_changed,
        ):
            follow(self.native, signal, self._show_legend)
        self._show_legend()
        self._show_pairs()
        follow_layers(viewer, self.image_layer, self.labels_layer)

    # ---- folder ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Summarise the folder in a worker (reading every mask can take a while)."""
        folder = Path(self.folder.value)
        self.status.value = f"scanning {folder}…"
        self.job.start(
            summarize_folder,
            folder,
            on_returned=self._show_summary,
            on_errored=lambda error: self._fail(error, "scan failed"),
        )

    def _on_state(self, state: Any) -> None:
        self.scan_button.enabled = not state.busy

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
        count = self.session.config.model.class_count
        ignore = self.session.config.data.ignore_index
        try:
            # decode with the encoding of the whole dataset, as training will
            encoding = (
                choose_encoding(dataset.mask_values, count, ignore, dataset.name) if dataset.mask_values.size else None
            )
            data, rgb, labels = read_pair(
                dataset.folder,
                [index],
                count,
                class_colors=self.summary.class_colors,
                ignore_index=ignore,
                encoding=encoding,
            )
        except SchismError as error:
            show_error(str(error))
            return
        layer = self.viewer.add_image(data, name=image_path.stem, rgb=rgb)
        if labels is not None:
            labels_layer = self.viewer.add_labels(labels, name=f"{image_path.stem} mask")
            self.session.paint_colors(labels_layer)
            self.status.value = f"opened {image_path.name} (labels: class k shown as k + 1)"
            self.labels_layer.reset_choices()
            self.labels_layer.value = labels_layer
        self.image_layer.reset_choices()
        self.image_layer.value = layer

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
        self.session.paint_colors(layer)
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
        self.class_names.value = ", ".join(self.session.names())
        self.class_colors.value = ", ".join("#{:02x}{:02x}{:02x}".format(*c) for c in self.session.colors())

    def apply_classes(self) -> None:
        """The names and colours typed in the dock become the session's; paired Labels layers recolour."""
        names = [n.strip() for n in str(self.class_names.value).split(",")]
        try:
            text = str(self.class_colors.value).strip()
            colors = [_parse_color(c) for c in text.split(",")] if text else None
            self.session.set_classes(names, colors)  # the session recolours every layer that shows classes
        except SchismError as error:
            show_error(str(error))
            return
        self.status.value = "class names set: they are saved with the next training run"

    def _show_pairs(self) -> None:
        self.pairs.choices = [p.name for p in self.session.pairs]

    def _fail(self, error: Exception, context: str) -> None:
        message = describe(error)
        self.status.value = context
        show_error(message)


def _parse_color(text: str) -> tuple[int, int, int]:
    """'#32c85a' or '50 200 90' -> (50, 200, 90)."""
    text = text.strip()
    try:
        if text.startswith("#") and len(text) == 7:
            return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
        r, g, b = (int(v) for v in text.split())
        if all(0 <= v <= 255 for v in (r, g, b)):
            return r, g, b
    except ValueError:
        pass
    raise DataError(f"class colours: {text!r} is not a colour; write #rrggbb")
