"""Out-of-distribution scores, registered by name; every score is "higher = more in-distribution".

The model has K known classes and, when MOON is on, one extra "unknown" output at index K
(the last column), so logits are (N, K+1) with ``has_unknown=True`` and (N, K) without.

Scores (MOON.md sections 5 and 6):

- ``msp``: softmax over *all* outputs, max over the K known columns (the reference score; a
  large unknown logit lowers it).
- ``unknown``: 1 - p_unknown (needs the unknown column).
- ``energy``: logsumexp over the K known logits.
- ``max_logit``: max over the K known logits.
- ``dice``: energy of the DICE-masked final layer applied to the penultimate features.

Several models (voting mode ``predictions``, one logits tensor per snapshot): probability-based
scores (``msp``, ``unknown``) are computed from the probabilities averaged over models
(:func:`mean_probs`), which is the vote itself; logit-based scores (``energy``, ``max_logit``,
``dice``) are computed per model and then averaged, because logits of different snapshots live
on different scales and averaging them before the non-linearity has no vote meaning.

Example:
    >>> import torch
    >>> from engine.scores import ScoreInputs, compute_score, scores
    >>> logits = torch.tensor([[2.0, 0.0, 5.0], [2.0, 0.0, -5.0]])  # K=2 + unknown
    >>> inputs = ScoreInputs(logits=[logits], features=[], has_unknown=True, num_classes=2)
    >>> compute_score("msp", inputs)  # the first row is lowered by its large unknown logit
    tensor([0.0471, 0.8801])
    >>> "energy" in scores
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.registry import Registry

__all__ = [
    "ScoreInputs",
    "compute_score",
    "dice_mask",
    "mean_probs",
    "scores",
]

scores: Registry[torch.Tensor] = Registry("ood score")


@dataclass
class ScoreInputs:
    """What a score may need, for one evaluation set.

    Attributes:
        logits: one (N, K(+1)) tensor per model; several when predictions are averaged over
            snapshots (voting mode ``predictions``), usually one.
        features: penultimate features (N, D), one per model (used by ``dice`` only).
        has_unknown: whether the last logit column is MOON's "unknown" output.
        num_classes: K, the number of known classes.
        dice_weights: per model, the final layer's weight restricted to the K known rows,
            already DICE-masked (see :func:`dice_mask`), shape (K, D).
        dice_biases: per model, the bias of the K known rows, shape (K,); ``None`` for no bias.
    """

    logits: list[torch.Tensor]
    features: list[torch.Tensor]
    has_unknown: bool
    num_classes: int
    dice_weights: list[torch.Tensor] | None = None
    dice_biases: list[torch.Tensor] | None = None


def _checked_logits(inputs: ScoreInputs) -> list[torch.Tensor]:
    # Fail loudly on a head/flag mismatch: slicing [:K] of a K-column tensor would otherwise
    # silently treat a real class as "unknown" (the flaw MOON.md section 4 warns about).
    if not inputs.logits:
        raise ValueError("ScoreInputs.logits is empty: at least one model's logits are needed")
    expected = inputs.num_classes + int(inputs.has_unknown)
    out = []
    for i, z in enumerate(inputs.logits):
        if z.ndim != 2 or z.shape[1] != expected:
            raise ValueError(
                f"logits[{i}] has shape {tuple(z.shape)}; expected (N, {expected}) for "
                f"num_classes={inputs.num_classes}, has_unknown={inputs.has_unknown}"
            )
        if z.shape[0] != inputs.logits[0].shape[0]:
            raise ValueError("all models' logits must have the same number of samples")
        # Half-precision logits lose too much in softmax/logsumexp; float64 is kept as is.
        out.append(z if z.dtype == torch.float64 else z.float())
    return out


def mean_probs(inputs: ScoreInputs) -> torch.Tensor:
    """Mean over models of the softmax over ALL outputs (K+1 columns when ``has_unknown``)."""
    logits = _checked_logits(inputs)
    return torch.stack([torch.softmax(z, dim=1) for z in logits]).mean(dim=0)


def compute_score(name: str, inputs: ScoreInputs) -> torch.Tensor:
    """Score every sample with the registered score ``name``; returns an (N,) float tensor."""
    return scores.get(name)(inputs)


def _mean_over_models(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean(dim=0)


@scores.register("msp")
def msp_score(inputs: ScoreInputs) -> torch.Tensor:
    """Max softmax probability over the K known columns, softmax taken over all outputs."""
    return mean_probs(inputs)[:, : inputs.num_classes].max(dim=1).values


@scores.register("unknown")
def unknown_score(inputs: ScoreInputs) -> torch.Tensor:
    """1 - p_unknown, from the model-averaged probabilities."""
    if not inputs.has_unknown:
        raise ValueError("score 'unknown' needs a model with the MOON unknown output")
    return 1.0 - mean_probs(inputs)[:, inputs.num_classes]


@scores.register("energy")
def energy_score(inputs: ScoreInputs) -> torch.Tensor:
    """logsumexp over the K known logits (negative free energy), averaged over models."""
    k = inputs.num_classes
    return _mean_over_models([torch.logsumexp(z[:, :k], dim=1) for z in _checked_logits(inputs)])


@scores.register("max_logit")
def max_logit_score(inputs: ScoreInputs) -> torch.Tensor:
    """Max over the K known logits, averaged over models."""
    k = inputs.num_classes
    return _mean_over_models([z[:, :k].max(dim=1).values for z in _checked_logits(inputs)])


@scores.register("dice")
def dice_score(inputs: ScoreInputs) -> torch.Tensor:
    """Energy of the DICE-masked known rows applied to the features, averaged over models."""
    if inputs.dice_weights is None:
        raise ValueError("score 'dice' needs dice_weights (masked final-layer weights)")
    n_models = len(inputs.dice_weights)
    if n_models == 0 or len(inputs.features) != n_models:
        raise ValueError(
            f"dice needs one feature tensor per model: got {len(inputs.features)} feature "
            f"tensors for {n_models} weights"
        )
    biases = inputs.dice_biases
    if biases is not None and len(biases) != n_models:
        raise ValueError(f"got {len(biases)} dice biases for {n_models} weights")
    per_model = []
    for i, (feats, weight) in enumerate(zip(inputs.features, inputs.dice_weights, strict=True)):
        if weight.ndim != 2 or weight.shape[0] != inputs.num_classes:
            raise ValueError(
                f"dice_weights[{i}] has shape {tuple(weight.shape)}; expected the "
                f"{inputs.num_classes} known rows only, (K, D)"
            )
        dtype = torch.float64 if feats.dtype == torch.float64 else torch.float32
        out = feats.to(dtype) @ weight.to(dtype).T
        if biases is not None:
            out = out + biases[i].to(dtype)
        per_model.append(torch.logsumexp(out, dim=1))
    return _mean_over_models(per_model)


def dice_mask(weight: torch.Tensor, mean_feature: torch.Tensor, percentile: float) -> torch.Tensor:
    """DICE mask (C, D): keep entries whose contribution is strictly above a percentile.

    The contribution is V = weight * mean_feature (broadcast over rows), with ``mean_feature``
    the mean penultimate feature over the in-distribution training set. Entries with V above
    the ``percentile``-th percentile of all of V (linear interpolation, as ``np.percentile`` in
    the DICE reference code) are kept, so about (100 - percentile)% of the entries survive.
    Apply it as ``weight * mask`` before building :class:`ScoreInputs`.
    """
    if weight.ndim != 2 or mean_feature.ndim != 1 or mean_feature.shape[0] != weight.shape[1]:
        raise ValueError(
            f"expected weight (C, D) and mean_feature (D,); got {tuple(weight.shape)} and "
            f"{tuple(mean_feature.shape)}"
        )
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    # numpy rather than torch.quantile: torch.quantile refuses inputs above 2**24 entries.
    contrib = (weight.detach().double() * mean_feature.detach().double()[None, :]).cpu().numpy()
    threshold = np.percentile(contrib, percentile)
    return torch.from_numpy(contrib > threshold).to(weight.device)
