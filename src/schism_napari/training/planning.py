"""A training plan from the data, as nnU-Net makes one from a dataset fingerprint.

A user who only says how many classes (or nothing) should get a network that beats a classical
pixel classifier in the time they wait. :func:`plan_config` fills the keys the user left unset
(an INI file that does not name them, the CLI without the option) from a :class:`Fingerprint`
of the data (image sizes, channels, intensity percentiles, class frequencies, labelled
fraction) and the device, and says why for each choice. Keys the user set keep SCHISM's meaning;
``[Training] schism_defaults = True`` plans nothing, so SCHISM's literal defaults apply.

The plan is a pure function of (config, data, device) so the CLI and the napari widgets share it;
the run folder gets the full plan in ``hyperparameters.ini`` (to repeat the run) and the reasons
in ``plan.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import SchismConfig, format_value
from ..data.crops import SPARSE_FRACTION
from ..data.io import IGNORE

if TYPE_CHECKING:
    from ..data.dataset import SegmentationData

PLAN_FILE = "plan.json"
SPARSE_LABELS = SPARSE_FRACTION  # below this labelled fraction the masks are scribbles (as in data.crops)
# Minutes of training when the user sets neither a budget nor epochs/steps: the widgets wait less
BUDGET_MINUTES = {("cpu", True): 1.5, ("cpu", False): 4.0, ("gpu", True): 3.0, ("gpu", False): 15.0}
CLASS_CROPS = 0.33  # nnU-Net oversamples foreground in a third of its patches
EPOCHS = 10  # validation points of a budgeted run (checkpoints, curves)
VALIDATION_CROPS = 16  # fixed validation crops aimed at, spread over the validation images


@dataclass
class Fingerprint:
    """What the plan looks at: a few numbers about the training data and the device."""

    images: int
    median_height: int
    median_width: int
    min_side: int
    channels: int
    dtypes: list[str]
    intensity_percentiles: dict[str, float]  # 0.5 / 50 / 99.5 %, in stored units
    class_fractions: list[float]  # share of the labelled pixels per class
    labelled_fraction: float  # mean over images with masks
    device: str  # cpu, cuda, mps
    threads: int

    @property
    def sparse(self) -> bool:
        return self.labelled_fraction < SPARSE_LABELS

    @property
    def accelerated(self) -> bool:
        return self.device != "cpu"


@dataclass
class Plan:
    """A planned configuration, the reason for each planned key and the fingerprint behind it."""

    config: SchismConfig
    reasons: dict[str, str] = field(default_factory=dict)
    fingerprint: Fingerprint | None = None

    def to_json(self) -> dict[str, Any]:
        planned = {
            key: {"value": format_value(_value(self.config, key)), "reason": reason}
            for key, reason in self.reasons.items()
            if "." in key and _has_value(self.config, key)
        }
        notes = {key: reason for key, reason in self.reasons.items() if key not in planned}
        return {
            "planned": planned,
            "notes": notes,
            "given": sorted(self.config.given),
            "fingerprint": None if self.fingerprint is None else asdict(self.fingerprint),
        }

    def write(self, run_dir: Path) -> Path:
        import json

        from ..plumbing.atomic import atomic_write_text

        return atomic_write_text(Path(run_dir) / PLAN_FILE, json.dumps(self.to_json(), indent=2) + "\n", overwrite=True)


def fingerprint(data: SegmentationData, positions: Sequence[int] | None = None, device: str = "cpu") -> Fingerprint:
    """Measure a :class:`~schism_napari.data.SegmentationData` (at ``positions``, default all)."""
    samples = [data.samples[p] for p in (positions if positions is not None else range(len(data.samples)))]
    heights = [s.image.shape[0] for s in samples]
    widths = [s.image.shape[1] for s in samples]
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.choice(s.image.ravel(), min(s.image.size, 20_000)) for s in samples])
    low, median, high = np.percentile(values.astype(np.float64), [0.5, 50, 99.5])
    counts = np.zeros(data.class_count, dtype=np.int64)
    fractions = []
    for s in samples:
        if s.mask is None:
            continue
        counts += np.bincount(s.mask.ravel(), minlength=256)[: data.class_count]
        fractions.append(s.labelled_fraction)
    total = max(1, int(counts.sum()))
    return Fingerprint(
        images=len(samples),
        median_height=int(np.median(heights)),
        median_width=int(np.median(widths)),
        min_side=int(min(min(heights), min(widths))),
        channels=int(data.in_channels),
        dtypes=sorted({s.image.dtype.name for s in samples}),
        intensity_percentiles={"0.5": float(low), "50": float(median), "99.5": float(high)},
        class_fractions=[round(float(c) / total, 6) for c in counts],
        labelled_fraction=float(np.mean(fractions)) if fractions else 0.0,
        device=device,
        threads=_threads(),
    )


def plan_config(
    config: SchismConfig,
    data: SegmentationData | None = None,
    device: str | None = None,
    *,
    interactive: bool = False,
    check: bool = True,
) -> Plan:
    """Fill the keys of ``config`` the user left unset (not in ``config.given``); return the plan.

    ``data`` (a SegmentationData) may be None: the plan then rests on the device alone (the
    widgets' starting values before any data is chosen). ``interactive`` plans the short time
    budget a user waits for in napari instead of the command line's longer one. ``check=False``
    skips the final :meth:`SchismConfig.validate`, which imports torch to check keyword arguments
    against the classes' signatures: for the napari dock's first values, which must not wait for torch.
    """
    planned = config.copy()
    if config.training.schism_defaults:
        return Plan(planned, {"Training.schism_defaults": "True: keys left out keep SCHISM's literal defaults"})
    if device is None:
        from ..plumbing.devices import select_device

        device = select_device(config.training.device).type
    print_ = None if data is None else fingerprint(data, device=device)
    planner = _Planner(planned, print_, device, interactive)
    planner.run()
    return Plan(planned.validate() if check else planned, planner.reasons, print_)


class _Planner:
    """The rules; each ``choose`` call fills one key unless the user set it."""

    def __init__(self, config: SchismConfig, print_: Fingerprint | None, device: str, interactive: bool):
        self.config, self.print, self.device, self.interactive = config, print_, device, interactive
        self.reasons: dict[str, str] = {}

    def choose(self, section: str, key: str, value: Any, reason: str) -> None:
        if self.config.is_given(section, key):
            return
        setattr(self.config.section(section), key, value)
        self.reasons[f"{section}.{key}"] = reason

    def run(self) -> None:
        accelerated = self.device != "cpu"
        self._classes()
        self._model(accelerated)
        size = self._crops(accelerated)
        self._optimisation(accelerated, size)
        self._budget(accelerated)
        self.reasons["normalization"] = "per-dataset mean/std of the intensities (data_stats.json), as SCHISM; " + (
            f"intensities span {self.print.intensity_percentiles['0.5']:.4g}..."
            f"{self.print.intensity_percentiles['99.5']:.4g} (0.5-99.5 %)"
            if self.print
            else "measured when the data is read"
        )

    def _classes(self) -> None:
        """The classes the data was read with (the CLI counts them from the mask values, napari
        from the highest painted label); a class without a labelled pixel is named, not hidden."""
        if self.print is not None:
            fractions = self.print.class_fractions
            count = len(fractions)
            rare = min((f for f in fractions if f > 0), default=0.0)
            missing = [str(k) for k, f in enumerate(fractions) if f == 0]
            reason = f"{count} classes in the masks/labels (rarest covers {100 * rare:.2g} % of the labelled pixels)"
            if missing:
                reason += f"; class{'es' if len(missing) > 1 else ''} {', '.join(missing)} not labelled anywhere"
            self.choose("Model", "num_classes", count, reason)

    def _model(self, accelerated: bool) -> None:
        if self.config.is_given("Model", "model_type"):
            return  # the user's architecture, with its SCHISM defaults
        encoder = "resnet34" if accelerated else "resnet18"
        size = "a mid-size encoder for an accelerator" if accelerated else "small enough to train on a CPU"
        self.choose(
            "Model",
            "model_type",
            "Unet",
            "an smp U-Net: the encoder-decoder that nnU-Net and most segmentation baselines rest on",
        )
        self.choose(
            "Model",
            "encoder",
            encoder,
            f"{encoder}: {size}",
        )

    def _crops(self, accelerated: bool) -> int:
        target = 512 if accelerated else 256
        side = self.print.min_side if self.print else target
        size = max(32, min(target, 32 * (side // 32)))
        why = f"{target} px crops on {'an accelerator' if accelerated else 'a CPU'}"
        if size < target:
            why += f", limited to the smallest image side ({side} px) rounded down to a multiple of 32"
        self.choose("Data", "crop_size", size, why)
        crop = self.config.data.crop_size
        self.choose("Data", "img_res", crop, "no resize: the network sees the image at its own resolution")
        batch = 16 if accelerated else 4
        batch = int(np.clip(round(batch * (256 / crop) ** 2), 2, 32))
        self.choose(
            "Training",
            "batch_size",
            batch,
            f"about {batch * crop * crop / 1e6:.2g} megapixels per step"
            + ("" if accelerated else ": on a CPU, more and smaller steps learn more in the same time"),
        )
        if self._budgeted():  # with epochs set, crops_per_image sizes a SCHISM epoch: left alone
            validation = self._validation_images()
            per_image = int(np.clip(math.ceil(VALIDATION_CROPS / max(1, validation)), 1, 16))
            self.choose(
                "Data",
                "crops_per_image",
                per_image,
                f"{per_image * validation} fixed validation crops from {validation} validation images",
            )
        self.choose("Data", "augment", True, "flips, 90-degree rotations and intensity jitter")
        if self.print is not None and self.print.sparse:
            self.choose(
                "Data",
                "class_crops",
                CLASS_CROPS,
                f"scribbles ({100 * self.print.labelled_fraction:.2g} % labelled): most crops centre on painted "
                "pixels, of a class drawn uniformly",
            )
        else:
            self.choose(
                "Data",
                "class_crops",
                CLASS_CROPS,
                "a third of the crops centre on a class drawn uniformly, so rare phases are learned (nnU-Net)",
            )
        return crop

    def _validation_images(self) -> int:
        if self.print is None:
            return 4
        data, training = self.config.data, self.config.training
        used = min(data.num_samples, self.print.images)
        return max(1, used - min(used, max(1, int(round(training.val_split * used, 6)))))

    def _optimisation(self, accelerated: bool, crop: int) -> None:
        self.choose(
            "Loss",
            "loss",
            "CrossEntropyLoss + DiceLoss",
            "cross-entropy + Dice, nnU-Net's default: Dice copes with rare classes",
        )
        if not self.config.is_given("Optimizer", "optimizer"):  # a named optimizer keeps SCHISM's lr
            self.choose("Optimizer", "optimizer", "AdamW", "AdamW converges in few steps without tuning")
            self.choose("Optimizer", "lr", 2e-3, "peak learning rate of the one-cycle schedule")
        if not self.config.is_given("Scheduler", "scheduler"):  # a named one steps per batch, as SCHISM
            self.choose(
                "Scheduler", "scheduler", "OneCycleLR", "warm-up then a decay to almost zero within the planned steps"
            )
            self.choose("Scheduler", "interval", "batch", "the schedule follows optimizer steps")

    def _budgeted(self) -> bool:
        """Whether the run is sized by time: the user set neither epochs nor steps per epoch."""
        return not (self.config.is_given("Training", "epochs") or self.config.training.steps_per_epoch is not None)

    def _budget(self, accelerated: bool) -> None:
        if not self._budgeted():
            return  # the user sized the run (SCHISM meaning of epochs)
        minutes = BUDGET_MINUTES[("gpu" if accelerated else "cpu", self.interactive)]
        self.choose(
            "Training",
            "time_budget",
            minutes,
            f"{minutes:g} minutes {'in napari' if self.interactive else 'from the command line'} on "
            f"{'an accelerator' if accelerated else 'a CPU'}; the step time is measured and the steps planned to fit",
        )
        self.choose("Training", "epochs", EPOCHS, f"{EPOCHS} validation points within the budget")


def infer_class_count(path: str | Path, mask: str | Path | None = None) -> int | None:
    """Classes of a dataset from class_dict.csv or its mask values (None when they fit no encoding)."""
    from ..data.io import infer_class_count as from_values
    from ..data.io import mask_values, read_mask
    from ..data.summary import summarize_folder

    if mask is not None:
        return from_values(mask_values(read_mask(mask)))
    return summarize_folder(path).class_count


def class_count_from_labels(masks: Sequence[np.ndarray]) -> int:
    """Classes painted in decoded masks (0..C-1, IGNORE unpainted): the highest class + 1, at least 2."""
    highest = -1
    for mask in masks:
        values = np.unique(mask)
        values = values[values != IGNORE]
        if values.size:
            highest = max(highest, int(values.max()))
    return max(2, highest + 1)


def _threads() -> int:
    import torch

    return int(torch.get_num_threads() or os.cpu_count() or 1)


def _value(config: SchismConfig, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(config.section(section), name)


def _has_value(config: SchismConfig, key: str) -> bool:
    section, name = key.split(".", 1)
    from ..config import SECTIONS

    return section in SECTIONS and hasattr(config.section(section), name)


def interactive_config(device: str | None = None, *, check: bool = True) -> SchismConfig:
    """Starting values for the napari widgets: the plan for this device, with napari's short time budget.

    The dataclass defaults stay SCHISM's, so a key left out of an INI file means what it meant
    there. Here the planable keys come from :func:`plan_config` without
    data (the plan for a typical image on this device, e.g. an smp U-Net with a resnet18 encoder,
    256 px crops and 1.5 minutes of training on a CPU); only the keys set below count as given,
    so planning again with the data refines the rest (crop size from the image size, classes).

    ``device`` (``"cpu"``, ``"cuda"``...) plans for that device instead of the one torch finds;
    with it and ``check=False`` nothing imports torch (the dock's first values, see
    :class:`schism_napari._widgets.session.Session`).
    """
    config = SchismConfig()
    config.set_given("Training", "metrics", ["Jaccard", "Dice"])
    config.set_given("Inference", "batch_size", 4)
    if check:
        config.validate()
    return plan_config(config, device=device, interactive=True, check=check).config
