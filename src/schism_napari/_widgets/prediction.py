"""Prediction widget: tiled prediction of an image layer into label, probability and uncertainty layers.

Results keep the input's scale and translation and the viewer's camera. Label k + 1 is class k.
The prediction is remembered as the model made it, so "Add to training set" trains only on what
the user corrected (plus slices marked reviewed), not on the model's own errors; the uncertainty
layer and "Next uncertain slice" show where a correction helps most. "Save to dataset" writes
image and labels as a new SCHISM dataset folder. Prediction is the session's "prediction" job.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Generator
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
from qtpy.QtWidgets import QFileDialog

from .. import events
from ..data import labels_to_mask, mask_to_labels
from ..data.export import write_training_pair
from ..data.labels import Corrections
from ..data.uncertainty import margin_uncertainty, most_uncertain_slice
from ..data.volume_store import should_stream, store_labels, threshold_labels
from ..errors import Cancelled, SchismError
from .config_form import ConfigForm
from .jobs import FollowsJob, Job, RunState, follow
from .layer_turns import Steps, add_in_turns, camera_kept, prepare_layer_code, run_in_turns
from .relay import EventRelay, describe
from .session import (
    ResultLayers,
    Session,
    follow_layers,
    layer_choices,
    probability_layer_name,
    session_for,
    unwrap_viewer,
)
from .volumes import (
    StreamedRun,
    full_resolution,
    probability_view,
    retire,
    store_for,
    stored_prediction,
    uncertainty_view,
)

PLANES_HELP = (
    "xy predicts slice by slice; xyz (volumes only: a Z, Y, X stack, not RGB images or videos) also predicts "
    "the XZ and YZ planes and averages the three, for smoother 3D labels (about 3x slower)."
)
VOXEL_RATIO_HELP = (
    "Z voxel size / XY pixel size for planes = xyz; empty: from the image layer's scale (scale[0] / scale[-1])."
)
ONE_LAYER, PER_CLASS = "one layer (class axis)", "one layer per class"
BEST_LOSS = "loss"  # as schism_napari.runs.BEST_LOSS, without importing torch
EXPORT_FORMATS = {  # format -> (file suffix, save dialog filter)
    "onnx": (".onnx", "ONNX model (*.onnx)"),
    "torchscript": (".pt", "TorchScript model (*.pt)"),
    "bioimageio": (".zip", "bioimage.io package (*.zip)"),
}
# pixels of a streamed stack's labels merged per event-loop turn: each slice is a few chunk reads and
# writes (25-30 ms per 1024² slice), so two 1024² slices, or more smaller ones, per turn
TURN_PIXELS = 2 * 1024 * 1024
# cache=False: a layer reading a store on disk (a streamed stack) must show each new slice, not
# what napari's dask cache read before
PROBABILITY_STYLE = {
    "colormap": "magma",
    "contrast_limits": (0.0, 1.0),
    "opacity": 0.6,
    "blending": "additive",
    "cache": False,
}


if TYPE_CHECKING:
    import napari

    from ..config import InferenceConfig
    from ..events import ProgressCallback, StopToken
    from ..inference import PredictionResult
    from ..runs import TrainedModel
    from ..workflows.predict import AnyPredictor


class PredictionWidget(FollowsJob, Container):
    """The Prediction tab: model choice, the [Inference] form, Predict/Cancel, and the correction loop.

    The [Inference] settings are the same generated, validated form as the Training tab's; the
    prediction itself is the session's "prediction" job; what is left here is turning results
    into layers and the user's corrections into training labels.
    """

    def __init__(self, viewer: napari.viewer.Viewer, session: Session | None = None):
        super().__init__(labels=True)
        self.viewer = viewer = unwrap_viewer(viewer)
        self.session = session or session_for(viewer)
        self.model_label = Label(value="", label="model")
        self.run_folder = FileEdit(mode="d", label="run folder", value="")
        self._weight_names: list[str] = [BEST_LOSS]
        # a choices callable: napari resets every dock widget's choices when layers change, and the
        # user's checkpoint must survive that (it used to fall back to "loss" silently)
        self.metric = ComboBox(choices=self._weight_choices, value=BEST_LOSS, label="weights")
        self.load_button = PushButton(text="Load run folder")
        self.image = ComboBox(choices=layer_choices(viewer, Image), label="image")
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
        self.review_button = PushButton(text="Mark slice reviewed")
        self.review_button.tooltip = "The whole current slice is right as it is: train on all of it, not only on edits."
        self.next_uncertain_button = PushButton(text="Next uncertain slice")
        self.next_uncertain_button.tooltip = "Go to the slice the model is least sure of (not yet reviewed)."
        self.add_button = PushButton(text="Add to training set")
        self.add_button.tooltip = "Train on the pixels you corrected and on the slices marked reviewed."
        self.datasets_folder = FileEdit(mode="d", label="datasets folder", value="")
        self.save_button = PushButton(text="Save to dataset")
        self.export_format = ComboBox(choices=list(EXPORT_FORMATS), value="onnx", label="export as")
        self.export_format.tooltip = (
            "onnx / torchscript: one file plus a .json describing inputs and classes; bioimageio: a bioimage.io "
            "package (.zip), tested with bioimageio.core (slower)."
        )
        self.export_button = PushButton(text="Export model…")
        self.export_button.tooltip = "Save the current model for other tools; its output is checked against torch."
        self.status = Label(value="", label="status")
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
                Container(widgets=[self.review_button, self.next_uncertain_button], layout="horizontal", labels=False),
                self.add_button,
                self.datasets_folder,
                self.save_button,
                Container(widgets=[self.export_format, self.export_button], layout="horizontal", labels=False),
                self.status,
            ]
        )
        self.job: Job = self.session.job("prediction")
        self._foreground: Any = None  # binary models: P(class 1), for the threshold slider (lazy when streamed)
        self._threshold_token: object = None  # the streamed threshold pass running (None: none)
        self.ensemble_runs = list(self.session.setting("ensemble runs", []))
        self._show_ensemble()
        for key, widget in (
            ("prediction run folder", self.run_folder),
            ("datasets folder", self.datasets_folder),
            ("probability layout", self.layout_choice),
            ("current slice only", self.current_slice),
        ):
            self.session.keep_setting(key, widget)

        self.run_folder.changed.connect(self._list_weights)
        self.load_button.changed.connect(self.load_run)
        self.predict_button.changed.connect(self.predict)
        self.cancel_button.changed.connect(self.cancel)
        self.threshold.changed.connect(self._apply_threshold)
        self.review_button.changed.connect(self.mark_reviewed)
        self.next_uncertain_button.changed.connect(self.next_uncertain_slice)
        self.add_button.changed.connect(self.add_to_training_set)
        self.save_button.changed.connect(lambda: self.save_to_dataset())
        self.export_button.changed.connect(self._ask_export)
        self.add_run_button.changed.connect(lambda: self.add_run(self.ensemble_folder.value))
        self.clear_runs_button.changed.connect(self.clear_runs)
        self.image.changed.connect(self._offer_planes)
        self.export_job: Job = self.session.job("export")
        native = self.native
        follow(native, self.session.model_changed, self._on_model)
        follow(native, self.session.busy_changed, lambda _busy: self._update_enabled())
        follow(native, self.job.state_changed, self._on_state)
        follow(native, self.job.event, self._on_event)
        follow(native, self.export_job.state_changed, lambda _state: self._update_enabled())
        follow_layers(viewer, self.image)  # only the layer list: the weights choice stays
        follow(native, viewer.dims.events.current_step, self._show_review)
        self._on_model(self.session.model)
        self._offer_planes()
        self._show_review()

    @property
    def source_layer(self) -> Image | None:
        """The image predicted last (in this viewer, whichever dock predicted it)."""
        latest = self.session.latest(self.viewer.layers)
        return None if latest is None else latest[0]

    @property
    def labels_layer(self) -> Labels | None:
        """The Labels layer of the latest prediction: the one the user corrects."""
        latest = self.session.latest(self.viewer.layers)
        return None if latest is None else latest[1].labels

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
        self.export_button.enabled = self.session.model is not None and not self.export_job.busy

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

    # ---- export ------------------------------------------------------------------------------

    def _ask_export(self) -> None:
        fmt = str(self.export_format.value)
        suffix, filter_ = EXPORT_FORMATS[fmt]
        path, _ = QFileDialog.getSaveFileName(self.native, "Export model", f"model{suffix}", filter_)
        if path:
            self.export_model(path, fmt)

    def export_model(self, path: str | Path, fmt: str) -> bool:
        """Export the session's model to a new file in a worker; a notification names the written path."""
        model = self.session.model
        if model is None:
            show_error("no model to export: train one or load a run folder first")
            return False
        out = Path(path)
        if not out.suffix:
            out = out.with_suffix(EXPORT_FORMATS[fmt][0])
        if out.exists():  # the file dialog asked, but exports never replace a file
            show_error(f"{out} already exists; not overwriting it (choose another name)")
            return False
        started = self.export_job.start(
            _export, model, fmt, out, on_returned=self._exported, on_errored=_report_export_failure
        )
        if started:
            self.status.value = f"exporting to {out.name}…"
        return started

    def _exported(self, value: tuple[Path, str | None]) -> None:
        path, test = value
        note = "" if test is None else f"; bioimageio.core model test: {test}"
        self.status.value = f"exported {path.name}"
        (show_info if test in (None, "passed") else show_error)(f"exported the model to {path}{note}")

    @property
    def export_relay(self) -> EventRelay:
        """``export_relay.finished`` fires when an export has ended (written or failed)."""
        return self.export_job.relay

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
            _predict,
            model,
            settings,
            data,
            bool(layer.rgb),
            list(self.ensemble_runs),
            control=True,
            on_returned=returned,
            on_errored=_report_failure,
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
        result, uncertainty = value
        if layer not in self.viewer.layers:
            return
        status = "done" if z is None else f"slice {z} predicted"
        settle = self.job.settle_later()  # Predict stays disabled until the layers are in

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
                self.status.value = status
            settle()

        run_in_turns(
            self._show_result(layer, model, result, uncertainty, z),
            done=done,
            failed=_report_display,
            alive=lambda: layer in self.viewer.layers,
        )

    # ---- stacks streamed to disk -------------------------------------------------------------

    def _predict_streamed(self, layer: Image, model: Any, settings: Any, data: Any, z: int | None) -> None:
        """A stack whose results would not sit well in memory (or one read lazily): predicted into a
        store on disk, the current slice first, then the rest; the layers read the store
        (:mod:`schism_napari.data.volume_store`). ``z``: only that slice (the preview)."""
        from ..events import SlicesStored

        first = z if z is not None else min(max(self._current_z(), 0), data.shape[0] - 1)
        labels = self.session.results_for(layer, self.viewer.layers).labels
        try:  # the store its Labels layer reads holds the corrections: predicting again keeps them
            current = stored_prediction(self.session, layer)
            reuse = current is not None and labels is not None and labels.data is current.corrected
            store, previous = store_for(self.session, layer, tuple(data.shape), model.class_count, reuse=reuse)
        except (SchismError, OSError) as error:
            self.status.value = ""
            show_error(str(error))
            return
        run = StreamedRun(layer, model, store, previous, first, preview=z is not None)
        widget = weakref.ref(self)

        def stored(event: Any) -> None:
            alive = widget()
            if alive is not None and isinstance(event, SlicesStored):
                alive._on_stored(run, event)

        def returned(_count: int) -> None:
            alive = widget()
            if alive is not None:
                alive._stream_returned(run)

        self.job.start(
            _predict_streamed,
            model,
            settings,
            data,
            list(self.ensemble_runs),
            store,
            first,
            z is not None,
            control=True,
            on_returned=returned,
            on_errored=_report_failure,
            on_event=stored,
            info={"viewer": self.viewer},
        )

    def _on_stored(self, run: StreamedRun, event: Any) -> None:
        """Slices arrived in the store: merged into the labels a few per event-loop turn, the first
        ones bringing the layers; Predict stays disabled until all are in."""
        if run.layer not in self.viewer.layers:
            return
        self.status.value = f"{event.slices_done}/{event.slices} slices predicted"
        run.pending.append((event.start, event.stop))
        if run.draining:
            return
        run.draining = True
        settle = self.job.settle_later()

        def drained() -> None:
            run.draining = False
            if run.status is not None:
                self._finish_stream(run)
            settle()

        run_in_turns(
            self._drain_stored(run), done=drained, failed=_report_display, alive=lambda: run.layer in self.viewer.layers
        )

    def _stream_corrections(self, run: StreamedRun) -> Corrections | None:
        """The image's corrections when they are the ones in this run's store."""
        family = self.session.results.get(run.layer)
        corrections = None if family is None else family.corrections
        return corrections if corrections is not None and corrections.predicted is run.store.predicted else None

    def _drain_stored(self, run: StreamedRun) -> Steps:
        """Merge stored slices into the labels, :data:`TURN_PIXELS` per event-loop turn; the layers
        refresh when they show one of them."""
        per_turn = _slices_per_turn(run.store.shape)
        while run.pending:
            start, stop = run.pending.pop(0)
            for low in range(start, stop, per_turn):
                high = min(stop, low + per_turn)
                corrections = self._stream_corrections(run)
                store_labels(run.store, low, high, set() if corrections is None else corrections.reviewed)
                if not run.shown:
                    yield from self._show_streamed(run)
                    continue
                family = self.session.results.get(run.layer)
                if family is not None and self.viewer.dims.ndisplay == 2 and low <= self._current_z() < high:
                    self._refresh_results(family)
                yield

    def _show_streamed(self, run: StreamedRun) -> Steps:
        """As :meth:`_show_result`, with layers reading the store: the Labels layer paints into it and
        its corrections are kept there too."""
        layer, model, store = run.layer, run.model, run.store
        family = self.session.results_for(layer, self.viewer.layers)
        corrections = self._stream_corrections(run) or Corrections.stored(store.predicted, store.edited)
        if family.labels is None:
            family.labels = Labels(
                store.corrected,
                name=f"{layer.name} prediction",
                scale=layer.scale[-3:],
                translate=layer.translate[-3:],
            )
            family.corrections = corrections
            self.session.paint_colors(family.labels, model.class_count)
            yield from add_in_turns(self.viewer, family.labels, select=True)  # the layer to correct
        else:
            if family.labels.data is not store.corrected:
                family.labels.data = store.corrected
            family.corrections = corrections
        self.session.paint_colors(family.labels, model.class_count)  # only a change of colours redraws
        labels_layer = family.labels
        by_class = probability_view(store)  # (C, Z, Y, X), lazy
        yield from self._update_probability_layers(layer, family, model, by_class)
        yield from self._update_uncertainty_layer(layer, family, uncertainty_view(store))
        self._results_in(layer, family, labels_layer, by_class[1] if model.class_count == 2 else None)
        run.shown = True
        retire(run.previous)  # no layer reads it now
        run.previous = None

    def _refresh_results(self, family: ResultLayers) -> None:
        for shown in (family.labels, *family.probabilities, family.uncertainty):
            if shown is not None and shown.visible:
                shown.refresh()

    def _stream_returned(self, run: StreamedRun) -> None:
        run.status = f"slice {run.first} predicted" if run.preview else "done"
        if not run.draining:
            self._finish_stream(run)

    def _finish_stream(self, run: StreamedRun) -> None:
        family = self.session.results.get(run.layer)
        if family is not None and self.viewer.dims.ndisplay == 3:
            self._refresh_results(family)  # in 3D, once at the end: each refresh reads the whole volume
        with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
            self.status.value = run.status or "done"

    # ---- result layers -----------------------------------------------------------------------

    def _show_result(self, layer: Image, model: Any, result: Any, uncertainty: np.ndarray, z: int | None) -> Steps:
        """Put the result in the source image's own output layers (created on its first prediction),
        keeping the camera where the user left it.

        A generator, run by :func:`.turns.run_in_turns`: each layer napari has to create gets an
        event-loop turn of its own (about 0.1 s each); updating existing layers takes one turn.
        """
        family = self.session.results_for(layer, self.viewer.layers)
        spatial_shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
        probabilities = np.asarray(result.probabilities)  # (C, Y, X) or (Z, C, Y, X)
        labels = mask_to_labels(np.asarray(result.labels))
        if z is not None:  # preview of one slice: place it in full-size layers
            labels, probabilities, uncertainty = _in_full_size(
                family, spatial_shape, z, labels, probabilities, uncertainty
            )
        by_class = np.moveaxis(probabilities, -3, 0)  # (C, [Z,] Y, X)
        labels_layer = yield from self._update_labels_layer(layer, family, model, labels)
        yield from self._update_probability_layers(layer, family, model, by_class)
        yield from self._update_uncertainty_layer(layer, family, uncertainty)
        self._results_in(layer, family, labels_layer, by_class[1] if model.class_count == 2 else None)

    def _results_in(self, layer: Image, family: ResultLayers, labels_layer: Labels, foreground: Any) -> None:
        """The image's layers are in (in memory or streamed): the labels go on top, to be corrected; the
        Train preview hides; a paired prediction keeps its corrections; this image is the latest."""
        _name_viewer_axes(self.viewer)
        if self.viewer.layers[-1] is not labels_layer:
            self.viewer.layers.move(self.viewer.layers.index(labels_layer), len(self.viewer.layers))
        if family.preview is not None:  # the prediction takes over from Train's one-slice preview
            family.preview.visible = False
        pair = self.session.pair_of(labels_layer)
        if pair is not None:  # predicted again after "Add to training set": the same corrections count
            pair.corrections = family.corrections
        self.session.latest_image = weakref.ref(layer)
        self._foreground = foreground  # binary models: P(class 1), for the threshold slider
        self._show_review()

    def _update_labels_layer(
        self, layer: Image, family: ResultLayers, model: Any, labels: np.ndarray
    ) -> Generator[None, None, Labels]:
        """New labels into the image's prediction layer; what the user edited or reviewed there stays."""
        if family.labels is not None and family.corrections is not None:
            family.labels.data = family.corrections.repredicted(family.labels.data, labels)
        elif family.labels is not None:
            family.labels.data = labels
            family.corrections = Corrections(labels)
        else:
            family.labels = Labels(
                labels,
                name=f"{layer.name} prediction",
                scale=layer.scale[-labels.ndim :],
                translate=layer.translate[-labels.ndim :],
            )
            family.corrections = Corrections(labels)
            self.session.paint_colors(family.labels, model.class_count)
            yield from add_in_turns(self.viewer, family.labels, select=True)  # the layer to correct
        self.session.paint_colors(family.labels, model.class_count)  # only a change of colours redraws
        return family.labels

    def _update_probability_layers(self, layer: Image, family: ResultLayers, model: Any, by_class: np.ndarray) -> Steps:
        existing = family.probabilities
        names = self.session.names(model.class_count)
        per_class = self.layout_choice.value == PER_CLASS
        if per_class and len(existing) == len(by_class) and existing[0].data.shape == by_class.shape[1:]:
            for probability_layer, data in zip(existing, by_class, strict=True):
                probability_layer.data = data
            return
        if not per_class and len(existing) == 1 and existing[0].data.shape == by_class.shape:
            existing[0].data = by_class
            return
        with camera_kept(self.viewer):  # one axis fewer or more
            for old in existing:
                self.viewer.layers.remove(old)
        spatial = by_class.ndim - 1
        scale, translate = layer.scale[-spatial:], layer.translate[-spatial:]
        axes = tuple(layer.axis_labels[-spatial:])
        # hidden by default: the image stays visible under the labels while the user corrects
        if per_class:
            new = [
                Image(
                    data,
                    name=probability_layer_name(layer.name, name),
                    scale=scale,
                    translate=translate,
                    axis_labels=axes,
                    visible=False,
                    **PROBABILITY_STYLE,
                )
                for data, name in zip(by_class, names, strict=True)
            ]
        else:
            new = [
                Image(
                    by_class,
                    name=f"{layer.name} probabilities",
                    scale=(1.0, *scale),
                    translate=(0.0, *translate),
                    axis_labels=("class", *axes),
                    metadata={"schism_classes": names},
                    visible=False,
                    **PROBABILITY_STYLE,
                )
            ]
        family.probabilities = new
        for probability_layer in new:
            yield from add_in_turns(self.viewer, probability_layer)

    def _update_uncertainty_layer(self, layer: Image, family: ResultLayers, uncertainty: np.ndarray) -> Steps:
        """1 - margin between the two likeliest classes: bright where a correction helps most."""
        if family.uncertainty is not None and family.uncertainty.data.shape == uncertainty.shape:
            family.uncertainty.data = uncertainty
            return
        if family.uncertainty is not None:
            self.viewer.layers.remove(family.uncertainty)
        family.uncertainty = Image(
            uncertainty,
            name=f"{layer.name} uncertainty",
            scale=layer.scale[-uncertainty.ndim :],
            translate=layer.translate[-uncertainty.ndim :],
            axis_labels=tuple(layer.axis_labels[-uncertainty.ndim :]),
            colormap="inferno",
            contrast_limits=(0.0, 1.0),
            opacity=0.6,
            blending="additive",
            visible=False,
            cache=False,  # as PROBABILITY_STYLE
        )
        yield from add_in_turns(self.viewer, family.uncertainty)

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

    def _threshold_streamed(self, image: Image, family: ResultLayers) -> None:
        """The threshold of a stack on disk, slab by slab in event-loop turns; a newer threshold
        replaces a pass still running."""
        store, labels, corrections = stored_prediction(self.session, image), family.labels, family.corrections
        if store is None or labels is None or corrections is None or labels.data is not store.corrected:
            return
        token = self._threshold_token = object()
        per_turn = _slices_per_turn(store.shape)
        threshold = float(self.threshold.value)
        reviewed = corrections.reviewed
        steps = threshold_labels(
            self._foreground, threshold, store.corrected, store.predicted, reviewed, store.edited, slab=per_turn
        )

        def passes() -> Steps:
            z = self._current_z()
            for high in steps:
                if high - per_turn <= z < high:
                    labels.refresh()
                yield

        def done() -> None:
            if self._threshold_token is token:
                self._threshold_token = None

        run_in_turns(passes(), done=done, failed=_report_display, alive=lambda: self._threshold_token is token)

    # ---- correct and retrain -----------------------------------------------------------------

    def _latest(self) -> tuple[Image, ResultLayers] | None:
        return self.session.latest(self.viewer.layers)

    def _current_z(self) -> int:
        return int(self.viewer.dims.current_step[self.viewer.dims.ndim - 3]) if self.viewer.dims.ndim >= 3 else 0

    def _reviewed_here(self) -> tuple[ResultLayers, int] | None:
        """The latest prediction's family and the slice on screen (0 for a 2D image)."""
        latest = self._latest()
        if latest is None:
            return None
        family = latest[1]
        assert family.labels is not None
        return family, (self._current_z() if family.labels.data.ndim == 3 else 0)

    def mark_reviewed(self) -> None:
        """The current slice of the latest prediction is right as it stands: all of it becomes labels,
        and later predictions leave it as it is. Pressed on a reviewed slice, it clears the review."""
        here = self._reviewed_here()
        if here is None:
            show_error("no prediction to review: predict an image first")
            return
        family, z = here
        assert family.corrections is not None
        if z in family.corrections.reviewed:
            family.corrections.unreview(z)
        else:
            family.corrections.review(z)
        self._show_review()
        self.session.labels_edited.emit()

    def _show_review(self, _event: Any = None) -> None:
        """The review button says what it will do on this slice; the status lists the reviewed slices."""
        here = self._reviewed_here()
        reviewed = here is not None and here[0].corrections is not None and here[1] in here[0].corrections.reviewed
        self.review_button.text = "Clear slice review" if reviewed else "Mark slice reviewed"
        self.review_button.tooltip = (
            "This slice is reviewed: predictions keep it and training takes all of it. Clear the review to let "
            "the next prediction replace what you did not edit."
            if reviewed
            else "The whole current slice is right as it is: train on all of it, and keep it in later predictions."
        )
        if here is not None and here[0].corrections is not None and here[0].corrections.reviewed:
            slices = ", ".join(map(str, sorted(here[0].corrections.reviewed)))
            self.status.value = f"reviewed slices (kept by new predictions): {slices}"

    def next_uncertain_slice(self) -> int | None:
        """Move the viewer to the slice the model is least sure of, skipping reviewed slices."""
        latest = self._latest()
        if latest is None or latest[1].uncertainty is None:
            show_error("no prediction yet: predict a stack first")
            return None
        family = latest[1]
        assert family.uncertainty is not None and family.labels is not None and family.corrections is not None
        z = most_uncertain_slice(family.uncertainty.data, family.corrections.reviewed)  # slab by slab when on disk
        if z is None:
            show_info("nothing left to review" if family.uncertainty.data.ndim == 3 else "a 2D image has one slice")
            return None
        world = family.labels.data_to_world([z, 0, 0])[0]
        axis = self.viewer.dims.ndim - 3
        self.viewer.dims.set_point(axis, world)
        self.status.value = f"slice {z}: the model is least sure here"
        return z

    def add_to_training_set(self) -> None:
        latest = self._latest()
        if latest is None:
            show_error("no prediction to add: predict an image first, then correct it with the brush")
            return
        image, family = latest
        labels = family.labels
        try:
            self.session.add_pair(image, labels, corrections=family.corrections)
        except SchismError as error:
            show_error(str(error))
            return
        self.session.labels_edited.emit()
        show_info(
            f"{labels.name} joins the training set: only your corrections and the slices marked "
            "reviewed count; train again (fine-tune) to use them"
        )

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
                full_resolution(self.source_layer),  # a lazy image is written slab by slab
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


