"""One typed configuration for the INI file, the command line and the napari widgets.

Sections follow SCHISM ([Model] [Optimizer] [Scheduler] [Loss] [Training] [Data]) plus
[Inference]. SCHISM's spellings load as they are (``metrics=DiceScore``, ``model_type=UnetSegmentor``,
``val_split`` = training fraction); keys of [Optimizer], [Scheduler] and [Loss] that are not
fields here are passed to the torch class as keyword arguments, after checking that the class
takes them. Every bad value raises one :class:`ConfigError` naming section, key, value and what
is allowed, with the nearest valid key for typos.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import registries
from .errors import ConfigError, allowed_values

# The names come from the torch-free registry; models and training.losses pair them with builders.
SMP_ARCHITECTURES = registries.SMP_ARCHITECTURES
SCHISM_ARCHITECTURES = registries.SCHISM_ARCHITECTURES
UNET_CONCAT = registries.UNET_CONCAT
ARCHITECTURES = tuple(registries.ARCHITECTURES)
_ARCHITECTURE_ALIASES = {"unet++": "UnetPlusPlus", "deeplabv3+": "DeepLabV3Plus"}

PLANES = ("xy", "xyz")  # slice orientations: XY only, or XY + XZ + YZ (tri-planar)
SCHEDULER_INTERVALS = ("batch", "epoch")
ACTIVATIONS = ("relu", "leakyrelu", "elu", "gelu", "sigmoid", "tanh")
OPTIMIZERS = ("Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RMSprop", "RAdam", "SGD")
# Schedulers that need Python callables or other schedulers cannot come from an INI file.
UNSUPPORTED_SCHEDULERS = ("LRScheduler", "LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler")


LOSSES = tuple(registries.LOSSES)


def loss_names() -> tuple[str, ...]:
    """The loss registry's names (the torch-free :mod:`~schism_napari.registries`)."""
    return LOSSES


_LOSS_ALIASES = {"ce": "CrossEntropyLoss", "bce": "BCEWithLogitsLoss", "dice": "DiceLoss"}

