"""An image's result layers: a prediction turned into label, probability and uncertainty layers.

Shared by the Prediction tab's in-memory and streamed predictions (and read by the review part):
results keep the input's scale and translation and the viewer's camera; label k + 1 is class k;
the Labels layer keeps what the user edited or reviewed when a new prediction arrives. The
functions are generators run by :func:`.layer_turns.run_in_turns`, one costly layer per
event-loop turn.
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels

from ..data import mask_to_labels
from ..data.labels import Corrections
from .layer_turns import Steps, add_in_turns, camera_kept
from .session import ResultLayers, probability_layer_name
from .volumes import StreamedRun, probability_view, retire, uncertainty_view

if TYPE_CHECKING:
    from .session import Session

ONE_LAYER, PER_CLASS = "one layer (class axis)", "one layer per class"
# cache=False: a layer reading a store on disk (a streamed stack) must show each new slice, not
# what napari's dask cache read before
PROBABILITY_STYLE = {
    "colormap": "magma",
    "contrast_limits": (0.0, 1.0),
    "opacity": 0.6,
    "blending": "additive",
    "cache": False,
}


def current_z(viewer: Any) -> int:
    """The slice on screen along the viewer's Z axis (0 when the viewer has fewer than 3 dims)."""
    return int(viewer.dims.current_step[viewer.dims.ndim - 3]) if viewer.dims.ndim >= 3 else 0


def show_result(
    viewer: Any,
    session: Session,
    layer: Image,
    model: Any,
    prediction: tuple[Any, np.ndarray],
    z: int | None,
    per_class: bool,
) -> Generator[None, None, Any]:
    """Put an in-memory ``(result, uncertainty)`` in the source image's own output layers (created on
    its first prediction), keeping the camera where the user left it; returns the binary
    foreground (P(class 1), None for more classes).

    Each layer napari has to create gets an event-loop turn of its own (about 0.1 s each);
    updating existing layers takes one turn.
    """
    result, uncertainty = prediction
    family = session.results_for(layer, viewer.layers)
    spatial_shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
    probabilities = np.asarray(result.probabilities)  # (C, Y, X) or (Z, C, Y, X)
    labels = mask_to_labels(np.asarray(result.labels))
    if z is not None:  # preview of one slice: place it in full-size layers
        labels, probabilities, uncertainty = in_full_size(family, spatial_shape, z, labels, probabilities, uncertainty)
    by_class = np.moveaxis(probabilities, -3, 0)  # (C, [Z,] Y, X)
    labels_layer = yield from update_labels_layer(viewer, session, layer, family, model, labels)
    yield from update_probability_layers(viewer, session, layer, family, model, by_class, per_class)
    yield from update_uncertainty_layer(viewer, layer, family, uncertainty)
    results_in(viewer, session, layer, family, labels_layer)
    return by_class[1] if model.class_count == 2 else None


def show_streamed(viewer: Any, session: Session, run: StreamedRun, per_class: bool) -> Generator[None, None, Any]:
    """As :func:`show_result`, with layers reading the run's store: the Labels layer paints into it and
    its corrections are kept there too (the image's own, when they are the ones in this store)."""
    layer, model, store = run.layer, run.model, run.store
    family = session.results_for(layer, viewer.layers)
    corrections = family.corrections
    if corrections is None or corrections.predicted is not store.predicted:
        corrections = Corrections.stored(store.predicted, store.edited)
    if family.labels is None:
        family.labels = Labels(
            store.corrected,
            name=f"{layer.name} prediction",
            scale=layer.scale[-3:],
            translate=layer.translate[-3:],
        )
        family.corrections = corrections
        session.paint_colors(family.labels, model.class_count)
        yield from add_in_turns(viewer, family.labels, select=True)  # the layer to correct
    else:
        if family.labels.data is not store.corrected:
            family.labels.data = store.corrected
        family.corrections = corrections
    session.paint_colors(family.labels, model.class_count)  # only a change of colours redraws
    labels_layer = family.labels
    by_class = probability_view(store)  # (C, Z, Y, X), lazy
    yield from update_probability_layers(viewer, session, layer, family, model, by_class, per_class)
    yield from update_uncertainty_layer(viewer, layer, family, uncertainty_view(store))
    results_in(viewer, session, layer, family, labels_layer)
    run.shown = True
    retire(run.previous)  # no layer reads it now
    run.previous = None
    return by_class[1] if model.class_count == 2 else None


