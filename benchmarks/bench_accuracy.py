"""Accuracy benchmark: the planned network against classical pixel classifiers, on held-out data.

For each dataset (the synthetic sample; the thin-phase rock, whose third phase is a 1-3 px coating
on the pore walls; ``../shared/datasets/isbi2012-em`` when present) it
reports mean IoU on held-out images and the wall time of:

* (a) ``dense``: the defaults a user gets from ``schism train`` with no INI (the plan, the CLI's
  time budget), trained on the dense masks. Target: >= forest + 0.05 within 5 minutes.
* (b) ``scribbles``: the widgets' starting values (``interactive_config`` + the plan, the napari
  time budget) on ~1 % of the pixels, scribbled as strokes inside each class of the masks.
  Target: >= forest + 0.05 within 2 minutes.
* (c) LDA on pixel values and the multiscale random forest on the same labels.
* (d) ``correct``: after (b), the user reviews the training slice the network is least sure of (as
  napari's "Next uncertain slice" picks it) and retrains from the trained weights on the scribbles
  plus that slice, fully labelled. The control retrains as long on the scribbles alone, so the
  difference is the correction's, not the extra training's. Scores are on held-out data, which the
  correction never touches.
* (e) ``choice``: the first minutes in napari (issue #18): ~1 % of the pixels scribbled on only
  ``--painted-slices`` slices (3), the widgets' starting values and budget, and what replaces the
  forest preview: a fifth of each class's strokes is held out from both the forest and the network
  (:mod:`schism_napari.forest.selection`), forest, network and their average are scored on those strokes,
  and the best is kept. The table gives all three and the chosen one on the held-out data; the
  note gives the held-out strokes' scores the choice was made on.

Nothing is tuned to one dataset: both runs take the plan as it comes. Run from the repository
root::

    .venv/bin/python benchmarks/bench_accuracy.py                  # both datasets, full budgets
    .venv/bin/python benchmarks/bench_accuracy.py --quick          # short budgets, smoke check
    .venv/bin/python benchmarks/bench_accuracy.py --dataset isbi --only dense
    .venv/bin/python benchmarks/bench_accuracy.py --dataset isbi --only choice   # issue #18, ~2 minutes

The machine's load (``os.getloadavg``) is printed with the table: on a shared machine the
budgets still hold (the step time is measured), but fewer steps fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from schism_napari.config import SchismConfig
from schism_napari.data import SegmentationData, load_dataset
from schism_napari.data.io import IGNORE
from schism_napari.data.splits import make_split
from schism_napari.forest.classifier import PixelClassifier
from schism_napari.forest.selection import LABELS, choose, fit_forest, hold_out
from schism_napari.forest.stages import stage_one_positions
from schism_napari.inference import Predictor
from schism_napari.runs import load_trained_model
from schism_napari.sample import scribbles, write_sample
from schism_napari.training.planning import infer_class_count, interactive_config, plan_config
from schism_napari.training.trainer import Trainer

_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the repository (a worktree under wt/ has it two levels up); --isbi overrides
ISBI = next(
    (p / "datasets" / "isbi2012-em" for p in (_ROOT.parent / "shared", _ROOT.parents[1] / "shared") if p.is_dir()),
    _ROOT.parent / "shared" / "datasets" / "isbi2012-em",
)
SCRIBBLED = 0.01  # share of pixels painted in the scribbles runs
STROKE_PIXELS = 40  # about what one stroke of sample.scribbles paints (17 px long, 3 wide, clipped)


@dataclasses.dataclass
class Heldout:
    images: list[np.ndarray]  # (Y, X, C) stored dtype
    masks: list[np.ndarray]  # (Y, X) classes


@dataclasses.dataclass
class Row:
    dataset: str
    labels: str
    method: str
    iou: float
    per_class: list[float]
    seconds: float
    note: str = ""


def confusion(predictions: list[np.ndarray], truths: list[np.ndarray], classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for predicted, truth in zip(predictions, truths, strict=True):
        valid = truth != IGNORE
        matrix += np.bincount(
            truth[valid].astype(np.int64) * classes + predicted[valid], minlength=classes * classes
        ).reshape(classes, classes)
    return matrix


def class_iou(matrix: np.ndarray) -> list[float]:
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return [float(t / u) if u else math.nan for t, u in zip(tp, union, strict=True)]


# ---- data ---------------------------------------------------------------------------------------


def sample_data(work: Path) -> tuple[Path, Heldout]:
    """The synthetic rock CT sample (2 x 12 slices of 192 px); its test volume is held out."""
    import tifffile

    files = write_sample(work / "sample")
    volume, labels = tifffile.imread(files.volume), tifffile.imread(files.volume_labels)
    return files.datasets, Heldout([v[..., None] for v in volume], [m.astype(np.uint8) for m in labels])


def thin_data(work: Path, slices: int = 12, size: int = 192) -> tuple[Path, Heldout]:
    """The thin-phase rock (pores, matrix, a 1-3 px coating on the pore walls): two scans of
    ``slices`` slices to train on; a third, never seen, held out."""
    import tifffile

    from schism_napari.sample import make_lined_rock

    root = work / "thin" / "datasets"
    for index, name in enumerate(("thin_a", "thin_b")):
        volume, labels = make_lined_rock((slices, size, size), seed=100 + index)
        for folder, stack in (("images", volume), ("masks", labels)):
            (root / name / folder).mkdir(parents=True)
            for z in range(slices):
                tifffile.imwrite(root / name / folder / f"slice_{z:03d}.tif", stack[z])
    volume, labels = make_lined_rock((slices, size, size), seed=110)
    return root, Heldout([v[..., None] for v in volume], [m.astype(np.uint8) for m in labels])


def isbi_data(root: Path) -> tuple[Path, Heldout]:
    held = load_dataset(root / "heldout", class_count=2, write_stats=False)
    return root / "datasets", Heldout([s.image for s in held.samples], [s.mask for s in held.samples])


def scribbled(data: SegmentationData, seed: int = 0, slices: int | None = None) -> SegmentationData:
    """The same images with ~1 % of each slice's pixels painted as strokes inside the classes; with
    ``slices``, only that many slices (evenly spaced) are painted and kept, as napari keeps only
    painted slices."""
    samples = []
    chosen = range(len(data.samples))
    if slices is not None:
        chosen = sorted({round(i) for i in np.linspace(0, len(data.samples) - 1, slices)})
    for number in chosen:
        sample = data.samples[number]
        mask = sample.mask
        strokes = max(2, round(SCRIBBLED * mask.size / STROKE_PIXELS / data.class_count))
        painted = scribbles(mask, slices=(0,), strokes_per_class=strokes, seed=seed + number)
        sparse = np.where(painted > 0, painted - 1, IGNORE).astype(np.uint8)
        samples.append(dataclasses.replace(sample, mask=sparse))
    return dataclasses.replace(data, samples=samples)


# ---- methods ------------------------------------------------------------------------------------


def network(
    config: SchismConfig,
    data: SegmentationData,
    heldout: Heldout,
    interactive: bool,
    work: Path,
    initial: Path | None = None,
    method: str = "network",
    two_stage: bool = False,
) -> tuple[Row, Path]:
    """Plan, train (from the weights of the run folder ``initial`` when given), score on held-out
    data; returns the row and the run folder."""
    started = time.perf_counter()
    plan = plan_config(config, data, interactive=interactive)
    run_dir = work / f"run_{time.monotonic_ns()}"
    weights = None if initial is None else load_trained_model(initial).model.state_dict()
    labelled = [p for p, s in enumerate(data.samples) if s.mask is not None and (s.mask != IGNORE).any()]
    result = Trainer(
        plan.config,
        data,
        run_dir,
        plan=plan,
        initial_weights=weights,
        curves_each_epoch=False,
        forest_positions=labelled if two_stage else None,
    ).run()
    seconds = time.perf_counter() - started
    predictor = Predictor.from_trained(load_trained_model(run_dir), device="cpu")
    predictions = [predictor.predict(image, rgb=True, keep_probabilities=False).labels for image in heldout.images]
    scores = class_iou(confusion(predictions, heldout.masks, data.class_count))
    cfg = result.config
    note = (
        f"{cfg.model.model_type}/{cfg.model.encoder} crop {cfg.data.crop_size} batch {cfg.training.batch_size}, "
        f"{result.epochs_completed} x {cfg.training.steps_per_epoch} steps"
    )
    return Row("", "", method, float(np.nanmean(scores)), scores, seconds, note), run_dir


def most_uncertain_training_image(run_dir: Path, data: SegmentationData) -> int:
    """The training image whose prediction has the highest mean margin uncertainty."""
    from schism_napari.data.uncertainty import margin_uncertainty

    predictor = Predictor.from_trained(load_trained_model(run_dir), device="cpu")
    means = [float(margin_uncertainty(predictor.predict(s.image, rgb=True).probabilities).mean()) for s in data.samples]
    return int(np.argmax(means))


def correct_and_retrain(
    config: SchismConfig, dense: SegmentationData, sparse: SegmentationData, heldout: Heldout, run_dir: Path, work: Path
) -> list[Row]:
    """(d): retrain from ``run_dir`` with the most uncertain training slice fully labelled, and
    the control, retrained as long on the scribbles alone."""
    index = most_uncertain_training_image(run_dir, sparse)
    samples = list(sparse.samples)
    samples[index] = dense.samples[index]
    corrected = dataclasses.replace(sparse, samples=samples)
    control, _ = network(
        config, sparse, heldout, True, work, initial=run_dir, method="network retrained, no correction"
    )
    fixed, _ = network(
        config, corrected, heldout, True, work, initial=run_dir, method=f"network retrained, slice {index} corrected"
    )
    return [control, fixed]


def _print_message(event: Any) -> None:
    """The trainer's notes (the steps the time budget allows, on this machine at this load), on stderr."""
    from schism_napari.events import Message

    if isinstance(event, Message):
        print(f"  ({event.text})", file=sys.stderr, flush=True)


