"""Training widget: the configuration form, Load/Save INI, Train/Stop with progress and live curves.

Training is the session's "training" job (:mod:`.jobs`): it runs in a napari thread worker and
belongs to the viewer's session, not to this widget, so closing the dock leaves it running and a
reopened dock shows its progress and curves again and can stop it. Stop asks the core to end
after the current batch; the best weights are kept and become the session's model.

Pressing Train first fits a random forest on the painted pixels (seconds, in the worker) and
shows its prediction of the current slice as a preview layer. A fifth of each class's strokes is
held out from both the forest and the network; when training ends, the forest, the network and
their average are scored on those strokes and the best of them replaces the preview and becomes
the session's model (:mod:`schism_napari.forest.selection`), so what replaces the preview is never worse
on labels neither saw. torch is imported only inside the worker.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from .. import events
from ..data.labels import labelled_pixels
from ..errors import SchismError
from ..plumbing.atomic import unique_path
from .config_form import ConfigForm
from .curves import CurvesCanvas
from .jobs import FollowsJob, Job, RunState, follow
from .layer_turns import add_in_turns, prepare_layer_code, run_in_turns
from .relay import describe
from .session import Session, TrainingSources, session_for, unwrap_viewer

DEFAULT_RUNS = Path.home() / "schism-napari-runs"


if TYPE_CHECKING:
    import napari
    import torch

    from ..config import SchismConfig
    from ..data.dataset import SegmentationData
    from ..events import ProgressCallback, StopToken
    from ..forest.classifier import PixelClassifier
    from ..runs import TrainedModel
    from ..training.planning import Plan
    from ..training.trainer import TrainingResult
    from ..workflows import TrainOutcome


PREVIEW_WAIT_S = 5.0  # the longest the worker waits for the preview layer before training anyway
ROUND_MINUTES = 0.5  # "keep improving": the time budget of each round after the first (at most)
ROUND_DELAY_MS = 3000  # "keep improving": a round starts this long after the last stroke


@dataclass(frozen=True)
class ForestPreview:
    """The random forest's prediction of one slice, made before the network trains.

    ``shown`` is set once the GUI thread has put it in a layer: the worker waits for that, so the
    layer is added while the worker is idle rather than competing with training for the
    interpreter (which made the add twice as long).
    """

    probabilities: np.ndarray  # (C, Y, X)
    z: int | None
    shown: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)


class TrainingWidget(FollowsJob, Container):
    """The Training tab: the form every INI key lives in, Train/Stop, progress, curves.

    It is a view of the session's training job: all it does is translate clicks into job calls
    and job events into progress, status and curves, so several copies (a reopened dock) agree.
    """

    def __init__(self, viewer: napari.viewer.Viewer, session: Session | None = None):
        super().__init__(labels=False)
        self.viewer = viewer = unwrap_viewer(viewer)
        self.session = session or session_for(viewer)
        self.form = ConfigForm()
        self.form.set_config(self.session.config)
        self.load_button = PushButton(text="Load INI…")
        self.save_button = PushButton(text="Save INI…")
        self.data_label = Label(value="")
        self.runs_folder = FileEdit(mode="d", value=DEFAULT_RUNS, label="runs folder")
        self.session.keep_setting("runs folder", self.runs_folder)  # a reopened dock keeps the user's folder
        self.runs_folder.tooltip = "Each training creates a new run folder here (SCHISM files: weights, curves, logs)."
        self.fine_tune = CheckBox(text="continue from current model (fine-tune)", value=False, enabled=False)
        self.preview = CheckBox(text="instant preview (random forest on the painted pixels)", value=True)
        self.session.keep_setting("instant preview", self.preview)
        self.keep_improving = CheckBox(text="keep improving while I paint", value=False)
        self.session.keep_setting("keep improving", self.keep_improving)
        self.keep_improving.tooltip = (
            f"After Train, go on fine-tuning in the background, in rounds of at most {ROUND_MINUTES:g} minute: a "
            f"new round starts {ROUND_DELAY_MS / 1000:g} s after you paint, or at once while the last round still "
            "improved on the held-out strokes. Each round ends with the held-out choice, whose best refreshes "
            "the preview of the current slice. Stop ends the rounds."
        )
        self.preview.tooltip = (
            "Before the network trains, a random forest fitted in seconds predicts the current slice into a "
            "'preview' layer. When training ends, the forest, the network and their average are scored on "
            "strokes held out from both, and the best replaces the preview (and predicts from then on)."
        )
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="ready")
        self.choice = Label(value="")
        self.choice.tooltip = (
            "Which predicts: the network, the forest or their average, whichever scored best on painted "
            "strokes held out from both (mean IoU)."
        )
        self.label_counts = Label(value="")
        self.label_counts.tooltip = "Pixels painted per class in the training layers, and on which slices."
        self.curves = CurvesCanvas()
        self.extend(
            [
                Container(widgets=[self.load_button, self.save_button], layout="horizontal", labels=False),
                self.data_label,
                self.label_counts,
                Container(widgets=[self.runs_folder], labels=True),
                self.fine_tune,
                self.preview,
                self.keep_improving,
                Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
                self.choice,
            ]
        )
        layout = self.native.layout()
        layout.insertWidget(0, self.form.tabs)
        layout.addWidget(self.curves)

        self.job: Job = self.session.job("training")
        self._refill_form(self.session.config)  # a reopened dock: the latest plan's reasons too
        self._started_at = 0.0
        self._total_batches = 1
        self._done_batches = 0
        self._edits = 0  # strokes painted since the dock opened
        self._round_edits: int | None = None  # ... when the latest round started (None: no round yet)
        self._round_timer = QTimer(self.native)
        self._round_timer.setSingleShot(True)

        self.load_button.changed.connect(self._ask_load_ini)
        self.save_button.changed.connect(self._ask_save_ini)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        native = self.native
        follow(native, self.session.data_changed, self._show_data)
        follow(native, self.session.labels_edited, self._show_label_counts)
        follow(native, self.session.classes_changed, self._show_label_counts)
        follow(native, self.session.model_changed, self._on_model)
        follow(native, self.session.config_replaced, self._refill_form)
        follow(native, self.session.class_count_requested, self._set_class_count)
        follow(native, self.job.event, self._on_event)
        follow(native, self.job.state_changed, self._show_state)
        follow(native, self.job.state_changed, self._next_round)
        follow(native, self.session.labels_edited, self._count_edit)
        follow(native, self._round_timer.timeout, self._start_round)
        self._filling = False
        self.form.on_change(self._form_edited)
        self._show_data()
        self._on_model(self.session.model)
        self._reattach()

    # ---- the session's training job ------------------------------------------------------------

    @property
    def last_result(self) -> TrainingResult | None:
        return self.job.result[0] if self.job.result else None

    def _reattach(self) -> None:
        """A dock opened while training runs: replay the run's events, then follow it live."""
        if not self.job.history and not self.job.busy:
            return
        self.curves.reset(self.job.info.get("metrics", []))
        for arrived, event in self.job.history:
            self._on_event(event, arrived)
        self._show_state(self.job.state)

    # ---- INI ---------------------------------------------------------------------------------

    def load_ini(self, path: str | Path) -> None:
        from ..config import SchismConfig

        try:
            config = SchismConfig.from_ini(path)
        except SchismError as error:
            show_error(str(error))
            return
        for warning in config.warnings:
            show_warning(warning)
        self.session.replace_config(config)
        self.status.value = f"loaded {Path(path).name}"

    def save_ini(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        try:
            written = self.form.config().to_ini(path, overwrite=overwrite)
        except SchismError as error:
            show_error(str(error))
            return None
        self.status.value = f"saved {written.name}"
        return written

    def _ask_load_ini(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.native, "Load SCHISM INI", "", "INI files (*.ini);;All files (*)")
        if path:
            self.load_ini(path)

    def _ask_save_ini(self) -> None:
        # the dialog asks before replacing a file, so a confirmed choice may overwrite
        path, _ = QFileDialog.getSaveFileName(self.native, "Save SCHISM INI", "schism.ini", "INI files (*.ini)")
        if path:
            self.save_ini(path, overwrite=True)

    # ---- training ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.job.busy

    def start(self, *, round_: bool = False) -> None:
        """Train on the session's data; one training at a time per viewer. ``round_``: a "keep
        improving" round, which fine-tunes the session's model for at most ROUND_MINUTES and keeps
        the preview on the best model so far until its own choice is made."""
        if self.job.busy:
            if not round_:
                show_warning("a training is already running in this viewer: stop it first")
            return
        self._round_timer.stop()
        try:
            config = self.form.config()
            initial = None
            if (self.fine_tune.value or round_) and self.session.model is not None:
                initial = {k: v.detach().clone() for k, v in self.session.model.model.state_dict().items()}
                _keep_architecture(config, self.session.model.config)
            self.session.set_config(config)
            sources = self.session.snapshot()
            if round_:  # the round's own budget, not kept in the session's config (a later Train's)
                sources = dataclasses.replace(sources, config=_shortened(sources.config))
            folder = Path(self.runs_folder.value).expanduser()
            run_dir = unique_path(folder / time.strftime("run_%Y%m%d_%H%M%S"))
        except SchismError as error:
            show_error(str(error))
            return
        preview = self._preview_target() if self.preview.value else None
        self._show_label_counts(sources)
        metrics = config.training.score_metrics()
        self.curves.reset(metrics)
        self.progress.value = 0
        job, session, viewer = self.job, self.session, self.viewer
        job.start(
            _train,
            sources,
            run_dir,
            initial,
            _preview_slice(preview),  # copied here: the worker never touches a layer
            control=True,
            on_returned=lambda returned: _take_model(viewer, session, returned),
            on_errored=_report_failure,
            # a round keeps the best model so far in the preview until its own choice is made
            on_event=lambda event: _on_preview(viewer, session, None if round_ else preview, event),
            info={
                "metrics": metrics,
                "preview": preview,
                "previous": _score_of(self.session.model) if round_ else None,
            },
        )
        self._round_edits = self._edits
        self.status.value = "reading the training data…" if not round_ else "keep improving: a new round…"

    def stop(self) -> None:
        self._round_timer.stop()
        if self.job.busy:
            if self.keep_improving.value:
                self.keep_improving.value = False  # Stop ends the rounds too
            self.job.stop()
            self.status.value = "stopping after this batch…"

    def _preview_target(self) -> tuple[Any, int | None] | None:
        """The painted image the forest preview shows: the first layer pair, at the current slice."""
        if not self.session.pairs:
            return None
        image = self.session.pairs[0].image
        spatial = image.data.ndim - (1 if image.rgb else 0)
        if spatial != 3:
            return image, None
        z = int(self.viewer.dims.current_step[self.viewer.dims.ndim - 3])
        return image, min(max(z, 0), image.data.shape[0] - 1)

    def _show_state(self, state: RunState) -> None:
        running = state.busy
        self.train_button.enabled = not running
        self.stop_button.enabled = state is RunState.RUNNING
        self.load_button.enabled = not running
        self.train_button.tooltip = "a training is running: Stop it first" if running else ""
        if state is RunState.STOPPING:
            self.status.value = "stopping after this batch…"
        elif state is RunState.FAILED:
            self.status.value = "training failed"

    # ---- keep improving while the user paints ----------------------------------------------------

    def _count_edit(self) -> None:
        """A stroke: with "keep improving" on and a model trained, a round starts once the user
        has stopped painting for ROUND_DELAY_MS (or when the running one ends)."""
        self._edits += 1
        if self.keep_improving.value and self.session.model is not None and not self.job.busy:
            self._round_timer.start(ROUND_DELAY_MS)

    def _next_round(self, state: RunState) -> None:
        """A training ended: with "keep improving" on, go on at once if strokes were painted meanwhile
        or the round still improved on the held-out strokes; otherwise wait for the next stroke."""
        if state is not RunState.DONE or not self.keep_improving.value or self.session.model is None:
            return
        painted = self._round_edits is not None and self._edits > self._round_edits
        if painted or _improved(self.job.info.get("previous"), self.session.model):
            self._round_timer.start(0)  # in a later turn: relay.finished of this run comes first
        else:
            self.status.value += " · keep improving: waiting for new strokes"

    def _start_round(self) -> None:
        if self.keep_improving.value and self.session.model is not None:
            self.start(round_=True)

    def _on_event(self, event: Any, arrived: float | None = None) -> None:
        now = time.perf_counter() if arrived is None else arrived
        if isinstance(event, events.TrainingStarted):
            epochs = event.epochs - event.first_epoch + 1
            self._total_batches = max(1, epochs * event.batches_per_epoch)
            self._done_batches = 0
            self._started_at = now
            self.progress.max = self._total_batches
            self.status.value = (
                f"training on {event.device}: {event.train_samples} training / {event.val_samples} validation images"
            )
        elif isinstance(event, events.BatchEnded):
            self._done_batches += 1
            self.progress.value = min(self._done_batches, self._total_batches)
            elapsed = now - self._started_at
            left = elapsed / self._done_batches * (self._total_batches - self._done_batches)
            self.status.value = (
                f"epoch {event.epoch} · batch {event.batch}/{event.batches} · loss {event.loss:.4f} · "
                f"{_clock(left)} left"
            )
        elif isinstance(event, events.EpochEnded):
            self.curves.add_epoch(
                {"epoch": event.epoch, "train_loss": event.train_loss, "val_loss": event.val_loss, **event.metrics}
            )
        elif isinstance(event, events.Message) and arrived is None:  # a reopened dock does not say it again
            (show_warning if event.level == "warning" else show_info)(event.text)
        elif isinstance(event, events.TrainingFinished):
            best = ", ".join(f"{k} {v:.4f}" for k, v in event.best.items())
            epochs = event.epochs_completed
            self.status.value = f"{event.reason} after {epochs} epoch{'s' if epochs != 1 else ''} · best: {best}"

    def _refill_form(self, config: Any) -> None:
        self._filling = True
        try:  # the planned values of the latest plan: their reasons become the fields' tooltips
            self.form.set_config(config, self.session.reasons_for(config))
        finally:
            self._filling = False

    def _set_class_count(self, count: int) -> None:
        """The data's classes (a scanned dataset, the painted labels): shown, not counted as typed."""
        self._filling = True
        try:
            self.form.show_value("Model", "num_classes", count)
        finally:
            self._filling = False

    def _form_edited(self) -> None:
        """Keep the session on the form's values, so the other widgets see unsaved edits too."""
        if self._filling:
            return
        try:
            config = self.form.config()
        except SchismError:
            return  # a value being typed; Train reports it if it stays wrong
        self.session.set_config(config)

    def _show_data(self) -> None:
        self.data_label.value = "training data: " + self.session.describe_data()
        self._show_label_counts()

    def _show_label_counts(self, sources: TrainingSources | None = None) -> None:
        """How many pixels are labelled per class, and on which slices (layer pairs only)."""
        count = self.session.config.model.class_count
        try:
            masks = sources.masks if sources is not None else [p.mask(count) for p in self.session.pairs]
        except SchismError:
            return  # labels beyond the classes: Train says so
        if not masks:
            self.label_counts.value = ""
            return
        parts = []
        for name, (pixels, slices) in zip(self.session.names(), labelled_pixels(masks, count), strict=True):
            where = f" on slice{'s' if len(slices) != 1 else ''} {_ranges(slices)}" if pixels else ""
            parts.append(f"{name}: {pixels} px{where}")
        self.label_counts.value = "labelled: " + "; ".join(parts)

    def _on_model(self, model: TrainedModel | None) -> None:
        self.fine_tune.enabled = model is not None
        if model is None:
            self.fine_tune.value = False
        selection = None if model is None else model.selection
        self.choice.value = "" if selection is None else f"predicting with the {selection.describe()}"


def _train(
    sources: TrainingSources,
    run_dir: Path,
    initial: dict[str, torch.Tensor] | None,
    preview: tuple[np.ndarray, bool, int | None] | None,
    *,
    callback: ProgressCallback,
    stop: StopToken,
) -> tuple[TrainingResult, SegmentationData, np.ndarray | None, Plan, TrainedModel]:
    """In the worker: the session's training request (read the data, plan the keys the user left
    alone, hold out strokes, fit the forest, train, choose between the forest, the network and their
    average; see :mod:`schism_napari.workflows.train`), with the forest's preview shown before the
    network trains and the preview slice predicted with the choice. The GUI thread keeps priority
    over its threads (:func:`~schism_napari.plumbing.resources.apply_threads`)."""
    from ..plumbing.resources import apply_threads
    from ..workflows import train

    apply_threads(sources.config.training.threads, leave_for_gui=True)
    if preview is not None:
        prepare_layer_code()  # the preview layer is made in the GUI thread: its one-time costs are paid here
    image, rgb, z = preview if preview is not None else (None, False, None)
    forest_slices: list[np.ndarray | None] = []

    def show_forest(forest: PixelClassifier) -> None:
        if image is not None:
            forest_slices.append(_forest_preview(forest, image, z, callback))

    outcome = train(sources.train_request(run_dir, initial), callback=callback, stop=stop, on_forest=show_forest)
    assert outcome.result is not None and outcome.plan is not None and outcome.model is not None
    shown = None
    if image is not None:
        shown = _chosen_preview(outcome, image, rgb, forest_slices[0] if forest_slices else None)
    return outcome.result, outcome.data, shown, outcome.plan, outcome.model


def _chosen_preview(
    outcome: TrainOutcome, image: np.ndarray, rgb: bool, forest_slice: np.ndarray | None
) -> np.ndarray | None:
    """The preview slice's probabilities from what the held-out strokes chose."""
    selection, forest, predictor = outcome.selection, outcome.forest, outcome.predictor
    assert selection is not None and predictor is not None
    if forest_slice is None and forest is not None and selection.forest_weight > 0:
        forest_slice = forest.predict_proba(image if image.ndim == 3 else image[..., None])
    from_network = None
    if selection.forest_weight < 1 or forest_slice is None:
        from_network = np.asarray(predictor.predict(image, rgb=rgb).probabilities)
    return selection.probabilities(from_network, forest_slice)


def _on_preview(viewer: Any, session: Session, preview: tuple[Any, int | None] | None, event: Any) -> None:
    if isinstance(event, ForestPreview):
        if preview is None:
            event.shown.set()
            return
        image = preview[0]
        steps = show_preview(viewer, session, image, event.probabilities, event.z, source="forest")
        run_in_turns(steps, done=event.shown.set, failed=_report_preview_failure, alive=lambda: image in viewer.layers)


def _preview_slice(preview: tuple[Any, int | None] | None) -> tuple[np.ndarray, bool, int | None] | None:
    """(image layer, z) -> (a copy of that slice, rgb, z), taken in the GUI thread."""
    if preview is None:
        return None
    layer, z = preview
    data = layer.data if z is None else layer.data[z]
    return np.array(data, copy=True), bool(layer.rgb), z


def _forest_preview(
    forest: PixelClassifier, image: np.ndarray, z: int | None, callback: ProgressCallback
) -> np.ndarray | None:
    """Send the forest's prediction of the preview slice and wait (at most PREVIEW_WAIT_S) until the
    GUI thread has shown it; return it (None when the forest cannot predict that slice)."""
    try:
        probabilities = forest.predict_proba(image if image.ndim == 3 else image[..., None])
    except (SchismError, ValueError):
        return None  # a preview is a courtesy: training goes on without it
    event = ForestPreview(np.asarray(probabilities, dtype=np.float32), z)
    callback(event)  # the dock's own event, for its relay
    event.shown.wait(PREVIEW_WAIT_S)
    return event.probabilities


def _take_model(
    viewer: Any,
    session: Session,
    returned: tuple[TrainingResult, SegmentationData, np.ndarray | None, Plan, TrainedModel],
) -> None:
    """In the GUI thread, whether or not a dock is open: the new model (the network, the forest or
    their average, as the held-out strokes chose) joins the session, the form shows the planned
    values, and the chosen prediction of the preview slice replaces the forest's (the run settles
    once that layer is in: see :mod:`.turns`)."""
    result, _data, chosen, plan, model = returned
    session.set_model(model)
    session.replace_config(plan.config, plan.reasons)  # the keys the user left alone show what was planned
    job = session.job("training")
    preview = job.info.get("preview")
    choice = model.selection.choice if model.selection is not None else "network"
    if chosen is not None and preview is not None:
        image = preview[0]
        steps = show_preview(viewer, session, image, chosen, preview[1], source=choice)
        run_in_turns(
            steps, done=job.settle_later(), failed=_report_preview_failure, alive=lambda: image in viewer.layers
        )
    planned = sum("." in key for key in plan.reasons)
    note = f"; {planned} settings planned from the data (their tooltips say why)" if planned else ""
    show_info(f"training {result.reason}; run folder {result.run_dir}{note}")
    if model.selection is not None:
        show_info(f"{'showing' if preview is not None else 'predicting with'} the {model.selection.describe()}")


def _score_of(model: TrainedModel | None) -> float | None:
    """The held-out mean IoU of the session model's choice (None: no choice was made)."""
    selection = None if model is None else model.selection
    if selection is None:
        return None
    score = selection.scores.get(selection.choice)
    return None if score is None or not np.isfinite(score) else float(score)


def _improved(previous: float | None, model: TrainedModel) -> bool:
    """Whether the latest round beat the one before on the same held-out strokes (a first Train,
    which has no round before it, counts as an improvement)."""
    from ..forest.selection import TIE

    score = _score_of(model)
    return score is not None and (previous is None or score > previous + TIE)


def _shortened(config: SchismConfig) -> SchismConfig:
    """A copy of ``config`` that trains for at most ROUND_MINUTES (a budget in epochs stays as it is)."""
    config = copy.deepcopy(config)
    budget = config.training.time_budget
    if budget is not None and budget > ROUND_MINUTES:
        config.set_given("Training", "time_budget", ROUND_MINUTES)
    return config


def _keep_architecture(config: SchismConfig, model: SchismConfig) -> None:
    """Fine-tuning continues the session's network: its [Model] keys are fixed, not planned again."""
    for f in dataclasses.fields(model.model):
        if not config.is_given("Model", f.name):
            config.set_given("Model", f.name, getattr(model.model, f.name))


def _report_failure(error: BaseException) -> None:
    show_error(f"training failed: {describe(error)}")


def _report_preview_failure(error: BaseException) -> None:
    show_error(f"showing the preview failed: {describe(error)}")


def show_preview(
    viewer: Any, session: Session, image: Any, probabilities: np.ndarray, z: int | None, source: str
) -> Generator[None, None, Any]:
    """The preview layer of an image: labels of one slice (class k as k + 1), the rest unpainted.

    A generator (see :mod:`.turns`): a new layer is added in an event-loop turn of its own.
    Returns the layer, or None when the image has left the viewer.
    """
    from napari.layers import Labels

    from ..data.labels import mask_to_labels

    if image not in viewer.layers:
        return None
    spatial = image.data.shape[:-1] if image.rgb else image.data.shape
    full = np.zeros(spatial, np.uint8)
    labels = mask_to_labels(np.argmax(probabilities, axis=0).astype(np.uint8))
    if z is None:
        full[:] = labels
    else:
        full[z] = labels
    family = session.results_for(image, viewer.layers)
    layer = family.preview
    if layer is not None and layer.data.shape == spatial:
        layer.data = full
        layer.metadata["schism_preview"] = source
        layer.visible = True
        session.paint_colors(layer, len(probabilities))
        return layer
    layer = Labels(
        full,
        name=f"{image.name} preview",
        scale=image.scale[-len(spatial) :],
        translate=image.translate[-len(spatial) :],
        opacity=0.5,
        metadata={"schism_preview": source},
    )
    session.paint_colors(layer, len(probabilities))
    family.preview = layer
    # under the scribbles: the preview must never hide what the user painted
    painted = next((pair.labels for pair in session.pairs if pair.image is image), None)
    yield from add_in_turns(viewer, layer, below=painted)
    return layer


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[tuple[int, int]] = []
    for v in values:
        if parts and parts[-1][1] == v - 1:
            parts[-1] = (parts[-1][0], v)
        else:
            parts.append((v, v))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
