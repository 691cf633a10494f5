"""Ensembles of trained runs: average the class probabilities of several models, slice by slice.

Runs trained with different seeds, folds or architectures make different mistakes; averaging
their probabilities is the simplest way to combine them. Members predict in lockstep, each
with its own tiling, scale and normalisation, and only the current slice's probabilities of
each member are held at once, so an ensemble streams exactly like a single predictor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SchismError
from .combined import CombinedPredictor
from .predictor import Slices

if TYPE_CHECKING:
    from ..data.dataset import SegmentationData
    from .predictor import Predictor


class EnsemblePredictor(CombinedPredictor):
    """Mean (or weighted mean) of the members' probabilities; labels follow the first member's rule."""

    def __init__(self, members: Sequence[Predictor], weights: Sequence[float] | None = None, names: Sequence[str] = ()):
        if not members:
            raise SchismError("an ensemble needs at least one run")
        super().__init__(members[0])
        self.members = list(members)
        self.names = list(names) if names else [f"member {i + 1}" for i in range(len(members))]
        counts = [member.class_count for member in members]
        if len(set(counts)) > 1:
            listed = ", ".join(f"{name}: {count}" for name, count in zip(self.names, counts, strict=True))
            raise SchismError(f"ensemble members disagree on the number of classes ({listed})")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise SchismError(f"ensemble weights {weights}: need one non-negative weight per member, not all zero")
        total = sum(weights)
        self.weights = [w / total for w in weights]

    def iter_probabilities(self, slices: Slices) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(z, weighted mean of the members' (C, Y, X))`` in order."""
        streams = [member.iter_probabilities(slices) for member in self.members]
        for items in zip(*streams, strict=True):
            z = items[0][0]
            mean = items[0][1] * self.weights[0]
            for (other_z, probabilities), weight in zip(items[1:], self.weights[1:], strict=True):
                assert other_z == z, "members yield slices in the same order"
                mean = mean + probabilities * weight
            yield z, mean.astype(np.float32, copy=False)


def load_members(run_dirs: Sequence[str | Path], metric: str = "loss", *, dataset: str | None = None) -> list[Any]:
    """Load each run folder (any kind, per-class and SCHISM runs included; ``dataset`` picks a SCHISM
    run's data_stats entry); all must predict the same classes."""
    from ..runs import load_trained_model

    trained = [load_trained_model(run, metric, dataset=dataset) for run in run_dirs]
    first = trained[0]
    for run, model in zip(run_dirs[1:], trained[1:], strict=True):
        if model.class_count != first.class_count:
            raise SchismError(
                f"{run}: {model.class_count} classes, but {run_dirs[0]} has {first.class_count}; "
                "ensemble members must predict the same classes"
            )
    return trained


@dataclass
class MemberComparison:
    """Evaluations of each member and of their ensemble on the same images, with their times."""

    names: list[str]  # members' names, then "ensemble"
    evaluations: list[Any]  # schism_napari.evaluation.scoring.Evaluation, same order
    seconds: list[float]

    def rows(self) -> list[dict[str, object]]:
        rows = []
        for name, evaluation, seconds in zip(self.names, self.evaluations, self.seconds, strict=True):
            for row in evaluation.table():
                rows.append({"model": name, **row, "seconds": round(seconds, 3)})
        return rows

    def format(self) -> str:
        blocks = []
        for name, evaluation, seconds in zip(self.names, self.evaluations, self.seconds, strict=True):
            blocks.append(f"== {name} ({seconds:.1f}s)\n{evaluation.format()}")
        means = ", ".join(
            f"{name} {evaluation.matrix.mean('Jaccard'):.4f}"
            for name, evaluation in zip(self.names, self.evaluations, strict=True)
        )
        return "\n".join(blocks) + f"\nmean Jaccard: {means}"

    def csv(self) -> str:
        rows = self.rows()
        lines = [",".join(rows[0])] + [",".join(str(v) for v in row.values()) for row in rows]
        return "\n".join(lines) + "\n"


def compare_members(
    predictors: Sequence[Predictor],
    names: Sequence[str],
    data: SegmentationData,
    positions: Sequence[int],
    class_names: list[str],
    *,
    ignore_background: bool = False,
) -> MemberComparison:
    """Score every member alone and their (mean) ensemble, per class, on ``positions`` of ``data``."""
    from ..evaluation.scoring import evaluate

    candidates: list[Predictor | CombinedPredictor] = [*predictors, EnsemblePredictor(predictors, names=names)]
    evaluations, seconds = [], []
    for predictor in candidates:
        started = time.perf_counter()
        evaluations.append(evaluate(predictor, data, positions, class_names, ignore_background=ignore_background))
        seconds.append(time.perf_counter() - started)
    return MemberComparison([*names, "ensemble"], evaluations, seconds)
