"""Losses (every name, IGNORE pixels, weighted sums, class weights) and the confusion-matrix metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from schism_napari.config import LOSSES, LossConfig, ModelConfig
from schism_napari.data.io import IGNORE
from schism_napari.evaluation.metrics import ConfusionMatrix
from schism_napari.models.probabilities import predicted_classes, probabilities_from_logits
from schism_napari.training.losses import build_loss, class_weights_from_counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _loss(expression: str, num_classes: int, class_weights: torch.Tensor | None = None, **kwargs):
    config = LossConfig(loss=expression, kwargs=kwargs)
    config.validate(None)
    return build_loss(config, ModelConfig(num_classes=num_classes), class_weights)


def _batch(num_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (2, C or 1, 8, 8), targets with every class present and ~30 % IGNORE, and the ignore mask."""
    generator = torch.Generator().manual_seed(seed)
    channels = 1 if num_classes <= 2 else num_classes
    classes = max(2, num_classes)
    logits = torch.randn(2, channels, 8, 8, generator=generator)
    target = torch.randint(0, classes, (2, 8, 8), generator=generator)
    target[0, 0, :classes] = torch.arange(classes)
    ignored = torch.rand(2, 8, 8, generator=generator) < 0.3
    ignored[0, 0, :classes] = False
    target[ignored] = IGNORE
    return logits, target, ignored


@pytest.mark.parametrize("num_classes", [3, 2], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_a_finite_scalar_that_ignores_unlabelled_pixels(name: str, num_classes: int) -> None:
    logits, target, ignored = _batch(num_classes)
    loss_function = _loss(name, num_classes)
    logits.requires_grad_(True)
    loss = loss_function(logits, target)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    gradient = logits.grad.permute(0, 2, 3, 1)
    assert gradient[~ignored].abs().sum() > 0  # labelled pixels teach
    assert torch.all(gradient[ignored] == 0)  # unlabelled ones do not

    # whatever the network says at unlabelled pixels, the loss is the same
    changed = logits.detach().clone()
    noise = torch.randn(changed.shape, generator=torch.Generator().manual_seed(5)) * 10
    changed = torch.where(ignored[:, None], changed + noise, changed)
    assert not torch.equal(changed, logits.detach())
    assert loss_function(changed, target).item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("num_classes", [3, 2], ids=["multiclass", "binary"])
@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_is_zero_without_labelled_pixels(name: str, num_classes: int) -> None:
    logits, target, _ = _batch(num_classes)
    logits.requires_grad_(True)
    loss = _loss(name, num_classes)(logits, torch.full_like(target, IGNORE))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_losses_reward_correct_predictions() -> None:
    _, target, _ = _batch(3)
    valid = target.clamp(max=2)
    good = F.one_hot(valid, 3).permute(0, 3, 1, 2).float() * 8
    bad = F.one_hot((valid + 1) % 3, 3).permute(0, 3, 1, 2).float() * 8
    for name in LOSSES:
        loss_function = _loss(name, 3)
        assert loss_function(good, target) < loss_function(bad, target), name


def test_cross_entropy_matches_torch_with_ignore_index() -> None:
    logits, target, _ = _batch(3)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert _loss("CrossEntropyLoss", 3)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # NLLLoss of SCHISM gets a log-softmax first, so it equals the cross-entropy
    assert _loss("NLLLoss", 3)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_binary_cross_entropy_matches_torch_on_labelled_pixels() -> None:
    logits, target, ignored = _batch(2)
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][~ignored], target[~ignored].float())
    for name in ("CrossEntropyLoss", "BCEWithLogitsLoss", "NLLLoss"):  # SCHISM INI files say CE for binary
        assert _loss(name, 2)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6), name


def test_weighted_sum_of_losses() -> None:
    logits, target, _ = _batch(3)
    combined = _loss("CrossEntropyLoss + 0.5*DiceLoss", 3)(logits, target)
    separate = _loss("CrossEntropyLoss", 3)(logits, target) + 0.5 * _loss("DiceLoss", 3)(logits, target)
    assert combined.item() == pytest.approx(separate.item(), rel=1e-6)
    # a comma list is an unweighted sum; aliases are accepted
    listed = _loss("ce, dice", 3)(logits, target)
    plain = _loss("CrossEntropyLoss", 3)(logits, target) + _loss("DiceLoss", 3)(logits, target)
    assert listed.item() == pytest.approx(plain.item(), rel=1e-6)


