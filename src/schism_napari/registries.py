"""The names an INI file can give for ``model_type`` and ``loss``, and the keys each one reads.

This is the one place that names an architecture or a loss. It is a leaf: it imports neither
torch nor smp nor the configuration, so the configuration validates ``[Model]`` and ``[Loss]``
from it without importing torch (the napari dock validates on the GUI thread), and the modules
that build the objects (:mod:`schism_napari.models`, :mod:`schism_napari.training.losses`) read
it without an import circle. Each builder module pairs every name here with how to build it,
and fails at import when a name has no builder.

The loss keywords are written out rather than read from torch's and smp's signatures at run time
(that would import torch); ``tests/test_registries.py`` checks them against the installed classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

# ---- architectures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchitectureName:
    """One ``model_type``: where it comes from and which [Model] keys it reads (the README table)."""

    origin: str
    keys: tuple[str, ...] = ()


# smp's downloadable encoder weights, named in [Model] encoder_weights instead of a local file
HUB_WEIGHTS = ("imagenet", "ssl", "swsl", "advprop", "noisy-student", "instagram", "imagenet+background")


def is_hub_weights(name: str | None) -> TypeGuard[str]:
    """``encoder_weights`` names smp's downloadable weights (imagenet, ssl, ...) rather than a file.

    A TypeGuard: where it holds, ``name`` is a string (type checkers narrow it).
    """
    return name is not None and name.lower() in HUB_WEIGHTS


_SMP_KEYS = ("encoder", "encoder_weights")
# smp classes by name; smp.create_model builds them, so an smp architecture is one line here.
SMP_ARCHITECTURES = (
    "Unet",
    "UnetPlusPlus",
    "MAnet",
    "Linknet",
    "FPN",
    "PSPNet",
    "PAN",
    "DeepLabV3",
    "DeepLabV3Plus",
    "UPerNet",
    "Segformer",
)
UNET_CONCAT = "UnetConcat"  # this project's U-Net (concatenated skips), formerly built for SCHISM's names
_UNET_KEYS = ("n_block", "channels", "k_size", "activation")
ARCHITECTURES: dict[str, ArchitectureName] = {
    "UnetVanilla": ArchitectureName("SCHISM", _UNET_KEYS),
    "UnetSegmentor": ArchitectureName("SCHISM", (*_UNET_KEYS, "p")),
    UNET_CONCAT: ArchitectureName("schism-napari", (*_UNET_KEYS, "p")),
    **{name: ArchitectureName("smp", _SMP_KEYS) for name in SMP_ARCHITECTURES},
}
SCHISM_ARCHITECTURES = tuple(name for name, a in ARCHITECTURES.items() if a.origin == "SCHISM")


# ---- losses --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossName:
    """One loss name of the INI file: the other [Loss] keys it takes and where it comes from.

    ``keywords`` are the arguments of the torch/smp class that the loss builder does not set
    itself (mode, ignore_index, class weights, reduction are its own).
    """

    origin: str
    keywords: frozenset[str] = frozenset()


SMP_LOSSES = ("DiceLoss", "FocalLoss", "JaccardLoss", "LovaszLoss", "TverskyLoss")
_SMP_LOSS_KEYWORDS = {
    "DiceLoss": {"classes", "eps", "log_loss", "smooth"},
    "FocalLoss": {"alpha", "eps", "gamma", "normalized", "reduced_threshold"},
    "JaccardLoss": {"classes", "eps", "log_loss", "smooth"},
    "LovaszLoss": {"per_image"},
    "TverskyLoss": {"alpha", "beta", "classes", "eps", "gamma", "log_loss", "smooth"},
}
LOSSES: dict[str, LossName] = {
    "CrossEntropyLoss": LossName("torch", frozenset({"label_smoothing"})),
    "BCEWithLogitsLoss": LossName("torch"),
    "NLLLoss": LossName("torch (after a log-softmax)"),
    **{name: LossName("smp", frozenset(_SMP_LOSS_KEYWORDS[name])) for name in SMP_LOSSES},
    "FocalDiceLoss": LossName("sem seed", frozenset({"gamma", "smooth"})),
}


def loss_keyword_arguments(name: str) -> set[str]:
    """INI keys of [Loss] that a loss term accepts (passed to the torch/smp class)."""
    return set(LOSSES[name].keywords)
