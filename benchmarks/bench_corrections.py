"""The correction loop in napari, as one user's session: are the user's corrections kept?

Issue #19's measurement. One viewer (Xvfb without a display), the SCHISM dock, a stack with
scribbles on two slices: Train; Predict; the user corrects slice A to the ground truth with the
"brush" (every pixel the model got wrong) and marks it reviewed, and corrects a block of slice B
(edits only); Add to training set; then fine-tune and predict, twice. After each prediction it
reports

- the agreement of slice A with what the user made of it, and of slice B's edited pixels with what
  the user painted there (both must stay 1.000: a new prediction never overwrites them);
- the training mask the next Train would use, against the user's labels: on the user's pixels
  (scribbles, edits, reviewed slices) it must agree exactly, and it must label nothing else;
- the stack's mean IoU against the ground truth (the model improving or not is not the check).

    xvfb-run -a .venv/bin/python benchmarks/bench_corrections.py
    xvfb-run -a .venv/bin/python benchmarks/bench_corrections.py --isbi ../shared/datasets/isbi2012-em
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench_soak import open_scribbled, wait_for


def mean_iou(truth: np.ndarray, labels: np.ndarray, class_count: int) -> float:
    scores = []
    for k in range(1, class_count + 1):
        union = np.count_nonzero((truth == k) | (labels == k))
        if union:
            scores.append(np.count_nonzero((truth == k) & (labels == k)) / union)
    return float(np.mean(scores))


def load_stack(isbi: Path | None, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image, ground truth as napari labels 1..K)."""
    if isbi is None:
        from schism_napari.sample import make_rock

        volume, truth = make_rock(shape, seed=11)
        return volume, truth.astype(np.uint8) + 1
    from schism_napari.data.io import read_image, read_mask

    folder = next(p for p in sorted((isbi / "datasets").iterdir()) if p.is_dir())
    images = [read_image(p)[0, ..., 0] for p in sorted((folder / "images").iterdir())[: shape[0]]]
    masks = [read_mask(p)[0] for p in sorted((folder / "masks").iterdir())[: shape[0]]]
    truth = np.stack(masks)
    values = np.unique(truth)
    return np.stack(images), (np.searchsorted(values, truth) + 1).astype(np.uint8)


def training_mask(session: Any) -> np.ndarray:
    """The mask the next Train would use for the corrected prediction (the second pair)."""
    count = session.config.model.class_count
    return session.pairs[-1].mask(count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isbi", type=Path, default=None, help="an ISBI-like folder (datasets/<name>/...)")
    parser.add_argument("--shape", type=int, nargs=3, default=(6, 192, 192), metavar=("Z", "Y", "X"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    from schism_napari.cli.launch import load_triton_before_opengl

    load_triton_before_opengl()

    from schism_napari.data.io import IGNORE
    from schism_napari.sample import scribbles

    volume, truth = load_stack(args.isbi, tuple(args.shape))
    class_count = int(truth.max())
    slice_a, slice_b = 1, volume.shape[0] - 2
    painted = scribbles(truth - 1, slices=(0, volume.shape[0] // 2), strokes_per_class=6)
    viewer, dock, image, runs = open_scribbled(volume, painted, args.epochs, "schism-corrections-", class_count)
    session, prediction = dock.training.session, dock.prediction

    def train() -> None:
        dock.training.fine_tune.value = session.model is not None
        dock.training.train_button.clicked.emit()
        wait_for(session.job("training"))

    def predict() -> Any:
        prediction.reset_choices()
        prediction.image.value = image
        prediction.predict_button.clicked.emit()
        wait_for(session.job("prediction"))
        return prediction.labels_layer

    train()
    labels = predict()
    user_a = truth[slice_a].copy()  # the user paints slice A right, pixel by pixel
    labels.data[slice_a] = user_a
    block = (slice(slice_b, slice_b + 1), slice(20, 60), slice(20, 60))
    before_b = np.array(labels.data[block], copy=True)
    user_b = np.where(before_b == 1, 2, 1).astype(np.uint8)  # every pixel of the block changed
    labels.data[block] = user_b
    labels.refresh()
    viewer.dims.set_current_step(viewer.dims.ndim - 3, slice_a)  # the z axis (probabilities add a class axis)
    prediction.review_button.clicked.emit()
    prediction.add_button.clicked.emit()
    user = np.zeros_like(truth)  # the user's labels on the corrected prediction
    user[slice_a] = user_a
    user[block] = user_b

    rows = []
    for cycle in (1, 2):
        train()
        labels = predict()
        shown = np.asarray(labels.data)
        mask = training_mask(session)
        wanted = np.where(user == 0, IGNORE, user.astype(np.int64) - 1).astype(np.uint8)
        rows.append(
            {
                "cycle": cycle,
                "slice_a": float(np.mean(shown[slice_a] == user_a)),
                "slice_b": float(np.mean(shown[block] == user_b)),
                "mask_agrees": float(np.mean(mask[wanted != IGNORE] == wanted[wanted != IGNORE])),
                "mask_extra": int(np.count_nonzero((mask != IGNORE) & (wanted == IGNORE))),
                "iou": mean_iou(truth, shown, class_count),
            }
        )
        r = rows[-1]
        print(
            f"retrain + predict {cycle}: corrected+reviewed slice {r['slice_a']:.3f}, edited block {r['slice_b']:.3f}, "
            f"training mask agrees {r['mask_agrees']:.3f} (+{r['mask_extra']} px not the user's), "
            f"stack mean IoU {r['iou']:.3f}",
            flush=True,
        )
    session.shutdown()
    viewer.close()
    runs.cleanup()
    print("\n| after | corrected, reviewed slice kept | edited block kept | mask = user's | extra px | mean IoU |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| retrain + predict {r['cycle']} | {r['slice_a']:.3f} | {r['slice_b']:.3f} | {r['mask_agrees']:.3f} | "
            f"{r['mask_extra']} | {r['iou']:.3f} |"
        )
    kept = all(r["slice_a"] == 1 and r["slice_b"] == 1 and r["mask_agrees"] == 1 and not r["mask_extra"] for r in rows)
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
