"""Checks of engine.scores on small hand-made logits, features and DICE weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.scores import ScoreInputs, compute_score, dice_mask, mean_probs, scores

E = math.e

# K=2 known + unknown. Both rows have the same known logits; row 2 has a large unknown logit.
LOGITS_U = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 4.0]], dtype=torch.float64)


def one_model(logits: torch.Tensor, has_unknown: bool = True) -> ScoreInputs:
    return ScoreInputs(logits=[logits], features=[], has_unknown=has_unknown, num_classes=2)


def test_registered_names() -> None:
    assert scores.names() == ["dice", "energy", "max_logit", "msp", "unknown"]
    with pytest.raises(KeyError, match="ood score"):
        compute_score("odin", one_model(LOGITS_U))


def test_msp_softmax_over_all_outputs_max_over_known() -> None:
    msp = compute_score("msp", one_model(LOGITS_U))
    assert msp.shape == (2,)
    assert msp[0].item() == pytest.approx(E**2 / (E**2 + E + 1))
    assert msp[1].item() == pytest.approx(E**2 / (E**2 + E + E**4))
    # The unknown column has the largest probability in row 2, yet msp ignores it as a
    # candidate: it is not max over all outputs (that would be e^4 / sum).
    assert msp[1].item() < msp[0].item()
    assert msp[1].item() < E**4 / (E**2 + E + E**4)


def test_logit_scores_ignore_unknown_column() -> None:
    energy = compute_score("energy", one_model(LOGITS_U))
    max_logit = compute_score("max_logit", one_model(LOGITS_U))
    assert energy.tolist() == pytest.approx([math.log(E**2 + E)] * 2)
    assert max_logit.tolist() == pytest.approx([2.0, 2.0])


def test_unknown_score() -> None:
    unknown = compute_score("unknown", one_model(LOGITS_U))
    assert unknown[0].item() == pytest.approx(1 - 1 / (E**2 + E + 1))
    assert unknown[1].item() == pytest.approx(1 - E**4 / (E**2 + E + E**4))


def test_without_unknown_column() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    inputs = one_model(logits, has_unknown=False)
    expected = torch.softmax(logits, dim=1).max(dim=1).values
    assert torch.allclose(compute_score("msp", inputs), expected)
    assert compute_score("msp", inputs)[0].item() == pytest.approx(E**2 / (E**2 + E), rel=1e-6)
    assert compute_score("max_logit", inputs).tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="unknown"):
        compute_score("unknown", inputs)


def test_logits_shape_must_match_flag() -> None:
    # A K-column head flagged as having an unknown column would treat a class as "unknown".
    with pytest.raises(ValueError, match="expected"):
        compute_score("msp", one_model(torch.zeros(3, 2), has_unknown=True))
    with pytest.raises(ValueError, match="expected"):
        compute_score("energy", one_model(torch.zeros(3, 3), has_unknown=False))


# Two snapshots that disagree: A is sure of class 0, B fairly sure of class 1.
LOGITS_A = torch.tensor([[4.0, 0.0, 0.0]], dtype=torch.float64)
LOGITS_B = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64)
TWO = ScoreInputs(logits=[LOGITS_A, LOGITS_B], features=[], has_unknown=True, num_classes=2)


def test_mean_probs_over_models() -> None:
    probs = mean_probs(TWO)
    pa = np.array([E**4, 1, 1]) / (E**4 + 2)
    pb = np.array([1, E**2, 1]) / (E**2 + 2)
    assert probs.shape == (1, 3)
    assert probs[0].numpy() == pytest.approx((pa + pb) / 2)


def test_probability_scores_use_averaged_probs() -> None:
    pa = np.array([E**4, 1, 1]) / (E**4 + 2)
    pb = np.array([1, E**2, 1]) / (E**2 + 2)
    avg = (pa + pb) / 2
    msp = compute_score("msp", TWO).item()
    assert msp == pytest.approx(avg[:2].max())
    # The vote is less confident than the mean of each snapshot's own confidence.
    per_model_mean = (pa[:2].max() + pb[:2].max()) / 2
    assert abs(msp - per_model_mean) > 0.1
    assert compute_score("unknown", TWO).item() == pytest.approx(1 - avg[2])


def test_logit_scores_average_per_model_scores() -> None:
    energy = compute_score("energy", TWO).item()
    assert energy == pytest.approx((math.log(E**4 + 1) + math.log(1 + E**2)) / 2)
    # Not the energy of averaged logits [2, 1]:
    assert abs(energy - math.log(E**2 + E)) > 0.5
    assert compute_score("max_logit", TWO).item() == pytest.approx((4.0 + 2.0) / 2)


@pytest.mark.parametrize(("percentile", "kept"), [(90, 20), (70, 60), (50, 100)])
def test_dice_mask_keeps_top_contributions(percentile: float, kept: int) -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 20, generator=gen)
    mean_feature = torch.rand(20, generator=gen) + 0.1  # post-ReLU features: positive
    mask = dice_mask(weight, mean_feature, percentile)
    assert mask.dtype == torch.bool and mask.shape == (10, 20)
    assert int(mask.sum()) == kept
    contrib = (weight * mean_feature[None, :]).flatten()
    top = set(torch.topk(contrib, kept).indices.tolist())
    assert set(torch.nonzero(mask.flatten()).flatten().tolist()) == top
    # Every kept contribution beats every dropped one (a strict split at the percentile).
    assert contrib[mask.flatten()].min() > contrib[~mask.flatten()].max()


def test_dice_mask_uses_contribution_not_weight() -> None:
    weight = torch.tensor([[5.0, 1.0], [4.0, 2.0]])
    mean_feature = torch.tensor([0.01, 1.0])  # contributions [[.05, 1], [.04, 2]]
    mask = dice_mask(weight, mean_feature, 50)
    assert mask.tolist() == [[False, True], [False, True]]


def test_dice_score_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    bias = torch.randn(2, generator=gen, dtype=torch.float64)
    feats = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    mask = dice_mask(weight, feats.mean(dim=0), 50)
    assert int(mask.sum()) == 6
    masked = weight * mask
    inputs = ScoreInputs(
        logits=[torch.zeros(5, 3, dtype=torch.float64)],
        features=[feats],
        has_unknown=True,
        num_classes=2,
        dice_weights=[masked],
        dice_biases=[bias],
    )
    out = feats.numpy() @ masked.numpy().T + bias.numpy()
    expected = np.log(np.exp(out).sum(axis=1))
    assert compute_score("dice", inputs).numpy() == pytest.approx(expected)
    # Masking matters: the unmasked layer scores differently.
    full = feats.numpy() @ weight.numpy().T + bias.numpy()
    assert not np.allclose(np.log(np.exp(full).sum(axis=1)), expected)


def test_dice_two_models_and_errors() -> None:
    feats_a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    feats_b = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    w_a = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # outputs [1, 0]
    w_b = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # outputs [2, 0]
    inputs = ScoreInputs(
        logits=[torch.zeros(1, 2), torch.zeros(1, 2)],
        features=[feats_a, feats_b],
        has_unknown=False,
        num_classes=2,
        dice_weights=[w_a, w_b],
    )
    expected = (math.log(E + 1) + math.log(E**2 + 1)) / 2
    assert compute_score("dice", inputs).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="dice_weights"):
        compute_score("dice", one_model(LOGITS_U))
    # The weight must be restricted to the K known rows (the unknown row is not an energy term).
    inputs.dice_weights = [torch.zeros(3, 2), torch.zeros(3, 2)]
    with pytest.raises(ValueError, match="known rows"):
        compute_score("dice", inputs)
