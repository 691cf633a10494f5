"""Export of the session's model for other tools (ONNX, TorchScript, a bioimage.io package).

The export runs in the session's "export" job: torch and the exporters are imported in its worker,
and the written file is checked against torch there (bioimage.io packages also by bioimageio.core).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..errors import SchismError
from .jobs import FollowsJob, Job, follow
from .relay import EventRelay, describe
from .session import Session

EXPORT_FORMATS = {  # format -> (file suffix, save dialog filter)
    "onnx": (".onnx", "ONNX model (*.onnx)"),
    "torchscript": (".pt", "TorchScript model (*.pt)"),
    "bioimageio": (".zip", "bioimage.io package (*.zip)"),
}


class ExportWidget(FollowsJob, Container):
    """The export row of the Prediction tab: a format and "Export model…".

    It exists apart from prediction because it needs only the session's model, not an image or a
    result, and has a job of its own (``self.job`` is the session's "export" job, so ``relay``
    is the export's). ``status`` is the tab's status line.
    """

    def __init__(self, session: Session, status: Label):
        super().__init__(layout="horizontal", labels=False)  # as the row was: no "export as" label
        self.margins = (0, 0, 0, 0)  # its row lines up with the rest of the tab
        self.session, self.status = session, status
        self.export_format = ComboBox(choices=list(EXPORT_FORMATS), value="onnx", label="export as")
        self.export_format.tooltip = (
            "onnx / torchscript: one file plus a .json describing inputs and classes; bioimageio: a bioimage.io "
            "package (.zip), tested with bioimageio.core (slower)."
        )
        self.export_button = PushButton(text="Export model…")
        self.export_button.tooltip = "Save the current model for other tools; its output is checked against torch."
        self.extend([self.export_format, self.export_button])
        self.job: Job = self.session.job("export")
        self.export_button.changed.connect(self._ask_export)
        follow(self.native, self.session.model_changed, lambda _model: self._update_enabled())
        follow(self.native, self.job.state_changed, lambda _state: self._update_enabled())
        self._update_enabled()

    @property
    def export_job(self) -> Job:
        return self.job

    @property
    def export_relay(self) -> EventRelay:
        """``export_relay.finished`` fires when an export has ended (written or failed)."""
        return self.job.relay

    def _update_enabled(self) -> None:
        self.export_button.enabled = self.session.model is not None and not self.job.busy

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
        started = self.job.start(
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


def _export(model: Any, fmt: str, out: Path) -> tuple[Path, str | None]:
    """In the worker: export and check the model (bioimage.io packages also get bioimageio.core's test)."""
    from ..runs.export import check_bioimageio, export_bioimageio, export_onnx, export_torchscript, exportable

    write = {"onnx": export_onnx, "torchscript": export_torchscript, "bioimageio": export_bioimageio}[fmt]
    try:
        path = write(exportable(model), out)
    except ImportError as error:
        raise SchismError(f"exporting as {fmt} needs {error.name}: pip install 'schism-napari[export]'") from None
    return path, (str(check_bioimageio(path).status) if fmt == "bioimageio" else None)


def _report_export_failure(error: BaseException) -> None:
    show_error(f"export failed: {describe(error)}")
