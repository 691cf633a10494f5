"""The run folder: what training writes (SCHISM's file names) and what prediction loads from it.

``model_best_loss.pth`` and ``model_best_<Metric>.pth`` are bare state_dicts as in SCHISM;
``last_checkpoint.pth`` adds the optimizer, scheduler and epoch for ``--resume``. Everything is
written atomically and loaded with ``torch.load(weights_only=True)``, so a run folder from
elsewhere cannot execute code. ``selection.json`` says whether the network, the forest
(``forest.npz``, numbers only) or their average predicts (see :mod:`.selection`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..config import SchismConfig, canonical_metric
from ..data.classes import default_class_names
from ..data.dataset import DEFAULT_STATS, STATS_FILE
from ..data.normalization import Normalization, read_stats_file
from ..errors import SchismError
from ..plumbing.atomic import atomic_write_text
from ..plumbing.output_folders import output_folder
from ..plumbing.weights_io import load_torch_file, save_torch_file

if TYPE_CHECKING:
    from ..forest.stages import StageOne

HYPERPARAMETERS = "hyperparameters.ini"
LAST_CHECKPOINT = "last_checkpoint.pth"
METRICS_CSV = "metrics.csv"
HISTORY = "val_metrics_history.txt"
CURVES = "learning_curves.png"
CONFUSION = "confusion_matrix.png"
RUN_INFO = "run_info.json"
BEST_LOSS = "loss"


def best_weights_file(name: str) -> str:
    return f"model_best_{name}.pth"


def prepare_run_dir(path: Path, *, hint: str = "choose a new --out folder") -> Path:
    """Create a new run folder; refuse one that already holds files (nothing is overwritten), or
    one that cannot be created or written, in one line ending with ``hint``."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SchismError(f"{path} already exists and is not empty; {hint}")
    output_folder(path)
    return path


@contextlib.contextmanager
def claimed_new_run_dir(path: Path, *, hint: str = "choose a new --out folder") -> Iterator[Path]:
    """:func:`prepare_run_dir`, claimed for this process while the block runs (see :mod:`.claims`):
    a second process given the same folder is refused at once, even when both start together."""
    from ..plumbing.claims import LOCK_FILE, claim

    path = Path(path)
    try:
        prepare_run_dir(path, hint=hint)  # a finished run's folder: refused without writing into it
    except SchismError:
        if not (path / LOCK_FILE).exists():
            raise
        output_folder(path)  # a lock in it: the claim says who holds it (or takes over a dead run's)
    with claim(path, what="run folder"):
        if any(p.name != LOCK_FILE for p in path.iterdir()):  # filled by another run meanwhile
            raise SchismError(f"{path} already exists and is not empty; {hint}")
        yield path


@contextlib.contextmanager
def claimed_run_dir(run_dir: Path) -> Iterator[Path]:
    """Hold an existing run folder (``--resume``): refused while another live process trains in it."""
    from ..plumbing.claims import claim

    with claim(Path(run_dir), what="run folder"):
        yield Path(run_dir)


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed run left (``.model_best_loss.pth.x1y2.tmp``: up to a model each)."""
    from ..plumbing.atomic import remove_debris

    return remove_debris(Path(run_dir))


def save_weights(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save; run-folder files belong to the run, so they may be replaced. A full disk
    is one line and the previous file stays."""
    save_torch_file(path, state, overwrite=True)


