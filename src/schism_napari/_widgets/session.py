"""State shared by the Dataset, Training and Prediction widgets of one viewer.

The widgets never talk to each other directly: they read and change the session, which
announces changes through psygnal signals. The session also owns the viewer's background jobs
(:mod:`.jobs`), so they outlive any dock: closing the dock mid-training leaves the run to the
session, a reopened dock reattaches to it, and closing the viewer stops it.

Nothing here imports torch on the GUI thread: the dock opens in half a second, and a worker
imports torch and smp just after (:meth:`Session.warm_up`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..config import SchismConfig
from ..data import labels_to_mask, load_dataset, samples_from_arrays
from ..data.classes import default_class_names, default_colors
from ..data.dataset import SegmentationData, merge_datasets
from ..data.labels import Corrections
from ..errors import DataError
from ..training.planning import interactive_config, plan_config
from ..workflows.train import TrainRequest, dataset_options
from .jobs import Job

if TYPE_CHECKING:
    import torch

    from ..runs import TrainedModel


@dataclass
class LayerPair:
    """An image layer and the Labels layer that annotates it (scribbles or a corrected prediction)."""

    image: Any  # napari.layers.Image
    labels: Any  # napari.layers.Labels
    corrections: Corrections | None = None  # a corrected prediction: only edits and reviewed slices count

    def mask(self, class_count: int) -> np.ndarray:
        """The training mask: painted pixels, or for a corrected prediction, edits + reviewed slices."""
        edited = np.asarray(self.labels.data)
        if self.corrections is None:
            return labels_to_mask(edited, class_count)
        return self.corrections.mask(edited, class_count)

    @property
    def name(self) -> str:
        return f"{self.image.name} + {self.labels.name}"


@dataclass
class ResultLayers:
    """One image's family of result layers, and the user's corrections of its prediction.

    It belongs to the session, not to a widget: a dock closed and reopened finds the same layers
    (updated in place by the next prediction, never duplicated) and the same corrections. Every
    layer of the family follows the session's class names and colours.
    """

    preview: Any = None  # Labels: the forest's (then the network's) labels of one slice, made at Train
    labels: Any = None  # Labels: the prediction, which the user corrects
    probabilities: list[Any] = field(default_factory=list)  # Image: one with a class axis, or one per class
    uncertainty: Any = None  # Image
    corrections: Corrections | None = None  # the model's labels, the user's edits, reviewed slices

    def drop_removed(self, layers: Any) -> None:
        """Forget layers the user deleted (a deleted prediction takes its corrections with it)."""
        if self.labels is not None and self.labels not in layers:
            self.labels = None
            self.corrections = None
        if self.preview is not None and self.preview not in layers:
            self.preview = None
        if self.uncertainty is not None and self.uncertainty not in layers:
            self.uncertainty = None
        self.probabilities = [p for p in self.probabilities if p in layers]

    def probabilities_array(self, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
        """The current probabilities as (Z, C, Y, X), whichever layout the layers have."""
        layers = self.probabilities
        if len(layers) == 1 and layers[0].data.shape[1:] == spatial_shape:
            return np.moveaxis(np.asarray(layers[0].data), 0, -3)
        if layers and all(p.data.shape == spatial_shape for p in layers):
            return np.stack([np.asarray(p.data) for p in layers], axis=-3)
        return None


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
            parts.append(load_dataset(self.folder, **dataset_options(config)))
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
        count = data.class_count
        # names and colours the user set in the dock win over the folder's (they travel into the run)
        if self.class_names and len(self.class_names) == count:
            data.class_names = list(self.class_names)
        if self.class_colors and len(self.class_colors) == count:
            data.class_colors = [_rgb(c) for c in self.class_colors]
        return data

    def train_request(self, run_dir: Path, initial_weights: dict[str, torch.Tensor] | None = None) -> TrainRequest:
        """The dock's training request: these sources, read in the worker, into a new ``run_dir``."""
        return TrainRequest(self.config, self, run_dir, interactive=True, initial_weights=initial_weights)


