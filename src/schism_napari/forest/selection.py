"""Never worse than the forest: choose the network, the forest or their average on held-out labels.

In napari a random forest fitted on the painted pixels shows a preview within seconds; with few
labels and a CPU's short time budget the network trained after it can be worse (ISBI EM, 1 % of the
pixels painted on 3 slices: the preview scored 0.62 mean IoU on its slice, the network that replaced
it 0.35). So before a network's result replaces anything, labels that neither model saw decide:

* :func:`hold_out` sets aside about a fifth of each class's painted pixels in each image as whole
  strokes (connected components), so held-out pixels are not the neighbours of training pixels; a
  class painted in one or two large strokes is split in 32 px blocks instead. Per image, because a
  corrected, fully labelled slice holds most of the pixels: a fifth of the total took all the other
  slices' strokes of a class out of training. Dense masks keep all their
  labels: their validation images, which the network never trains on, are scored instead.
* The forest is fitted on the rest (:func:`fit_forest`) and the network trains on the rest.
* :func:`choose` scores the forest, the network and the mean of their probabilities on the held-out
  labels (mean IoU over the classes present there, each image's held-out pixels weighing as much as
  any other image's: blocks of a corrected slice, held out beside that slice's training pixels,
  flatter a network that learned the slice; the other slices' strokes say how it does elsewhere)
  and keeps the best. Strokes are painted inside
  the classes, away from their borders, so two candidates often both get them all right: scores
  within :data:`TIE` of the best are a tie, and a tie keeps the forest, the preview the user has
  already seen (then the average, then the network): a network that only matches the forest on the
  strokes may still be worse between them, where no label tells (synthetic CT, 1 % painted: all
  three scored 1.000 on the held-out strokes; on held-out slices the two-stage network scored 0.768,
  the forest 0.786). The log loss is kept for the record; it used to break ties, and chose that
  network, surer inside the strokes but worse at the borders.

The choice and its scores go to the run folder's ``selection.json`` and, when the forest takes part,
the forest to ``forest.npz`` (numbers only: see :meth:`PixelClassifier.save`);
:func:`schism_napari.runs.load_trained_model` then predicts with the chosen combination. The CLI and
the napari widgets share all of it; nothing here imports torch, Qt or the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import SegmentationData
from ..data.io import IGNORE
from ..errors import SchismError
from ..evaluation.metrics import jaccard
from .classifier import PixelClassifier

SELECTION_FILE = "selection.json"
FOREST_FILE = "forest.npz"
HOLDOUT_SHARE = 0.2  # of each class's painted pixels
MAX_STROKE_SHARE = 0.35  # a stroke above this share of its class is split in blocks rather than held out whole
BLOCK = 32  # px: the blocks a class painted in one or two large strokes is split in
MIN_CLASS_PIXELS = 20  # a class painted less than this keeps all its pixels for training
HOLDOUT_SEED = 0  # fixed, so a resumed run holds out the same pixels
FOREST_TREES = 24  # the preview's forest: fitted and predicted in seconds
MAX_FOREST_IMAGES = 16  # the forest is fitted on at most this many images (features cost ~1 s per megapixel)
MAX_SCORED_IMAGES = 8  # strokes are held out from (and scored on) at most this many images
MAX_SCORED_SIDE = 1024  # larger held-out images are scored on a window of this size around their labels
CANDIDATES = ("network", "average", "forest")
TIE_ORDER = ("forest", "average", "network")  # who keeps a tie: the preview first
TIE = 0.005  # mean IoU differences below this are a tie
PROBABILITY_FLOOR = 1e-4  # a forest's zero probabilities: a bounded log loss
FOREST_WEIGHTS = {"network": 0.0, "average": 0.5, "forest": 1.0}
LABELS = {"network": "network", "average": "network+forest average", "forest": "forest"}


@dataclass
class HeldOut:
    """The labels kept from training for the choice: ``targets`` maps a sample position to a mask
    holding only its held-out labels (IGNORE elsewhere); ``forest_positions`` are the samples the
    forest is fitted on."""

    mode: str  # "strokes", "validation images" or "none"
    targets: dict[int, np.ndarray] = field(default_factory=dict)
    forest_positions: list[int] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return int(sum(np.count_nonzero(mask != IGNORE) for mask in self.targets.values()))


def hold_out(
    data: SegmentationData, positions: Sequence[int], validation: Sequence[int] = (), *, share: float = HOLDOUT_SHARE
) -> tuple[SegmentationData, HeldOut]:
    """Set aside held-out labels from the samples at ``positions`` (the training and validation
    images); returns the data to train on (held-out pixels unlabeled) and what was held out.

    Scribbles (mean labelled fraction under :data:`~schism_napari.data.crops.SPARSE_FRACTION`) lose
    about ``share`` of each class's pixels as whole strokes; dense masks with ``validation`` images
    lose nothing and those images are scored instead. An image never loses all its labels."""
    from ..data.crops import SPARSE_FRACTION as SPARSE_LABELS

    labelled = [p for p in sorted(set(positions)) if data.samples[p].mask is not None]
    if not labelled:
        return data, HeldOut("none")
    fraction = float(np.mean([data.samples[p].labelled_fraction for p in labelled]))
    validation = [p for p in validation if data.samples[p].mask is not None]
    if fraction >= SPARSE_LABELS and validation:
        scored = _spread(validation, MAX_SCORED_IMAGES)
        training = [p for p in labelled if p not in set(validation)] or labelled
        targets = {p: np.asarray(data.samples[p].mask) for p in scored}
        return data, HeldOut("validation images", targets, _spread(training, MAX_FOREST_IMAGES))

    rng = np.random.default_rng(HOLDOUT_SEED)
    chosen_images = _spread(labelled, MAX_SCORED_IMAGES)  # strokes come from these; the others keep all theirs
    masks = {p: np.array(data.samples[p].mask, dtype=np.uint8, copy=True) for p in chosen_images}
    held = {p: np.full_like(mask, IGNORE) for p, mask in masks.items()}
    remaining = {p: int(np.count_nonzero(mask != IGNORE)) for p, mask in masks.items()}
    ranks = {p: rng.permutation(_block_count(mask.shape)) for p, mask in masks.items()}  # one block order per image
    for k in range(data.class_count):
        for image in chosen_images:  # a share of each image's pixels of the class: a corrected slice
            strokes = [(image, indices) for indices in _components(masks[image] == k)]  # never takes it all
            total = sum(indices.size for _, indices in strokes)
            if total < MIN_CLASS_PIXELS:
                continue
            target = share * total
            shuffled = [strokes[i] for i in rng.permutation(len(strokes))]
            chosen = _take(shuffled, target, total, remaining)
            if not chosen:  # one or two large strokes: blocks of them, in the image's block order
                chosen = _take(_blocks(masks[image], image, k, ranks[image]), target, total, remaining)
            for p, indices in chosen:
                held[p].flat[indices] = k
                masks[p].flat[indices] = IGNORE
    targets = {p: mask for p, mask in held.items() if (mask != IGNORE).any()}
    samples = list(data.samples)
    for p in targets:
        samples[p] = dataclasses.replace(samples[p], mask=masks[p])
    return dataclasses.replace(data, samples=samples), HeldOut("strokes", targets, _spread(labelled, MAX_FOREST_IMAGES))


def fit_forest(
    data: SegmentationData, held: HeldOut, *, trees: int = FOREST_TREES, threads: int = -1
) -> PixelClassifier:
    """The forest on the labels left for training (``data`` as :func:`hold_out` returned it)."""
    samples = [data.samples[p] for p in held.forest_positions]
    images, masks = [], []
    for sample in samples:
        if sample.mask is not None and (sample.mask != IGNORE).any():
            images.append(sample.image)
            masks.append(sample.mask)
    classifier = PixelClassifier(
        "forest", class_count=data.class_count, trees=trees, seed=HOLDOUT_SEED, threads=threads
    )
    return classifier.fit(images, masks)


@dataclass
class Selection:
    """The forest, the network and their average scored on held-out labels, and the one chosen."""

    choice: str  # one of CANDIDATES
    scores: dict[str, float]  # mean IoU on the held-out labels (NaN: nothing held out)
    per_class: dict[str, list[float]]
    held_out: str  # HeldOut.mode
    pixels: int
    images: int
    checkpoint: str = "loss"  # the network weights the choice was made with
    log_loss: dict[str, float] = field(default_factory=dict)  # mean -log p(true class), for the record

    @property
    def forest_weight(self) -> float:
        """The forest's share of the probabilities: 0 (network), 0.5 (average) or 1 (forest)."""
        return FOREST_WEIGHTS[self.choice]

    def describe(self) -> str:
        """'network+forest average: held-out mean IoU 0.710 vs forest 0.660, network 0.580 (...)'"""
        if not self.pixels:
            return f"{LABELS[self.choice]}: no held-out labels to compare it with the forest (paint more strokes)"
        others = ", ".join(f"{LABELS[name]} {self.scores[name]:.3f}" for name in CANDIDATES if name != self.choice)
        where = f"{self.pixels} held-out pixels" + (
            " of the validation images" if self.held_out == "validation images" else " of painted strokes"
        )
        tie = ""
        if self.scores[self.choice] < max(v for v in self.scores.values() if math.isfinite(v)):
            tie = f"; a tie within {TIE:g}" + (", which keeps the preview" if self.choice == "forest" else "")
        return f"{LABELS[self.choice]}: held-out mean IoU {self.scores[self.choice]:.3f} vs {others} ({where}{tie})"

    def probabilities(self, network: np.ndarray | None, forest: np.ndarray | None) -> np.ndarray:
        """The chosen combination of a network's and a forest's probabilities of the same pixels."""
        weight = self.forest_weight
        if weight <= 0 or forest is None:
            if network is None:
                raise ValueError("the network's probabilities are needed")
            return network
        if weight >= 1 or network is None:
            return forest
        return ((1 - weight) * network + weight * forest).astype(np.float32, copy=False)

    def to_json(self) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if not math.isfinite(value) else round(float(value), 6)

        return {
            "choice": self.choice,
            "scores": {name: number(v) for name, v in self.scores.items()},
            "per_class": {name: [number(v) for v in values] for name, values in self.per_class.items()},
            "held_out": self.held_out,
            "pixels": self.pixels,
            "images": self.images,
            "checkpoint": self.checkpoint,
            "log_loss": {name: number(v) for name, v in self.log_loss.items()},
            "forest_file": FOREST_FILE if self.forest_weight > 0 else None,
            "summary": self.describe(),
        }

    @classmethod
    def from_json(cls, saved: dict[str, Any], source: str) -> Selection:
        choice = saved.get("choice")
        if choice not in CANDIDATES:
            raise SchismError(f"{source}: choice {choice!r} is none of {', '.join(CANDIDATES)}")

        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        try:
            return cls(
                choice,
                {str(name): number(v) for name, v in dict(saved.get("scores") or {}).items()},
                {str(name): [number(v) for v in values] for name, values in dict(saved.get("per_class") or {}).items()},
                str(saved.get("held_out", "")),
                int(saved.get("pixels", 0)),
                int(saved.get("images", 0)),
                str(saved.get("checkpoint", "loss")),
                {str(name): number(v) for name, v in dict(saved.get("log_loss") or {}).items()},
            )
        except (TypeError, ValueError) as error:
            raise SchismError(f"{source}: unreadable scores ({error})") from None

    def write(self, run_dir: Path, forest: PixelClassifier | None) -> Path:
        """``selection.json``, and ``forest.npz`` when the forest takes part, into the run folder."""
        from ..plumbing.atomic import atomic_write_text

        run_dir = Path(run_dir)
        if self.forest_weight > 0:
            if forest is None:
                raise ValueError("the chosen combination needs the forest")
            forest.save(run_dir / FOREST_FILE)
        else:
            (run_dir / FOREST_FILE).unlink(missing_ok=True)  # a resumed run's earlier choice: the run's own file
        text = json.dumps(self.to_json(), indent=2) + "\n"
        return atomic_write_text(run_dir / SELECTION_FILE, text, overwrite=True)


