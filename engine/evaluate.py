"""Evaluate trained model(s) on a suite: classification, calibration, OOD detection, density.

Metric names: `accuracy`, `known_accuracy`, `ece`, `nll`, `brier`, `density`,
`density/<layer>`, per OOD set `auroc/<set>`, `fpr95/<set>`, `aupr_in/<set>`,
`aupr_out/<set>`, and group means `auroc_near`, `auroc_far`, ... . Unprefixed names are on
the test parts with the primary score; `val/...` the same on the validation parts (for
selection); other scores are prefixed with their name (`energy/auroc_near`,
`val/energy/auroc_near`).

Example:
    >>> from engine.evaluate import evaluate  # doctest: +SKIP
    >>> metrics = evaluate([model], suite, cfg, masks)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from engine.config import TrainConfig
from engine.data import Suite
from engine.metrics import classification_metrics, ood_metrics, summarize_ood
from engine.models import Classifier
from engine.scores import ScoreInputs, compute_score, dice_mask, mean_probs
from engine.sparsity import SparseMasks, density_report


@torch.no_grad()
def _outputs(models: list[Classifier], x: torch.Tensor, batch: int = 4096) -> tuple[list, list]:
    logits, feats = [], []
    for model in models:
        model.eval()
        parts = [model.forward_with_features(xb) for xb in x.split(batch)]
        logits.append(torch.cat([p[0] for p in parts]).float())
        feats.append(torch.cat([p[1] for p in parts]).float())
    return logits, feats


DiceLayers = tuple[list[torch.Tensor], list[torch.Tensor]]


def dice_layers(
    models: list[Classifier], train_x: torch.Tensor, num_classes: int, percentile: float
) -> DiceLayers:
    """Per model, the DICE-masked known rows of the head and their biases (MOON.md 6)."""
    weights, biases = [], []
    for model, train_feats in zip(models, _outputs(models, train_x)[1], strict=True):
        weight = model.head.weight[:num_classes].detach().float()
        keep = dice_mask(weight, train_feats.mean(0), percentile)
        weights.append(weight * keep)
        biases.append(model.head.bias[:num_classes].detach().float())
    return weights, biases


def score_inputs(
    models: list[Classifier],
    x: torch.Tensor,
    num_classes: int,
    has_unknown: bool,
    dice: DiceLayers | None = None,
) -> ScoreInputs:
    """What every OOD score needs for the inputs `x` (already normalised)."""
    logits, feats = _outputs(models, x)
    dice_w, dice_b = dice if dice is not None else (None, None)
    return ScoreInputs(logits, feats, has_unknown, num_classes, dice_w, dice_b)


def evaluate(
    models: list[Classifier],
    suite: Suite,
    cfg: TrainConfig,
    masks: SparseMasks | None,
    parts: tuple[str, ...] = ("test", "val"),
) -> dict[str, float]:
    """All metrics of one trained run (several models = prediction averaging).

    `parts=("val",)` gives only the validation figures (and density): what a sweep may see
    before the run has finished, without touching the test parts.
    """
    k = suite.num_classes
    has_unknown = cfg.moon.enabled
    dice = None
    if "dice" in cfg.eval.scores:
        dice = dice_layers(models, suite.train.x, k, cfg.eval.dice_percentile)

    def inputs(x: torch.Tensor) -> ScoreInputs:
        return score_inputs(models, x, k, has_unknown, dice)

    metrics: dict[str, float] = {}
    groups = {s.name: s.group for s in suite.ood}
    for part, prefix in (("test", ""), ("val", "val/")):
        if part not in parts:
            continue
        split = getattr(suite, part)
        id_inputs = inputs(split.x)
        cls = classification_metrics(
            mean_probs(id_inputs), split.y, k, has_unknown, cfg.eval.ece_bins
        )
        metrics.update({prefix + name: value for name, value in cls.items()})
        ood_inputs = {s.name: inputs(getattr(s, part)) for s in suite.ood}
        for score in cfg.eval.scores:
            id_scores = compute_score(score, id_inputs).cpu()
            per_set = {
                name: ood_metrics(id_scores, compute_score(score, ood).cpu())
                for name, ood in ood_inputs.items()
            }
            score_prefix = prefix if score == cfg.eval.primary else f"{prefix}{score}/"
            metrics.update(summarize_ood(per_set, groups, prefix=score_prefix))
    metrics.update(density_report(models[0], masks))
    return metrics
