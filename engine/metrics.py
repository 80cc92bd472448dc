"""OOD-detection and classification metrics, as plain Python floats (MOON.md section 5).

OOD metrics treat in-distribution (ID) as the positive class and expect scores where higher
means more in-distribution (see ``engine.scores``). AUROC, AUPR and FPR are fractions in
[0, 1], not percentages. The curves come from scikit-learn and the calibration error from
torchmetrics, so the numbers match what other work computes with the same libraries.

Example:
    >>> import numpy as np, torch
    >>> from engine.metrics import classification_metrics, ood_metrics, summarize_ood
    >>> m = ood_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.75, 0.5, 0.4, 0.3]))
    >>> round(m["auroc"], 4), m["fpr95"]
    (0.875, 0.25)
    >>> summarize_ood({"svhn": m}, {"svhn": "far"}, prefix="test/")["test/auroc_far"]
    0.875
    >>> probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])  # K=2 + unknown
    >>> c = classification_metrics(probs, torch.tensor([0, 1]), num_classes=2, has_unknown=True)
    >>> c["accuracy"], c["known_accuracy"]  # the second sample predicts "unknown"
    (0.5, 1.0)
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_average_precision,
    binary_roc,
    multiclass_calibration_error,
)

__all__ = ["OOD_METRICS", "classification_metrics", "ood_metrics", "summarize_ood"]

# Names returned by ood_metrics, in the order summarize_ood writes them.
OOD_METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")

_TPR_LEVEL = 0.95


def _as_1d_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    arr = torch.as_tensor(x).detach().cpu().double().reshape(-1)
    if arr.numel() == 0:
        raise ValueError(f"{what} is empty")
    # The curves are computed unchecked, so NaN/inf is refused here, naming the side.
    if not bool(torch.isfinite(arr).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    return arr


def ood_metrics(
    id_scores: np.ndarray | torch.Tensor, ood_scores: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """AUROC, FPR at 95% TPR, AUPR-In and AUPR-Out; ID is the positive class.

    - ``auroc``: the area under the ROC curve by the trapezoidal rule (ties count one half),
      as scikit-learn's ``roc_auc_score``.
    - ``fpr95``: fraction of OOD accepted as ID at the largest threshold that accepts at
      least 95% of ID, read off the ROC curve (one point per distinct score).
    - ``aupr_in``: average precision with ID positive, ranked by the score.
    - ``aupr_out``: average precision with OOD positive, ranked by minus the score.
    """
    id_arr = _as_1d_tensor(id_scores, "id_scores")
    ood_arr = _as_1d_tensor(ood_scores, "ood_scores")
    labels = torch.cat(
        [
            torch.ones(id_arr.numel(), dtype=torch.long),
            torch.zeros(ood_arr.numel(), dtype=torch.long),
        ]
    )
    # Every figure depends on the scores' order only. torchmetrics squashes scores outside
    # [0, 1] with a sigmoid (in float32, so large ones would tie), so it gets their dense
    # ranks scaled into [0, 1]: the same order, ties kept exactly.
    ranks = torch.unique(torch.cat([id_arr, ood_arr]), return_inverse=True)[1].double()
    scores = ranks / max(float(ranks.max()), 1.0)

    fpr, tpr, _ = binary_roc(scores, labels, validate_args=False)
    # tpr is non-decreasing and ends at 1, so the first index reaching the level exists and
    # is the highest threshold (lowest FPR) that does.
    idx = int(torch.argmax((tpr >= _TPR_LEVEL).to(torch.uint8)))
    return {
        "auroc": float(torch.trapezoid(tpr, fpr)),
        "fpr95": float(fpr[idx]),
        "aupr_in": float(binary_average_precision(scores, labels, validate_args=False)),
        "aupr_out": float(binary_average_precision(1 - scores, 1 - labels, validate_args=False)),
    }


def classification_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    has_unknown: bool,
    ece_bins: int = 15,
) -> dict[str, float]:
    """Accuracy, known-class accuracy, ECE, NLL and Brier score from probabilities.

    ``probs`` is (N, K(+1)): probabilities over ALL outputs (K+1 with MOON's unknown column).

    - ``accuracy``: argmax over all outputs equals the label ("unknown" counts as an error).
    - ``known_accuracy``: argmax over the K known columns equals the label.
    - ``ece``: L1 calibration error with ``ece_bins`` equal-width bins, confidence = max
      probability over all outputs, correctness as in ``accuracy`` (torchmetrics).
    - ``nll``: mean of -log p_label, with p clamped at 1e-12.
    - ``brier``: mean over samples of the squared error summed over all outputs.
    """
    expected = num_classes + int(has_unknown)
    if probs.ndim != 2 or probs.shape[1] != expected:
        raise ValueError(
            f"probs has shape {tuple(probs.shape)}; expected (N, {expected}) for "
            f"num_classes={num_classes}, has_unknown={has_unknown}"
        )
    if probs.shape[0] == 0 or labels.shape != (probs.shape[0],):
        raise ValueError(
            f"need one label per row: probs {tuple(probs.shape)}, labels {tuple(labels.shape)}"
        )
    probs = probs.detach()
    labels = labels.detach().to(device=probs.device, dtype=torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (the unknown is never a label)")

    p64 = probs.double()
    accuracy = (p64.argmax(dim=1) == labels).double().mean()
    known_accuracy = (p64[:, :num_classes].argmax(dim=1) == labels).double().mean()
    p_label = p64.gather(1, labels[:, None]).squeeze(1)
    nll = -torch.log(p_label.clamp_min(1e-12)).mean()
    onehot = torch.nn.functional.one_hot(labels, num_classes=expected).double()
    brier = ((p64 - onehot) ** 2).sum(dim=1).mean()
    # torchmetrics softmaxes its input whenever a value leaves [0, 1]; a rounding error such as
    # 1.0000001 would silently turn probabilities into softmax(probabilities), so clamp first.
    ece = multiclass_calibration_error(
        probs.clamp(0.0, 1.0), labels, num_classes=expected, n_bins=ece_bins, norm="l1"
    )
    return {
        "accuracy": float(accuracy),
        "known_accuracy": float(known_accuracy),
        "ece": float(ece),
        "nll": float(nll),
        "brier": float(brier),
    }


def summarize_ood(
    per_set: dict[str, dict[str, float]], groups: dict[str, str], prefix: str = ""
) -> dict[str, float]:
    """Flatten per-set OOD metrics and add group means, e.g. ``auroc/svhn`` and ``auroc_far``.

    ``per_set`` maps an OOD set's name to its :func:`ood_metrics` result; ``groups`` maps a set
    name to its group ("near" or "far"). Each group mean is over the sets of ``per_set`` in that
    group; a group with no evaluated set is left out, sets of ``groups`` missing from
    ``per_set`` are ignored, and a set with no group only gets its per-set entries.
    """
    out: dict[str, float] = {}
    for name, values in per_set.items():
        for metric in OOD_METRICS:
            out[f"{prefix}{metric}/{name}"] = float(values[metric])

    # Keep "near" before "far" in the output, then any other group name in order of appearance.
    group_names = [g for g in ("near", "far") if g in groups.values()]
    group_names += [g for g in dict.fromkeys(groups.values()) if g not in group_names]
    for group in group_names:
        members = [name for name in per_set if groups.get(name) == group]
        if not members:
            continue
        for metric in OOD_METRICS:
            mean = np.mean([per_set[name][metric] for name in members])
            out[f"{prefix}{metric}_{group}"] = float(mean)
    return out