def held_out_choice(
    config: SchismConfig, data: SegmentationData, heldout: Heldout, work: Path, two_stage: bool = True
) -> list[Row]:
    """(e): as the napari worker does it: plan, hold out strokes, fit the forest, train, choose;
    then forest, network, average and the chosen one scored on the held-out data."""
    started = time.perf_counter()
    plan = plan_config(config, data, interactive=True)
    settings = plan.config.training
    split = make_split(len(data.samples), plan.config.data.num_samples, settings.val_split, settings.seed)
    training, held = hold_out(data, split.train + split.val, split.val)
    forest = fit_forest(training, held)
    run_dir = work / f"run_{time.monotonic_ns()}"
    positions = stage_one_positions(held) if two_stage else None
    result = Trainer(
        plan.config,
        training,
        run_dir,
        split=split,
        plan=plan,
        curves_each_epoch=False,
        callback=_print_message,
        forest_positions=positions,
        forest=forest,
    ).run()
    trained = load_trained_model(run_dir)
    predictor = Predictor.from_trained(trained, device="cpu")
    selection = choose(lambda image: predictor.predict(image, rgb=True).probabilities, forest, data, held)
    seconds = time.perf_counter() - started
    network_p = [predictor.predict(image, rgb=True).probabilities for image in heldout.images]
    forest_p = [forest.predict_proba(image) for image in heldout.images]
    candidates = {
        "forest": forest_p,
        "network": network_p,
        "average": [(n + f) / 2 for n, f in zip(network_p, forest_p, strict=True)],
    }
    strokes = ", ".join(f"{name} {selection.scores[name]:.3f}" for name in candidates)
    cfg = result.config
    rows = []
    for name, probabilities in candidates.items():
        predictions = [p.argmax(axis=0) for p in probabilities]
        scores = class_iou(confusion(predictions, heldout.masks, data.class_count))
        note = f"{held.pixels} held-out stroke pixels" if name == "forest" else ""
        if name == "network":
            note = f"{cfg.model.model_type}/{cfg.model.encoder} crop {cfg.data.crop_size}, "
            note += f"{result.epochs_completed} x {cfg.training.steps_per_epoch} steps"
        rows.append(Row("", "", name, float(np.nanmean(scores)), scores, seconds if name == "network" else 0.0, note))
    chosen = next(row for row in rows if row.method == selection.choice)
    rows.append(
        dataclasses.replace(
            chosen,
            method=f"chosen: {LABELS[selection.choice]}",
            seconds=seconds,
            note=f"held-out strokes: {strokes}",
        )
    )
    return rows


