"""``schism launch``, the main job: napari with the SCHISM dock and the sample, or, without a display, the headless
demo followed by screenshots of the plugin taken under Xvfb."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..plumbing.atomic import unique_path

if TYPE_CHECKING:
    from .common import Commands


def add_parser(commands: Commands) -> None:
    launch = commands.add_parser(
        "launch", help="open napari with the plugin and the sample (headless: run the demo and take screenshots)"
    )
    launch.add_argument("--out", type=Path, default=Path("schism-demo"), help="folder for the sample and runs")
    launch.add_argument("--headless", action="store_true", help="force the headless demo even with a display")
    launch.set_defaults(handler=handle)


@dataclass(frozen=True)
class LaunchOptions:
    out: Path
    headless: bool

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> LaunchOptions:
        return cls(out=namespace.out, headless=namespace.headless)


def handle(namespace: argparse.Namespace) -> int:
    return run(LaunchOptions.from_namespace(namespace))


def run(options: LaunchOptions) -> int:
    return launch(options.out, headless=options.headless)


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def launch(out: Path, *, headless: bool = False) -> int:
    if not headless and has_display():
        return open_viewer()
    from .demo import run_demo
    from .progress import TqdmProgress

    root = unique_path(Path(out))
    print(f"no display: running the headless demo in {root}", file=sys.stderr)
    run_demo(root, callback=TqdmProgress())
    shots = root / "screenshots"
    if has_display():
        command = [sys.executable, "-m", "schism_napari.cli.screenshots", str(shots)]
    elif shutil.which("xvfb-run"):
        command = [
            "xvfb-run",
            "-a",
            "-s",
            "-screen 0 1600x1000x24",
            sys.executable,
            "-m",
            "schism_napari.cli.screenshots",
            str(shots),
        ]
    else:
        print("xvfb-run not found: install the xvfb package for screenshots of the napari plugin", file=sys.stderr)
        return 0
    print("taking screenshots of the napari plugin (scribbles -> train -> predict)…", file=sys.stderr)
    completed = subprocess.run(command, check=False)
    if completed.returncode == 0:
        print(f"screenshots in {shots}", file=sys.stderr)
    return completed.returncode


def load_triton_before_opengl() -> None:
    """Import triton, when installed, before napari creates its OpenGL context.

    CUDA builds of torch bring triton, which carries its own LLVM. Under Mesa's software OpenGL
    (llvmpipe: Xvfb here), loading triton after the viewer exists segfaulted the process (torch
    imports triton with torchvision); in the other order both work. The dock imports torch only
    after it opens, so a launcher that creates the viewer loads triton first.
    """
    import importlib
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        importlib.import_module("triton")


def open_viewer() -> int:
    load_triton_before_opengl()
    import napari

    setup_viewer(napari.Viewer(title="schism-napari"))
    napari.run()
    return 0


def setup_viewer(viewer: Any) -> Any:
    """The sample with scribbles, the SCHISM dock, and the pair ready: the user presses Train."""
    viewer.open_sample("schism-napari", "rock_ct_scribbles")
    _, dock = viewer.window.add_plugin_dock_widget("schism-napari", "SCHISM")
    dock.dataset.image_layer.value = viewer.layers["rock CT"]
    dock.dataset.labels_layer.value = viewer.layers["rock CT scribbles"]
    dock.dataset.add_pair()
    dock.setCurrentIndex(1)  # Training
    return dock
