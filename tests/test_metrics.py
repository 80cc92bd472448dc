"""Checks of engine.metrics against hand computations and independent brute-force versions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from engine.metrics import classification_metrics, ood_metrics, summarize_ood

ID_SCORES = np.array([0.9, 0.8, 0.7, 0.6])
OOD_SCORES = np.array([0.75, 0.5, 0.4, 0.3])


def pairwise_auroc(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """Fraction of (id, ood) pairs ranked correctly, ties counting one half."""
    wins = (id_s[:, None] > ood_s[None, :]).sum() + 0.5 * (id_s[:, None] == ood_s[None, :]).sum()
    return float(wins / (id_s.size * ood_s.size))


def brute_force_fpr95(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """Try every threshold from the highest down; stop at the first accepting >= 95% of ID."""
    for t in sorted(np.unique(np.concatenate([id_s, ood_s])), reverse=True):
        if np.mean(id_s >= t) >= 0.95:
            return float(np.mean(ood_s >= t))
    raise AssertionError("unreachable: the lowest threshold accepts every ID sample")


def test_ood_metrics_hand_computed_case() -> None:
    m = ood_metrics(ID_SCORES, OOD_SCORES)
    assert set(m) == {"auroc", "fpr95", "aupr_in", "aupr_out"}
    assert all(isinstance(v, float) for v in m.values())
    # 16 pairs; only 0.7 and 0.6 lose to the OOD 0.75, so 14 of 16 are ranked correctly.
    assert m["auroc"] == pytest.approx(14 / 16)
    assert m["auroc"] == pytest.approx(pairwise_auroc(ID_SCORES, OOD_SCORES))
    # Accepting all 4 ID needs threshold 0.6; of the OOD only 0.75 is >= 0.6.
    assert m["fpr95"] == pytest.approx(1 / 4)
    # Ranking by score: I I O I I O O O -> precision at each ID hit: 1, 1, 3/4, 4/5.
    assert m["aupr_in"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    # Ranking by -score: O O O I I O I I -> precision at each OOD hit: 1, 1, 1, 4/6.
    assert m["aupr_out"] == pytest.approx((1 + 1 + 1 + 4 / 6) / 4)
    labels = np.r_[np.ones(4), np.zeros(4)]
    scores = np.r_[ID_SCORES, OOD_SCORES]
    assert m["aupr_in"] == pytest.approx(average_precision_score(labels, scores))
    assert m["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -scores))


def test_ood_metrics_tiny_case_with_tie() -> None:
    # id {1.0, 0.5}, ood {0.5, 0.0}: the tie at 0.5 enters every metric.
    m = ood_metrics(torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.0]))
    assert m["auroc"] == pytest.approx(3.5 / 4)
    # Both ID accepted only at threshold 0.5, which also accepts the OOD 0.5.
    assert m["fpr95"] == pytest.approx(1 / 2)
    # Threshold 1.0: P=1, R=1/2; threshold 0.5: P=2/3, R=1 -> AP = 1/2 * 1 + 1/2 * 2/3.
    assert m["aupr_in"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Mirror image under -score with OOD positive: the same steps.
    assert m["aupr_out"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ood_metrics_separated_and_reversed() -> None:
    perfect = ood_metrics(np.array([3.0, 2.0]), np.array([1.0, 0.0]))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    # Negated scores rank OOD as ID: AUROC flips to 1 - AUROC.
    flipped = ood_metrics(-ID_SCORES, -OOD_SCORES)
    assert flipped["auroc"] == pytest.approx(1 - 14 / 16)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ood_metrics_random_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounded to one decimal so that many scores tie, inside and across the two sets.
    id_s = np.round(rng.normal(0.6, 0.3, size=300), 1)
    ood_s = np.round(rng.normal(0.3, 0.3, size=250), 1)
    assert np.unique(np.r_[id_s, ood_s]).size < 40  # ties really present
    m = ood_metrics(id_s, ood_s)
    labels = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, np.r_[id_s, ood_s]))
    assert m["auroc"] == pytest.approx(pairwise_auroc(id_s, ood_s))
    assert m["fpr95"] == pytest.approx(brute_force_fpr95(id_s, ood_s))
    assert 0.0 < m["fpr95"] < 1.0
    # Torch float32 input gives the same numbers (values exact in float32 are not needed:
    # ranking is all that matters and float32 rounding keeps this ranking).
    mt = ood_metrics(torch.from_numpy(id_s).float(), torch.from_numpy(ood_s).float())
    assert mt["auroc"] == pytest.approx(m["auroc"])
    assert mt["fpr95"] == pytest.approx(m["fpr95"])


@pytest.mark.parametrize("seed", [0, 1])
def test_ood_metrics_equal_scikit_learn_on_scores_of_any_range(seed: int) -> None:
    # Energies and max logits run to tens: a sigmoid in float32 would make them tie.
    rng = np.random.default_rng(seed)
    id_s = rng.normal(30.0, 3.0, size=400)
    ood_s = np.r_[rng.normal(27.0, 3.0, size=300), np.round(id_s[:50], 0)]
    labels = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    scores = np.r_[id_s, ood_s]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    expected = {
        "auroc": roc_auc_score(labels, scores),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in": average_precision_score(labels, scores),
        "aupr_out": average_precision_score(1 - labels, -scores),
    }
    m = ood_metrics(torch.from_numpy(id_s), ood_s)
    assert m == pytest.approx(expected, rel=1e-6)


def test_ood_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="ood_scores"):
        ood_metrics(ID_SCORES, np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="id_scores"):
        ood_metrics(np.array([]), OOD_SCORES)


# K=2 known + unknown. Sample 1: correct. Sample 2: argmax is the unknown column (an error),
# but the known columns pick the label. Sample 3: wrong either way.
PROBS = torch.tensor(
    [[0.62, 0.28, 0.10], [0.20, 0.28, 0.52], [0.10, 0.72, 0.18]], dtype=torch.float64
)
LABELS = torch.tensor([0, 1, 0])


def test_classification_metrics_hand_computed() -> None:
    c = classification_metrics(PROBS, LABELS, num_classes=2, has_unknown=True)
    assert set(c) == {"accuracy", "known_accuracy", "ece", "nll", "brier"}
    assert all(isinstance(v, float) for v in c.values())
    assert c["accuracy"] == pytest.approx(1 / 3)
    assert c["known_accuracy"] == pytest.approx(2 / 3)
    assert c["nll"] == pytest.approx(-(math.log(0.62) + math.log(0.28) + math.log(0.10)) / 3)
    brier_rows = [
        0.38**2 + 0.28**2 + 0.10**2,
        0.20**2 + 0.72**2 + 0.52**2,
        0.90**2 + 0.72**2 + 0.18**2,
    ]
    assert c["brier"] == pytest.approx(sum(brier_rows) / 3)
    # 15 bins of width 1/15: confidences 0.62, 0.52, 0.72 fall in bins 9, 7, 10 (one each),
    # correctness 1, 0, 0 -> ECE = mean(|1 - 0.62|, |0 - 0.52|, |0 - 0.72|).
    assert c["ece"] == pytest.approx((0.38 + 0.52 + 0.72) / 3, abs=1e-6)


def test_classification_metrics_ece_two_bins() -> None:
    # All three confidences land in [0.5, 1]: one bin with accuracy 1/3, mean confidence 0.62.
    c = classification_metrics(PROBS, LABELS, num_classes=2, has_unknown=True, ece_bins=2)
    assert c["ece"] == pytest.approx(abs(1 / 3 - (0.62 + 0.52 + 0.72) / 3), abs=1e-6)


def numpy_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


@pytest.mark.parametrize(("has_unknown", "n_bins"), [(True, 15), (False, 10), (True, 5)])
def test_classification_metrics_random_against_numpy(has_unknown: bool, n_bins: int) -> None:
    rng = np.random.default_rng(7)
    k = 4
    n_out = k + int(has_unknown)
    logits = rng.normal(0.0, 2.0, size=(1000, n_out))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, k, size=1000)
    c = classification_metrics(
        torch.from_numpy(probs), torch.from_numpy(labels), k, has_unknown, ece_bins=n_bins
    )
    assert c["ece"] == pytest.approx(numpy_ece(probs, labels, n_bins), abs=1e-5)
    assert c["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    assert c["known_accuracy"] == pytest.approx(np.mean(probs[:, :k].argmax(1) == labels))
    assert c["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(1000), labels])))
    onehot = np.eye(n_out)[labels]
    assert c["brier"] == pytest.approx(np.mean(((probs - onehot) ** 2).sum(axis=1)))
    if has_unknown:
        assert c["accuracy"] < c["known_accuracy"]  # some rows predict "unknown"


def test_classification_metrics_rounding_above_one_is_not_softmaxed() -> None:
    # A probability a hair above 1 (float rounding) must not make torchmetrics treat the rows
    # as logits: the model is perfectly confident and right, so ECE is 0, not ~0.4.
    probs = torch.tensor([[1.0 + 1e-9, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    c = classification_metrics(probs, torch.tensor([0, 1]), num_classes=2, has_unknown=True)
    assert c["ece"] == pytest.approx(0.0, abs=1e-6)
    assert c["accuracy"] == 1.0


def test_classification_metrics_nll_clamp_and_shape_checks() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = classification_metrics(probs, torch.tensor([1, 1]), num_classes=2, has_unknown=False)
    assert c["nll"] == pytest.approx(-math.log(1e-12) / 2)
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(probs, torch.tensor([1, 1]), num_classes=2, has_unknown=True)
    with pytest.raises(ValueError, match="labels"):
        # Label 2 would be the unknown column: never a valid target.
        classification_metrics(PROBS, torch.tensor([0, 2, 1]), num_classes=2, has_unknown=True)


def _fake(auroc: float, fpr95: float, aupr_in: float, aupr_out: float) -> dict[str, float]:
    return {"auroc": auroc, "fpr95": fpr95, "aupr_in": aupr_in, "aupr_out": aupr_out}


def test_summarize_ood_names_and_group_means() -> None:
    per_set = {
        "cifar100": _fake(0.80, 0.60, 0.82, 0.78),
        "tin": _fake(0.90, 0.40, 0.88, 0.86),
        "svhn": _fake(0.95, 0.20, 0.97, 0.93),
    }
    groups = {"cifar100": "near", "tin": "near", "svhn": "far", "mnist": "far"}
    out = summarize_ood(per_set, groups, prefix="test/")
    per_set_names = {
        f"test/{m}/{s}" for m in ("auroc", "fpr95", "aupr_in", "aupr_out") for s in per_set
    }
    group_names = {
        f"test/{m}_{g}" for m in ("auroc", "fpr95", "aupr_in", "aupr_out") for g in ("near", "far")
    }
    assert set(out) == per_set_names | group_names
    assert out["test/auroc/tin"] == 0.90
    assert out["test/auroc_near"] == pytest.approx((0.80 + 0.90) / 2)
    assert out["test/fpr95_near"] == pytest.approx((0.60 + 0.40) / 2)
    assert out["test/aupr_in_near"] == pytest.approx((0.82 + 0.88) / 2)
    assert out["test/aupr_out_near"] == pytest.approx((0.78 + 0.86) / 2)
    # "mnist" was not evaluated: the far mean is over svhn alone.
    assert out["test/auroc_far"] == pytest.approx(0.95)
    assert out["test/fpr95_far"] == pytest.approx(0.20)


def test_summarize_ood_empty_group_left_out() -> None:
    out = summarize_ood({"cifar10": _fake(0.7, 0.5, 0.6, 0.8)}, {"cifar10": "near"})
    assert out["auroc/cifar10"] == 0.7
    assert out["auroc_near"] == pytest.approx(0.7)
    assert not any(name.endswith("_far") for name in out)
    assert len(out) == 8