class Session:
    """What the widgets of one viewer share: the configuration, the training sources, the model, the
    class names and colours, and the background jobs (training, prediction, scan).

    Widgets are views of it and may be closed and recreated at any time; anything that must survive
    them (a running training, its progress and curves) lives here.
    """

    config_changed = Signal(object)  # SchismConfig: any change (form edits included)
    config_replaced = Signal(object)  # SchismConfig: a whole new config (INI loaded): forms refill
    class_count_requested = Signal(int)  # a scanned dataset says how many classes it has
    data_changed = Signal()
    model_changed = Signal(object)  # TrainedModel | None
    busy_changed = Signal(bool)  # the training job started or ended
    classes_changed = Signal()  # class names or colours edited
    labels_edited = Signal()  # a training Labels layer was painted

    def __init__(self) -> None:
        # the plan for a CPU, built without torch; :meth:`warm_up` re-plans for an accelerator
        self.config: SchismConfig = interactive_config("cpu", check=False)
        self.plan_reasons: tuple[SchismConfig | None, dict[str, str]] = (None, {})
        self.folder: Path | None = None  # a SCHISM/BiaPy dataset folder used for training
        self.pairs: list[LayerPair] = []
        self.model: TrainedModel | None = None
        self.class_names: list[str] | None = None
        self.class_colors: list[tuple[int, int, int]] | None = None
        self.dataset_class_count: int | None = None  # a scanned dataset's classes (num_classes follows the data)
        self.jobs = {kind: Job(kind) for kind in ("training", "prediction", "scan", "export", "warm-up")}
        self.jobs["training"].state_changed.connect(lambda state: self.busy_changed.emit(state.busy))
        # image layer -> its result layers: weak, so a deleted image takes its family along
        self.results: weakref.WeakKeyDictionary[Any, ResultLayers] = weakref.WeakKeyDictionary()
        self.latest_image: weakref.ReferenceType[Any] | None = None  # the image predicted last
        # what the user set in the widgets (runs folder, folders, choices): a reopened dock shows it again
        self.settings: dict[str, Any] = {}
        self.classes_changed.connect(self.recolor)

    def warm_up(self) -> None:
        """Import torch and smp and find the device in a worker, so the dock opens at once.

        Importing them takes 3-7 s; on the GUI thread that froze napari when Plugins -> SCHISM
        opened. Until the worker returns, the form shows the plan for a CPU, which needs no torch
        (and which is what a CPU machine keeps). On a machine with an accelerator the keys the user
        has not edited are then planned again for it.
        """
        self.jobs["warm-up"].start(_import_the_core, on_returned=self._plan_for_device, on_errored=_warm_up_failed)

    def _plan_for_device(self, device: str) -> None:
        chosen = self.config.training.device
        device = device if chosen == "auto" else chosen.split(":")[0]
        if device == "cpu":
            return  # the starting values were planned for it
        plan = plan_config(self.config, device=device, interactive=True)
        self.replace_config(plan.config, plan.reasons)

    def job(self, kind: str) -> Job:
        return self.jobs[kind]

    @property
    def busy(self) -> bool:
        """Training runs (or is stopping): a second one must not start, Predict waits."""
        return self.jobs["training"].busy

    def shutdown(self, timeout: float = 30.0) -> None:
        """The viewer closes: ask every running job to stop and wait for its worker."""
        for job in self.jobs.values():
            job.stop()
        for job in self.jobs.values():
            job.wait(timeout)

    # ---- configuration ---------------------------------------------------------------------

    def set_config(self, config: SchismConfig) -> None:
        """The Training form's current values (it owns the configuration the user edits)."""
        self.config = config
        self.config_changed.emit(config)

    def replace_config(self, config: SchismConfig, reasons: dict[str, str] | None = None) -> None:
        """A configuration from elsewhere (an INI file, a plan): the form takes all of it; a plan's
        ``reasons`` ("Section.key" -> why) become the planned fields' tooltips."""
        self.plan_reasons = (config, dict(reasons or {}))
        self.set_config(config)
        self.config_replaced.emit(config)
        self.follow_classes()

    def reasons_for(self, config: SchismConfig) -> dict[str, str] | None:
        """Why the keys of ``config`` were planned, when it is the latest plan the session took."""
        planned, reasons = self.plan_reasons
        return reasons if planned is config else None

    def set_class_count(self, count: int) -> None:
        """Change only num_classes, keeping every other value (and unsaved form edits)."""
        self.dataset_class_count = count
        if count != self.config.model.class_count:
            config = self.config.copy()
            config.model.num_classes = count
            config.given.discard("Model.num_classes")  # the dataset's, not typed: it follows the data
            self.set_config(config.validate())
            self.class_count_requested.emit(count)
        self.follow_classes()

    def follow_classes(self, also: Any = None) -> None:
        """Unless the user typed num_classes (or an INI set it), make it what the data shows: the
        highest label painted in the paired Labels layers (and ``also``), or the scanned dataset's
        classes if more, at least 2. Two painted classes then train a two-class model, and the
        legend, the label counts and the class names count two."""
        if self.config.is_given("Model", "num_classes"):
            return
        layers = [pair.labels for pair in self.pairs] + ([also] if also is not None else [])
        painted = max((int(np.max(layer.data)) for layer in layers if np.size(layer.data)), default=0)
        count = max(2, painted, self.dataset_class_count or 0)
        if count != self.config.model.class_count and count <= MAX_CLASSES:
            config = self.config.copy()
            config.model.num_classes = count
            self.set_config(config)
            self.class_count_requested.emit(count)

    # ---- training data ---------------------------------------------------------------------

    def use_folder(self, folder: Path | None, class_names: list[str] | None = None, colors: Any = None) -> None:
        self.folder = folder
        if class_names:
            self.class_names, self.class_colors = class_names, colors
        self.data_changed.emit()

    def add_pair(self, image: Any, labels: Any, corrections: Corrections | None = None) -> None:
        """Pair an image with its labels; with ``corrections`` the labels are a corrected prediction
        and only the user's edits (and slices marked reviewed) will count."""
        if image.data.shape[: labels.data.ndim] != labels.data.shape and not (
            image.rgb and image.data.shape[:-1] == labels.data.shape
        ):
            raise DataError(
                f"labels {labels.name!r} {labels.data.shape} do not match image {image.name!r} {image.data.shape}"
            )
        existing = next((p for p in self.pairs if p.image is image and p.labels is labels), None)
        if existing is not None:
            if corrections is not None:
                existing.corrections = corrections
            return
        self.follow_classes(also=labels)
        names = labels.metadata.get("schism_classes")
        if names and len(names) == self.config.model.class_count and not self.class_names:
            colors = labels.metadata.get("schism_colors")
            self.class_names, self.class_colors = list(names), [tuple(c) for c in colors] if colors else None
        self.pairs.append(LayerPair(image, labels, corrections))
        if not any(p.labels is labels for p in self.pairs[:-1]):
            labels.events.paint.connect(self._labels_painted)
        self.data_changed.emit()

    def _labels_painted(self, _event: Any = None) -> None:
        self.follow_classes()
        self.labels_edited.emit()

    def pair_of(self, labels: Any) -> LayerPair | None:
        return next((p for p in self.pairs if p.labels is labels), None)

    def remove_pair(self, index: int) -> None:
        del self.pairs[index]
        self.follow_classes()
        self.data_changed.emit()

    def forget_layer(self, layer: Any) -> None:
        """Drop pairs whose layers were deleted from the viewer."""
        kept = [p for p in self.pairs if p.image is not layer and p.labels is not layer]
        if len(kept) != len(self.pairs):
            self.pairs = kept
            self.follow_classes()
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
        self.follow_classes()  # labels set from code (no paint event) count too
        count = self.config.model.class_count
        masks = []
        for pair in self.pairs:
            try:
                masks.append(pair.mask(count))
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
        if model is not None:
            self.classes_changed.emit()  # the model's names and colours: every class layer follows

    def setting(self, key: str, default: Any) -> Any:
        """A widget value the user set earlier in this viewer (see :meth:`keep_setting`)."""
        return self.settings.get(key, default)

    def keep_setting(self, key: str, widget: Any) -> None:
        """Show ``widget`` with the value kept under ``key``, and keep every later change, so a
        closed and reopened dock shows what the user chose."""
        if key in self.settings:
            widget.value = self.settings[key]
        widget.changed.connect(lambda value: self.settings.__setitem__(key, value))

    def legend_html(self) -> str:
        """'label = class' with colour swatches, for the widgets (label k + 1 is class k)."""
        items = []
        for k, (name, (r, g, b)) in enumerate(zip(self.names(), self.colors(), strict=True)):
            swatch = f'<span style="color: rgb({r},{g},{b})">&#9632;</span> '
            items.append(f"{swatch}{k + 1} = {name}")
        return "label " + ", ".join(items) + " (0 = not painted)"

    def colors(self, count: int | None = None) -> list[tuple[int, int, int]]:
        """One colour per class (of ``count``, by default the configured number): the dataset's or
        the user's, else a fixed palette."""
        count = self.config.model.class_count if count is None else count
        if self.class_colors and len(self.class_colors) == count:
            return [_rgb(c) for c in self.class_colors]
        return default_colors(count)

    def set_classes(self, names: list[str], colors: list[tuple[int, int, int]] | None = None) -> None:
        """The user named the classes (and picked colours) in the dock: they go into the next run."""
        count = self.config.model.class_count
        if len(names) != count or any(not n.strip() for n in names):
            raise DataError(f"class names: {len(names)} given for {count} classes ({', '.join(names)})")
        if colors is not None and len(colors) != count:
            raise DataError(f"class colours: {len(colors)} given for {count} classes")
        self.class_names = [n.strip() for n in names]
        if colors is not None:
            self.class_colors = [_rgb(c) for c in colors]
        self.classes_changed.emit()

    def paint_colors(self, layer: Any, count: int | None = None) -> None:
        """Give a Labels layer the session's class colours and names, so the legend tells the truth.
        The colormap is replaced only when it shows other colours: a new colormap redraws the layer."""
        metadata = self.class_metadata(count)
        if not _shows_colors(layer.colormap, metadata["schism_colors"]):
            layer.colormap = class_colormap(metadata["schism_colors"])
        layer.metadata.update(metadata)

    def class_metadata(self, count: int | None = None) -> dict[str, Any]:
        """The class names and colours a Labels layer carries in its metadata."""
        return {"schism_classes": self.names(count), "schism_colors": [list(c) for c in self.colors(count)]}

    def recolor(self) -> None:
        """Class names or colours changed: every layer that shows classes follows, the paired
        scribbles and each image's whole result family (preview, prediction, probabilities)."""
        for pair in self.pairs:
            self.paint_colors(pair.labels)
        count = self.model.class_count if self.model is not None else None
        for image, family in list(self.results.items()):
            for layer in (family.preview, family.labels):
                if layer is not None:
                    self.paint_colors(layer, count)
            if len(family.probabilities) == 1:
                layer = family.probabilities[0]
                layer.metadata["schism_classes"] = self.names(layer.data.shape[0])
            elif family.probabilities:
                names = self.names(len(family.probabilities))
                for layer, name in zip(family.probabilities, names, strict=True):
                    layer.name = probability_layer_name(image.name, name)

    def results_for(self, image: Any, layers: Any) -> ResultLayers:
        """The result family of an image layer (created empty on first use), without the layers the
        user has deleted from ``layers`` (the viewer's)."""
        family = self.results.setdefault(image, ResultLayers())
        family.drop_removed(layers)
        return family

    def latest(self, layers: Any) -> tuple[Any, ResultLayers] | None:
        """The image predicted last and its family, while both and its labels are in the viewer."""
        image = self.latest_image() if self.latest_image is not None else None
        if image is None or image not in layers:
            return None
        family = self.results_for(image, layers)
        return (image, family) if family.labels is not None and family.corrections is not None else None

    def names(self, count: int | None = None) -> list[str]:
        count = self.config.model.class_count if count is None else count
        names = self.class_names if self.class_names and len(self.class_names) == count else None
        return names or default_class_names(count)


