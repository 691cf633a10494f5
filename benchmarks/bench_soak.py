"""A long napari session holds steady: train -> predict -> correct, again and again, in one viewer.

Issue #20's soak check. One viewer (under Xvfb when there is no display), the SCHISM dock, a small
synthetic rock-CT stack with scribbles; each cycle presses Train (fine-tuning from the second cycle
on), Predict, corrects a block of the prediction, marks a slice reviewed and adds the prediction to
the training set, exactly as a user would with the dock's buttons. After each cycle it collects
garbage and reports:

- RSS (MB) of the process;
- live models (``torch.nn.Module`` objects that are the root of a network: not a sub-module of another
  live module), live tensors and their megabytes;
- napari thread workers still running, finished ones still referenced (napari's task list keeps each
  worker it saw for the window's life: a shell that must hold no data), Python threads, and the
  layers in the viewer.

The check: RSS after the last cycle within 10 % of RSS after cycle 2 (cycle 1 pays one-time costs:
imports, oneDNN kernels, the first layers), and no model, worker or layer count growing with the
cycles.

    xvfb-run -a .venv/bin/python benchmarks/bench_soak.py              # 10 cycles (about 5-8 minutes)
    xvfb-run -a .venv/bin/python benchmarks/bench_soak.py --cycles 3   # smoke check
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.005)


def wait_for(job: Any, timeout: float = 600.0) -> None:
    """Pump events until a job has run and settled (its layers are in)."""
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    pump(0.05)
    while (job.busy or job.worker is not None) and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.01)
    if job.busy:
        raise TimeoutError(f"{job.kind} did not finish in {timeout:.0f} s")
    if job.error is not None:
        raise RuntimeError(f"{job.kind} failed: {job.error}")


def live_objects() -> dict[str, float]:
    """Root networks, tensors (count, MB) and napari workers that are still referenced."""
    import torch
    from napari.qt.threading import WorkerBase

    gc.collect()
    modules, tensors, tensor_bytes, workers = [], 0, 0, 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.nn.Module):
                modules.append(obj)
            elif isinstance(obj, torch.Tensor):
                tensors += 1
                tensor_bytes += obj.element_size() * obj.nelement()
            elif isinstance(obj, WorkerBase):
                workers += 1
        except ReferenceError:  # a weak proxy whose object is gone
            continue
    children = {id(child) for module in modules for child in module.children()}
    roots = sum(1 for module in modules if id(module) not in children and any(True for _ in module.children()))
    running = len(WorkerBase._worker_set)  # superqt's set of started, unfinished workers
    megabytes = tensor_bytes / 2**20
    return {"models": roots, "tensors": tensors, "tensor_mb": megabytes, "running": running, "shells": workers}


def show_referrers() -> None:
    """Debugging aid: what holds the oldest live network and worker."""
    import torch
    from napari.qt.threading import WorkerBase

    gc.collect()
    for kind in (torch.nn.Module, WorkerBase):
        found = [o for o in gc.get_objects() if isinstance(o, kind)]
        if not found:
            continue
        target = found[0]
        for referrer in gc.get_referrers(target):
            if referrer is found:
                continue
            text = repr(referrer)[:200] if not isinstance(referrer, dict) else str(list(referrer)[:12])
            print(kind.__name__, type(referrer).__name__, text)


def small_form(training: Any, epochs: int) -> None:
    """A network small enough for a cycle to take seconds on 2 cores."""
    values = {
        ("Model", "model_type"): "UnetSegmentor",
        ("Model", "n_block"): 2,
        ("Model", "channels"): 8,
        ("Scheduler", "scheduler"): "None",
        ("Loss", "loss"): "CrossEntropyLoss",
        ("Training", "epochs"): epochs,
        ("Training", "time_budget"): 0.1,  # minutes: a short run whatever the machine
        ("Training", "batch_size"): 8,
        ("Data", "crop_size"): 64,
        ("Data", "img_res"): 64,
    }
    for (section, key), value in values.items():
        training.form.widget(section, key).value = value


def open_scribbled(
    volume: np.ndarray, painted: np.ndarray, epochs: int, prefix: str, class_count: int | None = None
) -> tuple[Any, Any, Any, tempfile.TemporaryDirectory[str]]:
    """A viewer with the image and its scribbles paired in the SCHISM dock (once torch is loaded), a
    small network in the form and a temporary runs folder: (viewer, dock, image layer, runs folder)."""
    import napari

    from schism_napari._widgets.session import session_for

    viewer = napari.Viewer(show=True)
    image = viewer.add_image(volume, name="scan")
    strokes = viewer.add_labels(painted, name="strokes")
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    session = session_for(viewer)
    wait_for(session.job("warm-up"))
    if class_count is not None:
        session.set_class_count(class_count)
    dock.dataset.reset_choices()
    dock.dataset.image_layer.value, dock.dataset.labels_layer.value = image, strokes
    dock.dataset.add_pair_button.clicked.emit()
    runs = tempfile.TemporaryDirectory(prefix=prefix)
    dock.training.runs_folder.value = Path(runs.name)
    small_form(dock.training, epochs)
    return viewer, dock, image, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per training")
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 192, 192), metavar=("Z", "Y", "X"))
    args = parser.parse_args(argv)

    from schism_napari.cli.launch import load_triton_before_opengl

    load_triton_before_opengl()

    from schism_napari.sample import make_rock, scribbles

    volume, truth = make_rock(tuple(args.shape), seed=3)
    painted = scribbles(truth, slices=(1, args.shape[0] // 2), strokes_per_class=6)
    viewer, dock, image, runs = open_scribbled(volume, painted, args.epochs, "schism-soak-")
    session, prediction = dock.training.session, dock.prediction

    rows = []
    rng = np.random.default_rng(0)
    for cycle in range(1, args.cycles + 1):
        started = time.perf_counter()
        dock.training.fine_tune.value = session.model is not None
        dock.training.train_button.clicked.emit()
        wait_for(session.job("training"))
        prediction.reset_choices()
        prediction.image.value = image
        prediction.predict_button.clicked.emit()
        wait_for(session.job("prediction"))
        labels = prediction.labels_layer
        assert labels is not None
        z = int(rng.integers(0, volume.shape[0]))
        y, x = (int(v) for v in rng.integers(0, volume.shape[1] - 16, 2))
        block = labels.data[z, y : y + 16, x : x + 16]
        labels.data[z, y : y + 16, x : x + 16] = np.where(block == 1, 2, 1)  # a correction with the brush
        labels.refresh()
        viewer.dims.set_current_step(0, z)
        latest = session.latest(viewer.layers)
        assert latest is not None and latest[1].corrections is not None
        family_reviewed = latest[1].corrections.reviewed
        if z not in family_reviewed:
            prediction.review_button.clicked.emit()
        if cycle == 1:
            prediction.add_button.clicked.emit()
        pump(0.2)
        live = live_objects()
        row = {
            "cycle": cycle,
            "seconds": time.perf_counter() - started,
            "rss_mb": rss_mb(),
            **live,
            "threads": threading.active_count(),
            "layers": len(viewer.layers),
            "reviewed": len(family_reviewed),
        }
        rows.append(row)
        print(
            f"cycle {cycle:2d}: {row['seconds']:5.1f} s  RSS {row['rss_mb']:7.1f} MB  models {row['models']}  "
            f"tensors {row['tensors']} ({row['tensor_mb']:.1f} MB)  workers running {row['running']} "
            f"(finished, kept by napari: {row['shells']})  "
            f"threads {row['threads']}  layers {row['layers']}",
            flush=True,
        )
    if os.environ.get("SOAK_REFERRERS"):
        show_referrers()
    session.shutdown()
    viewer.close()
    runs.cleanup()

    print("\n| cycle | s | RSS MB | live models | tensors (MB) | workers running (finished) | threads | layers |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cycle']} | {r['seconds']:.1f} | {r['rss_mb']:.0f} | {r['models']} | "
            f"{r['tensors']} ({r['tensor_mb']:.1f}) | {r['running']} ({r['shells']}) | {r['threads']} | {r['layers']} |"
        )
    if len(rows) >= 3:
        growth = rows[-1]["rss_mb"] / rows[1]["rss_mb"] - 1
        steady = (
            growth <= 0.10
            and rows[-1]["models"] <= rows[1]["models"]
            and rows[-1]["tensor_mb"] <= rows[1]["tensor_mb"] * 1.1 + 1
            and rows[-1]["running"] == 0
            and rows[-1]["layers"] == rows[1]["layers"]
        )
        print(f"\nRSS after cycle {rows[-1]['cycle']} vs cycle 2: {growth:+.1%} ({'steady' if steady else 'GROWS'})")
        return 0 if steady else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
