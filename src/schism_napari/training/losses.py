"""Losses: torch's cross-entropy family, smp's region losses, the sem seed's focal Dice loss, and
weighted sums of them. Every term skips unlabeled pixels (IGNORE). Class weights reach the
cross-entropy family, FocalDiceLoss and smp's Dice/Jaccard/Focal/Tversky losses in multi-class
mode; smp has no class weights for LovaszLoss or for its binary mode.

Binary models (one logit channel) get the binary form of each loss, so SCHISM INI files that
say ``CrossEntropyLoss`` with ``num_classes=2`` train as they did there.

The names, origins and [Loss] keywords live in the torch-free leaf :mod:`schism_napari.registries`
(the configuration validates ``loss`` and its keyword arguments against it); :data:`LOSS_TERMS`
pairs each name with its builder, for :func:`build_loss` and ``scripts/registry_tables.py`` (see
CONTRIBUTING.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.io import IGNORE
from ..plumbing.torchvision_compat import ensure_torchvision_importable
from ..registries import LOSSES, SMP_LOSSES, loss_keyword_arguments

if TYPE_CHECKING:
    from ..config import LossConfig, ModelConfig

# Arguments the loss builder sets itself; the INI may not override them.
_MANAGED = {
    "mode",
    "ignore_index",
    "from_logits",
    "class_weights",
    "weight",
    "reduction",
    "size_average",
    "reduce",
    "pos_weight",
}


def _parameters(cls: type) -> set[str]:
    return {n for n in inspect.signature(cls).parameters if n not in _MANAGED}


def _smp_class(name: str) -> type:
    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp

    return getattr(smp.losses, name)


class SegmentationLoss(nn.Module):
    """Weighted sum of loss terms, each called as ``term(logits, target)``."""

    def __init__(self, terms: list[tuple[float, nn.Module]]):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList(t for _, t in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != IGNORE).any()):
            return logits.sum() * 0.0  # a batch without labelled pixels teaches nothing
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms, strict=True))


def build_loss(config: LossConfig, model: ModelConfig, class_weights: torch.Tensor | None = None) -> SegmentationLoss:
    terms = []
    for weight, name in config.terms():
        kwargs = {k: v for k, v in config.kwargs.items() if k in loss_keyword_arguments(name)}
        terms.append((weight, _build_term(name, model.binary, class_weights, kwargs)))
    return SegmentationLoss(terms)


def _build_term(name: str, binary: bool, class_weights: torch.Tensor | None, kwargs: dict) -> nn.Module:
    return LOSS_TERMS[name].build(binary, class_weights, kwargs)


class BinaryCrossEntropy(nn.Module):
    """BCE on the single logit over labelled pixels; class weights become ``pos_weight``."""

    def __init__(self, class_weights: torch.Tensor | None):
        super().__init__()
        self.pos_weight = None if class_weights is None else (class_weights[1] / class_weights[0].clamp_min(1e-6))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE
        values = logits[:, 0][valid]
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(values, target[valid].to(values.dtype), pos_weight=pos_weight)


class LogSoftmaxNLL(nn.Module):
    """SCHISM's NLLLoss on raw network outputs, made correct by a log-softmax first."""

    def __init__(self, class_weights: torch.Tensor | None):
        super().__init__()
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(logits, dim=1), target, weight=self.class_weights, ignore_index=IGNORE)


class OneHotBCE(nn.Module):
    """Multi-class BCE: one sigmoid per class against one-hot targets."""

    def __init__(self, class_weights: torch.Tensor | None):
        super().__init__()
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != IGNORE
        values = logits.permute(0, 2, 3, 1)[valid]  # (P, C)
        onehot = F.one_hot(target[valid], logits.shape[1]).to(values.dtype)
        weight = None if self.class_weights is None else self.class_weights.to(values.device)
        return F.binary_cross_entropy_with_logits(values, onehot, weight=weight)