def test_loss_keyword_arguments_reach_the_loss() -> None:
    _, target, _ = _batch(3)
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 6  # confident and right
    smoothed = _loss("CrossEntropyLoss", 3, label_smoothing=0.2)(logits, target)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6)
    assert smoothed.item() != pytest.approx(_loss("CrossEntropyLoss", 3)(logits, target).item(), rel=1e-3)


def test_class_weights_from_counts() -> None:
    weights = class_weights_from_counts([100, 300, 0, 600])
    inverse = np.array([1000 / 100, 1000 / 300, 1000 / 600])
    expected = inverse / inverse.mean()
    assert weights.dtype == torch.float32
    assert weights[2].item() == 0.0  # absent class
    np.testing.assert_allclose(weights[[0, 1, 3]].numpy(), expected, rtol=1e-6)
    assert weights[[0, 1, 3]].mean().item() == pytest.approx(1.0)
    assert weights[0] > weights[1] > weights[3]  # rarer classes weigh more
    np.testing.assert_allclose(class_weights_from_counts(torch.tensor([5, 5, 5])).numpy(), [1, 1, 1])
    assert torch.equal(class_weights_from_counts([0, 0]), torch.zeros(2))


def test_cross_entropy_with_class_weights_is_torchs_weighted_cross_entropy() -> None:
    logits, target, _ = _batch(3)
    weights = class_weights_from_counts([50, 500, 5000])
    weighted = _loss("CrossEntropyLoss", 3, weights)(logits, target)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)
    assert weighted.item() != pytest.approx(_loss("CrossEntropyLoss", 3)(logits, target).item(), rel=1e-3)
    nll = _loss("NLLLoss", 3, weights)(logits, target)
    assert nll.item() == pytest.approx(expected.item(), rel=1e-6)


def test_binary_class_weights_become_pos_weight() -> None:
    logits, target, ignored = _batch(2)
    weights = class_weights_from_counts([900, 100])
    weighted = _loss("CrossEntropyLoss", 2, weights)(logits, target)
    expected = F.binary_cross_entropy_with_logits(
        logits[:, 0][~ignored], target[~ignored].float(), pos_weight=weights[1] / weights[0]
    )
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-6)


WEIGHTED_CASES = [(name, {}) for name in LOSSES] + [("FocalLoss", {"gamma": 1.5}), ("FocalDiceLoss", {"gamma": 1.5})]


@pytest.mark.parametrize(("name", "kwargs"), WEIGHTED_CASES, ids=[f"{n}{k}" for n, k in WEIGHTED_CASES])
def test_losses_with_class_weights_stay_finite_and_non_negative(name: str, kwargs: dict) -> None:
    """Class weights from an imbalanced training set must not break a loss, even for confident predictions."""
    _, target, _ = _batch(3)
    weights = class_weights_from_counts([100, 1000, 50])  # about 1.0, 0.1, 1.9
    confident = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 6
    logits, _, _ = _batch(3, seed=1)
    loss_function = _loss(name, 3, weights, **kwargs)
    for candidate in (confident, logits):
        value = loss_function(candidate, target)
        assert torch.isfinite(value), name
        assert value.item() >= 0.0, (name, value.item())


# ---- metrics ---------------------------------------------------------------------------------

# A hand-made 3-class example; the last pixel is unlabelled.
TARGET = [0, 0, 0, 1, 1, 2, 2, 2, IGNORE]
PREDICTED = [0, 0, 1, 1, 2, 2, 2, 1, 0]
# confusion (rows true, columns predicted): [[2, 1, 0], [0, 1, 1], [0, 1, 2]]
# TP = [2, 1, 2], FP = [0, 2, 1], FN = [1, 1, 1], TN = [5, 4, 4], 8 labelled pixels
HAND = {
    "Jaccard": [2 / 3, 1 / 4, 2 / 4],
    "Dice": [4 / 5, 2 / 5, 4 / 6],
    "Precision": [2 / 2, 1 / 3, 2 / 3],
    "Recall": [2 / 3, 1 / 2, 2 / 3],
    "Accuracy": [7 / 8, 5 / 8, 6 / 8],
}


def _matrix(**options) -> ConfusionMatrix:
    matrix = ConfusionMatrix(3, **options)
    matrix.update(torch.tensor([TARGET]), torch.tensor([PREDICTED]))
    return matrix


def test_confusion_matrix_counts_and_skips_unlabelled_pixels() -> None:
    matrix = _matrix()
    assert matrix.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 1, 2]]
    assert int(matrix.matrix.sum()) == 8
    # numpy inputs work the same
    again = ConfusionMatrix(3)
    again.update(np.array([TARGET], dtype=np.uint8), np.array([PREDICTED]))
    assert torch.equal(again.matrix, matrix.matrix)