# Canonical metric names and the spellings SCHISM (and common usage) accepts for them.
METRICS = ("Jaccard", "Dice", "Accuracy", "Precision", "Recall", "AveragePrecision", "GeneralizedDice")
_METRIC_ALIASES = {
    "jaccard": "Jaccard",
    "jaccardindex": "Jaccard",
    "iou": "Jaccard",
    "miou": "Jaccard",
    "dice": "Dice",
    "dicescore": "Dice",
    "f1": "Dice",
    "f1score": "Dice",
    "accuracy": "Accuracy",
    "precision": "Precision",
    "recall": "Recall",
    "averageprecision": "AveragePrecision",
    "generalizeddice": "GeneralizedDice",
    "generalizeddicescore": "GeneralizedDice",
}
CONFUSION_MATRIX = "ConfusionMatrix"  # not a score: asks for confusion_matrix.png
LOCAL_WEIGHTS = (".pth", ".pt", ".safetensors")
_HUB_WEIGHTS = registries.HUB_WEIGHTS
is_hub_weights = registries.is_hub_weights


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class ModelConfig:
    """[Model]: which network to build."""

    model_type: str = field(
        default="UnetVanilla",
        metadata=_help("Architecture: " + ", ".join(ARCHITECTURES), choices=ARCHITECTURES),
    )
    num_classes: int = field(
        default=3, metadata=_help("Number of classes; 1 or 2 means binary (one output channel).", min=1, max=255)
    )
    in_channels: int | None = field(
        default=None, metadata=_help("Input channels; None takes them from the data (1 gray, 3 RGB).", min=1)
    )
    encoder: str = field(
        default="resnet18",
        metadata=_help("smp encoder for smp architectures (e.g. resnet18, efficientnet-b0, mit_b0)."),
    )
    encoder_weights: str | None = field(
        default=None,
        metadata=_help(
            "None, a local .pth/.safetensors file of encoder weights, or a name smp downloads (e.g. imagenet) "
            "into its usual cache: with few labels, pretrained weights are the strongest lever."
        ),
    )
    n_block: int = field(
        default=4, metadata=_help("UnetVanilla/UnetSegmentor/UnetConcat: number of down-sampling blocks.", min=1, max=8)
    )
    channels: int = field(default=8, metadata=_help("SCHISM U-Nets, UnetConcat: channels of the first block.", min=1))
    k_size: int = field(default=3, metadata=_help("UnetSegmentor: convolution kernel size (odd).", min=1))
    activation: str = field(
        default="relu", metadata=_help("UnetSegmentor activation: " + ", ".join(ACTIVATIONS), choices=ACTIVATIONS)
    )
    p: float = field(
        default=0.5, metadata=_help("UnetSegmentor dropout probability (training only).", min=0.0, max=0.95)
    )

    @property
    def binary(self) -> bool:
        return self.num_classes <= 2

    @property
    def class_count(self) -> int:
        """Classes as the data and metrics see them (binary models still have two)."""
        return max(2, self.num_classes)

    def validate(self, source: str | None) -> None:
        self.model_type = _canonical_architecture(self.model_type, source)
        _check_range(self, "Model", "num_classes", source)
        if self.in_channels is not None:
            _check_range(self, "Model", "in_channels", source)
        for name in ("n_block", "channels", "k_size", "p"):
            _check_range(self, "Model", name, source)
        if self.k_size % 2 == 0:
            raise ConfigError("Model", "k_size", self.k_size, "must be odd (1, 3, 5, ...)", source)
        activation = self.activation.lower().replace("_", "")
        if activation not in ACTIVATIONS:
            raise ConfigError("Model", "activation", self.activation, allowed_values(ACTIVATIONS, activation), source)
        self.activation = activation
        weights = self.encoder_weights
        if weights is not None and not is_hub_weights(weights) and not weights.lower().endswith(LOCAL_WEIGHTS):
            raise ConfigError(
                "Model",
                "encoder_weights",
                weights,
                "must be None, a local .pth/.pt/.safetensors file or a name smp downloads ("
                + ", ".join(_HUB_WEIGHTS)
                + ")",
                source,
            )


@dataclass
class OptimizerConfig:
    """[Optimizer]: a torch.optim class; other keys are passed to it."""

    optimizer: str = field(
        default="Adam", metadata=_help("torch optimizer: " + ", ".join(OPTIMIZERS), choices=OPTIMIZERS)
    )
    lr: float = field(default=1e-3, metadata=_help("Learning rate.", min=1e-12))
    kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("Other keyword arguments for the optimizer."))

    def validate(self, source: str | None) -> None:
        import torch.optim

        canonical = _canonical_name(self.optimizer, OPTIMIZERS)
        if canonical is None:
            raise ConfigError(
                "Optimizer", "optimizer", self.optimizer, allowed_values(OPTIMIZERS, self.optimizer), source
            )
        self.optimizer = canonical
        _check_range(self, "Optimizer", "lr", source)
        cls = getattr(torch.optim, canonical)
        _check_kwargs("Optimizer", self.kwargs, _parameters(cls, exclude=("params", "lr")), canonical, source)


