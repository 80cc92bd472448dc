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
    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
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


@dataclass
class Paired(Interval):
    """A paired (same seed) difference: its mean and 95% t-interval, the two-sided p-values
    of a paired t-test and (with 5 seeds or more) of Wilcoxon's signed-rank test, and the
    t-test's p-value after Holm's correction over the comparisons of its table (`holm`).

    A difference that is the same on every seed has no spread: no interval (NaN bounds), no
    p-value and never a star, whatever its size (a dense arm against itself, a score
    compared with itself).
    """

    p_t: float | None = None
    p_wilcoxon: float | None = None
    p_holm: float | None = None
    family: int = 0  # how many comparisons Holm's correction ran over

    @property
    def spread(self) -> bool:
        return self.n >= 2 and self.p_t is not None

    @property
    def shown(self) -> bool:
        """Shown to differ from 0: Holm's adjusted p below 1 - CONFIDENCE."""
        return self.p_holm is not None and self.p_holm < 1 - CONFIDENCE

    def as_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            **super().as_dict(),
            "p_t": self.p_t,
            "p_wilcoxon": self.p_wilcoxon,
            "p_holm": self.p_holm,
            "holm_family": self.family,
            "shown": self.shown,
        }


def paired_test(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Paired:
    """`diffs` (one per seed) as a `Paired` difference; `p_holm` is set by `holm` later.

    >>> d = paired_test([0.1, 0.2, 0.3])
    >>> round(d.mean, 3), round(d.p_t, 4), d.p_wilcoxon
    (0.2, 0.0742, None)
    >>> paired_test([0.1, 0.1, 0.1]).spread, math.isnan(paired_test([0.1, 0.1]).low)
    (False, True)
    """
    data = np.asarray(diffs, dtype=float)
    mean, n = float(data.mean()), int(data.size)
    if n < 2 or float(np.ptp(data)) == 0.0:
        return Paired(mean, math.nan, math.nan, n)
    interval = t_interval(data, confidence)
    p_t = float(stats.ttest_1samp(data, 0.0).pvalue)
    p_w = float(stats.wilcoxon(data).pvalue) if n >= 5 and np.any(data != 0) else None
    return Paired(interval.mean, interval.low, interval.high, n, p_t, p_w)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the k-th smallest of m is
    multiplied by m - k + 1, made non-decreasing, capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def correct(family: Sequence[Paired]) -> None:
    """Set `p_holm` (and `family`) of every comparison of one table that has a p-value."""
    tested = [d for d in family if d.p_t is not None]
    for d, adjusted in zip(tested, holm([d.p_t for d in tested]), strict=True):  # type: ignore[misc]
        d.p_holm, d.family = adjusted, len(tested)
