"""GUI-thread work spread over event-loop turns, so that no single turn stalls the viewer.

napari builds a new layer's vispy node, its layer controls and its layer-list entry synchronously
when the layer is added: 0.1-0.2 s per layer on a 2-core machine, all of it in the GUI thread.
A prediction's first result adds three layers (labels, probabilities, uncertainty); added in one
go they froze the viewer for seconds. Written as a generator that yields after each costly piece,
the same work runs one piece per event-loop turn, and Qt paints and handles input in between.

The first Labels layer of a session also pays one-time costs that need no GUI thread (an
import of scikit-image's colour module, vispy's dash patterns: 0.3 s together);
:func:`prepare_layer_code` pays them in a worker, before the results arrive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from typing import Any

Steps = Generator[None, None, Any]  # yields between pieces; may return a value (a layer)


def run_in_turns(
    steps: Steps,
    *,
    done: Callable[[], None],
    failed: Callable[[BaseException], None],
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Advance ``steps`` up to its first ``yield`` now, then one piece per event-loop turn.

    Before each later piece ``alive()`` is asked; once it says no (the image left the viewer, or
    the viewer closed and dropped its layers) the rest is skipped. ``done`` is called once at the
    end, whether the steps ran out, were skipped or one raised (after ``failed`` got the error):
    callers release what they hold (a job's settlement) there.
    """
    from qtpy.QtCore import QTimer

    def advance() -> None:
        try:
            if not alive():
                steps.close()
                done()
                return
            next(steps)
        except StopIteration:
            done()
        except Exception as error:  # a step's error must not leave the caller waiting forever
            try:
                failed(error)
            finally:
                done()
        else:  # a 1 ms timer, not 0: a zero timer is a posted event, run before due timers
            QTimer.singleShot(1, advance)

    advance()


@contextlib.contextmanager
def camera_kept(viewer: Any) -> Iterator[None]:
    """Put the camera back where it was if adding a layer moved it (a new axis resizes the canvas)."""
    camera = viewer.camera

    def state() -> dict[str, Any]:
        return {"center": tuple(camera.center), "zoom": camera.zoom, "angles": tuple(camera.angles)}

    kept = state()
    yield
    moved = state()
    for name, value in kept.items():  # only what moved: setting the angles imports scipy.spatial (0.1 s)
        if moved[name] != value:
            setattr(camera, name, value)


@contextlib.contextmanager
def not_selected(layers: Any) -> Iterator[None]:
    """Add layers without making each the selected one.

    napari selects every layer it adds, switching the layer controls to it: 10-20 ms of the
    140-170 ms (thread CPU time) an add costs here. The switch uses a private flag of napari's
    selectable list; a napari without it selects the new layers as before.
    """
    if not hasattr(layers, "_activate_on_insert"):
        yield
        return
    before = layers._activate_on_insert
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def add_in_turns(viewer: Any, layer: Any, *, select: bool = False, below: Any = None) -> Steps:
    """Add an already built layer in a turn of its own (building it was the turn before); with
    ``select`` it becomes the selected layer in one more turn, else the selection stays. With
    ``below`` (a layer in the viewer) it goes just under that layer instead of on top."""
    yield
    with camera_kept(viewer), not_selected(viewer.layers):
        if below is not None and below in viewer.layers:
            viewer.layers.insert(viewer.layers.index(below), layer)
        else:
            viewer.add_layer(layer)
    yield
    if select:
        viewer.layers.selection.active = layer
        yield


def prepare_layer_code() -> None:
    """In a worker thread: pay the one-time costs of a session's first napari layers that need no
    GUI thread, so they do not add to the turn that creates them.

    A new Labels layer computes napari's random label colours, whose first call imports
    scikit-image's colour module (and scipy.linalg); its vispy overlays draw lines whose first
    dash atlas computes vispy's dash patterns (cached for the process). Both are pure Python and
    numpy: in a worker they share the interpreter with the GUI thread a few milliseconds at a time.
    """
    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from napari.utils.colormaps import label_colormap

        label_colormap(49, 0.5, background_value=0)  # the arguments napari's Labels layer uses
    with contextlib.suppress(ImportError, AttributeError, TypeError):
        from vispy.visuals.line.dash_atlas import DashAtlas

        DashAtlas()