@dataclass
class SchedulerConfig:
    """[Scheduler]: any torch.optim.lr_scheduler class by name; other keys are passed to it.

    ``interval`` says when it steps: every batch (SCHISM's behaviour, the default) or once per
    epoch. ReduceLROnPlateau always steps per epoch, on the validation loss. Per batch, the
    trainer sizes the schedules it fills in (OneCycleLR total_steps, CosineAnnealingLR T_max) in
    batches. ``scheduler = None`` keeps the learning rate constant.
    """

    scheduler: str | None = field(
        default="ConstantLR", metadata=_help("torch.optim.lr_scheduler class name, or None for a constant rate.")
    )
    interval: str = field(
        default="batch",
        metadata=_help(
            "When the scheduler steps: batch (as SCHISM) or epoch. ReduceLROnPlateau steps per epoch.",
            choices=SCHEDULER_INTERVALS,
        ),
    )
    kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("Other keyword arguments for the scheduler."))

    # Arguments the trainer fills in when the INI leaves them out.
    AUTO_FILLED: ClassVar[dict[str, tuple[str, ...]]] = {
        "OneCycleLR": ("max_lr", "total_steps", "epochs", "steps_per_epoch"),
        "CyclicLR": ("base_lr", "max_lr"),
        "CosineAnnealingLR": ("T_max",),
        "CosineAnnealingWarmRestarts": ("T_0",),
    }

    def per_batch(self) -> bool:
        """Whether the scheduler steps after every optimizer step (else once per epoch)."""
        return self.scheduler is not None and self.scheduler != "ReduceLROnPlateau" and self.interval == "batch"

    def validate(self, source: str | None) -> None:
        import torch.optim.lr_scheduler as schedulers

        interval = str(self.interval).strip().lower()
        if interval not in SCHEDULER_INTERVALS:
            raise ConfigError("Scheduler", "interval", self.interval, "batch or epoch", source)
        self.interval = interval
        if self.scheduler is None or str(self.scheduler).lower() == "none":
            self.scheduler = None
            if self.kwargs:
                key = next(iter(self.kwargs))
                raise ConfigError("Scheduler", key, self.kwargs[key], "given but scheduler = None", source)
            return
        names = scheduler_names()
        unsupported = _canonical_name(str(self.scheduler), UNSUPPORTED_SCHEDULERS)
        if unsupported is not None:
            raise ConfigError(
                "Scheduler",
                "scheduler",
                self.scheduler,
                f"{unsupported} needs Python callables and cannot come from an INI file; allowed: " + ", ".join(names),
                source,
            )
        canonical = _canonical_name(str(self.scheduler), names)
        if canonical is None:
            raise ConfigError(
                "Scheduler", "scheduler", self.scheduler, allowed_values(names, str(self.scheduler)), source
            )
        self.scheduler = canonical
        cls = getattr(schedulers, canonical)
        params = _parameters(cls, exclude=("optimizer",))
        _check_kwargs("Scheduler", self.kwargs, params, canonical, source)
        auto = self.AUTO_FILLED.get(canonical, ())
        signature = inspect.signature(cls)
        for name in params:
            parameter = signature.parameters[name]
            if parameter.default is inspect.Parameter.empty and name not in self.kwargs and name not in auto:
                raise ConfigError("Scheduler", name, None, f"{canonical} requires this key", source)


@dataclass
class LossConfig:
    """[Loss]: one loss or a weighted sum such as ``CrossEntropyLoss + 0.5*DiceLoss``."""

    loss: str = field(
        default="CrossEntropyLoss",
        metadata=_help(
            "Loss or weighted sum, e.g. 'CrossEntropyLoss + 0.5*DiceLoss': CrossEntropyLoss, DiceLoss, FocalLoss, "
            "FocalDiceLoss and the others in the README's loss table."
        ),
    )
    ignore_background: bool = field(
        default=False,
        metadata=_help(
            "SCHISM's meaning: num_classes counts the foreground classes and mask gray 0 is an unlabeled "
            "background (0/85/170/255 -> unlabeled, 0, 1, 2); no effect on binary models."
        ),
    )
    weights: bool = field(
        default=False, metadata=_help("Class weights against imbalance, computed once over the training set.")
    )
    kwargs: dict[str, Any] = field(default_factory=dict, metadata=_help("Other keyword arguments for the loss(es)."))

    def terms(self, source: str | None = None) -> list[tuple[float, str]]:
        """The weighted terms of :attr:`loss`, canonical names."""
        return parse_loss_expression(self.loss, source)

    def validate(self, source: str | None) -> None:
        terms = self.terms(source)
        self.loss = " + ".join(name if w == 1.0 else f"{w:g}*{name}" for w, name in terms)
        accepted = set().union(*(registries.loss_keyword_arguments(name) for _, name in terms))
        _check_kwargs("Loss", self.kwargs, tuple(sorted(accepted)), self.loss, source)


