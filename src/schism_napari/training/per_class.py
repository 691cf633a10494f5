"""One-vs-rest training as in the sem seed: one binary network per class, then a learned stacker.

Each member learns "class k against everything else" on the same split, so a rare class gets
a network of its own instead of a share of one softmax. A small convolutional stacker then
learns how to combine the members' foreground probabilities (they need not sum to one and can
disagree) into C class logits. It is fitted on the validation images, which the members did not
train on, so it learns how much to trust each member on unseen data (the training images,
where every member is over-confident, are used only when there is no validation image).

Everything is written as ONE run folder that prediction loads like any other: the usual
``hyperparameters.ini`` (the multi-class configuration), ``data_stats.json``, split files and a
``model_best_loss.pth`` holding the state_dict of :class:`PerClassModel` (members + stacker),
with ``run_info.json`` saying ``"kind": "per_class"``. Each member's own run folder is kept
under ``members/`` for its curves and metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import SchismConfig
from ..data.classes import default_class_names
from ..data.dataset import DEFAULT_STATS, SegmentationData
from ..data.io import IGNORE
from ..data.normalization import write_stats_file
from ..data.splits import Split, make_split, write_split
from ..errors import SchismError
from ..events import Message, ProgressCallback, StopToken, ignore_events
from ..models.per_class import PER_CLASS_KIND, PerClassModel, member_config
from ..runs import BEST_LOSS, HYPERPARAMETERS, best_weights_file, save_weights, write_run_info

MEMBERS_FOLDER = "members"
STACKER_CROP = 128  # stacker fitting windows: pixels enough for a 3x3 stacker, cheap on CPU


def one_vs_rest(data: SegmentationData, k: int) -> SegmentationData:
    """The dataset with masks 1 where class k, 0 elsewhere, unlabeled pixels kept unlabeled."""
    samples = []
    for sample in data.samples:
        mask = sample.mask
        if mask is not None:
            mask = np.where(mask == IGNORE, IGNORE, (mask == k).astype(np.uint8)).astype(np.uint8)
        samples.append(replace(sample, mask=mask))
    name = (data.class_names or default_class_names(data.class_count))[k]
    return replace(data, samples=samples, class_count=2, class_names=[f"not {name}", name], class_colors=None)


@dataclass
class PerClassResult:
    run_dir: Path
    model: PerClassModel
    member_runs: list[Path]
    stacker_scores: dict[str, float]  # validation mean IoU: stacked vs argmax of the members
    seconds: float


def train_per_class(
    config: SchismConfig,
    data: SegmentationData,
    run_dir: Path,
    *,
    callback: ProgressCallback = ignore_events,
    stop: StopToken | None = None,
    stacker_steps: int = 300,
) -> PerClassResult:
    """Train the members with the Trainer, fit the stacker, write one run folder (``run_dir`` new or empty)."""
    from .trainer import Trainer

    started = time.perf_counter()
    if config.loss.ignore_background:
        raise SchismError("--per-class: [Loss] ignore_background = True is not supported (each class gets a model)")
    config = config.copy()
    config.model.in_channels = data.in_channels
    run_dir = Path(run_dir)
    stop = stop or StopToken()
    t, d = config.training, config.data
    split = make_split(len(data.samples), d.num_samples, t.val_split, t.seed)
    members, member_runs = [], []
    names = data.class_names or default_class_names(data.class_count)
    for k in range(data.class_count):
        callback(Message(f"per-class member {k + 1}/{data.class_count}: {names[k]} against the rest"))
        member_dir = run_dir / MEMBERS_FOLDER / f"class_{k}"
        member_dir.mkdir(parents=True, exist_ok=True)
        result = Trainer(member_config(config), one_vs_rest(data, k), member_dir, split=split,
                         callback=callback, stop=stop).run()  # fmt: skip
        members.append(result.model.cpu().eval())
        member_runs.append(member_dir)
        if stop.requested:
            raise SchismError("--per-class training stopped before every member was trained; nothing usable written")
    model = PerClassModel(members, data.class_count)
    fit_images = split.val or split.train
    scores = fit_stacker(model, config, data, fit_images, steps=stacker_steps)
    callback(
        Message(
            f"stacker fitted on {len(fit_images)} images: mean IoU {scores['stacked']:.4f} "
            f"(members' argmax {scores['members_argmax']:.4f})"
        )
    )
    _write_run(run_dir, config, data, split, model, member_runs, scores)
    return PerClassResult(run_dir, model.eval(), member_runs, scores, time.perf_counter() - started)


def _member_features(model: PerClassModel, config: SchismConfig, data: SegmentationData, positions: list[int]) -> Any:
    """Tiled member probabilities of whole images, as prediction will compute them: (N, members, Y, X)."""
    from ..inference import Predictor

    normalization = data.stats.get(DEFAULT_STATS) or next(iter(data.stats.values()))
    features = []
    for member in model.members:
        predictor = Predictor(
            member,
            class_count=2,
            in_channels=data.in_channels,
            normalization=normalization,
            scale=config.scale,
            settings=config.inference,
            tile_size=config.tile_size,
            device="cpu",
        )
        features.append([predictor.predict(data.samples[p].image, rgb=True).probabilities[1] for p in positions])
    return [np.stack([f[i] for f in features]) for i in range(len(positions))]


def fit_stacker(
    model: PerClassModel, config: SchismConfig, data: SegmentationData, positions: list[int], *, steps: int = 300
) -> dict[str, float]:
    """Fit the stacker by cross-entropy on labelled pixels of ``positions`` (whole images, Adam)."""
    from ..evaluation.metrics import ConfusionMatrix

    torch.manual_seed(config.training.seed or 0)
    features = _member_features(model, config, data, positions)
    masks = [data.samples[p].mask for p in positions]
    pairs = [
        (torch.from_numpy(f)[None], torch.from_numpy(m.astype(np.int64))[None])
        for f, m in zip(features, masks, strict=True)
        if m is not None
    ]
    if not pairs:
        raise SchismError("--per-class: no labelled image to fit the stacker on")
    stacker = model.stacker
    optimizer = torch.optim.Adam(stacker.parameters(), lr=0.01)
    generator = np.random.default_rng(config.training.seed)
    for _ in range(steps):
        optimizer.zero_grad()
        crops = [_random_crop(x, y, STACKER_CROP, generator) for x, y in pairs]
        # a window of unlabeled pixels only has a NaN loss but zero gradients (torch), so it does no harm
        loss = torch.stack([F.cross_entropy(stacker(x), y, ignore_index=IGNORE) for x, y in crops]).mean()
        loss.backward()
        optimizer.step()
    stacked, naive = ConfusionMatrix(data.class_count), ConfusionMatrix(data.class_count)
    with torch.no_grad():
        for x, y in pairs:
            stacked.update(y[0].numpy().astype(np.uint8), stacker(x)[0].argmax(0).numpy())
            naive.update(y[0].numpy().astype(np.uint8), x[0].argmax(0).numpy())
    return {"stacked": stacked.mean("Jaccard"), "members_argmax": naive.mean("Jaccard")}


def _random_crop(
    x: torch.Tensor, y: torch.Tensor, size: int, generator: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random size x size window of features and mask (the whole image when smaller)."""
    height, width = y.shape[-2:]
    top = int(generator.integers(0, max(1, height - size + 1)))
    left = int(generator.integers(0, max(1, width - size + 1)))
    return x[..., top : top + size, left : left + size], y[..., top : top + size, left : left + size]


def _write_run(
    run_dir: Path,
    config: SchismConfig,
    data: SegmentationData,
    split: Split,
    model: PerClassModel,
    member_runs: list[Path],
    scores: dict[str, float],
) -> None:
    config.to_ini(run_dir / HYPERPARAMETERS, overwrite=True)
    used = {name: data.normalization(name) for name in data.datasets}
    used[DEFAULT_STATS] = data.stats.get(DEFAULT_STATS) or next(iter(used.values()))
    write_stats_file(run_dir / "data_stats.json", used, overwrite=True)
    write_split(run_dir, data, split, overwrite=True)
    save_weights(run_dir / best_weights_file(BEST_LOSS), model.state_dict())
    write_run_info(
        run_dir,
        {
            "kind": PER_CLASS_KIND,
            "in_channels": data.in_channels,
            "class_names": data.class_names or default_class_names(data.class_count),
            "class_colors": data.class_colors,
            "datasets": data.datasets,
            "members": [str(p.relative_to(run_dir)) for p in member_runs],
            "stacker_validation_mean_iou": scores,
        },
    )
