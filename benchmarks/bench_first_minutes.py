"""The first minutes in napari, scripted as one user's session (issue #18's napari measurement).

One viewer (Xvfb without a display), the SCHISM dock with its **starting values** (nothing in the
form touched), an ISBI EM stack of 25 slices with about 1 % of the pixels painted as strokes on
three slices (3, 12, 21), the viewer on slice 12 (napari's middle slice). Then, as a user would:

1. **Train** with the instant preview: the forest's preview of slice 12 appears within seconds;
   when training ends, what replaces it (the held-out choice between forest, network and their
   average) is shown on the same layer. Both are scored on slice 12 against the ground truth.
2. **Predict** the stack with the session's model: mean IoU of the 25 slices.
3. Twice: **Next uncertain slice**, the user corrects it to the ground truth and marks it reviewed,
   **Add to training set**, **Train** again (fine-tuning), **Predict**: the stack's mean IoU.

The ground truth of the whole stack scores every step (the user's corrected slices included, so the
correction itself counts, as it does for a user). Run alone, from the repository root::

    xvfb-run -a .venv/bin/python benchmarks/bench_first_minutes.py      # about 8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench_corrections import load_stack, mean_iou
from bench_soak import pump, wait_for

ISBI = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "isbi2012-em"
PAINTED_SLICES = (3, 12, 21)
SCRIBBLED = 0.01  # of each painted slice's pixels
STROKE_PIXELS = 51  # a stroke of scribbles(): 17 steps x 3 px


def painted_strokes(truth: np.ndarray) -> np.ndarray:
    """About 1 % of each painted slice's pixels as strokes inside each class (napari labels 1..K)."""
    from schism_napari.sample import scribbles

    classes = int(truth.max())
    strokes = max(2, round(SCRIBBLED * truth[0].size / STROKE_PIXELS / classes))
    return scribbles(truth - 1, slices=PAINTED_SLICES, strokes_per_class=strokes, seed=0)


def wait_for_preview(session: Any, image: Any, viewer: Any, timeout: float = 120.0) -> Any:
    """Pump events until the image's preview layer shows the forest; return a copy of its labels."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        family = session.results_for(image, viewer.layers)
        layer = family.preview
        if layer is not None and layer.metadata.get("schism_preview") == "forest":
            return np.array(layer.data, copy=True)
        pump(0.05)
    raise TimeoutError("no forest preview appeared")


class GapRecorder:
    """The GUI event loop's lateness: a 10 ms Qt timer's gaps between ticks."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.timeout.connect(self._tick)
        self.timer.start(10)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self.last) * 1000)
        self.last = now

    def stop(self) -> None:
        self.timer.stop()

    def describe(self) -> str:
        gaps = sorted(self.gaps)
        return f"ticks {len(gaps)}, median {np.median(gaps):.0f} ms, p99 {gaps[int(len(gaps) * 0.99)]:.0f} ms"