@dataclass
class TrainingConfig:
    """[Training]."""

    batch_size: int = field(default=8, metadata=_help("Crops per optimisation step.", min=1))
    epochs: int = field(default=10, metadata=_help("Number of epochs.", min=1))
    val_split: float = field(
        default=0.8,
        metadata=_help("SCHISM meaning: the TRAINING fraction of num_samples; the rest validates.", min=0.01, max=1.0),
    )
    early_stopping: bool = field(default=False, metadata=_help("Stop when the validation loss stops improving."))
    patience: int | None = field(
        default=None,
        metadata=_help("Early-stopping patience in epochs; None means int(0.2 * epochs) as SCHISM.", min=1),
    )
    metrics: list[str] = field(
        default_factory=lambda: ["Jaccard"],
        metadata=_help(
            "Comma list: Jaccard (IoU), Dice (F1, DiceScore), Accuracy, Precision, Recall, AveragePrecision, "
            "GeneralizedDice, ConfusionMatrix (plot)."
        ),
    )
    seed: int | None = field(default=0, metadata=_help("Random seed for splits, crops and weights; None: random."))
    device: str = field(default="auto", metadata=_help("auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."))
    amp: bool = field(default=True, metadata=_help("Mixed precision on CUDA (ignored elsewhere)."))
    grad_clip: float | None = field(
        default=None, metadata=_help("Clip the gradient norm to this value; None: off.", min=1e-12)
    )
    threads: int | None = field(
        default=None,
        metadata=_help(
            "CPU threads for torch; None or 0: the cores this process may use that other processes leave free "
            "(one left to the napari GUI while training there).",
            min=0,
        ),
    )
    steps_per_epoch: int | None = field(
        default=None,
        metadata=_help(
            "Optimizer steps per epoch; None: one pass over the training images (crops_per_image each), as SCHISM.",
            min=1,
        ),
    )
    time_budget: float | None = field(
        default=None,
        metadata=_help(
            "Minutes of training: the step time is measured on the device and steps_per_epoch (when None) "
            "planned so that the run ends in time; training also stops when the budget is spent. None: no limit.",
            min=0.01,
        ),
    )
    schism_defaults: bool = field(
        default=False,
        metadata=_help("Keys left out of the INI keep SCHISM's literal defaults instead of being planned."),
    )

    def score_metrics(self) -> list[str]:
        """The metrics that are scores (best checkpoints), as spelled in the config."""
        return [m for m in self.metrics if canonical_metric(m) != CONFUSION_MATRIX]

    def effective_patience(self) -> int:
        return self.patience if self.patience is not None else max(1, int(0.2 * self.epochs))

    def validate(self, source: str | None) -> None:
        for name in ("batch_size", "epochs", "val_split"):
            _check_range(self, "Training", name, source)
        if self.patience is not None:
            _check_range(self, "Training", "patience", source)
        for name in ("grad_clip", "steps_per_epoch", "time_budget", "threads"):
            if getattr(self, name) is not None:
                _check_range(self, "Training", name, source)
        for metric in self.metrics:
            if canonical_metric(metric) is None:
                allowed = (*METRICS, "F1", "DiceScore", "IoU", "GeneralizedDiceScore", CONFUSION_MATRIX)
                raise ConfigError("Training", "metrics", metric, allowed_values(allowed, metric), source)
        if len({m.lower() for m in self.metrics}) != len(self.metrics):
            raise ConfigError("Training", "metrics", ", ".join(self.metrics), "each metric may appear once", source)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError("Training", "device", self.device, "auto, cpu, cuda, cuda:N or mps", source)