def test_metrics_per_class_and_means_by_hand() -> None:
    matrix = _matrix()
    per_class = matrix.per_class()
    for name, values in HAND.items():
        np.testing.assert_allclose(per_class[name], values, rtol=1e-12, err_msg=name)
        assert matrix.class_scores(name) == pytest.approx(values)
    for name in ("Jaccard", "Dice", "Precision", "Recall"):
        assert matrix.mean(name) == pytest.approx(np.mean(HAND[name]))
    assert matrix.mean("Accuracy") == pytest.approx(5 / 8)  # pixel accuracy over labelled pixels
    # SCHISM spellings
    assert matrix.mean("DiceScore") == matrix.mean("F1") == matrix.mean("Dice")
    assert matrix.mean("IoU") == matrix.mean("Jaccard")


def test_excluded_class_is_left_out_of_the_means() -> None:
    matrix = _matrix(excluded=(0,))
    assert matrix.mean("Jaccard") == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert matrix.mean("Dice") == pytest.approx((2 / 5 + 4 / 6) / 2)
    assert matrix.mean("Recall") == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert matrix.mean("Accuracy") == pytest.approx(3 / 5)  # rows 1 and 2: 3 right of 5
    # per-class scores still report every class
    assert matrix.class_scores("Jaccard") == pytest.approx(HAND["Jaccard"])


def test_generalized_dice_formula() -> None:
    # w_c = 1 / support_c**2 with support = [3, 2, 3] and predicted = [2, 3, 3]:
    # GD = 2 * sum(w * TP) / sum(w * (support + predicted)) = 2 * (2/9 + 1/4 + 2/9) / (5/9 + 5/4 + 6/9) = 50/89
    matrix = _matrix()
    assert matrix.mean("GeneralizedDice") == pytest.approx(50 / 89)
    assert matrix.mean("GeneralizedDiceScore") == pytest.approx(50 / 89)
    # excluding class 0: w = [1/4, 1/9], 2 * (1/4 + 2/9) / (5/4 + 6/9) = 34/69
    assert _matrix(excluded=(0,)).mean("GeneralizedDice") == pytest.approx(34 / 69)
    perfect = ConfusionMatrix(3)
    perfect.update(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 2, 2]]))
    assert perfect.mean("GeneralizedDice") == pytest.approx(1.0)


def test_absent_classes_do_not_count_in_the_means() -> None:
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]]))  # class 2 nowhere
    assert math.isnan(matrix.per_class()["Jaccard"][2])
    assert matrix.mean("Jaccard") == pytest.approx((1 / 2 + 2 / 3) / 2)
    empty = ConfusionMatrix(3)
    empty.update(torch.tensor([[IGNORE, IGNORE]]), torch.tensor([[0, 1]]))
    assert math.isnan(empty.mean("Jaccard")) and math.isnan(empty.mean("Accuracy"))


def test_metrics_accumulate_over_the_dataset_not_per_batch() -> None:
    first_target, first_predicted = torch.tensor([[0, 0, 0, 0, 1, 1]]), torch.tensor([[0, 0, 0, 0, 1, 0]])
    second_target, second_predicted = torch.tensor([[1, 1]]), torch.tensor([[0, 0]])
    accumulated = ConfusionMatrix(2)
    accumulated.update(first_target, first_predicted)
    accumulated.update(second_target, second_predicted)
    whole = ConfusionMatrix(2)
    whole.update(torch.cat([first_target, second_target], 1), torch.cat([first_predicted, second_predicted], 1))
    assert torch.equal(accumulated.matrix, whole.matrix)
    batch_scores = []
    for target, predicted in ((first_target, first_predicted), (second_target, second_predicted)):
        single = ConfusionMatrix(2)
        single.update(target, predicted)
        batch_scores.append(single.mean("Dice"))
    for name in ("Jaccard", "Dice", "Accuracy", "Precision", "Recall"):
        assert accumulated.mean(name) == pytest.approx(whole.mean(name))
    # dataset level: TP = [4, 1], FP = [3, 0], FN = [0, 3]
    assert accumulated.mean("Dice") == pytest.approx((8 / 11 + 2 / 5) / 2)
    assert accumulated.mean("Dice") != pytest.approx(np.nanmean(batch_scores))


def _probabilities(scores: np.ndarray) -> torch.Tensor:
    """Binary class-1 scores (N,) -> (1, 2, 1, N) probabilities."""
    foreground = torch.tensor(scores, dtype=torch.float32).reshape(1, 1, 1, -1)
    return torch.cat([1 - foreground, foreground], dim=1)


