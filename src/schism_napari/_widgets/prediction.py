"""The Prediction tab: tiled prediction of an image layer into label, probability and uncertainty layers.

This module chooses the model (a run folder's weights, an ensemble of runs), the [Inference]
settings and the image, and runs the session's "prediction" job; the result layers are made by
:mod:`.result_layers`, stacks too large for memory go through :mod:`.prediction_streamed`, and
the worker's side is :mod:`.prediction_work`. The tab also holds the correction loop
(:class:`.review.ReviewWidget`) and the model's export (:class:`.model_export.ExportWidget`), so
opened alone (napari.yaml contributes it too) it offers all three.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info

from .. import events
from ..data.volume_store import should_stream
from ..errors import SchismError
from .config_form import ConfigForm
from .jobs import FollowsJob, Job, RunState, follow
from .layer_turns import Steps, run_in_turns
from .model_export import ExportWidget
from .prediction_streamed import StreamsToDisk, report_display, report_failure
from .prediction_work import BEST_LOSS, predict_in_memory
from .relay import EventRelay
from .result_layers import ONE_LAYER, PER_CLASS, show_result
from .review import ReviewWidget
from .session import Session, follow_layers, layer_choices, session_for, unwrap_viewer
from .volumes import full_resolution

PLANES_HELP = (
    "xy predicts slice by slice; xyz (volumes only: a Z, Y, X stack, not RGB images or videos) also predicts "
    "the XZ and YZ planes and averages the three, for smoother 3D labels (about 3x slower)."
)
VOXEL_RATIO_HELP = (
    "Z voxel size / XY pixel size for planes = xyz; empty: from the image layer's scale (scale[0] / scale[-1])."
)


if TYPE_CHECKING:
    import napari

    from ..runs import TrainedModel


class PredictionWidget(StreamsToDisk, FollowsJob, Container):
    """The Prediction tab: model choice, the [Inference] form, Predict/Cancel, then the review and
    export parts.

    The [Inference] settings are the same generated, validated form as the Training tab's; the
    prediction itself is the session's "prediction" job. The correction loop (``self.review``)
    and the export (``self.exporting``) are parts of their own; their controls and actions are
    also reachable here (``review_button``, ``save_to_dataset``, ``export_model``...).
    """

    def __init__(self, viewer: napari.viewer.Viewer, session: Session | None = None):
        super().__init__(labels=True)
        self.viewer = viewer = unwrap_viewer(viewer)
        self.session = session or session_for(viewer)
        self._make_controls()
        self.status = Label(value="", label="status")
        self.review = ReviewWidget(viewer, self.session, self.status)
        self.exporting = ExportWidget(self.session, self.status)
        self._lay_out()
        self.job: Job = self.session.job("prediction")
        self._foreground: Any = None  # binary models: P(class 1), for the threshold slider (lazy when streamed)
        self._threshold_token: object = None  # the streamed threshold pass running (None: none)
        self.ensemble_runs = list(self.session.setting("ensemble runs", []))
        self._show_ensemble()
        for key, widget in (
            ("prediction run folder", self.run_folder),
            ("probability layout", self.layout_choice),
            ("current slice only", self.current_slice),
        ):
            self.session.keep_setting(key, widget)
        self._connect()
        self._on_model(self.session.model)
        self._offer_planes()
        self.review.show_review()

    def _make_controls(self) -> None:
        self.model_label = Label(value="", label="model")
        self.run_folder = FileEdit(mode="d", label="run folder", value="")
        self._weight_names: list[str] = [BEST_LOSS]
        # a choices callable: napari resets every dock widget's choices when layers change, and the
        # user's checkpoint must survive that (it used to fall back to "loss" silently)
        self.metric = ComboBox(choices=self._weight_choices, value=BEST_LOSS, label="weights")
        self.load_button = PushButton(text="Load run folder")
        self.image = ComboBox(choices=layer_choices(self.viewer, Image), label="image")
        self.inference_form = ConfigForm(("Inference",))
        self.inference_form.set_config(self.session.config)
        self.tile_size = self.inference_form.widget("Inference", "tile_size")
        self.overlap = self.inference_form.widget("Inference", "overlap")
        self.batch_size = self.inference_form.widget("Inference", "batch_size")
        self.tta = self.inference_form.widget("Inference", "tta")
        self.inference_form.widget("Inference", "threshold").visible = False  # the live slider below
        self.planes = self.inference_form.widget("Inference", "planes")
        self.voxel_ratio = self.inference_form.widget("Inference", "voxel_ratio")
        self.ensemble_folder = FileEdit(mode="d", label="+ run folder", value="")
        self.ensemble_folder.tooltip = (
            "Another run folder (its best-loss weights) whose probabilities are averaged with the current model's."
        )
        self.add_run_button = PushButton(text="Add run")
        self.clear_runs_button = PushButton(text="Clear runs")
        self.ensemble_label = Label(value="one run (the current model)", label="ensemble")
        self.ensemble_runs: list[Path] = []
        self.layout_choice = ComboBox(choices=[ONE_LAYER, PER_CLASS], value=ONE_LAYER, label="probabilities")
        self.current_slice = CheckBox(text="current slice only (preview)", value=False)
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.threshold = FloatSlider(min=0.01, max=0.99, step=0.01, value=0.5, label="threshold", visible=False)

    def _lay_out(self) -> None:
        self.extend(
            [
                self.model_label,
                self.run_folder,
                self.metric,
                self.load_button,
                self.image,
                *self.inference_form.widgets.values(),  # the generated [Inference] fields, in this form
                self.ensemble_folder,
                Container(widgets=[self.add_run_button, self.clear_runs_button], layout="horizontal", labels=False),
                self.ensemble_label,
                self.layout_choice,
                self.current_slice,
                Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False),
                self.progress,
                self.threshold,
                self.review,  # review, next uncertain, add to training set, save to dataset
                self.exporting,  # format, export
                self.status,
            ]
        )
        _full_width(self.review)

    def _connect(self) -> None:
        self.run_folder.changed.connect(self._list_weights)
        self.load_button.changed.connect(self.load_run)
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._apply_threshold)
        self.add_run_button.changed.connect(lambda: self.add_run(self.ensemble_folder.value))
        self.clear_runs_button.changed.connect(self.clear_runs)
        self.image.changed.connect(self._offer_planes)
        native = self.native
        follow(native, self.session.model_changed, self._on_model)
        follow(native, self.session.busy_changed, lambda _busy: self._update_enabled())
        follow(native, self.job.state_changed, self._on_state)
        follow(native, self.job.event, self._on_event)
        follow_layers(self.viewer, self.image)  # only the layer list: the weights choice stays

    # ---- the review and export parts' controls and actions, as before the split ---------------

    @property
    def review_button(self) -> PushButton:
        return self.review.review_button

    @property
    def next_uncertain_button(self) -> PushButton:
        return self.review.next_uncertain_button

    @property
    def add_button(self) -> PushButton:
        return self.review.add_button

    @property
    def datasets_folder(self) -> FileEdit:
        return self.review.datasets_folder

    @property
    def save_button(self) -> PushButton:
        return self.review.save_button

    @property
    def source_layer(self) -> Image | None:
        """The image predicted last (in this viewer, whichever dock predicted it)."""
        return self.review.source_layer

    @property
    def labels_layer(self) -> Labels | None:
        """The Labels layer of the latest prediction: the one the user corrects."""
        return self.review.labels_layer

    def mark_reviewed(self) -> None:
        self.review.mark_reviewed()

    def next_uncertain_slice(self) -> int | None:
        return self.review.next_uncertain_slice()

    def add_to_training_set(self) -> None:
        self.review.add_to_training_set()

    def save_to_dataset(self, folder: str | Path | None = None) -> Path | None:
        return self.review.save_to_dataset(folder)

    @property
    def export_format(self) -> ComboBox:
        return self.exporting.export_format

    @property
    def export_button(self) -> PushButton:
        return self.exporting.export_button

    @property
    def export_job(self) -> Job:
        return self.exporting.job

    @property
    def export_relay(self) -> EventRelay:
        """``export_relay.finished`` fires when an export has ended (written or failed)."""
        return self.exporting.export_relay

    def export_model(self, path: str | Path, fmt: str) -> bool:
        """Export the session's model to a new file in a worker; a notification names the written path."""
        return self.exporting.export_model(path, fmt)

    # ---- model -------------------------------------------------------------------------------

    def _weight_choices(self, _widget: Any = None) -> list[str]:
        return self._weight_names

    def _list_weights(self) -> None:
        from ..runs import available_weights

        folder = Path(self.run_folder.value)
        names = list(available_weights(folder)) if folder.is_dir() else []
        self._weight_names = names or [BEST_LOSS]
        self.metric.reset_choices()
        self.metric.value = BEST_LOSS if BEST_LOSS in names or not names else names[0]

    def load_run(self) -> None:
        from ..runs import load_trained_model

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
            self.inference_form.set_config(model.config)
            self.threshold.value = model.config.inference.threshold
            self.threshold.visible = model.class_count == 2
            self._offer_planes()  # the run's planes = xyz only where the chosen image is a volume
        self._update_enabled()

    def _update_enabled(self) -> None:
        why = ""
        if self.session.model is None:
            why = "no model yet: train one (Training tab) or load a run folder"
        elif self.session.busy:
            why = "training is running: predict when it ends (or Stop it)"
        elif self.job.busy:
            why = "a prediction is running"
        self.predict_button.enabled = not why
        self.predict_button.tooltip = why or "Predict the chosen image layer with the current model."
        self.cancel_button.enabled = self.job.state is RunState.RUNNING

    def _on_state(self, state: RunState) -> None:
        if state is RunState.CANCELLED:
            self.status.value = "cancelled"
        elif state is RunState.FAILED:
            self.status.value = "prediction failed"
        self._update_enabled()

    # ---- tri-planar prediction and ensembles -------------------------------------------------

    def _offer_planes(self, *_: Any) -> None:
        """xyz only for volumes: a (Z, Y, X) stack; 2D and RGB images are predicted in their own plane."""
        layer = self.image.value
        volume = layer is not None and not layer.rgb and layer.data.ndim == 3
        if not volume:
            self.planes.value = "xy"
        self.planes.enabled = volume
        self.voxel_ratio.enabled = volume
        self.planes.tooltip = PLANES_HELP if volume else PLANES_HELP + " The chosen image is not a volume."
        self.voxel_ratio.tooltip = VOXEL_RATIO_HELP  # (set_config restores the INI's wording: reading from a file)

    def add_run(self, folder: str | Path) -> bool:
        """Average another run folder's predictions with the current model's (an ensemble)."""
        from ..runs import available_weights

        path = Path(folder)
        if not str(folder) or not path.is_dir() or not available_weights(path):
            show_error(f"{path}: not a run folder with weights (model_best_*.pth)")
            return False
        self.ensemble_runs.append(path)
        self._show_ensemble()
        return True

    def clear_runs(self) -> None:
        self.ensemble_runs = []
        self._show_ensemble()

    def _show_ensemble(self) -> None:
        self.session.settings["ensemble runs"] = list(self.ensemble_runs)
        count = len(self.ensemble_runs)
        if not count:
            self.ensemble_label.value = "one run (the current model)"
            self.ensemble_label.tooltip = ""
            return
        self.ensemble_label.value = f"the current model + {count} run{'s' if count > 1 else ''} (mean probabilities)"
        self.ensemble_label.tooltip = "\n".join(str(run) for run in self.ensemble_runs)

    # ---- prediction --------------------------------------------------------------------------

    def predict(self) -> None:
        model, layer = self.session.model, self.image.value
        if self.job.busy:
            return
        if model is None:
            show_error("no model: train one or load a run folder first")
            return
        if layer is None:
            show_error("no image layer to predict")
            return
        try:
            settings = self.inference_form.config().inference
        except SchismError as error:
            show_error(str(error))
            return
        settings.threshold = float(self.threshold.value)
        data = full_resolution(layer)  # lazy arrays stay lazy: the predictor reads slices
        spatial_ndim = data.ndim - (1 if layer.rgb else 0)
        z = None
        if self.current_slice.value and spatial_ndim == 3:
            z = int(self.viewer.dims.current_step[self.viewer.dims.ndim - 3])
            z = min(max(z, 0), data.shape[0] - 1)
        if layer.rgb or spatial_ndim != 3 or z is not None:
            settings.planes = "xy"  # one plane (a slice preview, a 2D or RGB image): nothing to combine
        if settings.planes == "xyz" and settings.voxel_ratio is None:
            settings.voxel_ratio = float(layer.scale[-3] / layer.scale[-1])  # Z voxel / XY pixel, from the layer
        self.progress.value = 0
        self.status.value = "predicting…"
        if should_stream(data, rgb=bool(layer.rgb), class_count=model.class_count):
            self._predict_streamed(layer, model, settings, data, z)
            return
        if z is not None:
            data = data[z]
        viewer, widget = self.viewer, weakref.ref(self)

        def returned(value: tuple[Any, np.ndarray]) -> None:
            alive = widget()
            if alive is not None:
                alive._on_returned(layer, model, z, value)

        self.job.start(
            predict_in_memory,
            model,
            settings,
            data,
            bool(layer.rgb),
            list(self.ensemble_runs),
            control=True,
            on_returned=returned,
            on_errored=report_failure,
            info={"viewer": viewer},
        )

    def cancel(self) -> None:
        self.job.stop()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, events.PredictionProgress):
            self.progress.max = max(1, event.total)
            self.progress.value = event.done
            self.status.value = f"{event.done}/{event.total} tiles · slice {event.slices_done}/{event.slices}"

    def _on_returned(self, layer: Image, model: Any, z: int | None, value: tuple[Any, np.ndarray]) -> None:
        if layer not in self.viewer.layers:
            return
        status = "done" if z is None else f"slice {z} predicted"
        settle = self.job.settle_later()  # Predict stays disabled until the layers are in

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
                self.status.value = status
            settle()

        run_in_turns(
            self._show_result(layer, model, value, z),
            done=done,
            failed=report_display,
            alive=lambda: layer in self.viewer.layers,
        )

    def _show_result(self, layer: Image, model: Any, prediction: tuple[Any, np.ndarray], z: int | None) -> Steps:
        """The result in the image's own layers (:func:`.result_layers.show_result`), keeping the
        camera where the user left it; run by :func:`.layer_turns.run_in_turns`."""
        per_class = self.layout_choice.value == PER_CLASS
        foreground = yield from show_result(self.viewer, self.session, layer, model, prediction, z, per_class)
        self._results_shown(foreground)

    def _results_shown(self, foreground: Any) -> None:
        """The latest image's layers are in: the threshold slider acts on ``foreground`` (P(class 1)
        of a binary model), the review button on the new labels."""
        self._foreground = foreground
        self.review.show_review()

    def _apply_threshold(self) -> None:
        """A new threshold is a new prediction, not a correction: the user's edits and reviewed
        slices stay as they are."""
        latest = self.session.latest(self.viewer.layers)
        if self._foreground is None or latest is None:
            return
        if not isinstance(self._foreground, np.ndarray):  # a streamed stack: a few slices per turn
            self._threshold_streamed(*latest)
            return
        family = latest[1]
        assert family.labels is not None and family.corrections is not None
        labels = ((self._foreground > self.threshold.value).astype(np.uint8) + 1).astype(np.uint8)
        family.labels.data = family.corrections.repredicted(family.labels.data, labels)


def _full_width(part: Container) -> None:
    """A part of the tab spans its width, as its controls did when they were the tab's own rows: the
    part's empty label cell (magicgui gives every child of a labelled Container but a button one) hides."""
    labeled = part._labeled_widget()
    if labeled is not None:
        labeled._label_widget.visible = False


def _short(source: str, limit: int = 48) -> str:
    """Model labels name the run folder and checkpoint; the full path is in the tooltip."""
    return source if len(source) <= limit else "…" + source[-(limit - 1) :]