@dataclass
class DataConfig:
    """[Data]: random crops of crop_size, resized to img_res, from num_samples images."""

    crop_size: int = field(default=224, metadata=_help("Side of the random square crops, in image pixels.", min=8))
    img_res: int = field(default=560, metadata=_help("Crops are resized to this side before the network.", min=8))
    num_samples: int = field(
        default=500,
        metadata=_help("Images (slices) used for training + validation; the rest is the test split.", min=1),
    )
    crops_per_image: int = field(
        default=1, metadata=_help("Random crops taken from each training image per epoch.", min=1)
    )
    ignore_index: int = field(
        default=255, metadata=_help("Mask value for unlabeled pixels (sparse scribbles); never counts.", min=0, max=255)
    )
    augment: bool = field(default=True, metadata=_help("Random flips, 90-degree rotations and intensity jitter."))
    intensity_jitter: float = field(
        default=0.1, metadata=_help("Brightness/contrast jitter amplitude, in normalised units.", min=0.0, max=2.0)
    )
    planes: str = field(
        default="xy",
        metadata=_help(
            "xy: train on the slices of stacks; xyz: also on their XZ and YZ planes (the model sees those textures).",
            choices=PLANES,
        ),
    )
    class_crops: float = field(
        default=0.0,
        metadata=_help(
            "Share of training crops centred on a pixel of a class drawn uniformly among those present, so rare "
            "phases are seen (nnU-Net oversamples foreground); 0: uniform random crops, as SCHISM.",
            min=0.0,
            max=1.0,
        ),
    )

    def validate(self, source: str | None) -> None:
        for name in (
            "crop_size",
            "img_res",
            "num_samples",
            "crops_per_image",
            "ignore_index",
            "intensity_jitter",
            "class_crops",
        ):
            _check_range(self, "Data", name, source)
        self.planes = _check_planes(self.planes, "Data", source)


@dataclass
class InferenceConfig:
    """[Inference]: sliding-window prediction."""

    tile_size: int | None = field(
        default=None,
        metadata=_help(
            "Tile side in image pixels; None: as large as the device's free memory allows (with a fractional "
            "overlap: [Data] crop_size).",
            min=16,
        ),
    )
    overlap: float | None = field(
        default=None,
        metadata=_help(
            "None: tiles overlap by `halo` pixels (fast, seamless). A fraction (0 to 0.9): the older layout, "
            "tiles sharing that fraction of their side, gaussian-blended.",
            min=0.0,
            max=0.9,
        ),
    )
    halo: int | None = field(
        default=None,
        metadata=_help(
            "Pixels shared by neighbouring tiles when overlap is None; None: from the network's scale "
            "(64 px for a 5-level encoder).",
            min=0,
        ),
    )
    batch_size: int = field(default=4, metadata=_help("Tiles per forward pass.", min=1))
    blending: str = field(
        default="gaussian",
        metadata=_help("gaussian (smooth importance weights) or constant.", choices=("gaussian", "constant")),
    )
    tta: bool = field(default=False, metadata=_help("Test-time augmentation: average over flips (4x slower)."))
    threshold: float = field(
        default=0.5, metadata=_help("Binary models: foreground when probability > threshold.", min=0.0, max=1.0)
    )
    planes: str = field(
        default="xy",
        metadata=_help(
            "Stacks: xy predicts slice by slice; xyz also along XZ and YZ and averages the probabilities.",
            choices=PLANES,
        ),
    )
    voxel_ratio: float | None = field(
        default=None,
        metadata=_help(
            "Z voxel size / XY pixel size, for the XZ and YZ passes; None reads it from the file (1 when unknown).",
            min=1e-3,
        ),
    )

    def validate(self, source: str | None) -> None:
        if self.tile_size is not None:
            _check_range(self, "Inference", "tile_size", source)
        for name in ("batch_size", "threshold"):
            _check_range(self, "Inference", name, source)
        for name in ("overlap", "halo"):
            if getattr(self, name) is not None:
                _check_range(self, "Inference", name, source)
        if self.blending not in ("gaussian", "constant"):
            raise ConfigError("Inference", "blending", self.blending, "gaussian or constant", source)
        self.planes = _check_planes(self.planes, "Inference", source)
        if self.voxel_ratio is not None:
            _check_range(self, "Inference", "voxel_ratio", source)


