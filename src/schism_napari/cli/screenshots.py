"""Screenshots of the plugin doing the whole loop on the sample: scribbles -> train -> predict.

Run under a display or Xvfb: ``python -m schism_napari.cli.screenshots OUT_DIR``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def capture(out: Path, epochs: int = 8) -> list[Path]:
    # a throw-away napari settings file: no pop-up notifications in the pictures, user settings untouched
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="schism-napari-settings-")) / "settings.yaml")
    from .launch import load_triton_before_opengl

    load_triton_before_opengl()
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "error"  # only errors pop up
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="schism-napari")
    viewer.window.resize(1500, 950)
    viewer.open_sample("schism-napari", "rock_ct_scribbles")
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    dock.setMinimumWidth(560)
    app = QApplication.instance()
    assert app is not None  # napari.Viewer created it

    def wait(widget: Any) -> None:
        # the job stays busy after its worker ends until the result layers are in (one per turn)
        while widget.worker is not None or widget.job.busy:
            app.processEvents()
            time.sleep(0.02)
        app.processEvents()

    viewer.dims.set_current_step(0, 8)
    dock.dataset.image_layer.value = viewer.layers["rock CT"]
    dock.dataset.labels_layer.value = viewer.layers["rock CT scribbles"]
    dock.dataset.add_pair()
    dock.setCurrentIndex(0)
    for _ in range(20):  # let the window lay the dock out before the first picture
        app.processEvents()
        time.sleep(0.02)
    written = [out / "1_scribbles.png"]
    viewer.screenshot(written[-1], canvas_only=False)

    dock.setCurrentIndex(1)
    dock.training.runs_folder.value = tempfile.mkdtemp(prefix="schism-runs-")
    dock.training.form.widget("Training", "epochs").value = epochs
    dock.training.start()
    wait(dock.training)
    written.append(out / "2_training.png")
    viewer.screenshot(written[-1], canvas_only=False)

    dock.setCurrentIndex(2)
    dock.prediction.image.value = viewer.layers["rock CT"]
    dock.prediction.predict()
    wait(dock.prediction)
    viewer.layers["rock CT scribbles"].visible = False
    if "rock CT preview" in viewer.layers:
        viewer.layers["rock CT preview"].visible = False
    viewer.layers["rock CT probabilities"].visible = False
    written.append(out / "3_prediction.png")
    viewer.screenshot(written[-1], canvas_only=False)
    viewer.layers["rock CT prediction"].visible = False
    viewer.layers["rock CT probabilities"].visible = True
    viewer.dims.set_current_step(0, 2)  # class axis of the probabilities: mineral
    written.append(out / "4_probabilities.png")
    viewer.screenshot(written[-1], canvas_only=False)
    viewer.layers["rock CT probabilities"].visible = False
    viewer.layers["rock CT uncertainty"].visible = True
    viewer.layers["rock CT prediction"].visible = True
    viewer.layers["rock CT prediction"].opacity = 0.3
    dock.prediction.next_uncertain_slice()  # where a correction helps most
    written.append(out / "5_uncertainty.png")
    viewer.screenshot(written[-1], canvas_only=False)
    viewer.close()
    return written


if __name__ == "__main__":
    for path in capture(Path(sys.argv[1])):
        print(path)