MAX_CLASSES = 255  # [Model] num_classes' range: a larger label is reported at Train, not followed
WARM_UP_DELAY_MS = 500  # after the dock is shown: an import in a worker slows widget creation 2x

_sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def class_colormap(colors: Any) -> Any:
    """A Labels colormap painting label k + 1 in class k's colour (RGB 0-255), 0 transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[Any, Any] = {None: "transparent", 0: "transparent"}
    color_dict.update({k + 1: [int(c) / 255 for c in color[:3]] + [1.0] for k, color in enumerate(colors)})
    return DirectLabelColormap(color_dict=color_dict)


def probability_layer_name(image_name: str, class_name: str) -> str:
    """The name of one class's probability layer ("one layer per class")."""
    return f"{image_name} P({class_name})"


def _shows_colors(colormap: Any, colors: list[list[int]]) -> bool:
    """Whether a Labels colormap already paints label k + 1 in ``colors[k]`` (RGB 0-255)."""
    try:
        shown = np.asarray(colormap.map(np.arange(1, len(colors) + 1)))[:, :3]
    except (AttributeError, TypeError, ValueError):
        return False
    return shown.shape == (len(colors), 3) and np.allclose(shown * 255, np.asarray(colors, float), atol=1.0)


def unwrap_viewer(viewer: Any) -> Any:
    """napari hands each plugin widget its own proxy of the viewer, and layers obtained through a
    proxy are proxies too, so the same layer would compare unequal by identity across widgets.
    The widgets use only public API; they keep the viewer itself so layers are what napari holds."""
    return getattr(viewer, "__wrapped__", viewer)


