"""Figures over seeds: means and spreads, 95% t-intervals, paired (same seed) differences.

Every claim about MOON compares arms trained on the same seeds, so differences are taken
seed by seed (`paired_deltas`) before an interval is put around their mean.

Example:
    >>> from sweep.stats import aggregate, number, paired_deltas, t_interval
    >>> aggregate([{"accuracy": 0.5, "loss": 1.0}, {"accuracy": 1.0, "loss": 3.0}])
    {'accuracy': 0.75, 'loss': 2.0, 'std/accuracy': 0.3535533905932738}
    >>> t_interval([1.0, 2.0, 3.0]).n, round(t_interval([1.0, 2.0, 3.0]).high, 4)
    (3, 4.4841)
    >>> paired_deltas({0: {"a": 0.75}, 1: {"a": 0.5}}, {0: {"a": 0.5}, 2: {"a": 0.25}}, "a")
    ([0], [0.25])
    >>> number(float("nan")), number(True), number(3)
    (None, None, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
# Metrics whose spread over seeds is kept too (`std/<name>`): the headline figures.
HEADLINE = (
    "accuracy",
    "known_accuracy",
    "ece",
    "nll",
    "brier",
    "auroc_near",
    "auroc_far",
    "fpr95_near",
    "fpr95_far",
)
PerSeed = Mapping[int, Mapping[str, float]]


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds of every metric, plus `std/<name>` for the headline ones."""
    names = per_seed[0].keys()
    out = {name: float(np.mean([m[name] for m in per_seed])) for name in names}
    if len(per_seed) > 1:
        for name in names:
            base = name.removeprefix("val/")
            if base in HEADLINE:
                out[f"std/{name}"] = float(np.std([m[name] for m in per_seed], ddof=1))
    return out


@dataclass
class Interval:
    """Mean over seeds and its two-sided t-interval (NaN bounds with a single seed)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean (scipy.stats.t.interval with the standard error)."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, math.nan, math.nan, int(data.size))
    sem = float(stats.sem(data))
    if sem == 0.0:
        return Interval(mean, mean, mean, int(data.size))
    low, high = stats.t.interval(confidence, data.size - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), int(data.size))


def paired_deltas(mine: PerSeed, theirs: PerSeed, metric: str) -> tuple[list[int], list[float]]:
    """(shared seeds, `mine - theirs` on each) over the seeds where both have a finite
    `metric`, in seed order."""
    seeds = [
        s
        for s in sorted(set(mine) & set(theirs))
        if number(mine[s].get(metric)) is not None and number(theirs[s].get(metric)) is not None
    ]
    return seeds, [mine[s][metric] - theirs[s][metric] for s in seeds]


def arm_table(
    per_arm: Mapping[str, PerSeed], metrics: Sequence[str], reference: str = "chosen"
) -> tuple[dict[str, dict[str, Interval]], dict[str, dict[str, Interval]]]:
    """Mean and t-interval per arm and metric, and the paired (same seed) deltas of the
    `reference` arm minus each other arm.

    >>> table, deltas = arm_table(
    ...     {"chosen": {0: {"a": 1.0}, 1: {"a": 3.0}}, "dense": {0: {"a": 0.5}, 1: {"a": 2.5}}},
    ...     ["a"])
    >>> table["chosen"]["a"].mean, deltas["dense"]["a"].as_dict()
    (2.0, {'mean': 0.5, 'low': 0.5, 'high': 0.5, 'n': 2})
    """
    table = {
        arm: {m: t_interval([seeds[s][m] for s in sorted(seeds)]) for m in metrics}
        for arm, seeds in per_arm.items()
    }
    deltas: dict[str, dict[str, Interval]] = {}
    chosen = per_arm.get(reference)
    for arm, seeds in per_arm.items():
        if chosen is None or arm == reference:
            continue
        shared = sorted(set(chosen) & set(seeds))
        if shared:
            deltas[arm] = {
                m: t_interval([chosen[s][m] - seeds[s][m] for s in shared]) for m in metrics
            }
    return table, deltas