def _check_planes(value: str, section: str, source: str | None) -> str:
    planes = str(value).strip().lower()
    if planes not in PLANES:
        raise ConfigError(section, "planes", value, allowed_values(PLANES, planes), source)
    return planes


SECTIONS: dict[str, type] = {
    "Model": ModelConfig,
    "Optimizer": OptimizerConfig,
    "Scheduler": SchedulerConfig,
    "Loss": LossConfig,
    "Training": TrainingConfig,
    "Data": DataConfig,
    "Inference": InferenceConfig,
}
_ATTRIBUTE = {name: name.lower() for name in SECTIONS}
# Sections of some SCHISM versions that are read but have no effect here (reported as warnings).
# [Results]: the best scores SCHISM appends to Augmented_hyperparameters.ini, written by default.
IGNORED_SECTIONS = ("Data_augmentation", "Results")


@dataclass
class SchismConfig:
    """The whole configuration; ``source`` names the INI file it came from, for messages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    source: str | None = field(default=None, compare=False, repr=False)
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)
    # "Section.key" of the values a user set (INI file, command line): the planner leaves them alone
    given: set[str] = field(default_factory=set, compare=False, repr=False)

    def section(self, name: str) -> Any:
        return getattr(self, _ATTRIBUTE[name])

    def validate(self) -> SchismConfig:
        """Check every value (normalising spellings in place); return self."""
        for name in SECTIONS:
            self.section(name).validate(self.source)
        if self.data.ignore_index < self.model.class_count:
            raise ConfigError(
                "Data",
                "ignore_index",
                self.data.ignore_index,
                f"must not be a class: use a value >= num_classes ({self.model.class_count}), e.g. 255",
                self.source,
            )
        return self

    def copy(self) -> SchismConfig:
        clone = dataclasses.replace(self)
        for name in SECTIONS:
            section = self.section(name)
            setattr(clone, _ATTRIBUTE[name], _copy_section(section))
        clone.warnings = list(self.warnings)
        clone.given = set(self.given)
        return clone

    def is_given(self, section: str, key: str) -> bool:
        """Whether the user set ``[section] key`` (an INI file, the command line), as opposed to a default."""
        return f"{section}.{key}" in self.given

    def set_given(self, section: str, key: str, value: Any) -> None:
        """Set a value on the user's behalf (e.g. a command-line option): the planner keeps it."""
        setattr(self.section(section), key, value)
        self.given.add(f"{section}.{key}")

    @property
    def tile_size(self) -> int:
        return self.inference.tile_size or self.data.crop_size

    @property
    def scale(self) -> float:
        """Network pixels per image pixel (img_res / crop_size), the same in training and prediction."""
        return self.data.img_res / self.data.crop_size

    # ---- INI -------------------------------------------------------------------------------

    @classmethod
    def from_ini(cls, path: str | Path) -> SchismConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as error:
            raise ConfigError("file", None, None, f"cannot read {path}: {error.strerror}") from None
        except UnicodeDecodeError as error:
            byte = f"byte {error.object[error.start]:#04x} at offset {error.start}"
            raise ConfigError("file", None, None, f"not a text INI file ({byte})", str(path)) from None
        return cls.from_ini_string(text, source=str(path))

    @classmethod
    def from_ini_string(cls, text: str, source: str | None = None) -> SchismConfig:
        parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # SCHISM keys are case-sensitive
        try:
            parser.read_string(text, source=source or "<string>")
        except configparser.Error as error:
            message = str(error).splitlines()[0]
            raise ConfigError("file", None, None, f"not a valid INI file: {message}", source) from None
        config = cls(source=source)
        for section_name in parser.sections():
            if section_name in IGNORED_SECTIONS:
                note = " (training results SCHISM records in Augmented_hyperparameters.ini)"
                config.warnings.append(
                    f"[{section_name}] is not used by schism-napari and was ignored"
                    + (note if section_name == "Results" else "")
                )
                continue
            if section_name not in SECTIONS:
                raise ConfigError(
                    section_name,
                    None,
                    None,
                    "unknown section; " + allowed_values(tuple(SECTIONS), section_name),
                    source,
                )
            section = config.section(section_name)
            items = dict(parser.items(section_name))
            _fill_section(section, section_name, items, source)
            config.given.update(f"{section_name}.{key}" for key in items)
        return config.validate()

    def to_ini_string(self) -> str:
        from . import __version__

        lines = [f"# schism-napari {__version__} configuration (SCHISM INI format)"]
        for name in SECTIONS:
            lines.append(f"\n[{name}]")
            section = self.section(name)
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if f.name == "kwargs":
                    lines.extend(f"{key} = {format_value(v)}" for key, v in value.items())
                else:
                    lines.append(f"{f.name} = {format_value(value)}")
        return "\n".join(lines) + "\n"

    def to_ini(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write atomically; refuses to replace an existing file unless ``overwrite``."""
        from .plumbing.atomic import atomic_write_text

        return atomic_write_text(Path(path), self.to_ini_string(), overwrite=overwrite)


# torch's schedulers an INI file can name, as of torch 2.x: the widget's choices until torch is imported
STARTING_SCHEDULERS = (
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "ReduceLROnPlateau",
    "CyclicLR",
    "CosineAnnealingWarmRestarts",
    "OneCycleLR",
)


def scheduler_names() -> tuple[str, ...]:
    """torch schedulers that an INI file (and the widget) can name."""
    import torch.optim.lr_scheduler as schedulers

    return tuple(
        n
        for n, obj in vars(schedulers).items()
        if inspect.isclass(obj)
        and not n.startswith("_")
        and n not in UNSUPPORTED_SCHEDULERS
        and (issubclass(obj, schedulers.LRScheduler) or n == "ReduceLROnPlateau")
    )


# ---- helpers -------------------------------------------------------------------------------


def canonical_metric(name: str) -> str | None:
    key = name.strip().lower().replace("_", "").replace(" ", "")
    if key == CONFUSION_MATRIX.lower():
        return CONFUSION_MATRIX
    return _METRIC_ALIASES.get(key)


def parse_loss_expression(expression: str, source: str | None = None) -> list[tuple[float, str]]:
    """``'CrossEntropyLoss + 0.5*DiceLoss'`` -> ``[(1.0, 'CrossEntropyLoss'), (0.5, 'DiceLoss')]``.

    A comma list is read as an unweighted sum.
    """
    terms: list[tuple[float, str]] = []
    for raw in re.split(r"[+,]", str(expression)):
        part = raw.strip()
        if not part:
            raise ConfigError(
                "Loss", "loss", expression, "empty term; write e.g. 'CrossEntropyLoss + 0.5*DiceLoss'", source
            )
        match = re.fullmatch(r"(?:([0-9.eE+-]+)\s*\*\s*)?([A-Za-z_+]+)", part)
        if not match:
            raise ConfigError("Loss", "loss", expression, f"cannot read term {part!r}; write weight*LossName", source)
        weight = float(match.group(1)) if match.group(1) else 1.0
        name = _LOSS_ALIASES.get(match.group(2).lower()) or _canonical_name(match.group(2), loss_names())
        if name is None:
            raise ConfigError("Loss", "loss", match.group(2), allowed_values(loss_names(), match.group(2)), source)
        if weight <= 0:
            raise ConfigError("Loss", "loss", expression, "term weights must be > 0", source)
        terms.append((weight, name))
    return terms


def parse_value(text: str) -> Any:
    """SCHISM's value parsing: None, booleans, numbers, Python literals, else the string."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(stripped)
        except ValueError:
            pass
    try:
        return ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return stripped


def field_types(section_class: type) -> dict[str, Any]:
    return typing.get_type_hints(section_class)


def _fill_section(section: Any, section_name: str, items: dict[str, str], source: str | None) -> None:
    fields = {f.name: f for f in dataclasses.fields(section) if f.name != "kwargs"}
    types = field_types(type(section))
    takes_kwargs = any(f.name == "kwargs" for f in dataclasses.fields(section))
    for key, raw in items.items():
        value = parse_value(raw)
        if key in fields:
            setattr(section, key, coerce(value, types[key], section_name, key, source))
        elif takes_kwargs:
            section.kwargs[key] = value
        else:
            raise ConfigError(section_name, key, value, "unknown key; " + allowed_values(tuple(fields), key), source)


def coerce(value: Any, annotation: Any, section: str, key: str, source: str | None = None) -> Any:
    """Convert a parsed INI value to the field's type, or raise a ConfigError saying what was expected."""
    args = typing.get_args(annotation)
    if type(None) in args:
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise ConfigError(section, key, value, "expected True or False", source)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(section, key, value, "expected a whole number", source)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(section, key, value, "expected a number", source)
    if annotation is str:
        if isinstance(value, str) and value:
            return value
        raise ConfigError(section, key, value, "expected a name", source)
    if origin is list:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            items = [v.strip() for v in value]
        else:
            raise ConfigError(section, key, value, "expected a comma-separated list of names", source)
        items = [v for v in items if v]
        if not items:
            raise ConfigError(section, key, value, "expected at least one name", source)
        return items
    if origin is dict:
        return dict(value)
    raise TypeError(f"unsupported field type {annotation!r}")


def _check_range(section: Any, section_name: str, name: str, source: str | None) -> None:
    meta = next(f.metadata for f in dataclasses.fields(section) if f.name == name)
    value = getattr(section, name)
    low, high = meta.get("min"), meta.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(section_name, name, value, f"must be {bounds}", source)


def _parameters(cls: type, exclude: tuple[str, ...]) -> tuple[str, ...]:
    signature = inspect.signature(cls)
    return tuple(
        n
        for n, p in signature.parameters.items()
        if n not in exclude and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


def _check_kwargs(
    section: str, kwargs: dict[str, Any], accepted: tuple[str, ...], owner: str, source: str | None
) -> None:
    for key, value in kwargs.items():
        if key not in accepted:
            raise ConfigError(
                section, key, value, f"{owner} takes no such argument; " + allowed_values(accepted, key), source
            )


def _canonical_name(name: str, choices: tuple[str, ...]) -> str | None:
    lowered = {c.lower(): c for c in choices}
    return lowered.get(str(name).strip().lower())


def _canonical_architecture(name: str, source: str | None) -> str:
    key = str(name).strip().lower()
    canonical = _ARCHITECTURE_ALIASES.get(key) or _canonical_name(key, ARCHITECTURES)
    if canonical:
        return canonical
    if key.startswith("dinov2"):
        raise ConfigError(
            "Model",
            "model_type",
            name,
            "DINOv2 needs pretrained weights from the internet, which this tool never downloads; "
            "allowed: " + ", ".join(ARCHITECTURES),
            source,
        )
    raise ConfigError("Model", "model_type", name, allowed_values(ARCHITECTURES, key), source)


def format_value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, str):
        return value
    return repr(value)


def _copy_section(section: Any) -> Any:
    clone = dataclasses.replace(section)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, (list, dict)):
            setattr(clone, f.name, type(value)(value))
    return clone
