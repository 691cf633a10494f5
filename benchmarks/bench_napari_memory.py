"""Peak memory of the napari Prediction tab predicting a stack, against the stack's depth.

Each depth runs in a fresh subprocess: a napari viewer with the SCHISM dock, a uint16 stack of
``--size`` x ``--size`` slices as an image layer, and a small model with random weights (UnetConcat,
2 blocks of 8 channels, as the tests' tiny run) as the session's model. After a warm-up prediction
of a small 2D image (imports, the first layers), the slice in the middle of the stack is put on
screen and Predict is clicked; a thread samples the process's resident memory (/proc/self/statm)
every 5 ms until the prediction has settled. Reported per depth: the peak growth over the resident
memory just before Predict (the image is already in memory then), in MB and per slice, its ratio
to the image's bytes, the peak resident memory beyond the image's bytes, and the seconds until the
prediction layer first appears (the slice on screen) and until the end.

It needs a display: run it under Xvfb. ``--mode memory`` measures the former path (results held
in memory) for comparison.

    xvfb-run -a python benchmarks/bench_napari_memory.py                                   # 16, 64, 256 x 1024²
    xvfb-run -a python benchmarks/bench_napari_memory.py --depths 4 8 --size 128 --mode disk  # smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, threading, time

import numpy as np

depth, size, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE


import napari
import torch
from qtpy.QtWidgets import QApplication

from schism_napari.config import SchismConfig
from schism_napari.data import volume_store
from schism_napari.data.normalization import Normalization
from schism_napari.models import build_model
from schism_napari.runs import TrainedModel

if mode == "memory":  # the former path: results held in memory
    volume_store.STREAM_ABOVE_BYTES = 1 << 62
elif mode == "disk":  # every stack to disk, however small (smoke tests)
    volume_store.STREAM_ABOVE_BYTES = 0
INI = "[Model]\nmodel_type = UnetConcat\nnum_classes = 3\nn_block = 2\nchannels = 8\np = 0.0\n"
INI += "[Data]\ncrop_size = 256\nimg_res = 256\n"  # no resize, as planned runs (SCHISM's defaults resize 2.5x)
config = SchismConfig.from_ini_string(INI, source="bench.ini")
torch.manual_seed(0)
model = TrainedModel(
    config, build_model(config.model, 1).eval(), Normalization((0.5,), (0.2,)), 1,
    ["pore", "matrix", "mineral"], None, "random weights (bench)",
)
viewer = napari.Viewer()
_, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
prediction = dock.prediction
prediction.session.set_model(model)
app = QApplication.instance()


def predict(layer) -> float:
    done = []
    prediction.relay.finished.connect(lambda: done.append(time.perf_counter()))
    prediction.reset_choices()
    prediction.image.value = layer
    started = time.perf_counter()
    prediction.predict_button.clicked.emit()
    while not done:
        app.processEvents()
        time.sleep(0.002)
    return done[0] - started


warm = viewer.add_image(np.random.default_rng(1).integers(0, 65535, (256, 256), dtype=np.uint16), name="warm")
predict(warm)
viewer.layers.clear()
for _ in range(20):
    app.processEvents()
    time.sleep(0.01)

volume = np.random.default_rng(0).integers(0, 65535, (depth, size, size), dtype=np.uint16)
image = viewer.add_image(volume, name="stack", contrast_limits=(0, 65535))
viewer.dims.set_current_step(0, depth // 2)
for _ in range(20):
    app.processEvents()
    time.sleep(0.01)
shown = []
viewer.layers.events.inserted.connect(
    lambda event: shown.append(time.perf_counter()) if event.value.name == "stack prediction" else None
)
before = rss()
peak = [before]
sampling = [True]


def sample() -> None:
    while sampling[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
clicked = time.perf_counter()
seconds = predict(image)
sampling[0] = False
sampler.join()
labels = viewer.layers["stack prediction"]
assert labels.data.shape == volume.shape, labels.data.shape
print(json.dumps({
    "depth": depth, "image_mb": volume.nbytes / 2**20, "before_mb": before / 2**20,
    "peak_growth_mb": (peak[0] - before) / 2**20, "after_growth_mb": (rss() - before) / 2**20,
    "peak_mb": peak[0] / 2**20, "first_slice_s": shown[0] - clicked if shown else float("nan"),
    "seconds": seconds, "labels": type(labels.data).__name__,
    "probabilities": type(viewer.layers["stack probabilities"].data).__name__,
}))
viewer.close()
"""


def measure(depth: int, size: int, mode: str) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(depth), str(size), mode],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise SystemExit(completed.stdout[-2000:] + completed.stderr[-3000:])
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument(
        "--mode",
        choices=["auto", "memory", "disk"],
        default="auto",
        help="auto: as napari decides (stacks over 64 MB of results to disk); memory: the former in-memory path; "
        "disk: every stack to disk, however small (for smoke tests at tiny sizes)",
    )
    arguments = parser.parse_args()
    rows = {}
    for depth in arguments.depths:
        row = rows[depth] = measure(depth, arguments.size, arguments.mode)
        print(
            f"depth {depth:4d}: image {row['image_mb']:7.1f} MB, peak growth {row['peak_growth_mb']:7.1f} MB "
            f"({row['peak_growth_mb'] / depth:5.2f} MB/slice, {row['peak_growth_mb'] / row['image_mb']:4.2f}x the "
            f"image), peak RSS beyond the image {row['peak_mb'] - row['image_mb']:7.1f} MB, "
            f"first slice {row['first_slice_s']:5.2f} s, all {row['seconds']:6.1f} s "
            f"(layers: {row['labels']} labels, {row['probabilities']} probabilities)",
            flush=True,
        )
    first, last = min(rows), max(rows)
    if first == last:
        return
    beyond = {depth: row["peak_mb"] - row["image_mb"] for depth, row in rows.items()}
    ratio = beyond[last] / beyond[first]
    verdict = "ok" if ratio <= 1.3 else "ABOVE 1.3"
    print(f"peak RSS beyond the image, depth {last} / depth {first}: {ratio:.2f} ({verdict})")
    growth = rows[last]["peak_growth_mb"] - rows[first]["peak_growth_mb"]
    image = rows[last]["image_mb"] - rows[first]["image_mb"]
    print(f"growth from depth {first} to {last}: {growth:.0f} MB for {image:.0f} MB more image ({growth / image:.2f}x)")


if __name__ == "__main__":
    main()