def classical(kind: str, data: SegmentationData, heldout: Heldout) -> Row:
    started = time.perf_counter()
    labelled = [s for s in data.samples if s.mask is not None and (s.mask != IGNORE).any()]
    classifier = PixelClassifier(kind, class_count=data.class_count)
    classifier.fit([s.image for s in labelled], [s.mask for s in labelled])
    seconds = time.perf_counter() - started
    predictions = [classifier.predict(image) for image in heldout.images]
    scores = class_iou(confusion(predictions, heldout.masks, data.class_count))
    return Row("", "", kind, float(np.nanmean(scores)), scores, seconds)


def run_dataset(name: str, root: Path, heldout: Heldout, options: argparse.Namespace, work: Path) -> list[Row]:
    classes = infer_class_count(root)
    if classes is None:
        raise SystemExit(f"{root}: cannot tell the number of classes")
    dense = load_dataset(root, class_count=classes, write_stats=False)
    rows = []
    for labels in ("dense", "scribbles", "choice"):
        if options.only not in (None, labels):
            continue
        if labels == "dense":
            data = dense
        else:
            data = scribbled(dense, slices=options.painted_slices if labels == "choice" else None)
        interactive = labels != "dense"
        config = interactive_config() if interactive else SchismConfig()
        if options.minutes is not None:
            config.set_given("Training", "time_budget", options.minutes)
        for key, value in options.set:
            section, field = key.split(".")
            config.set_given(section, field, value)
        config.validate()
        if labels == "choice":
            for stages in options.stages or [2]:
                for row in held_out_choice(config, data, heldout, work, two_stage=stages == 2):
                    method = row.method if stages == 2 else f"{row.method} (one stage)"
                    rows.append(
                        dataclasses.replace(
                            row, dataset=name, labels=f"1 % on {len(data.samples)} slices", method=method
                        )
                    )
                    print(format_row(rows[-1]), flush=True)
            continue
        found = []
        for stages in (options.stages or [1]) if labels == "dense" else [1]:
            trained, run_dir = network(
                config,
                data,
                heldout,
                interactive,
                work,
                method=f"network ({stages} stage{'s' * (stages > 1)})",
                two_stage=stages == 2,
            )
            found.append(trained)
        found += [classical(k, data, heldout) for k in ("lda", "forest")]
        if labels == "scribbles" and options.correct:
            found += correct_and_retrain(config, dense, data, heldout, run_dir, work)
        for row in found:
            rows.append(dataclasses.replace(row, dataset=name, labels=labels))
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: Row) -> str:
    per_class = " ".join(f"{v:.3f}" for v in row.per_class)
    cells = (row.dataset, row.labels, row.method, f"{row.iou:.3f}", per_class, f"{row.seconds:.0f} s", row.note)
    return "| " + " | ".join(cells) + " |"