class FocalDiceLoss(nn.Module):
    """The focal Dice loss of the sem seed (shale SEM): a per-pixel soft Dice over the class axis,
    focused on hard pixels by ``(1 - exp(-dice)) ** gamma``; class weights scale the overlap term.
    """

    def __init__(self, class_weights: torch.Tensor | None = None, gamma: float = 2.0, smooth: float = 1.0):
        super().__init__()
        self.class_weights, self.gamma, self.smooth = class_weights, gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            foreground = torch.sigmoid(logits)
            probabilities = torch.cat([1 - foreground, foreground], dim=1)
        else:
            probabilities = torch.softmax(logits, dim=1)
        valid = target != IGNORE
        probabilities = probabilities.permute(0, 2, 3, 1)[valid]  # (P, C)
        onehot = F.one_hot(target[valid], probabilities.shape[1]).to(probabilities.dtype)
        overlap = (probabilities * onehot).sum(-1)
        dice = 1 - (2 * overlap + self.smooth) / (probabilities.sum(-1) + onehot.sum(-1) + self.smooth)
        focal = (1 - torch.exp(-dice)) ** self.gamma * dice
        if self.class_weights is None:
            return focal.mean()
        # class weights weigh pixels by their true class (a weighted mean keeps the loss in [0, 1])
        weights = self.class_weights.to(focal.device)[target[valid]]
        return (focal * weights).sum() / weights.sum().clamp_min(1e-12)


def class_weights_from_counts(counts: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
    """Inverse class frequency, normalised to mean 1 over the classes present; absent classes get 0."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    if present.any():
        inverse = counts[present].sum() / counts[present]
        weights[present] = inverse / inverse.mean()
    return weights.float()


# ---- the registry --------------------------------------------------------------------------------

# (binary model?, class weights or None, INI keyword arguments) -> loss term called as term(logits, target)
TermBuilder = Callable[[bool, "torch.Tensor | None", dict[str, Any]], nn.Module]


@dataclass(frozen=True)
class LossTerm:
    """One loss name of the INI file: the [Loss] keys it takes and how to build it.

    ``origin`` and ``keywords`` (from :mod:`schism_napari.registries`) are what the README table
    shows, so they cannot drift from the code.
    """

    build: TermBuilder
    keywords: Callable[[], set[str]]
    origin: str


def _cross_entropy(binary: bool, class_weights: torch.Tensor | None, kwargs: dict[str, Any]) -> nn.Module:
    if binary:
        return BinaryCrossEntropy(class_weights)
    return nn.CrossEntropyLoss(weight=class_weights, ignore_index=IGNORE, **kwargs)


def _bce(binary: bool, class_weights: torch.Tensor | None, kwargs: dict[str, Any]) -> nn.Module:
    return BinaryCrossEntropy(class_weights) if binary else OneHotBCE(class_weights)


def _nll(binary: bool, class_weights: torch.Tensor | None, kwargs: dict[str, Any]) -> nn.Module:
    return BinaryCrossEntropy(class_weights) if binary else LogSoftmaxNLL(class_weights)


def _smp_term(name: str) -> TermBuilder:
    """An smp loss by class name, in binary or multi-class mode, with class weights where it takes them."""

    def build(binary: bool, class_weights: torch.Tensor | None, kwargs: dict[str, Any]) -> nn.Module:
        cls = _smp_class(name)
        arguments = {"mode": "binary" if binary else "multiclass", "ignore_index": IGNORE, **kwargs}
        if class_weights is not None and not binary and "class_weights" in inspect.signature(cls).parameters:
            arguments["class_weights"] = class_weights.tolist()
        return cls(**arguments)

    return build


def signature_keywords(name: str) -> set[str] | None:
    """The keywords the installed torch/smp class of loss ``name`` takes (None: a loss of this
    project); the registry's written-out keywords must equal them (tests/test_registries.py)."""
    if name == "CrossEntropyLoss":
        return _parameters(nn.CrossEntropyLoss)
    if name in SMP_LOSSES:
        return _parameters(_smp_class(name))
    if name in ("BCEWithLogitsLoss", "NLLLoss"):
        return set()  # built as this project's modules, which take no INI keywords
    return None


# every name of the registry with its builder; a name without one fails here, at import
_BUILDERS: dict[str, TermBuilder] = {
    "CrossEntropyLoss": _cross_entropy,
    "BCEWithLogitsLoss": _bce,
    "NLLLoss": _nll,
    **{name: _smp_term(name) for name in SMP_LOSSES},
    "FocalDiceLoss": lambda b, w, kwargs: FocalDiceLoss(w, **kwargs),
}


def _keywords(name: str) -> Callable[[], set[str]]:
    return lambda: loss_keyword_arguments(name)


LOSS_TERMS: dict[str, LossTerm] = {
    name: LossTerm(_BUILDERS[name], _keywords(name), entry.origin) for name, entry in LOSSES.items()
}
