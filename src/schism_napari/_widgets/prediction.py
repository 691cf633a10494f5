"""Prediction widget: tiled prediction of an image layer into probability and label layers.

Results keep the input's scale and translation. Label k + 1 is class k, so a prediction
corrected with the brush is training data as it is: "Add to training set" pairs it with its
image in this session, "Save to dataset" writes both as a new SCHISM dataset folder.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from .. import events
from ..config import InferenceConfig
from ..data import labels_to_mask, mask_to_labels
from ..data.export import write_training_pair
from ..errors import Cancelled, SchismError
from ..events import StopToken
from ..inference import PredictionResult, Predictor
from ..runs import BEST_LOSS, TrainedModel, available_weights, load_trained_model
from .relay import EventRelay, describe
from .session import Session, follow_layers, layer_choices, session_for, unwrap_viewer

ONE_LAYER, PER_CLASS = "one layer (class axis)", "one layer per class"


@dataclass
class Outputs:
    """The layers holding one image's prediction: updated in place when it is predicted again."""

    labels: Labels | None = None
    probabilities: list[Image] = field(default_factory=list)

    def drop_removed(self, layers: Any) -> None:
        if self.labels is not None and self.labels not in layers:
            self.labels = None
        self.probabilities = [p for p in self.probabilities if p in layers]

    def probabilities_array(self, spatial_shape: tuple[int, ...]) -> np.ndarray | None:
        """The current probabilities as (Z, C, Y, X), whichever layout the layers have."""
        layers = self.probabilities
        if len(layers) == 1 and layers[0].data.shape[1:] == spatial_shape:
            return np.moveaxis(np.asarray(layers[0].data), 0, -3)
        if layers and all(p.data.shape == spatial_shape for p in layers):
            return np.stack([np.asarray(p.data) for p in layers], axis=-3)
        return None


if TYPE_CHECKING:
    import napari


class PredictionWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer, session: Session | None = None):
        super().__init__(labels=True)
        self.viewer = viewer = unwrap_viewer(viewer)
        self.session = session or session_for(viewer)
        self.model_label = Label(value="", label="model")
        self.run_folder = FileEdit(mode="d", label="run folder", value="")
        self.metric = ComboBox(choices=[BEST_LOSS], value=BEST_LOSS, label="weights")
        self.load_button = PushButton(text="Load run folder")
        self.image = ComboBox(choices=layer_choices(viewer, Image), label="image")
        self.tile_size = SpinBox(min=16, max=4096, value=256, label="tile size")
        self.overlap = FloatSpinBox(min=0.0, max=0.9, step=0.05, value=0.25, label="overlap")
        self.batch_size = SpinBox(min=1, max=512, value=4, label="batch size")
        self.tta = CheckBox(text="test-time augmentation (flips)", value=False)
        self.layout_choice = ComboBox(choices=[ONE_LAYER, PER_CLASS], value=ONE_LAYER, label="probabilities")
        self.current_slice = CheckBox(text="current slice only (preview)", value=False)
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.threshold = FloatSlider(min=0.01, max=0.99, step=0.01, value=0.5, label="threshold", visible=False)
        self.add_button = PushButton(text="Add to training set")
        self.datasets_folder = FileEdit(mode="d", label="datasets folder", value="")
        self.save_button = PushButton(text="Save to dataset")
        self.status = Label(value="", label="")
        self.extend(
            [
                self.model_label,
                self.run_folder,
                self.metric,
                self.load_button,
                self.image,
                self.tile_size,
                self.overlap,
                self.batch_size,
                self.tta,
                self.layout_choice,
                self.current_slice,
                Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.threshold,
                self.add_button,
                self.datasets_folder,
                self.save_button,
                self.status,
            ]
        )
        self.worker: Any = None
        self.stop_token: StopToken | None = None
        self.relay = EventRelay()
        self.relay.event.connect(self._on_event)
        self.outputs: weakref.WeakKeyDictionary[Image, Outputs] = weakref.WeakKeyDictionary()
        self.source_layer: Image | None = None  # the image of the latest prediction
        self.labels_layer: Labels | None = None  # its Labels layer (the one to correct)
        self._foreground: np.ndarray | None = None  # binary models: P(class 1), for the threshold slider
        self._pending: tuple[Any, ...] | None = None

        self.run_folder.changed.connect(self._list_weights)
        self.load_button.changed.connect(self.load_run)
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._apply_threshold)
        self.add_button.changed.connect(self.add_to_training_set)
        self.save_button.changed.connect(lambda: self.save_to_dataset())
        self.session.model_changed.connect(self._on_model)
        self.session.busy_changed.connect(lambda busy: self._update_enabled())
        follow_layers(viewer, self)
        self._on_model(self.session.model)

    # ---- model -------------------------------------------------------------------------------

    def _list_weights(self) -> None:
        folder = Path(self.run_folder.value)
        names = list(available_weights(folder)) if folder.is_dir() else []
        self.metric.choices = names or [BEST_LOSS]
        self.metric.value = BEST_LOSS if BEST_LOSS in names or not names else names[0]

    def load_run(self) -> None:
        try:
            model = load_trained_model(Path(self.run_folder.value), str(self.metric.value))
        except SchismError as error:
            show_error(str(error))
            return
        self.session.set_model(model)
        show_info(f"loaded {model.source}")

    def _on_model(self, model: TrainedModel | None) -> None:
        if model is None:
            self.model_label.value = "none yet: train one or load a run folder"
        else:
            self.model_label.value = _short(model.source)
            self.model_label.tooltip = model.source
            settings = model.config.inference
            self.tile_size.value = model.config.tile_size
            self.overlap.value = 0.25 if settings.overlap is None else settings.overlap
            self.batch_size.value = settings.batch_size
            self.tta.value = settings.tta
            self.threshold.value = settings.threshold
            self.threshold.visible = model.class_count == 2
        self._update_enabled()

    def _update_enabled(self) -> None:
        ready = self.session.model is not None and self.worker is None
        self.predict_button.enabled = ready and not self.session.busy
        self.cancel_button.enabled = self.worker is not None

    # ---- prediction --------------------------------------------------------------------------

    def predict(self) -> None:
        model, layer = self.session.model, self.image.value
        if self.worker is not None:
            return
        if model is None:
            show_error("no model: train one or load a run folder first")
            return
        if layer is None:
            show_error("no image layer to predict")
            return
        settings = InferenceConfig(
            tile_size=self.tile_size.value,
            overlap=self.overlap.value,
            batch_size=self.batch_size.value,
            blending=model.config.inference.blending,
            tta=self.tta.value,
            threshold=self.threshold.value,
        )
        self.stop_token = StopToken()
        predictor = Predictor.from_trained(
            model,
            settings=settings,
            device=model.config.training.device,
            callback=self.relay.emit,
            stop=self.stop_token,
        )
        data = layer.data
        spatial_ndim = data.ndim - (1 if layer.rgb else 0)
        z = None
        if self.current_slice.value and spatial_ndim == 3:
            z = int(self.viewer.dims.current_step[self.viewer.dims.ndim - 3])
            z = min(max(z, 0), data.shape[0] - 1)
            data = data[z]
        self._pending = (layer, model, z)
        self.progress.value = 0
        self.status.value = "predicting…"
        self.worker = create_worker(
            predictor.predict, data, rgb=bool(layer.rgb), _start_thread=False, _ignore_errors=True
        )
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self._update_enabled()
        self.worker.start()

    def cancel(self) -> None:
        if self.stop_token is not None:
            self.stop_token.request()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, events.PredictionProgress):
            self.progress.max = max(1, event.total)
            self.progress.value = event.done
            self.status.value = f"{event.done}/{event.total} tiles · slice {event.slices_done}/{event.slices}"

    def _on_errored(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            self.status.value = "cancelled"
            return
        message = describe(error)
        self.status.value = "prediction failed"
        show_error(f"prediction failed: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self._update_enabled()
        self.relay.finished.emit()

    def _on_returned(self, result: PredictionResult) -> None:
        if self._pending is None:  # a result without a pending request: nothing to show it on
            return
        layer, model, z = self._pending
        self._show_result(layer, model, result, z)
        self.status.value = "done" if z is None else f"slice {z} predicted"

    # ---- result layers -----------------------------------------------------------------------

    def _show_result(self, layer: Image, model: TrainedModel, result: PredictionResult, z: int | None) -> None:
        """Put the result in the source image's own output layers (created on its first prediction)."""
        outputs = self.outputs.setdefault(layer, Outputs())
        outputs.drop_removed(self.viewer.layers)
        spatial_shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
        probabilities = np.asarray(result.probabilities)  # (C, Y, X) or (Z, C, Y, X)
        labels = mask_to_labels(np.asarray(result.labels))
        if z is not None:  # preview of one slice: place it in full-size layers
            full_labels = np.zeros(spatial_shape, dtype=np.uint8)
            if outputs.labels is not None and outputs.labels.data.shape == spatial_shape:
                full_labels[:] = outputs.labels.data
            full_labels[z] = labels
            labels = full_labels
            full = np.zeros((spatial_shape[0], *probabilities.shape), dtype=np.float32)
            previous = outputs.probabilities_array(spatial_shape)
            if previous is not None:
                full[:] = previous
            full[z] = probabilities
            probabilities = full
        by_class = np.moveaxis(probabilities, -3, 0)  # (C, [Z,] Y, X)
        self._update_labels_layer(layer, outputs, model, labels)
        self._update_probability_layers(layer, outputs, model, by_class)
        self.source_layer, self.labels_layer = layer, outputs.labels
        self._foreground = by_class[1] if model.class_count == 2 else None

    def _update_labels_layer(self, layer: Image, outputs: Outputs, model: TrainedModel, labels: np.ndarray) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        if outputs.labels is not None:
            outputs.labels.data = labels
        else:
            outputs.labels = self.viewer.add_labels(
                labels,
                name=f"{layer.name} prediction",
                scale=layer.scale[-labels.ndim :],
                translate=layer.translate[-labels.ndim :],
            )
        outputs.labels.metadata["schism_classes"] = model.class_names
        if model.class_colors:
            colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
            colors.update({k + 1: [c / 255 for c in color] + [1.0] for k, color in enumerate(model.class_colors)})
            outputs.labels.colormap = DirectLabelColormap(color_dict=colors)
            outputs.labels.metadata["schism_colors"] = [list(c) for c in model.class_colors]

    def _update_probability_layers(
        self, layer: Image, outputs: Outputs, model: TrainedModel, by_class: np.ndarray
    ) -> None:
        existing = outputs.probabilities
        per_class = self.layout_choice.value == PER_CLASS
        if per_class and len(existing) == len(by_class) and existing[0].data.shape == by_class.shape[1:]:
            for probability_layer, data in zip(existing, by_class, strict=True):
                probability_layer.data = data
            return
        if not per_class and len(existing) == 1 and existing[0].data.shape == by_class.shape:
            existing[0].data = by_class
            return
        for old in existing:
            self.viewer.layers.remove(old)
        scale, translate = layer.scale[-(by_class.ndim - 1) :], layer.translate[-(by_class.ndim - 1) :]
        style = {"colormap": "magma", "contrast_limits": (0, 1)}
        if per_class:
            outputs.probabilities = [
                self.viewer.add_image(
                    data,
                    name=f"{layer.name} P({name})",
                    scale=scale,
                    translate=translate,
                    blending="additive",
                    visible=k > 0,
                    **style,
                )
                for k, (data, name) in enumerate(zip(by_class, model.class_names, strict=True))
            ]
        else:
            outputs.probabilities = [
                self.viewer.add_image(
                    by_class,
                    name=f"{layer.name} probabilities",
                    scale=(1.0, *scale),
                    translate=(0.0, *translate),
                    metadata={"schism_classes": model.class_names},
                    **style,
                )
            ]
        # keep the labels above the probabilities
        self.viewer.layers.move(self.viewer.layers.index(outputs.labels), len(self.viewer.layers))

    def _apply_threshold(self) -> None:
        if self._foreground is None or self.labels_layer is None or self.labels_layer not in self.viewer.layers:
            return
        self.labels_layer.data = ((self._foreground > self.threshold.value).astype(np.uint8) + 1).astype(np.uint8)

    # ---- correct and retrain -----------------------------------------------------------------

    def add_to_training_set(self) -> None:
        if self.labels_layer is None or self.source_layer is None or self.labels_layer not in self.viewer.layers:
            show_error("no prediction to add: predict an image first, then correct it with the brush")
            return
        try:
            self.session.add_pair(self.source_layer, self.labels_layer)
        except SchismError as error:
            show_error(str(error))
            return
        show_info(f"{self.labels_layer.name} joins the training set; train again (fine-tune) to use it")

    def save_to_dataset(self, folder: str | Path | None = None) -> Path | None:
        folder = Path(folder or self.datasets_folder.value)
        if self.labels_layer is None or self.source_layer is None:
            show_error("no prediction to save: predict an image first")
            return None
        if not str(folder) or str(folder) == ".":
            show_error("choose a datasets folder to save into")
            return None
        try:
            model = self.session.model
            count = model.class_count if model is not None else self.session.config.model.class_count
            mask = labels_to_mask(np.asarray(self.labels_layer.data), count)
            written = write_training_pair(
                folder,
                self.source_layer.name,
                np.asarray(self.source_layer.data),
                mask,
                rgb=bool(self.source_layer.rgb),
                class_names=self.session.names(),
                class_colors=self.session.class_colors,
            )
        except (SchismError, OSError) as error:
            show_error(f"could not save: {error}")
            return None
        show_info(f"saved as dataset {written}")
        return written


def _short(source: str, limit: int = 48) -> str:
    """Model labels name the run folder and checkpoint; the full path is in the tooltip."""
    return source if len(source) <= limit else "…" + source[-(limit - 1) :]