def _in_full_size(
    family: ResultLayers,
    spatial_shape: tuple[int, ...],
    z: int,
    labels: np.ndarray,
    probabilities: np.ndarray,
    uncertainty: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A one-slice preview placed at slice ``z`` of full-size arrays, the other slices as the
    image's results hold them (zeros where there are none yet); the other slices' labels are the
    model's, to which the user's corrections are then applied again."""

    def held(layer: Any) -> Any:
        return layer.data if layer is not None and layer.data.shape == spatial_shape else None

    corrections = family.corrections
    predicted = None if corrections is None else corrections.predicted
    return (
        _placed_at(
            z,
            labels,
            spatial_shape,
            np.uint8,
            predicted if predicted is not None and predicted.shape == spatial_shape else held(family.labels),
        ),
        _placed_at(
            z,
            probabilities,
            (spatial_shape[0], *probabilities.shape),
            np.float32,
            family.probabilities_array(spatial_shape),
        ),
        _placed_at(z, uncertainty, spatial_shape, np.float32, held(family.uncertainty)),
    )


def _placed_at(z: int, values: np.ndarray, shape: tuple[int, ...], dtype: Any, previous: Any) -> np.ndarray:
    """``values`` at slice ``z`` of a new array of ``shape``, the other slices from ``previous``
    (None: zeros)."""
    full = np.zeros(shape, dtype=dtype)
    if previous is not None:
        full[:] = previous
    full[z] = values
    return full


def _slices_per_turn(shape: tuple[int, ...]) -> int:
    return max(1, TURN_PIXELS // max(1, int(shape[-1]) * int(shape[-2])))


def _predictor(
    model: TrainedModel,
    settings: InferenceConfig,
    runs: list[Path],
    *,
    callback: ProgressCallback,
    stop: StopToken,
    slab_depth: int | None = None,
) -> AnyPredictor:
    """In the worker: the model's predictor (or the mean of it and ``runs``; tri-planar for
    ``settings.planes = xyz``, in slabs of ``slab_depth``); torch is imported here, not at dock time."""
    from ..workflows import PredictRequest, build_predictors, planar

    request = PredictRequest(
        runs=runs,
        model=model,
        metric=BEST_LOSS,
        settings=settings,
        device=model.config.training.device,
        threads=model.config.training.threads,
        leave_for_gui=True,  # the GUI thread keeps priority (resources.yield_to_gui)
    )
    prepare_layer_code()  # here, not when the result layers are created in the GUI thread
    predictors = build_predictors(request, callback=callback, stop=stop)
    return planar(predictors.predictor, settings, slab_depth=slab_depth)


def _predict(
    model: TrainedModel,
    settings: InferenceConfig,
    data: Any,
    rgb: bool,
    runs: list[Path],
    *,
    callback: ProgressCallback,
    stop: StopToken,
) -> tuple[PredictionResult, np.ndarray]:
    """In the worker: tiled prediction and its uncertainty map, in memory."""
    predictor = _predictor(model, settings, runs, callback=callback, stop=stop)
    result = predictor.predict(data, rgb=rgb)
    probabilities = np.asarray(result.probabilities)
    return result, margin_uncertainty(probabilities, class_axis=-3)


def _predict_streamed(
    model: TrainedModel,
    settings: InferenceConfig,
    data: Any,
    runs: list[Path],
    store: Any,
    first: int,
    only_first: bool,
    *,
    callback: ProgressCallback,
    stop: StopToken,
) -> int:
    """In the worker: a stack into its store on disk, slice ``first`` before the others (see
    :mod:`schism_napari.inference.streaming`); tri-planar in slabs, as ``schism predict --zarr``."""
    from ..inference.planes import DEFAULT_SLAB_DEPTH
    from ..inference.streaming import StreamProgress, stream_prediction

    progress = StreamProgress(callback)
    predictor = _predictor(model, settings, runs, callback=progress, stop=stop, slab_depth=DEFAULT_SLAB_DEPTH)
    return stream_prediction(predictor, data, store, first, only_first=only_first, progress=progress, stop=stop)


def _export(model: Any, fmt: str, out: Path) -> tuple[Path, str | None]:
    """In the worker: export and check the model (bioimage.io packages also get bioimageio.core's test)."""
    from ..runs.export import check_bioimageio, export_bioimageio, export_onnx, export_torchscript, exportable

    write = {"onnx": export_onnx, "torchscript": export_torchscript, "bioimageio": export_bioimageio}[fmt]
    try:
        path = write(exportable(model), out)
    except ImportError as error:
        raise SchismError(f"exporting as {fmt} needs {error.name}: pip install 'schism-napari[export]'") from None
    return path, (str(check_bioimageio(path).status) if fmt == "bioimageio" else None)


def _name_viewer_axes(viewer: Any) -> None:
    """Name the viewer's axes after the layers' ``axis_labels`` ("class" on the probabilities), as
    napari 0.8 and newer do by themselves. napari 0.7, the newest release for Python 3.10, keeps
    -4, -3, ...; this does what later napari does: a label a layer sets replaces the viewer's at
    its (right-aligned) position. Where napari does it itself (its LayerList has axis_labels), nothing."""
    if hasattr(viewer.layers, "axis_labels"):
        return
    dims = viewer.dims
    names = list(dims.axis_labels)
    for layer in viewer.layers:
        labels = tuple(layer.axis_labels)
        offset = dims.ndim - len(labels)
        for index, label in enumerate(labels):
            if label != str(index - len(labels)) and offset + index >= 0:  # a layer's defaults are -n..-1
                names[offset + index] = label
    if tuple(names) != tuple(dims.axis_labels):
        dims.axis_labels = tuple(names)


def _report_export_failure(error: BaseException) -> None:
    show_error(f"export failed: {describe(error)}")


def _report_display(error: BaseException) -> None:
    show_error(f"showing the prediction failed: {describe(error)}")


def _report_failure(error: BaseException) -> None:
    if not isinstance(error, Cancelled):
        show_error(f"prediction failed: {describe(error)}")


def _short(source: str, limit: int = 48) -> str:
    """Model labels name the run folder and checkpoint; the full path is in the tooltip."""
    return source if len(source) <= limit else "…" + source[-(limit - 1) :]
