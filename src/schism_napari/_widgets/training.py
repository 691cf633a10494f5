"""Training widget: the configuration form, Load/Save INI, Train/Stop with progress and live curves.

Training runs in a napari thread worker; the core's events reach the GUI thread through a Qt
signal, so the viewer stays responsive. Stop asks the core to end after the current batch; the
best weights are kept and become the session's model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QFileDialog

from .. import events
from ..atomic import unique_path
from ..data.dataset import SegmentationData
from ..errors import SchismError
from ..events import StopToken
from ..runs import TrainedModel, default_class_names
from ..training.trainer import Trainer, TrainingResult
from .config_form import ConfigForm
from .curves import CurvesCanvas
from .relay import EventRelay, describe
from .session import Session, session_for, unwrap_viewer

DEFAULT_RUNS = Path.home() / "schism-napari-runs"


if TYPE_CHECKING:
    import napari


class TrainingWidget(Container):
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
        self.runs_folder.tooltip = "Each training creates a new run folder here (SCHISM files: weights, curves, logs)."
        self.fine_tune = CheckBox(text="continue from current model (fine-tune)", value=False, enabled=False)
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="ready")
        self.curves = CurvesCanvas()
        self.extend(
            [
                Container(widgets=[self.load_button, self.save_button], layout="horizontal", labels=False),
                self.data_label,
                Container(widgets=[self.runs_folder], labels=True),
                self.fine_tune,
                Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False),
                self.progress,
                self.status,
            ]
        )
        layout = self.native.layout()
        layout.insertWidget(0, self.form.tabs)
        layout.addWidget(self.curves)

        self.worker: Any = None
        self.stop_token: StopToken | None = None
        self.relay = EventRelay()
        self.relay.event.connect(self._on_event)
        self.last_result: TrainingResult | None = None
        self._started_at = 0.0
        self._total_batches = 1
        self._done_batches = 0

        self.load_button.changed.connect(self._ask_load_ini)
        self.save_button.changed.connect(self._ask_save_ini)
        self.train_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.session.data_changed.connect(self._show_data)
        self.session.model_changed.connect(self._on_model)
        self.session.config_replaced.connect(self._refill_form)
        self.session.class_count_requested.connect(self._set_class_count)
        self._filling = False
        self.form.on_change(self._form_edited)
        self._show_data()

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
        return self.worker is not None

    def start(self) -> None:
        if self.running:
            return
        try:
            config = self.form.config()
            self.session.set_config(config)
            sources = self.session.snapshot()
            initial = None
            if self.fine_tune.value and self.session.model is not None:
                initial = {k: v.detach().clone() for k, v in self.session.model.model.state_dict().items()}
            folder = Path(self.runs_folder.value).expanduser()
            run_dir = unique_path(folder / time.strftime("run_%Y%m%d_%H%M%S"))
        except SchismError as error:
            show_error(str(error))
            return
        self.stop_token = stop = StopToken()

        def train() -> tuple[TrainingResult, SegmentationData]:
            """In the worker: read the data (a folder can take a while), then train."""
            data = sources.load()
            trainer = Trainer(
                config,
                data,
                run_dir,
                initial_weights=initial,
                callback=self.relay.emit,
                stop=stop,
                curves_each_epoch=False,  # the dock draws them live
            )
            return trainer.run(), data

        self.curves.reset(config.training.score_metrics())
        self.progress.value = 0
        self.status.value = "reading the training data…"
        self.worker = create_worker(train, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_errored)
        self.worker.finished.connect(self._on_finished)
        self._set_running(True)
        self.worker.start()

    def stop(self) -> None:
        if self.stop_token is not None:
            self.stop_token.request()
            self.status.value = "stopping after this batch…"

    def _set_running(self, running: bool) -> None:
        self.train_button.enabled = not running
        self.stop_button.enabled = running
        self.load_button.enabled = not running
        self.session.set_busy(running)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, events.TrainingStarted):
            epochs = event.epochs - event.first_epoch + 1
            self._total_batches = max(1, epochs * event.batches_per_epoch)
            self._done_batches = 0
            self._started_at = time.perf_counter()
            self.progress.max = self._total_batches
            self.status.value = (
                f"training on {event.device}: {event.train_samples} training / {event.val_samples} validation images"
            )
        elif isinstance(event, events.BatchEnded):
            self._done_batches += 1
            self.progress.value = min(self._done_batches, self._total_batches)
            elapsed = time.perf_counter() - self._started_at
            left = elapsed / self._done_batches * (self._total_batches - self._done_batches)
            self.status.value = (
                f"epoch {event.epoch} · batch {event.batch}/{event.batches} · loss {event.loss:.4f} · "
                f"{_clock(left)} left"
            )
        elif isinstance(event, events.EpochEnded):
            self.curves.add_epoch(
                {"epoch": event.epoch, "train_loss": event.train_loss, "val_loss": event.val_loss, **event.metrics}
            )
        elif isinstance(event, events.Message):
            (show_warning if event.level == "warning" else show_info)(event.text)
        elif isinstance(event, events.TrainingFinished):
            best = ", ".join(f"{k} {v:.4f}" for k, v in event.best.items())
            self.status.value = f"{event.reason} after {event.epochs_completed} epochs · best: {best}"

    def _on_returned(self, returned: tuple[TrainingResult, SegmentationData]) -> None:
        result, data = returned
        self.last_result = result
        names = data.class_names or default_class_names(data.class_count)
        model = TrainedModel(
            result.config,
            result.model,
            data.stats["default"],
            data.in_channels,
            list(names),
            data.class_colors,
            f"{result.run_dir} (model_best_loss.pth)",
        )
        self.session.set_model(model)
        show_info(f"training {result.reason}; run folder {result.run_dir}")

    def _on_errored(self, error: Exception) -> None:
        message = describe(error)
        self.status.value = "training failed"
        show_error(f"training failed: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self._set_running(False)
        self.relay.finished.emit()

    def _refill_form(self, config: Any) -> None:
        self._filling = True
        try:
            self.form.set_config(config)
        finally:
            self._filling = False

    def _set_class_count(self, count: int) -> None:
        self.form.widget("Model", "num_classes").value = count

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

    def _on_model(self, model: TrainedModel | None) -> None:
        self.fine_tune.enabled = model is not None
        if model is None:
            self.fine_tune.value = False


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