def layer_choices(viewer: Any, kind: type) -> Any:
    """A magicgui ``choices`` callable: the viewer's layers of one kind."""
    return lambda _widget=None: [layer for layer in viewer.layers if isinstance(layer, kind)]


def follow_layers(viewer: Any, *combos: Any) -> None:
    """Refresh the layer choices of these combo boxes (only these: other choices, such as the
    checkpoint, must not reset) when layers are added or removed."""
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        for combo in combos:
            event.connect(lambda _event, combo=combo: combo.reset_choices())


def session_for(viewer: Any) -> Session:
    """The session of a viewer, created on first use, so widgets docked separately share it."""
    viewer = unwrap_viewer(viewer)
    if viewer not in _sessions:
        session = Session()
        _sessions[viewer] = session
        viewer.layers.events.removed.connect(lambda event: session.forget_layer(event.value))
        _stop_on_close(viewer, session)
        from qtpy.QtCore import QTimer

        # once the dock is built and shown: the import holds the GIL while widgets are created
        QTimer.singleShot(WARM_UP_DELAY_MS, session.warm_up)
    return _sessions[viewer]


def _import_the_core() -> str:
    """In a worker: import what config checks, training, the forest preview and prediction need,
    so that the first Train neither waits for them nor imports beside the GUI; return the device type."""
    import importlib

    from ..plumbing.devices import select_device

    device = select_device("auto").type
    interactive_config(device)  # validates: torch.optim, the schedulers, smp's losses
    for module in (
        "schism_napari.training.trainer",
        "schism_napari.inference",
        "schism_napari.runs",
        "skimage.feature",  # the forest preview's features
        "sklearn.ensemble",
    ):
        importlib.import_module(module)
    return device


def _warm_up_failed(error: BaseException) -> None:
    """torch or smp do not import: say so now; Train and Predict will fail with the same error."""
    from napari.utils.notifications import show_warning

    show_warning(f"SCHISM could not load torch/smp: {error}")


def _stop_on_close(viewer: Any, session: Session) -> None:
    """Closing the viewer's window stops the session's jobs cleanly (training ends after its batch)."""
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None:
        return
    from qtpy.QtCore import QEvent, QObject

    class _CloseWatcher(QObject):
        def eventFilter(self, watched: Any, event: Any) -> bool:
            if event.type() == QEvent.Type.Close and any(job.busy for job in session.jobs.values()):
                session.shutdown()
            return False

    watcher = _CloseWatcher(window)
    window.installEventFilter(watcher)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def _rgb(color: Any) -> tuple[int, int, int]:
    """A colour as three ints (lists, numpy values and tuples alike)."""
    return int(color[0]), int(color[1]), int(color[2])