def slice_iou(truth: np.ndarray, labels: np.ndarray, class_count: int) -> float:
    return mean_iou(truth[None], labels[None], class_count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isbi", type=Path, default=ISBI, help="the isbi2012-em folder")
    parser.add_argument("--cycles", type=int, default=2, help="correct -> retrain -> predict cycles")
    parser.add_argument(
        "--gui-core",
        action="store_true",
        help="leave the GUI a whole core (the behaviour before workers yielded to the GUI thread), to compare",
    )
    args = parser.parse_args(argv)
    if args.gui_core:
        from schism_napari.plumbing import resources

        resources.yield_to_gui = lambda *_, **__: False

    from schism_napari.cli.launch import load_triton_before_opengl

    load_triton_before_opengl()
    import tempfile

    import napari

    from schism_napari import events
    from schism_napari._widgets.session import session_for

    volume, truth = load_stack(args.isbi, (25, 512, 512))
    class_count = int(truth.max())
    viewer = napari.Viewer(show=True)
    image = viewer.add_image(volume, name="em")
    strokes = viewer.add_labels(painted_strokes(truth), name="strokes")
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    session = session_for(viewer)
    wait_for(session.job("warm-up"))
    dock.dataset.reset_choices()
    dock.dataset.image_layer.value, dock.dataset.labels_layer.value = image, strokes
    dock.dataset.add_pair_button.clicked.emit()
    runs = tempfile.TemporaryDirectory(prefix="schism-first-minutes-")
    dock.training.runs_folder.value = Path(runs.name)
    z = PAINTED_SLICES[1]
    viewer.dims.set_current_step(0, z)
    prediction = dock.prediction
    rows: list[tuple[str, str, float, float]] = []

    def train() -> float:
        """Press Train (fine-tuning once there is a model); returns when it was pressed."""
        started = time.perf_counter()
        dock.training.fine_tune.value = session.model is not None
        dock.training.train_button.clicked.emit()
        return started

    def predict() -> np.ndarray:
        prediction.reset_choices()
        prediction.image.value = image
        prediction.predict_button.clicked.emit()
        wait_for(session.job("prediction"))
        return np.asarray(prediction.labels_layer.data)

    gaps = GapRecorder()
    started = train()
    preview = wait_for_preview(session, image, viewer)
    preview_seconds = time.perf_counter() - started
    rows.append(("forest preview", f"slice {z}", slice_iou(truth[z], preview[z], class_count), preview_seconds))
    print(f"forest preview after {preview_seconds:.1f} s: slice {z} mean IoU {rows[-1][2]:.3f}", flush=True)
    wait_for(session.job("training"))
    gaps.stop()
    steps = sum(isinstance(event, events.BatchEnded) for _, event in session.job("training").history)
    print(f"first training: {steps} optimizer steps; GUI event loop while training: {gaps.describe()}", flush=True)
    replaced = np.asarray(session.results_for(image, viewer.layers).preview.data)
    choice = session.model.selection.choice if session.model.selection is not None else "network"
    seconds = time.perf_counter() - started
    rows.append((f"what replaces it ({choice})", f"slice {z}", slice_iou(truth[z], replaced[z], class_count), seconds))
    print(f"replaced by the {choice} after {seconds:.0f} s: slice {z} mean IoU {rows[-1][2]:.3f}", flush=True)
    print(f"  {session.model.selection.describe() if session.model.selection else ''}", flush=True)
    labels = predict()
    rows.append(("first prediction", "stack", mean_iou(truth, labels, class_count), time.perf_counter() - started))
    print(f"first prediction: stack mean IoU {rows[-1][2]:.3f}", flush=True)

    for cycle in range(1, args.cycles + 1):
        prediction.next_uncertain_button.clicked.emit()
        pump(0.2)
        corrected = int(viewer.dims.current_step[viewer.dims.ndim - 3])  # z: probabilities add a class axis
        layer = prediction.labels_layer
        layer.data[corrected] = truth[corrected]
        layer.refresh()
        prediction.review_button.clicked.emit()
        prediction.add_button.clicked.emit()
        pump(0.2)
        cycle_started = train()
        wait_for(session.job("training"))
        labels = predict()
        choice = session.model.selection.choice if session.model.selection is not None else "network"
        rows.append(
            (
                f"correct slice {corrected}, retrain ({choice}), predict",
                "stack",
                mean_iou(truth, labels, class_count),
                time.perf_counter() - cycle_started,
            )
        )
        print(f"cycle {cycle}: corrected slice {corrected}; stack mean IoU {rows[-1][2]:.3f}", flush=True)

    session.shutdown()
    viewer.close()
    runs.cleanup()
    print("\n| step | scored on | mean IoU | seconds |")
    print("|---|---|---|---|")
    for name, where, iou, seconds in rows:
        print(f"| {name} | {where} | {iou:.3f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