def results_in(viewer: Any, session: Session, layer: Image, family: ResultLayers, labels_layer: Labels) -> None:
    """The image's layers are in (in memory or streamed): the labels go on top, to be corrected; the
    Train preview hides; a paired prediction keeps its corrections; this image is the latest."""
    name_viewer_axes(viewer)
    if viewer.layers[-1] is not labels_layer:
        viewer.layers.move(viewer.layers.index(labels_layer), len(viewer.layers))
    if family.preview is not None:  # the prediction takes over from Train's one-slice preview
        family.preview.visible = False
    pair = session.pair_of(labels_layer)
    if pair is not None:  # predicted again after "Add to training set": the same corrections count
        pair.corrections = family.corrections
    session.latest_image = weakref.ref(layer)


def refresh_results(family: ResultLayers) -> None:
    """Redraw the family's visible layers (their store on disk has new slices)."""
    for shown in (family.labels, *family.probabilities, family.uncertainty):
        if shown is not None and shown.visible:
            shown.refresh()


def update_labels_layer(
    viewer: Any, session: Session, layer: Image, family: ResultLayers, model: Any, labels: np.ndarray
) -> Generator[None, None, Labels]:
    """New labels into the image's prediction layer; what the user edited or reviewed there stays."""
    if family.labels is not None and family.corrections is not None:
        family.labels.data = family.corrections.repredicted(family.labels.data, labels)
    elif family.labels is not None:
        family.labels.data = labels
        family.corrections = Corrections(labels)
    else:
        family.labels = Labels(
            labels,
            name=f"{layer.name} prediction",
            scale=layer.scale[-labels.ndim :],
            translate=layer.translate[-labels.ndim :],
        )
        family.corrections = Corrections(labels)
        session.paint_colors(family.labels, model.class_count)
        yield from add_in_turns(viewer, family.labels, select=True)  # the layer to correct
    session.paint_colors(family.labels, model.class_count)  # only a change of colours redraws
    return family.labels


def update_probability_layers(
    viewer: Any, session: Session, layer: Image, family: ResultLayers, model: Any, by_class: Any, per_class: bool
) -> Steps:
    """The class probabilities ``by_class`` (C, [Z,] Y, X) into one layer with a class axis, or one
    layer per class; existing layers of the right shape are updated in place."""
    existing = family.probabilities
    if per_class and len(existing) == len(by_class) and existing[0].data.shape == by_class.shape[1:]:
        for probability_layer, data in zip(existing, by_class, strict=True):
            probability_layer.data = data
        return
    if not per_class and len(existing) == 1 and existing[0].data.shape == by_class.shape:
        existing[0].data = by_class
        return
    with camera_kept(viewer):  # one axis fewer or more
        for old in existing:
            viewer.layers.remove(old)
    family.probabilities = new = _probability_layers(layer, by_class, session.names(model.class_count), per_class)
    for probability_layer in new:
        yield from add_in_turns(viewer, probability_layer)


def _probability_layers(layer: Image, by_class: Any, names: list[str], per_class: bool) -> list[Image]:
    spatial = by_class.ndim - 1
    scale, translate = layer.scale[-spatial:], layer.translate[-spatial:]
    axes = tuple(layer.axis_labels[-spatial:])
    # hidden by default: the image stays visible under the labels while the user corrects
    if per_class:
        return [
            Image(
                data,
                name=probability_layer_name(layer.name, name),
                scale=scale,
                translate=translate,
                axis_labels=axes,
                visible=False,
                **PROBABILITY_STYLE,
            )
            for data, name in zip(by_class, names, strict=True)
        ]
    return [
        Image(
            by_class,
            name=f"{layer.name} probabilities",
            scale=(1.0, *scale),
            translate=(0.0, *translate),
            axis_labels=("class", *axes),
            metadata={"schism_classes": names},
            visible=False,
            **PROBABILITY_STYLE,
        )
    ]


def update_uncertainty_layer(viewer: Any, layer: Image, family: ResultLayers, uncertainty: Any) -> Steps:
    """1 - margin between the two likeliest classes: bright where a correction helps most."""
    if family.uncertainty is not None and family.uncertainty.data.shape == uncertainty.shape:
        family.uncertainty.data = uncertainty
        return
    if family.uncertainty is not None:
        viewer.layers.remove(family.uncertainty)
    family.uncertainty = Image(
        uncertainty,
        name=f"{layer.name} uncertainty",
        scale=layer.scale[-uncertainty.ndim :],
        translate=layer.translate[-uncertainty.ndim :],
        axis_labels=tuple(layer.axis_labels[-uncertainty.ndim :]),
        colormap="inferno",
        contrast_limits=(0.0, 1.0),
        opacity=0.6,
        blending="additive",
        visible=False,
        cache=False,  # as PROBABILITY_STYLE
    )
    yield from add_in_turns(viewer, family.uncertainty)


def in_full_size(
    family: ResultLayers,
    spatial_shape: tuple[int, ...],
    z: int,
    labels: np.ndarray,
    probabilities: np.ndarray,
    uncertainty: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A one-slice preview placed at slice ``z`` of full-size arrays, the other slices as the
    image's results hold them (zeros where there are none yet); the other slices' labels are the
    model's, to which the user's corrections are then applied again."""

    def held(layer: Any) -> Any:
        return layer.data if layer is not None and layer.data.shape == spatial_shape else None

    corrections = family.corrections
    predicted = None if corrections is None else corrections.predicted
    return (
        placed_at(
            z,
            labels,
            spatial_shape,
            np.uint8,
            predicted if predicted is not None and predicted.shape == spatial_shape else held(family.labels),
        ),
        placed_at(
            z,
            probabilities,
            (spatial_shape[0], *probabilities.shape),
            np.float32,
            family.probabilities_array(spatial_shape),
        ),
        placed_at(z, uncertainty, spatial_shape, np.float32, held(family.uncertainty)),
    )


def placed_at(z: int, values: np.ndarray, shape: tuple[int, ...], dtype: Any, previous: Any) -> np.ndarray:
    """``values`` at slice ``z`` of a new array of ``shape``, the other slices from ``previous``
    (None: zeros)."""
    full = np.zeros(shape, dtype=dtype)
    if previous is not None:
        full[:] = previous
    full[z] = values
    return full


def name_viewer_axes(viewer: Any) -> None:
    """Name the viewer's axes after the layers' ``axis_labels`` ("class" on the probabilities), as
    napari 0.8 and newer do by themselves. napari 0.7, the newest release for Python 3.10, keeps
    -4, -3, ...; this does what later napari does: a label a layer sets replaces the viewer's at
    its (right-aligned) position. Where napari does it itself (its LayerList has axis_labels), nothing."""
    if hasattr(viewer.layers, "axis_labels"):
        return
    dims = viewer.dims
    names = list(dims.axis_labels)
    for layer in viewer.layers:
        labels = tuple(layer.axis_labels)
        offset = dims.ndim - len(labels)
        for index, label in enumerate(labels):
            if label != str(index - len(labels)) and offset + index >= 0:  # a layer's defaults are -n..-1
                names[offset + index] = label
    if tuple(names) != tuple(dims.axis_labels):
        dims.axis_labels = tuple(names)