def choose(
    network: Callable[[np.ndarray], np.ndarray],
    forest: PixelClassifier | None,
    data: SegmentationData,
    held: HeldOut,
    *,
    checkpoint: str = "loss",
) -> Selection:
    """Score the forest, the network and their average on the held-out labels; keep the best.

    ``network`` maps a sample's image ``(Y, X, C)`` to class probabilities ``(C, Y, X)``. Without
    held-out labels (or a forest) the network is kept, with NaN scores."""
    count = data.class_count
    matrices = {name: np.zeros((count, count), dtype=np.float64) for name in CANDIDATES}  # image-weighted
    losses = dict.fromkeys(CANDIDATES, 0.0)
    scored = pixels = 0
    if forest is not None:
        for position, target in held.targets.items():
            window = _window(target)
            image, truth = data.samples[position].image[window], target[window]
            valid = truth != IGNORE
            if not valid.any():
                continue
            scored += 1
            pixels += int(valid.sum())
            weight = 1.0 / float(valid.sum())  # each image weighs the same, whatever it holds out
            from_network = np.asarray(network(image), dtype=np.float32)
            from_forest = forest.predict_proba(image)
            candidates = {"network": from_network, "forest": from_forest, "average": (from_network + from_forest) / 2}
            classes = truth[valid].astype(np.int64)
            for name, probabilities in candidates.items():
                predicted = probabilities.argmax(axis=0)[valid].astype(np.int64)
                counts = np.bincount(classes * count + predicted, minlength=count * count).reshape(count, count)
                matrices[name] += weight * counts
                right = np.take_along_axis(probabilities[:, valid], classes[None], axis=0)[0]
                losses[name] -= weight * float(np.log(np.maximum(right, PROBABILITY_FLOOR)).sum())
    per_class = {name: jaccard(matrix) for name, matrix in matrices.items()}
    scores = {name: _mean_iou(matrices[name], per_class[name]) for name in CANDIDATES}
    log_loss = {name: losses[name] / scored if scored else math.nan for name in CANDIDATES}
    finite = [name for name in CANDIDATES if math.isfinite(scores[name])]
    choice = "network"
    if finite:
        best = max(scores[name] for name in finite)
        tied = [name for name in finite if scores[name] >= best - TIE]
        choice = min(tied, key=TIE_ORDER.index)
    return Selection(choice, scores, per_class, held.mode, pixels, scored, checkpoint, log_loss)


