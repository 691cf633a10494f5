"""State shared by the Dataset, Training and Prediction widgets of one viewer.

The widgets never talk to each other directly: they read and change the session, which
announces changes through psygnal signals (no Qt needed, so it is testable on its own).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ..config import SchismConfig
from ..data import labels_to_mask, load_dataset, samples_from_arrays
from ..data.dataset import SegmentationData, merge_datasets
from ..errors import DataError
from ..planning import interactive_config
from ..runs import TrainedModel, default_class_names


@dataclass
class LayerPair:
    """An image layer and the Labels layer that annotates it (scribbles or a corrected prediction)."""

    image: Any  # napari.layers.Image
    labels: Any  # napari.layers.Labels

    @property
    def name(self) -> str:
        return f"{self.image.name} + {self.labels.name}"


@dataclass
class TrainingSources:
    """What to train on, fixed at Train time: a dataset folder and/or layer pairs (masks copied)."""

    config: SchismConfig
    folder: Path | None
    images: list[np.ndarray]
    masks: list[np.ndarray]
    rgb: list[bool]
    names: list[str]
    class_names: list[str] | None
    class_colors: list[tuple[int, int, int]] | None

    def load(self) -> SegmentationData:
        """Read the folder, build the layer samples, merge: slow work, meant for a worker thread."""
        config = self.config
        parts = []
        if self.folder is not None:
            parts.append(
                load_dataset(
                    self.folder,
                    class_count=config.model.class_count,
                    ignore_index=config.data.ignore_index,
                    in_channels=config.model.in_channels,
                    ignore_background=config.loss.ignore_background,
                )
            )
        if self.images:
            parts.append(
                samples_from_arrays(
                    self.images,
                    self.masks,
                    class_count=config.model.class_count,
                    rgb=self.rgb,
                    names=self.names,
                    in_channels=parts[0].in_channels if parts else config.model.in_channels,
                    stats={"default": parts[0].stats["default"]} if parts else None,
                    skip_unlabeled=True,
                )
            )
        data = merge_datasets(parts)
        if data.class_names is None:
            data.class_names, data.class_colors = self.class_names, self.class_colors
        return data


class Session:
    config_changed = Signal(object)  # SchismConfig: any change (form edits included)
    config_replaced = Signal(object)  # SchismConfig: a whole new config (INI loaded): forms refill
    class_count_requested = Signal(int)  # a scanned dataset says how many classes it has
    data_changed = Signal()
    model_changed = Signal(object)  # TrainedModel | None
    busy_changed = Signal(bool)

    def __init__(self) -> None:
        self.config: SchismConfig = interactive_config()
        self.folder: Path | None = None  # a SCHISM/BiaPy dataset folder used for training
        self.pairs: list[LayerPair] = []
        self.model: TrainedModel | None = None
        self.class_names: list[str] | None = None
        self.class_colors: list[tuple[int, int, int]] | None = None
        self.busy = False

    # ---- configuration ---------------------------------------------------------------------

    def set_config(self, config: SchismConfig) -> None:
        """The Training form's current values (it owns the configuration the user edits)."""
        self.config = config
        self.config_changed.emit(config)

    def replace_config(self, config: SchismConfig) -> None:
        """A configuration from elsewhere (an INI file): the form takes all of it."""
        self.set_config(config)
        self.config_replaced.emit(config)

    def set_class_count(self, count: int) -> None:
        """Change only num_classes, keeping every other value (and unsaved form edits)."""
        if count != self.config.model.class_count:
            config = self.config.copy()
            config.model.num_classes = count
            self.set_config(config.validate())
            self.class_count_requested.emit(count)

    # ---- training data ---------------------------------------------------------------------

    def use_folder(self, folder: Path | None, class_names: list[str] | None = None, colors: Any = None) -> None:
        self.folder = folder
        if class_names:
            self.class_names, self.class_colors = class_names, colors
        self.data_changed.emit()

    def add_pair(self, image: Any, labels: Any) -> None:
        if image.data.shape[: labels.data.ndim] != labels.data.shape and not (
            image.rgb and image.data.shape[:-1] == labels.data.shape
        ):
            raise DataError(
                f"labels {labels.name!r} {labels.data.shape} do not match image {image.name!r} {image.data.shape}"
            )
        if any(p.image is image and p.labels is labels for p in self.pairs):
            return
        names = labels.metadata.get("schism_classes")
        if names and len(names) == self.config.model.class_count and not self.class_names:
            colors = labels.metadata.get("schism_colors")
            self.class_names, self.class_colors = list(names), [tuple(c) for c in colors] if colors else None
        self.pairs.append(LayerPair(image, labels))
        self.data_changed.emit()

    def remove_pair(self, index: int) -> None:
        del self.pairs[index]
        self.data_changed.emit()

    def forget_layer(self, layer: Any) -> None:
        """Drop pairs whose layers were deleted from the viewer."""
        kept = [p for p in self.pairs if p.image is not layer and p.labels is not layer]
        if len(kept) != len(self.pairs):
            self.pairs = kept
            self.data_changed.emit()

    def describe_data(self) -> str:
        parts = []
        if self.folder is not None:
            parts.append(f"folder {self.folder}")
        parts.extend(f"layers {p.name}" for p in self.pairs)
        return "; ".join(parts) if parts else "none: choose a folder or add image + labels layers in Dataset"

    def snapshot(self) -> TrainingSources:
        """The training sources as they are now, taken in the GUI thread at Train time: painted
        labels are copied (painting during training changes nothing) and checked against the
        classes. Reading the folder and computing statistics wait for :meth:`TrainingSources.load`,
        which the worker runs, so a large dataset never freezes the viewer."""
        if self.folder is None and not self.pairs:
            raise DataError("no training data: choose a dataset folder or add image + labels layers (Dataset tab)")
        count = self.config.model.class_count
        masks = []
        for pair in self.pairs:
            try:
                masks.append(labels_to_mask(np.asarray(pair.labels.data), count))
            except DataError as error:
                raise DataError(f"labels layer {pair.labels.name!r}: {error}") from None
        return TrainingSources(
            self.config.copy(),
            self.folder,
            [np.asarray(p.image.data) for p in self.pairs],
            masks,
            [bool(p.image.rgb) for p in self.pairs],
            _unique_names([p.image.name for p in self.pairs]),
            self.class_names,
            self.class_colors,
        )

    def training_data(self) -> SegmentationData:
        """Snapshot and load in one go (for scripts; the widget loads in its worker)."""
        return self.snapshot().load()

    # ---- model -----------------------------------------------------------------------------

    def set_model(self, model: TrainedModel | None) -> None:
        self.model = model
        if model is not None:
            self.class_names = model.class_names
            self.class_colors = model.class_colors or self.class_colors
        self.model_changed.emit(model)

    def legend_html(self) -> str:
        """'label = class' with colour swatches, for the widgets (label k + 1 is class k)."""
        colors = (
            self.class_colors if self.class_colors and len(self.class_colors) == self.config.model.class_count else None
        )
        items = []
        for k, name in enumerate(self.names()):
            swatch = ""
            if colors:
                r, g, b = colors[k]
                swatch = f'<span style="color: rgb({r},{g},{b})">&#9632;</span> '
            items.append(f"{swatch}{k + 1} = {name}")
        return "label " + ", ".join(items) + " (0 = not painted)"

    def names(self) -> list[str]:
        count = self.config.model.class_count
        names = self.class_names if self.class_names and len(self.class_names) == count else None
        return names or default_class_names(count)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.busy_changed.emit(busy)


_sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def unwrap_viewer(viewer: Any) -> Any:
    """napari hands each plugin widget its own proxy of the viewer, and layers obtained through a
    proxy are proxies too, so the same layer would compare unequal by identity across widgets.
    The widgets use only public API; they keep the viewer itself so layers are what napari holds."""
    return getattr(viewer, "__wrapped__", viewer)


def layer_choices(viewer: Any, kind: type) -> Any:
    """A magicgui ``choices`` callable: the viewer's layers of one kind."""
    return lambda _widget=None: [layer for layer in viewer.layers if isinstance(layer, kind)]


def follow_layers(viewer: Any, widget: Any) -> None:
    """Refresh a widget's layer choices when layers are added or removed."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(lambda _event: widget.reset_choices())


def session_for(viewer: Any) -> Session:
    """The session of a viewer, created on first use, so widgets docked separately share it."""
    viewer = unwrap_viewer(viewer)
    if viewer not in _sessions:
        session = Session()
        _sessions[viewer] = session
        viewer.layers.events.removed.connect(lambda event: session.forget_layer(event.value))
    return _sessions[viewer]


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique
