"""The correction loop of the Prediction tab: review slices, find the uncertain ones, train on the
corrections, save them as a dataset.

The prediction is remembered as the model made it, so "Add to training set" trains only on what
the user corrected (plus slices marked reviewed), not on the model's own errors; the uncertainty
layer and "Next uncertain slice" show where a correction helps most. "Save to dataset" writes
image and labels as a new SCHISM dataset folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_error, show_info

from ..data import labels_to_mask
from ..data.export import write_training_pair
from ..data.uncertainty import most_uncertain_slice
from ..errors import SchismError
from .jobs import follow
from .result_layers import current_z
from .session import ResultLayers, Session
from .volumes import full_resolution

if TYPE_CHECKING:
    from napari.layers import Image, Labels


class ReviewWidget(Container):
    """The review part of the Prediction tab: the steps after a prediction, on its latest result.

    It exists apart from prediction because it works on whatever the session holds as the latest
    prediction (whichever dock made it), not on a run: it only reads the session's result layers
    and corrections, and writes the session's training pairs. ``status`` is the tab's status line.
    """

    def __init__(self, viewer: Any, session: Session, status: Label):
        super().__init__(labels=True)
        self.margins = (0, 0, 0, 0)  # its rows line up with the rest of the tab
        self.viewer, self.session, self.status = viewer, session, status
        self.review_button = PushButton(text="Mark slice reviewed")
        self.review_button.tooltip = "The whole current slice is right as it is: train on all of it, not only on edits."
        self.next_uncertain_button = PushButton(text="Next uncertain slice")
        self.next_uncertain_button.tooltip = "Go to the slice the model is least sure of (not yet reviewed)."
        self.add_button = PushButton(text="Add to training set")
        self.add_button.tooltip = "Train on the pixels you corrected and on the slices marked reviewed."
        self.datasets_folder = FileEdit(mode="d", label="datasets folder", value="")
        self.save_button = PushButton(text="Save to dataset")
        self.extend(
            [
                Container(widgets=[self.review_button, self.next_uncertain_button], layout="horizontal", labels=False),
                self.add_button,
                self.datasets_folder,
                self.save_button,
            ]
        )
        self.session.keep_setting("datasets folder", self.datasets_folder)
        self.review_button.changed.connect(self.mark_reviewed)
        self.next_uncertain_button.changed.connect(self.next_uncertain_slice)
        self.add_button.changed.connect(self.add_to_training_set)
        self.save_button.changed.connect(lambda: self.save_to_dataset())
        follow(self.native, viewer.dims.events.current_step, self.show_review)

    @property
    def source_layer(self) -> Image | None:
        """The image predicted last (in this viewer, whichever dock predicted it)."""
        latest = self._latest()
        return None if latest is None else latest[0]

    @property
    def labels_layer(self) -> Labels | None:
        """The Labels layer of the latest prediction: the one the user corrects."""
        latest = self._latest()
        return None if latest is None else latest[1].labels

    def _latest(self) -> tuple[Image, ResultLayers] | None:
        return self.session.latest(self.viewer.layers)

    def _reviewed_here(self) -> tuple[ResultLayers, int] | None:
        """The latest prediction's family and the slice on screen (0 for a 2D image)."""
        latest = self._latest()
        if latest is None:
            return None
        family = latest[1]
        assert family.labels is not None
        return family, (current_z(self.viewer) if family.labels.data.ndim == 3 else 0)

    def mark_reviewed(self) -> None:
        """The current slice of the latest prediction is right as it stands: all of it becomes labels,
        and later predictions leave it as it is. Pressed on a reviewed slice, it clears the review."""
        here = self._reviewed_here()
        if here is None:
            show_error("no prediction to review: predict an image first")
            return
        family, z = here
        assert family.corrections is not None
        if z in family.corrections.reviewed:
            family.corrections.unreview(z)
        else:
            family.corrections.review(z)
        self.show_review()
        self.session.labels_edited.emit()

    def show_review(self, _event: Any = None) -> None:
        """The review button says what it will do on this slice; the status lists the reviewed slices."""
        here = self._reviewed_here()
        reviewed = here is not None and here[0].corrections is not None and here[1] in here[0].corrections.reviewed
        self.review_button.text = "Clear slice review" if reviewed else "Mark slice reviewed"
        self.review_button.tooltip = (
            "This slice is reviewed: predictions keep it and training takes all of it. Clear the review to let "
            "the next prediction replace what you did not edit."
            if reviewed
            else "The whole current slice is right as it is: train on all of it, and keep it in later predictions."
        )
        if here is not None and here[0].corrections is not None and here[0].corrections.reviewed:
            slices = ", ".join(map(str, sorted(here[0].corrections.reviewed)))
            self.status.value = f"reviewed slices (kept by new predictions): {slices}"

    def next_uncertain_slice(self) -> int | None:
        """Move the viewer to the slice the model is least sure of, skipping reviewed slices."""
        latest = self._latest()
        if latest is None or latest[1].uncertainty is None:
            show_error("no prediction yet: predict a stack first")
            return None
        family = latest[1]
        assert family.uncertainty is not None and family.labels is not None and family.corrections is not None
        z = most_uncertain_slice(family.uncertainty.data, family.corrections.reviewed)  # slab by slab when on disk
        if z is None:
            show_info("nothing left to review" if family.uncertainty.data.ndim == 3 else "a 2D image has one slice")
            return None
        world = family.labels.data_to_world([z, 0, 0])[0]
        axis = self.viewer.dims.ndim - 3
        self.viewer.dims.set_point(axis, world)
        self.status.value = f"slice {z}: the model is least sure here"
        return z

    def add_to_training_set(self) -> None:
        latest = self._latest()
        if latest is None:
            show_error("no prediction to add: predict an image first, then correct it with the brush")
            return
        image, family = latest
        labels = family.labels
        try:
            self.session.add_pair(image, labels, corrections=family.corrections)
        except SchismError as error:
            show_error(str(error))
            return
        self.session.labels_edited.emit()
        show_info(
            f"{labels.name} joins the training set: only your corrections and the slices marked "
            "reviewed count; train again (fine-tune) to use them"
        )

    def save_to_dataset(self, folder: str | Path | None = None) -> Path | None:
        folder = Path(folder or self.datasets_folder.value)
        if self.labels_layer is None or self.source_layer is None:
            show_error("no prediction to save: predict an image first")
            return None
        if not str(folder) or str(folder) == ".":
            show_error("choose a datasets folder to save into")
            return None
        try:
            model = self.session.model
            count = model.class_count if model is not None else self.session.config.model.class_count
            mask = labels_to_mask(np.asarray(self.labels_layer.data), count)
            written = write_training_pair(
                folder,
                self.source_layer.name,
                full_resolution(self.source_layer),  # a lazy image is written slab by slab
                mask,
                rgb=bool(self.source_layer.rgb),
                class_names=self.session.names(),
                class_colors=self.session.class_colors,
            )
        except (SchismError, OSError) as error:
            show_error(f"could not save: {error}")
            return None
        show_info(f"saved as dataset {written}")
        return written
