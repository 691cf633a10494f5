"""The Prediction tab's side of stacks streamed to disk: a run predicted into a store, its slices
merged into the labels a few per event-loop turn, and the threshold of a stored stack.

A stack whose results would not sit well in memory (or one read lazily) is predicted into a store
on disk (:mod:`schism_napari.data.volume_store`), the current slice first, then the rest; the
result layers read the store, and the Labels layer paints into it.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error

from ..data.labels import Corrections
from ..data.volume_store import store_labels, threshold_labels
from ..errors import Cancelled, SchismError
from .layer_turns import Steps, run_in_turns
from .prediction_work import predict_into_store
from .relay import describe
from .result_layers import PER_CLASS, current_z, refresh_results, show_streamed
from .volumes import StreamedRun, store_for, stored_prediction

if TYPE_CHECKING:
    from pathlib import Path

    from magicgui.widgets import ComboBox, FloatSlider, Label
    from napari.layers import Image

    from .jobs import Job
    from .session import ResultLayers, Session

# pixels of a streamed stack's labels merged per event-loop turn: each slice is a few chunk reads and
# writes (25-30 ms per 1024² slice), so two 1024² slices, or more smaller ones, per turn
TURN_PIXELS = 2 * 1024 * 1024


class StreamsToDisk:
    """The streamed half of :class:`.prediction.PredictionWidget` (a mixin of it).

    It exists apart so the prediction module keeps to choosing and starting a prediction: what a
    stored run needs between the worker's events and the layers (merging slices in turns,
    refreshing the slice on screen, a threshold pass over the store) lives here. It uses the
    widget's ``viewer``, ``session``, ``job``, ``status`` and settings, and hands the binary
    foreground back through ``_results_shown``.
    """

    viewer: Any
    session: Session
    job: Job
    status: Label
    threshold: FloatSlider
    layout_choice: ComboBox
    ensemble_runs: list[Path]
    _foreground: Any
    _threshold_token: object

    def _results_shown(self, foreground: Any) -> None:
        raise NotImplementedError

    def _predict_streamed(self, layer: Image, model: Any, settings: Any, data: Any, z: int | None) -> None:
        """Predict ``layer`` into its store on disk, slice ``first`` before the others; the layers read
        the store. ``z``: only that slice (the preview)."""
        from ..events import SlicesStored

        first = z if z is not None else min(max(current_z(self.viewer), 0), data.shape[0] - 1)
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
            predict_into_store,
            model,
            settings,
            data,
            list(self.ensemble_runs),
            store,
            first,
            z is not None,
            control=True,
            on_returned=returned,
            on_errored=report_failure,
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
            self._drain_stored(run), done=drained, failed=report_display, alive=lambda: run.layer in self.viewer.layers
        )

    def _stream_corrections(self, run: StreamedRun) -> Corrections | None:
        """The image's corrections when they are the ones in this run's store."""
        family = self.session.results.get(run.layer)
        corrections = None if family is None else family.corrections
        return corrections if corrections is not None and corrections.predicted is run.store.predicted else None

    def _drain_stored(self, run: StreamedRun) -> Steps:
        """Merge stored slices into the labels, :data:`TURN_PIXELS` per event-loop turn; the layers
        refresh when they show one of them."""
        per_turn = slices_per_turn(run.store.shape)
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
                if family is not None and self.viewer.dims.ndisplay == 2 and low <= current_z(self.viewer) < high:
                    refresh_results(family)
                yield

    def _show_streamed(self, run: StreamedRun) -> Steps:
        """The run's layers, reading its store (:func:`.result_layers.show_streamed`)."""
        per_class = self.layout_choice.value == PER_CLASS
        foreground = yield from show_streamed(self.viewer, self.session, run, per_class)
        self._results_shown(foreground)

    def _stream_returned(self, run: StreamedRun) -> None:
        run.status = f"slice {run.first} predicted" if run.preview else "done"
        if not run.draining:
            self._finish_stream(run)

    def _finish_stream(self, run: StreamedRun) -> None:
        family = self.session.results.get(run.layer)
        if family is not None and self.viewer.dims.ndisplay == 3:
            refresh_results(family)  # in 3D, once at the end: each refresh reads the whole volume
        with contextlib.suppress(RuntimeError):  # the dock was closed meanwhile
            self.status.value = run.status or "done"

    def _threshold_streamed(self, image: Image, family: ResultLayers) -> None:
        """The threshold of a stack on disk, slab by slab in event-loop turns; a newer threshold
        replaces a pass still running."""
        store, labels, corrections = stored_prediction(self.session, image), family.labels, family.corrections
        if store is None or labels is None or corrections is None or labels.data is not store.corrected:
            return
        token = self._threshold_token = object()
        per_turn = slices_per_turn(store.shape)
        threshold = float(self.threshold.value)
        reviewed = corrections.reviewed
        steps = threshold_labels(
            self._foreground, threshold, store.corrected, store.predicted, reviewed, store.edited, slab=per_turn
        )

        def passes() -> Steps:
            z = current_z(self.viewer)
            for high in steps:
                if high - per_turn <= z < high:
                    labels.refresh()
                yield

        def done() -> None:
            if self._threshold_token is token:
                self._threshold_token = None

        run_in_turns(passes(), done=done, failed=report_display, alive=lambda: self._threshold_token is token)


def slices_per_turn(shape: tuple[int, ...]) -> int:
    return max(1, TURN_PIXELS // max(1, int(shape[-1]) * int(shape[-2])))


def report_display(error: BaseException) -> None:
    show_error(f"showing the prediction failed: {describe(error)}")


def report_failure(error: BaseException) -> None:
    if not isinstance(error, Cancelled):
        show_error(f"prediction failed: {describe(error)}")