def read_selection(run_dir: str | Path) -> Selection | None:
    """The run folder's choice, or None when it has no ``selection.json`` (older runs, SCHISM's)."""
    path = Path(run_dir) / SELECTION_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SchismError(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(saved, dict):
        raise SchismError(f"{path}: expected a JSON object")
    return Selection.from_json(saved, str(path))


def load_forest(run_dir: str | Path, class_count: int) -> PixelClassifier:
    """The run folder's ``forest.npz`` (fitted again from its pixels on first use)."""
    path = Path(run_dir) / FOREST_FILE
    forest = PixelClassifier.load(path)
    if forest.class_count != class_count:
        raise SchismError(f"{path}: {forest.class_count} classes, but the run's model has {class_count}")
    return forest


# ---- helpers -----------------------------------------------------------------------------------


def _spread(positions: Sequence[int], most: int) -> list[int]:
    """At most ``most`` of ``positions``, evenly spaced (all of them when they are fewer)."""
    positions = list(positions)
    if len(positions) <= most:
        return positions
    return [positions[int(i)] for i in np.unique(np.linspace(0, len(positions) - 1, most).round())]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Flat indices of each 8-connected component of a boolean mask (a painted stroke)."""
    if not mask.any():
        return []
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    indices = np.flatnonzero(labelled)  # only the painted pixels are sorted, not the whole image
    components = labelled.ravel()[indices]
    order = np.argsort(components, kind="stable")
    bounds = np.searchsorted(components[order], np.arange(1, count + 2))
    return [indices[order[bounds[i] : bounds[i + 1]]] for i in range(count)]


def _block_count(shape: tuple[int, ...]) -> int:
    return -(-shape[0] // BLOCK) * -(-shape[1] // BLOCK)


def _blocks(mask: np.ndarray, image: int, k: int, rank: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Class ``k``'s pixels of one image grouped by BLOCK x BLOCK blocks, in the order of the image's
    random block ranks (shared by all classes, so classes split in blocks tend to lose the same blocks)."""
    indices = np.flatnonzero(mask.ravel() == k)
    width = mask.shape[1]
    ranks = rank[(indices // width // BLOCK) * -(-width // BLOCK) + (indices % width) // BLOCK]
    by_rank = np.argsort(ranks, kind="stable")
    sorted_ranks = ranks[by_rank]
    starts = np.flatnonzero(np.r_[True, sorted_ranks[1:] != sorted_ranks[:-1]])  # called with pixels of k
    stops = [*starts[1:], sorted_ranks.size]
    return [(image, indices[by_rank[start:stop]]) for start, stop in zip(starts, stops, strict=True)]


def _take(
    units: Sequence[tuple[int, np.ndarray]], target: float, total: int, remaining: dict[int, int]
) -> list[tuple[int, np.ndarray]]:
    """Units in order until ``target`` pixels are held; skip a unit above MAX_STROKE_SHARE of its
    class or one that would leave its image without labels. Updates ``remaining``."""
    chosen, held = [], 0
    for p, indices in units:
        if held >= target:
            break
        size = int(indices.size)
        if held + size > MAX_STROKE_SHARE * total or remaining[p] - size < 1:
            continue
        chosen.append((p, indices))
        held += size
        remaining[p] -= size
    return chosen


def _window(mask: np.ndarray) -> tuple[slice, slice]:
    """The whole image, or a MAX_SCORED_SIDE window centred on its labels when it is larger."""
    spans = []
    for axis, size in enumerate(mask.shape[:2]):
        if size <= MAX_SCORED_SIDE:
            spans.append(slice(0, size))
            continue
        where = np.flatnonzero((mask != IGNORE).any(axis=1 - axis))
        centre = int(where.mean()) if where.size else size // 2
        start = int(np.clip(centre - MAX_SCORED_SIDE // 2, 0, size - MAX_SCORED_SIDE))
        spans.append(slice(start, start + MAX_SCORED_SIDE))
    return spans[0], spans[1]


def _mean_iou(matrix: np.ndarray, per_class: list[float]) -> float:
    """Mean IoU over the classes present in the held-out labels (NaN when there are none)."""
    present = matrix.sum(axis=1) > 0
    values = [v for v, here in zip(per_class, present, strict=True) if here]
    return float(np.mean(values)) if values else math.nan