def load_weights(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: a checkpoint holding Python objects is refused in one
    line (torch's own text runs over many lines and even suggests ``weights_only=False``)."""
    return load_torch_file(path)


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_INFO, json.dumps(info, indent=2) + "\n", overwrite=True)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SchismError(f"{path}: not valid JSON ({error.msg})") from None


def read_run_config(run_dir: Path) -> SchismConfig:
    run_dir = Path(run_dir)
    for name in (HYPERPARAMETERS, "Hyperparameters.ini"):  # SCHISM wrote the capitalised name
        if (run_dir / name).is_file():
            return SchismConfig.from_ini(run_dir / name)
    raise SchismError(f"{run_dir}: no {HYPERPARAMETERS}; is this a training run folder?")


def available_weights(run_dir: Path) -> dict[str, Path]:
    """Checkpoint names ("loss", metric names as spelled in the config, "last") -> files.

    A folder holding one SCHISM run (the folder SCHISM was given) lists that run's checkpoints."""
    from .schism import locate_run

    run_dir = Path(run_dir)
    with contextlib.suppress(SchismError):  # several SCHISM runs inside: loading says which to choose
        run_dir = locate_run(run_dir)
    found = {p.stem.removeprefix("model_best_"): p for p in sorted(run_dir.glob("model_best_*.pth"))}
    if (run_dir / LAST_CHECKPOINT).is_file():
        found["last"] = run_dir / LAST_CHECKPOINT
    return found


def resolve_weights(run_dir: Path, metric: str = BEST_LOSS) -> tuple[str, Path]:
    """Find the checkpoint for ``metric``: exact name, any case, or the same canonical metric."""
    found = available_weights(run_dir)
    if not found:
        raise SchismError(f"{run_dir}: no model_best_*.pth weights; is this a training run folder?")
    if metric in found:
        return metric, found[metric]
    for name, path in found.items():
        if name.lower() == metric.lower():
            return name, path
    wanted = canonical_metric(metric)
    for name, path in found.items():
        if wanted is not None and canonical_metric(name) == wanted:
            return name, path
    raise SchismError(f"{run_dir}: no weights for metric {metric!r}; available: {', '.join(found)}")


@dataclass
class TrainedModel:
    """A model ready for prediction, with everything needed to prepare its inputs.

    Weights alone do not predict correctly: the input must be normalized with the statistics the
    model was trained with, have its channel count and keep its class names and colours. Keeping
    them together (from a run folder or straight from a finished training) is what lets the CLI,
    the prediction widget and fine-tuning use a model without re-reading the run folder's files.
    """

    config: SchismConfig
    model: nn.Module
    normalization: Normalization
    in_channels: int
    class_names: list[str]
    class_colors: list[tuple[int, int, int]] | None
    source: str  # run folder and checkpoint, for display
    run_dir: Path | None = None  # the run folder it was loaded from (None: trained in this session)
    forest: Any = None  # the run's forest (baseline.PixelClassifier) when its held-out choice includes it
    selection: Any = None  # selection.Selection: forest, network or average, and their held-out scores
    stage_one: Any = None  # stages.StageOne: the forest whose probabilities a two-stage network reads

    @property
    def class_count(self) -> int:
        return self.config.model.class_count

    @property
    def forest_weight(self) -> float:
        """The forest's share of the probabilities a prediction mixes in (0: the network alone)."""
        if self.forest is None or self.selection is None:
            return 0.0
        return float(self.selection.forest_weight)


def load_trained_model(run_dir: str | Path, metric: str = BEST_LOSS, *, dataset: str | None = None) -> TrainedModel:
    """Load a run folder of this project, or one written by SCHISM (the timestamped folder or the
    folder holding it); ``dataset`` picks a SCHISM run's data_stats entry."""
    from ..models import build_model, legacy_architecture
    from .schism import is_schism_run, locate_run

    run_dir = locate_run(Path(run_dir))
    if not run_dir.is_dir():
        raise SchismError(f"{run_dir}: no such run folder")
    if is_schism_run(run_dir):
        return load_schism_run(run_dir, metric, dataset)
    config = read_run_config(run_dir)
    info = read_run_info(run_dir)
    in_channels = config.model.in_channels or info.get("in_channels") or 1
    name, path = resolve_weights(run_dir, metric)
    state = load_weights(path)
    if name == "last":
        state = state["model"]
    model: nn.Module
    stage_one = None
    if info.get("kind") == "per_class":  # one-vs-rest members + stacker (training/per_class.py)
        from ..models.per_class import build_per_class_model

        model = build_per_class_model(config, in_channels)
    elif info.get("stage_one"):  # stage 2 of a two-stage model (stages.py): C + K input channels
        from ..forest.stages import StageOne
        from ..models.two_stage import ForestPrior

        stage_one = StageOne.load(run_dir, info["stage_one"])
        network = build_model(config.model, stage_one.network_channels, source=str(run_dir / HYPERPARAMETERS))
        model = ForestPrior(network, stage_one.image_channels, stage_one.classes, zero_start=False)
    else:
        config.model = legacy_architecture(config.model, state)
        model = build_model(config.model, in_channels, source=str(run_dir / HYPERPARAMETERS))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise SchismError(
            f"{path}: weights do not fit the model described in {HYPERPARAMETERS} ({str(error).splitlines()[0]})"
        ) from None
    model.eval()
    stats_path = run_dir / STATS_FILE
    if not stats_path.is_file():
        raise SchismError(f"{stats_path}: missing; prediction needs the training normalisation")
    stats = read_stats_file(stats_path)
    normalization = stats.get(DEFAULT_STATS) or next(iter(stats.values()))
    names = info.get("class_names") or default_class_names(config.model.class_count)
    colors = info.get("class_colors")
    selection, forest = _chosen_combination(run_dir, name, config.model.class_count, stage_one)
    return TrainedModel(
        config,
        model,
        normalization,
        in_channels,
        list(names),
        [tuple(c) for c in colors] if colors else None,
        f"{run_dir} ({path.name}" + (f", {selection.choice}" if forest is not None else "") + ")",
        run_dir,
        forest,
        selection,
        stage_one,
    )


def _chosen_combination(
    run_dir: Path, checkpoint: str, class_count: int, stage_one: StageOne | None = None
) -> tuple[Any, Any]:  # (Selection, its PixelClassifier or None) or (None, None)
    """The run's held-out choice (``selection.json``) and its forest, for the checkpoint it was made
    with; other checkpoints predict with the network alone. A two-stage model's forest is stage 1's
    (the same pixels, trees and seed), so a prediction computes it once."""
    from ..forest.selection import load_forest, read_selection

    selection = read_selection(run_dir)
    if selection is None or selection.checkpoint != checkpoint:
        return None, None
    if selection.forest_weight > 0 and stage_one is not None:
        return selection, stage_one.forest
    forest = load_forest(run_dir, class_count) if selection.forest_weight > 0 else None
    return selection, forest


def load_schism_run(run_dir: Path, metric: str = "loss", dataset: str | None = None) -> TrainedModel:
    """A SCHISM run folder as a TrainedModel whose predictor reproduces SCHISM's inference.

    It lives here rather than in ``schism_runs`` so that ``schism_runs`` (SCHISM's folders and
    input path) never imports this module, which dispatches to it: no import cycle.
    """
    from ..models import build_model
    from .schism import SchismInput, run_normalization, schism_inference_config

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    _, path = resolve_weights(run_dir, metric)
    state = load_weights(path)
    network = build_model(config.model, 3, source=config.source)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SchismError(
            f"{path}: weights do not fit SCHISM's {config.model.model_type} described in "
            f"{Path(config.source or run_dir).name} ({str(error).splitlines()[0]})"
        ) from None
    network.eval()
    crop, res = config.data.crop_size, config.data.img_res
    model = SchismInput(network, crop, res).eval()
    run_config = schism_inference_config(config)
    return TrainedModel(
        run_config,
        model,
        run_normalization(run_dir, dataset),
        3,
        default_class_names(config.model.class_count),
        None,
        f"{run_dir} ({path.name}, SCHISM run)",
        run_dir,
    )