def test_average_precision() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 200)
    separating = np.where(truth == 1, rng.uniform(0.6, 1.0, truth.size), rng.uniform(0.0, 0.4, truth.size))
    target = torch.tensor(truth).reshape(1, 1, -1)
    perfect = ConfusionMatrix(2, average_precision=True)
    probabilities = _probabilities(separating)
    perfect.update(target, predicted_classes(probabilities), probabilities)
    assert perfect.per_class()["AveragePrecision"] == pytest.approx([1.0, 1.0])
    assert perfect.mean("AveragePrecision") == pytest.approx(1.0)

    shuffled = ConfusionMatrix(2, average_precision=True)
    probabilities = _probabilities(rng.permutation(separating))
    shuffled.update(target, predicted_classes(probabilities), probabilities)
    assert shuffled.mean("AveragePrecision") < 0.75

    # a hand-checked ranking: P 0.9, N 0.7, P 0.6, N 0.2 -> AP = 1 * 1/2 + 2/3 * 1/2
    small = ConfusionMatrix(2, average_precision=True)
    probabilities = _probabilities(np.array([0.9, 0.7, 0.6, 0.2]))
    small.update(torch.tensor([[[1, 0, 1, 0]]]), predicted_classes(probabilities), probabilities)
    assert small.per_class()["AveragePrecision"][1] == pytest.approx(1 / 2 + 1 / 3)


def test_average_precision_skips_unlabelled_pixels_and_needs_probabilities() -> None:
    probabilities = _probabilities(np.array([0.9, 0.1, 0.95, 0.05]))
    matrix = ConfusionMatrix(2, average_precision=True)
    # the unlabelled pixels carry misleading scores; they must not count
    matrix.update(torch.tensor([[[1, 0, IGNORE, IGNORE]]]), predicted_classes(probabilities), probabilities)
    assert matrix.mean("AveragePrecision") == pytest.approx(1.0)
    assert int(matrix.matrix.sum()) == 2
    assert "AveragePrecision" not in ConfusionMatrix(2).per_class()


def test_probabilities_from_logits() -> None:
    binary = probabilities_from_logits(torch.tensor([0.0, 2.0]).reshape(1, 1, 1, 2))
    assert binary.shape == (1, 2, 1, 2)
    assert binary[0, 1, 0].tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-2))])
    assert torch.allclose(binary.sum(1), torch.ones(1, 1, 2))
    multiclass = probabilities_from_logits(torch.randn(2, 4, 3, 3))
    assert multiclass.shape == (2, 4, 3, 3) and torch.allclose(multiclass.sum(1), torch.ones(2, 3, 3))


def test_predicted_classes_threshold_for_two_classes() -> None:
    probabilities = _probabilities(np.array([0.3, 0.45, 0.55, 0.8]))
    assert predicted_classes(probabilities).tolist() == [[[0, 0, 1, 1]]]
    assert predicted_classes(probabilities, threshold=0.4).tolist() == [[[0, 1, 1, 1]]]  # not the argmax
    assert predicted_classes(probabilities, threshold=0.7).tolist() == [[[0, 0, 0, 1]]]
    three = torch.tensor([0.2, 0.3, 0.5]).reshape(1, 3, 1, 1)
    assert predicted_classes(three, threshold=0.9).item() == 2  # argmax for more classes


def test_score_samples_is_the_one_scoring_of_whole_images() -> None:
    """evaluate() and the baseline both score through score_samples: samples without a mask are
    skipped and, with ignore_background, mask class 0 is unlabelled (IGNORE) and out of the means."""
    from types import SimpleNamespace

    from schism_napari.evaluation.metrics import jaccard, score_samples

    masks = [np.array([[0, 1], [2, 2]], np.uint8), None, np.array([[1, IGNORE], [0, 2]], np.uint8)]
    data = SimpleNamespace(
        class_count=3,
        samples=[SimpleNamespace(image=np.zeros((2, 2, 1), np.float32), mask=m) for m in masks],
    )
    predicted = np.array([[1, 1], [2, 0]], np.int64)
    calls: list[int] = []

    def predict(image: np.ndarray) -> np.ndarray:
        calls.append(1)
        return predicted

    full = score_samples(predict, data, [0, 1, 2])
    assert len(calls) == 2  # the unmasked sample is not predicted
    assert int(full.matrix.sum()) == 7  # IGNORE pixel left out
    background = score_samples(predict, data, [0, 1, 2], ignore_background=True)
    assert int(background.matrix.sum()) == 5 and int(background.matrix[0].sum()) == 0
    assert background.excluded == (0,)
    np.testing.assert_allclose(jaccard(full.matrix.numpy()), full.per_class()["Jaccard"])
