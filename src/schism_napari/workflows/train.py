"""Training as one path from a request to a result, for every front end.

The command line, the napari dock and the demo each used to assemble a training themselves:
read the data, plan the keys the user left out, split, hold labels out, build a ``Trainer``,
then score the forest, the network and their average on the held-out labels. The copies drifted
(a dock run once lacked ``plan.json``). Here that assembly happens once: a front end describes
what it wants as a :class:`TrainRequest` and gets a :class:`TrainOutcome`; its own part is only
to turn arguments or layers into the request and the outcome into messages or layers.

A request runs in two phases so that a front end can act in between:
:func:`prepare_training` (read, plan, split, hold out; the CLI prints the plan and installs its
Ctrl-C handler) and :func:`run_training` (train and choose). :func:`train` runs both.
Progress goes to the usual :data:`~schism_napari.events.ProgressCallback` and
:class:`~schism_napari.events.StopToken`. Nothing here imports torch at import time.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from ..data.dataset import SegmentationData
from ..events import ProgressCallback, StopToken, ignore_events

if TYPE_CHECKING:
    import torch

    from ..config import SchismConfig
    from ..data.splits import Split
    from ..forest.classifier import PixelClassifier
    from ..forest.selection import HeldOut, Selection
    from ..inference import Predictor
    from ..runs import TrainedModel
    from ..training.per_class import PerClassResult
    from ..training.planning import Plan
    from ..training.trainer import TrainingResult


class DatasetOptions(TypedDict, total=False):
    """The keyword arguments of :func:`schism_napari.data.load_dataset` that come from the configuration."""

    class_count: int
    ignore_index: int
    in_channels: int | None
    ignore_background: bool
    planes: str


def dataset_options(config: SchismConfig, *, in_channels: int | None = None, planes: bool = False) -> DatasetOptions:
    """The one place a configuration becomes ``load_dataset`` keyword arguments.

    ``in_channels``: a trained model's channels instead of ``[Model] in_channels``. ``planes``: also
    pass ``[Data] planes`` (training from the command line adds a stack's XZ and YZ planes as samples;
    the dock and evaluation read the slices alone).
    """
    options: DatasetOptions = {
        "class_count": config.model.class_count,
        "ignore_index": config.data.ignore_index,
        "in_channels": config.model.in_channels if in_channels is None else in_channels,
        "ignore_background": config.loss.ignore_background,
    }
    if planes:
        options["planes"] = config.data.planes
    return options


class DataSource(Protocol):
    """Training data read when the request runs (in the dock's worker thread, not at Train)."""

    def load(self) -> SegmentationData: ...


@dataclass
class DatasetFolder:
    """A dataset folder (SCHISM, BiaPy, one image with ``mask``), read with ``config``'s options."""

    path: Path
    config: SchismConfig
    mask: Path | None = None
    callback: ProgressCallback = ignore_events
    planes: bool = True  # [Data] planes = xyz adds the stacks' XZ and YZ planes

    def load(self) -> SegmentationData:
        from ..data import load_dataset

        options = dataset_options(self.config, planes=self.planes)
        return load_dataset(self.path, mask=self.mask, callback=self.callback, write_stats=False, **options)


@dataclass
class TrainRequest:
    """What to train, on what, into which run folder.

    ``interactive`` is the dock's run: the short interactive plan, the forest fitted before the
    network (its preview is shown meanwhile, see ``on_forest``) and handed to the trainer as stage 1,
    the run folder created just before training, the curves drawn once at the end, and the choice
    made on the network in memory. Otherwise (the command line) the trainer fits stage 1 inside its
    time budget, the forest for the choice is fitted afterwards, and the choice is made on the
    best weights as read back from the run folder.
    """

    config: SchismConfig
    data: SegmentationData | DataSource
    run_dir: Path
    interactive: bool = False
    resume: bool = False  # continue the run in run_dir: its config, split and normalisation; no plan
    classes_from_masks: bool = False  # [Model] num_classes was counted from the masks: the plan says so
    planned: bool = True  # plan the keys the config leaves out (False: train with it as it is, as the demo)
    initial_weights: dict[str, torch.Tensor] | None = None  # fine-tuning: the weights to start from
    held_out: bool = True  # hold labels out for the forest/network choice (False: torchrun's processes)
    per_class: bool = False  # one binary model per class and a stacker (training.per_class)


@dataclass
class PreparedTraining:
    """A request with its data read, its keys planned and its labels held out."""

    request: TrainRequest
    data: SegmentationData
    config: SchismConfig  # planned
    plan: Plan | None
    split: Split | None = None
    training: SegmentationData | None = None  # data with the held-out labels removed
    held: HeldOut | None = None


@dataclass
class TrainOutcome:
    """What a request produced. ``result`` is None for a per-class run (``per_class`` then)."""

    run_dir: Path
    data: SegmentationData
    plan: Plan | None
    result: TrainingResult | None = None
    per_class: PerClassResult | None = None
    selection: Selection | None = None  # the held-out choice (written to selection.json)
    model: TrainedModel | None = None  # the network, with the forest when the choice includes it
    predictor: Predictor | None = None  # the network alone, as the choice scored it
    forest: PixelClassifier | None = None


def prepare_training(request: TrainRequest) -> PreparedTraining:
    """Read the data, plan the keys the user left out (not when resuming), split and hold out."""
    from ..data.splits import make_split, read_split
    from ..forest.selection import hold_out
    from ..training.planning import plan_config

    data = request.data if isinstance(request.data, SegmentationData) else request.data.load()
    if request.resume and data.stats_path is None:
        data.stats = _run_stats(request.run_dir, data.stats)  # the normalisation the run started with
    config, plan = request.config, None
    if request.planned and not request.resume:
        if request.interactive:
            plan = plan_config(config, data, interactive=True)
        else:
            from ..plumbing.devices import select_device

            plan = plan_config(config, data, select_device(config.training.device).type)
            if request.classes_from_masks:
                plan.reasons["Model.num_classes"] = f"{config.model.num_classes} classes found in the masks"
        config = plan.config
    prepared = PreparedTraining(request, data, config, plan)
    if request.held_out and not request.per_class:
        if request.resume:
            split = read_split(request.run_dir, data)
        else:
            t = config.training
            split = make_split(len(data.samples), config.data.num_samples, t.val_split, t.seed)
        prepared.split = split
        prepared.training, prepared.held = hold_out(data, split.train + split.val, split.val)
    return prepared


def run_training(
    prepared: PreparedTraining,
    *,
    callback: ProgressCallback = ignore_events,
    stop: StopToken | None = None,
    on_forest: Callable[[PixelClassifier], None] | None = None,
) -> TrainOutcome:
    """Train and, with held-out labels, choose between the forest, the network and their average.

    ``on_forest`` is called with the forest of an interactive request as soon as it is fitted,
    before the network trains (the dock shows its preview).
    """
    from ..forest.stages import stage_one_positions
    from ..plumbing.atomic import create_unique_folder
    from ..training.trainer import Trainer

    request, data, config, plan = prepared.request, prepared.data, prepared.config, prepared.plan
    stop = stop or StopToken()
    run_dir = request.run_dir
    outcome = TrainOutcome(run_dir, data, plan)
    if request.per_class:
        from ..training.per_class import train_per_class

        outcome.per_class = train_per_class(config, data, run_dir, callback=callback, stop=stop)
        return outcome
    if prepared.held is None or prepared.training is None:  # processes split by a shared random seed: no choice
        trainer = Trainer(config, data, run_dir, resume=request.resume, callback=callback, stop=stop, plan=plan)
        outcome.result = trainer.run()
        return outcome
    training, held = prepared.training, prepared.held
    forest = None
    if request.interactive:
        forest = _fit_forest_or_none(training, held)
        if forest is not None and on_forest is not None:
            on_forest(forest)
        forest_positions = stage_one_positions(held) if forest is not None else None
        # created here, exclusively (the dock chose the name in the GUI thread), and claimed by the Trainer
        run_dir = outcome.run_dir = create_unique_folder(run_dir)
    else:
        forest_positions = stage_one_positions(held)
    result = Trainer(
        config,
        training,
        run_dir,
        split=prepared.split,
        initial_weights=request.initial_weights,
        resume=request.resume,
        callback=callback,
        stop=stop,
        curves_each_epoch=not request.interactive,  # the dock draws them live
        plan=copy.deepcopy(plan),  # plan.json with the measured steps; the caller keeps the plan as planned
        forest_positions=forest_positions,
        forest=forest,  # the preview's forest is stage 1 of a two-stage model
    ).run()
    outcome.result = result
    if not request.interactive and held.targets:  # a two-stage model's stage 1 is that forest already
        forest = result.stage_one.forest if result.stage_one is not None else _fit_forest(training, held)
    _choose(outcome, result, held, forest, network_from_disk=not request.interactive)
    return outcome


def train(
    request: TrainRequest,
    *,
    callback: ProgressCallback = ignore_events,
    stop: StopToken | None = None,
    on_forest: Callable[[PixelClassifier], None] | None = None,
) -> TrainOutcome:
    """:func:`prepare_training` then :func:`run_training`."""
    prepared = prepare_training(request)
    return run_training(prepared, callback=callback, stop=stop, on_forest=on_forest)


def trained_model(result: TrainingResult, data: SegmentationData) -> TrainedModel:
    """The model a finished training holds in memory, as a run folder would load it."""
    from ..data.classes import default_class_names
    from ..runs import TrainedModel

    names = data.class_names or default_class_names(data.class_count)
    return TrainedModel(
        result.config,
        result.model,
        data.stats["default"],
        data.in_channels,
        list(names),
        data.class_colors,
        f"{result.run_dir} (model_best_loss.pth{', two stages' if result.stage_one is not None else ''})",
        run_dir=result.run_dir,  # its run_info.json tells an export the input dtype
        stage_one=result.stage_one,
    )


def _choose(
    outcome: TrainOutcome,
    result: TrainingResult,
    held: HeldOut,
    forest: PixelClassifier | None,
    *,
    network_from_disk: bool,
) -> None:
    """Score the forest, the network and their average on the held-out labels; the run folder keeps
    the choice (``selection.json``, and ``forest.npz`` when the forest takes part)."""
    from ..forest.selection import choose
    from ..inference import Predictor
    from ..runs import load_trained_model

    data = outcome.data
    # from disk: the best-loss weights, as prediction will load them
    network = load_trained_model(result.run_dir) if network_from_disk else trained_model(result, data)
    predictor = Predictor.from_trained(network, device=result.config.training.device, forest=None)
    selection = choose(lambda image: predictor.predict(image, rgb=True).probabilities, forest, data, held)
    selection.write(result.run_dir, forest)
    outcome.selection, outcome.predictor, outcome.forest = selection, predictor, forest
    outcome.model = dataclasses.replace(
        network, forest=forest if selection.forest_weight > 0 else None, selection=selection
    )


def _fit_forest(training: SegmentationData, held: HeldOut) -> PixelClassifier:
    from ..forest.selection import fit_forest

    return fit_forest(training, held)


def _fit_forest_or_none(training: SegmentationData, held: HeldOut) -> PixelClassifier | None:
    """The forest on the labels left for training; None when it cannot be fitted (a courtesy:
    training goes on, and the network is kept)."""
    from ..errors import SchismError

    try:
        return _fit_forest(training, held)
    except (SchismError, ValueError):
        return None


def _run_stats(run_dir: Path, computed: dict[str, Any]) -> dict[str, Any]:
    from ..data.dataset import STATS_FILE
    from ..data.normalization import read_stats_file

    path = Path(run_dir) / STATS_FILE
    return read_stats_file(path) if path.is_file() else computed