def parse_set(text: str) -> tuple[str, Any]:
    from schism_napari.config import parse_value

    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("sample", "thin", "isbi", "all"), default="all")
    parser.add_argument("--isbi", type=Path, default=ISBI, help="the isbi2012-em folder (datasets/, heldout/)")
    parser.add_argument("--only", choices=("dense", "scribbles", "choice"), help="one of the label settings")
    parser.add_argument(
        "--painted-slices", type=int, default=3, help="(e) choice: how many training slices are scribbled"
    )
    parser.add_argument(
        "--stages",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        help="(a) dense and (e) choice: 2 (two-stage network), 1 (one stage), or 1,2 side by side; "
        "by default as the CLI trains them: scribbles in two stages, dense masks in one",
    )
    parser.add_argument("--quick", action="store_true", help="0.3-minute budgets: a smoke check, not a measurement")
    parser.add_argument("--minutes", type=float, help="override the planned time budget")
    parser.add_argument(
        "--no-correct", dest="correct", action="store_false", help="skip (d), correcting a slice and retraining"
    )
    parser.add_argument(
        "--set", type=parse_set, action="append", default=[], metavar="SECTION.KEY=VALUE", help="fix a planned key"
    )
    options = parser.parse_args(argv)
    if options.quick and options.minutes is None:
        options.minutes = 0.3
    import torch

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    print("| dataset | labels | method | mean IoU | IoU per class | wall time | network |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if options.dataset in ("sample", "all"):
            rows += run_dataset("synthetic CT", *sample_data(work), options, work)
        if options.dataset in ("thin", "all"):
            rows += run_dataset("thin-phase CT", *thin_data(work), options, work)
        if options.dataset in ("isbi", "all"):
            if not options.isbi.is_dir():
                print(f"{options.isbi} not found: skipping ISBI", file=sys.stderr)
            else:
                rows += run_dataset("ISBI 2012 EM", *isbi_data(options.isbi), options, work)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
