"""Prediction as one path from a request to a predictor, for every front end.

The command line (``predict``, ``evaluate``), the napari dock and the demo each used to build the
predictor themselves: load the run folders, override their ``[Inference]`` settings, one
:class:`~schism_napari.inference.Predictor` per member, an
:class:`~schism_napari.inference.ensemble.EnsemblePredictor` for several, tri-planar consensus
for ``planes = xyz``. Here that assembly happens once: a front end describes what it wants as a
:class:`PredictRequest` and gets :class:`Predictors`; what it then predicts (files, layers, a
dataset split) stays its own. Progress goes to the usual
:data:`~schism_napari.events.ProgressCallback` and :class:`~schism_napari.events.StopToken`.
Nothing here imports torch at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import SchismError
from ..events import ProgressCallback, StopToken

if TYPE_CHECKING:
    from ..config import InferenceConfig
    from ..inference import Predictor
    from ..inference.combined import CombinedPredictor
    from ..runs import TrainedModel

    AnyPredictor: TypeAlias = Predictor | CombinedPredictor  # a Predictor, an ensemble or tri-planar
else:
    AnyPredictor: TypeAlias = Any


@dataclass
class InferenceOverrides:
    """Values given on the command line over each run's ``[Inference]`` section (None: the run's)."""

    tile_size: int | None = None
    overlap: float | None = None
    halo: int | None = None
    batch_size: int | None = None
    tta: bool = False  # True turns test-time augmentation on; False keeps the run's
    planes: str | None = None
    voxel_ratio: float | None = None

    def apply(self, settings: InferenceConfig) -> InferenceConfig:
        """Set the given values on ``settings`` (in place) and validate them as the command line's."""
        for name in ("tile_size", "overlap", "halo", "batch_size"):
            if getattr(self, name) is not None:
                setattr(settings, name, getattr(self, name))
        if self.tta:
            settings.tta = True
        if self.planes is not None:
            settings.planes = self.planes
        if self.voxel_ratio is not None:
            settings.voxel_ratio = self.voxel_ratio
        settings.validate(source="command line")
        return settings


@dataclass
class PredictRequest:
    """Which trained model(s) predict, and how.

    ``model`` is a model already in memory (the dock's session model) and ``runs`` run folders to
    load (best ``metric`` checkpoint; ``dataset`` picks a SCHISM run's normalisation); together
    they are the members, ``model`` first. Several members predict as an ensemble (the mean of
    their probabilities), the first one's progress standing for all. ``settings``: one
    ``[Inference]`` section for every member (the dock's form); without it each member keeps its
    own, with ``overrides`` applied. ``threads``: CPU threads for torch (None: the free cores),
    ``leave_for_gui`` keeping napari's GUI thread first; ``set_threads=False`` leaves torch's count alone.
    """

    runs: Sequence[Path] = ()
    model: TrainedModel | None = None
    metric: str = "loss"
    dataset: str | None = None
    settings: InferenceConfig | None = None
    overrides: InferenceOverrides = field(default_factory=InferenceOverrides)
    device: str = "auto"
    threads: int | None = None
    leave_for_gui: bool = False
    set_threads: bool = True  # False: torch keeps the threads it has (the demo)


@dataclass
class Predictors:
    """The members, a predictor for each, and the one to predict with (the member's, or their ensemble)."""

    members: list[TrainedModel]
    each: list[Predictor]
    predictor: AnyPredictor
    names: list[str]

    @property
    def first(self) -> TrainedModel:
        """The first member: its classes, colours and settings describe the prediction."""
        return self.members[0]


def build_predictors(
    request: PredictRequest, *, callback: ProgressCallback | None = None, stop: StopToken | None = None
) -> Predictors:
    """Load the members and build their predictor (see :class:`PredictRequest`)."""
    from ..inference import Predictor
    from ..inference.ensemble import EnsemblePredictor, load_members
    from ..plumbing.resources import apply_threads

    members = [request.model] if request.model is not None else []
    names = [request.model.source] if request.model is not None else []
    if request.runs:
        members.extend(load_members(list(request.runs), request.metric, dataset=request.dataset))
        names.extend(str(run) for run in request.runs)
    if not members:
        raise SchismError("nothing to predict with: give a trained model or a run folder")
    settings = [request.settings or request.overrides.apply(member.config.inference) for member in members]
    if request.set_threads:
        apply_threads(request.threads, leave_for_gui=request.leave_for_gui)
    each = []
    for i, (member, member_settings) in enumerate(zip(members, settings, strict=True)):
        options: dict[str, Any] = {}
        if callback is not None and i == 0:  # members predict in lockstep: the first one's progress stands for all
            options["callback"] = callback
        if stop is not None:
            options["stop"] = stop
        each.append(Predictor.from_trained(member, settings=member_settings, device=request.device, **options))
    predictor: AnyPredictor = each[0] if len(each) == 1 else EnsemblePredictor(each, names=names)
    return Predictors(members, each, predictor, names)


def planar(
    predictor: AnyPredictor,
    settings: InferenceConfig,
    *,
    slab_depth: int | None = None,
    source: Path | None = None,
) -> AnyPredictor:
    """The predictor for ``settings.planes``: itself for xy, the mean of the XY, XZ and YZ passes for
    xyz (in slabs of ``slab_depth`` slices). ``source``: the file predicted, whose voxel size gives
    the Z/XY ratio when ``settings.voxel_ratio`` is None, and which names itself in errors."""
    from ..inference.planes import planar_predictor, voxel_ratio_from_file

    if settings.planes == "xy":
        return predictor
    ratio = settings.voxel_ratio
    if source is not None:
        from ..data.video import is_video

        if is_video(source):
            raise SchismError(f"{source}: a video's frames are moments, not slices of a volume; use --planes xy")
        if ratio is None:
            ratio = voxel_ratio_from_file(source)
    try:
        return planar_predictor(predictor, settings.planes, voxel_ratio=ratio, slab_depth=slab_depth)  # type: ignore[arg-type]
    except SchismError as error:
        if source is None:
            raise
        raise SchismError(f"{source}: {error}") from None
