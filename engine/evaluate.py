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

from dataclasses import dataclass, replace

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
    models: list[Classifier],
    train_x: torch.Tensor,
    num_classes: int,
    percentiles: tuple[float, ...],
) -> dict[float, DiceLayers]:
    """Per percentile, per model, the DICE-masked known rows of the head and their biases
    (MOON.md 6); the training set's features are computed once for every percentile."""
    means = [feats.mean(0) for feats in _outputs(models, train_x)[1]]
    heads = [model.head.weight[:num_classes].detach().float() for model in models]
    biases = [model.head.bias[:num_classes].detach().float() for model in models]
    return {
        p: ([w * dice_mask(w, m, p) for w, m in zip(heads, means, strict=True)], biases)
        for p in percentiles
    }


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


@dataclass
class Evaluation:
    """Every figure of one evaluation, before a primary score and DICE percentile are chosen.

    `classification[part]` and `ood[part][(score, percentile)]` (percentile None for every
    score but DICE) per part (`test`, `val`); `metrics()` names them as `evaluate` does. One
    evaluation with several DICE percentiles gives every test-time score variant at once.
    """

    classification: dict[str, dict[str, float]]
    ood: dict[str, dict[tuple[str, float | None], dict[str, float]]]
    density: dict[str, float]
    scores: tuple[str, ...]

    def metrics(self, primary: str, dice_percentile: float) -> dict[str, float]:
        """The flat metric dict with `primary` unprefixed (see the module docstring)."""
        out: dict[str, float] = {}
        for part, prefix in (("test", ""), ("val", "val/")):
            if part not in self.classification:
                continue
            out.update({prefix + name: v for name, v in self.classification[part].items()})
            for score in self.scores:
                key = (score, dice_percentile if score == "dice" else None)
                score_prefix = prefix if score == primary else f"{prefix}{score}/"
                out.update({score_prefix + k: v for k, v in self.ood[part][key].items()})
        out.update(self.density)
        return out


def evaluation(
    models: list[Classifier],
    suite: Suite,
    cfg: TrainConfig,
    masks: SparseMasks | None,
    parts: tuple[str, ...] = ("test", "val"),
    dice_percentiles: tuple[float, ...] | None = None,
) -> Evaluation:
    """All figures of one trained run, DICE at each of `dice_percentiles` (default: the
    config's): the network's outputs are computed once for every score and percentile."""
    k = suite.num_classes
    has_unknown = cfg.moon.enabled
    scores = tuple(cfg.eval.scores)
    percentiles = dice_percentiles or (cfg.eval.dice_percentile,)
    dice = {}
    if "dice" in scores:
        dice = dice_layers(models, suite.train.x, k, percentiles)
    groups = {s.name: s.group for s in suite.ood}
    classification: dict[str, dict[str, float]] = {}
    ood: dict[str, dict[tuple[str, float | None], dict[str, float]]] = {}
    for part in ("test", "val"):
        if part not in parts:
            continue
        split = getattr(suite, part)
        id_inputs = score_inputs(models, split.x, k, has_unknown)
        classification[part] = classification_metrics(
            mean_probs(id_inputs), split.y, k, has_unknown, cfg.eval.ece_bins
        )
        ood_inputs = {
            s.name: score_inputs(models, getattr(s, part), k, has_unknown) for s in suite.ood
        }
        ood[part] = {}
        for score in scores:
            variants = [(p, dice[p]) for p in percentiles] if score == "dice" else [(None, None)]
            for percentile, layers in variants:
                id_scores = compute_score(score, _with_dice(id_inputs, layers)).cpu()
                per_set = {
                    name: ood_metrics(id_scores, compute_score(score, _with_dice(o, layers)).cpu())
                    for name, o in ood_inputs.items()
                }
                ood[part][(score, percentile)] = summarize_ood(per_set, groups)
    return Evaluation(classification, ood, density_report(models[0], masks), scores)


def _with_dice(inputs: ScoreInputs, dice: DiceLayers | None) -> ScoreInputs:
    if dice is None:
        return inputs
    return replace(inputs, dice_weights=dice[0], dice_biases=dice[1])


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
    result = evaluation(models, suite, cfg, masks, parts)
    return result.metrics(cfg.eval.primary, cfg.eval.dice_percentile)
