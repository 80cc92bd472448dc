"""Seed racing: a searched trial trains its first seeds, and the rest only if it can still
reach the front at its density level.

The rule is a paired test against references trained on the same seeds at the same level
(the level's baseline arms and the searched trials that ran every seed there, feasible):
a trial is raced out by a reference R when, on every objective but density, its mean
paired difference to R on the race seeds is below zero by more than the one-sided
t bound at level `alpha / n` (n references):

    mean(d) + t(1 - alpha/n, df) * sd / sqrt(k) < 0      (d: trial - R, better = positive)

`sd` is the seed-to-seed spread of a paired difference between a searched trial and a
reference, measured on disjoint pairs so that df counts independent differences only
(`trial_spread`): the level's searched trials that ran every seed ("full-seed"), earliest
Optuna trial first, are paired one to one with the level's arms sorted by label (the i-th
with the i-th, as many pairs as the shorter list has, each config in one pair at most), and

    sd^2 = sum over pairs of (n - 1) s^2 / df,   df = sum over pairs of (n - 1)

(s^2: the variance, ddof 1, of the pair's differences on its n common seeds). The searcher
works it out when it suggests the trial and it travels in the trial's config (`spread`:
metric -> (sd, df), one entry per objective however many trials the sweep ran), so a
resumed trial decides exactly as it did; with 3 arms and 5 seeds it is fixed from the third
full-seed trial on (df 12). Pairs are not pooled over every pair of references: those share
members (with 7 references on 5 seeds such pooling counts df 84 where at most 24 are
independent), and two references (e.g. `sparse` and `sparse+voting`) differ less from seed
to seed than a searched trial and a reference do.

Before a full-seed searched trial exists at the level (or for a config without `spread`,
from a sweep started before this rule), `sd` is the references' own spread, widened
(`reference_spread`): the references sorted by label are paired first with second, third
with fourth, and so on (disjoint, df as above), and the pooled sd is multiplied by
`REFERENCE_WIDENING` = 1 / 0.7, because the spread between references was measured at 0.7
to 0.8 times that between a searched trial and an arm. With no such pair either (one
reference), the trial's own differences give it (df = k - 1). Stated error rate: a trial
that in truth (mean over seeds) is not dominated by any reference, i.e. is at least as good
as each on some objective, is raced out with probability at most `alpha`
(intersection-union test per reference, Bonferroni over references; normal seed noise, with
a searched trial's difference to a reference at most as spread as to an arm).
tests/test_racing.py checks it by simulation, where the old pooling over every pair of
references exceeds it.

A trial that cannot meet the space's constraints can never be on the front either, so with
`constraints: true` the race also tests each constraint's limit (`Limit`: its threshold,
fixed when the trial is suggested, and the seed-to-seed spread of its metric at the level):
the trial is raced out by a limit it misses by more than the one-sided t bound,

    mean(v) + t(1 - alpha/n, df) * sd / sqrt(k) < 0      (v: value - threshold, met = positive)

where `sd` is one config's seed-to-seed spread of the metric, pooled over the configs that
ran every seed at the level (`pooled_sd`, df = the sum of their n - 1). Bonferroni runs over
references and limits together (n of them), so the stated error rate holds for both: a
trial that in truth meets every limit and is not dominated by any reference is raced out
with probability at most `alpha`. The limits matter most at a level where even the arms
miss the constraint (the sparsest ones in a sweep cut short): there no reference is
feasible and nothing else stops a trial.

Of the searched trials at a level only those on its front (not dominated, on their means
over seeds, by another feasible one: `join_front`) are references: a trial dominated by a
dominated reference is dominated by the one above it too, and the references a trial
carries stay a handful however many trials the sweep has run (a config would otherwise grow
with every finished trial).

Example:
    >>> refs = {"moon_auto": {0: {"val/auroc_near": 0.95}, 1: {"val/auroc_near": 0.96}},
    ...         "sparse": {0: {"val/auroc_near": 0.94}, 1: {"val/auroc_near": 0.94}}}
    >>> trial = {0: {"val/auroc_near": 0.80}, 1: {"val/auroc_near": 0.79}}
    >>> raced_by(trial, refs, [("val/auroc_near", "max")], alpha=0.05)
    'moon_auto'
    >>> limit = Limit(label="val/auroc_near>=0.9", metric="val/auroc_near", op=">=",
    ...               threshold=0.9, sd=0.01, df=8)
    >>> raced_by(trial, {}, [("val/auroc_near", "max")], alpha=0.05, limits=[limit])
    'val/auroc_near>=0.9'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from sweep.stats import number

# seed -> metric -> value, for one trial or reference
PerSeed = Mapping[int, Mapping[str, float]]
# metric -> (sd, df) of a paired difference between a searched trial and an arm, as a
# trial's config carries it (`trial_spread`)
Spread = Mapping[str, Sequence[float]]
# The references' own spread is widened by this before a full-seed searched trial exists:
# between references it was measured at 0.7 to 0.8 times that between a trial and an arm.
REFERENCE_WIDENING = 1 / 0.7


class Limit(BaseModel):
    """One constraint as a race tests it: `metric op threshold` (the threshold fixed when
    the trial is suggested) and the metric's seed-to-seed spread at the level (`sd`, `df`;
    None and 0 when no config there ran two seeds: the trial's own spread is used)."""

    model_config = ConfigDict(extra="forbid")
    label: str
    metric: str
    op: Literal[">=", "<=", ">", "<"]
    threshold: float
    sd: float | None = None
    df: int = 0


class Race(BaseModel):
    """A space's racing rule: train `seeds` seeds first, stop at error rate `alpha`; with
    `constraints`, also test the space's constraints as limits (off by default: a sweep cut
    below the length its constraints were set for, like a five-epoch first look, would race
    out every searched trial and leave `select` nothing to choose)."""

    model_config = ConfigDict(extra="forbid")
    seeds: int = Field(2, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    constraints: bool = False


def _differences(a: PerSeed, b: PerSeed, metric: str, seeds: Sequence[int]) -> list[float]:
    out = []
    for s in seeds:
        x, y = a.get(s, {}).get(metric), b.get(s, {}).get(metric)
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return []
        out.append(float(x) - float(y))
    return out


def _pooled(samples: Iterable[list[float]]) -> tuple[float, int]:
    """(sd, df) pooled over samples of two values or more: sum of (n - 1) s^2 over sum of n - 1."""
    squares, df = 0.0, 0
    for values in samples:
        if len(values) >= 2:
            squares += float(np.var(values, ddof=1)) * (len(values) - 1)
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else (math.nan, 0)


def spread_pairs(searched: Sequence[str], arms: Iterable[str]) -> list[tuple[str, str]]:
    """The disjoint pairs `trial_spread` measures on: the i-th of `searched` (in the order
    given: the searcher gives the earliest Optuna trial first) with the i-th arm by label.

    >>> arms = ["sparse@0.1", "moon_auto@0.1", "sparse+voting@0.1"]
    >>> spread_pairs(["search #3", "search #5"], arms)
    [('search #3', 'moon_auto@0.1'), ('search #5', 'sparse+voting@0.1')]
    """
    return list(zip(searched, sorted(arms), strict=False))


def _pair_spread(pairs: Iterable[tuple[PerSeed, PerSeed]], metric: str) -> tuple[float, int]:
    return _pooled(_differences(a, b, metric, sorted(set(a) & set(b))) for a, b in pairs)


def trial_spread(
    searched: Mapping[str, PerSeed], arms: Mapping[str, PerSeed], metric: str
) -> tuple[float, int]:
    """(sd, df) of a paired difference between a searched trial and an arm, pooled over the
    disjoint pairs of `spread_pairs` (`searched` in the mapping's order), df = the sum of
    each pair's common seeds - 1; (NaN, 0) without a pair.

    >>> arms = {"b": {0: {"m": 0.5}, 1: {"m": 0.7}}, "a": {0: {"m": 0.5}, 1: {"m": 0.5}}}
    >>> sd, df = trial_spread({"search #1": {0: {"m": 0.6}, 1: {"m": 0.8}}}, arms, "m")
    >>> round(sd, 6), df  # the pair (search #1, a): differences 0.1 and 0.3
    (0.141421, 1)
    """
    pairs = spread_pairs(list(searched), arms)
    return _pair_spread(((searched[s], arms[a]) for s, a in pairs), metric)


def reference_spread(references: Mapping[str, PerSeed], metric: str) -> tuple[float, int]:
    """(sd, df) before a full-seed searched trial exists: the references sorted by label,
    paired first with second, third with fourth, ..., pooled as in `trial_spread`, the sd
    widened by `REFERENCE_WIDENING`; (NaN, 0) with fewer than two references."""
    labels = sorted(references)
    pairs = zip(labels[0::2], labels[1::2], strict=False)
    sd, df = _pair_spread(((references[a], references[b]) for a, b in pairs), metric)
    return sd * REFERENCE_WIDENING, df


def pooled_sd(configs: Mapping[str, PerSeed], metric: str) -> tuple[float, int]:
    """(sd, df) of one config's value of `metric` from seed to seed, pooled over `configs`
    (each with two seeds or more, every value finite).

    >>> pooled_sd({"a": {0: {"m": 1.0}, 1: {"m": 3.0}}, "b": {0: {"m": 5.0}, 1: {"m": 5.0}}}, "m")
    (1.0, 2)
    """
    samples = ([number(v.get(metric)) for v in c.values()] for c in configs.values())
    return _pooled(values for values in samples if None not in values)


def _below_zero(d: list[float], sd: float, df: int, level: float) -> bool | None:
    """Whether the one-sided t bound on mean(d), mean + t(1 - level, df) sd / sqrt(k), is
    below zero; with no pooled spread (df 0) the sample's own (df k - 1), and None with one
    value and no pooled spread: nothing to decide on."""
    if df == 0 or not math.isfinite(sd):
        if len(d) < 2:
            return None
        sd, df = float(np.std(d, ddof=1)), len(d) - 1
    return float(np.mean(d)) + stats.t.ppf(1 - level, df) * sd / math.sqrt(len(d)) < 0


def _limit_test(trial: PerSeed, limit: Limit) -> tuple[list[float], float, int] | None:
    """(margins to the limit on `trial`'s seeds, met = positive; the pooled sd and df, or NaN
    and 0 without them), or None when it cannot be judged: a race seed without a finite
    value, or one seed and no pooled spread."""
    values = [number(v.get(limit.metric)) for v in trial.values()]
    if not values or None in values:
        return None
    sign = 1.0 if limit.op in (">=", ">") else -1.0
    margins = [sign * (x - limit.threshold) for x in values]
    if limit.df and limit.sd is not None and math.isfinite(limit.sd):
        return margins, limit.sd, limit.df
    return (margins, math.nan, 0) if len(margins) >= 2 else None


def raced_by(
    trial: PerSeed,
    references: Mapping[str, PerSeed],
    objectives: Sequence[tuple[str, str]],
    alpha: float,
    limits: Sequence[Limit] = (),
    spread: Spread | None = None,
) -> str | None:
    """The limit `trial` misses, or the reference that dominates it, on its seeds by the
    rules above (a limit's label or a reference's), or None.

    `objectives` are (metric, "max" | "min"), density left out (equal at a level).
    `spread` is the trial's `trial_spread` per metric; a metric it lacks (or None: a config
    from before it) takes the widened `reference_spread` of the usable references.
    """
    seeds = sorted(trial)
    usable = {
        label: ref
        for label, ref in references.items()
        if objectives and all(_differences(trial, ref, m, seeds) for m, _ in objectives)
    }
    tests = [(lim, test) for lim in limits if (test := _limit_test(trial, lim)) is not None]
    if not usable and not tests:
        return None
    level = alpha / (len(usable) + len(tests))
    for lim, (margins, sd, df) in tests:
        if _below_zero(margins, sd, df, level):
            return lim.label
    spreads = {m: _spread(spread, usable, m) for m, _ in objectives}
    for label, ref in usable.items():
        dominated = True
        for metric, mode in objectives:
            sign = 1.0 if mode == "max" else -1.0
            d = [sign * v for v in _differences(trial, ref, metric, seeds)]
            below = _below_zero(d, *spreads[metric], level)
            if below is None:
                return None  # one seed and no pooled spread: nothing to decide on
            if not below:
                dominated = False
                break
        if dominated:
            return label
    return None


def _spread(
    spread: Spread | None, references: Mapping[str, PerSeed], metric: str
) -> tuple[float, int]:
    given = (spread or {}).get(metric)
    if given is not None:
        sd, df = float(given[0]), int(given[1])
        if df > 0 and math.isfinite(sd):
            return sd, df
    return reference_spread(references, metric)


def mean_figures(
    per_seed: PerSeed, objectives: Sequence[tuple[str, str]]
) -> dict[str, float] | None:
    """The mean over seeds of each objective; None when one is missing or not finite."""
    out = {}
    for metric, _ in objectives:
        values = [v.get(metric) for v in per_seed.values()]
        if not values or any(x is None or not math.isfinite(x) for x in values):
            return None
        out[metric] = float(np.mean(values))
    return out


def dominates(
    a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[tuple[str, str]]
) -> bool:
    """`a` at least as good as `b` on every objective and better on one.

    >>> modes = [("acc", "max"), ("ece", "min")]
    >>> dominates({"acc": 0.9, "ece": 0.1}, {"acc": 0.8, "ece": 0.1}, modes)
    True
    """
    signs = [(m, 1.0 if mode == "max" else -1.0) for m, mode in objectives]
    if any(sign * (a[m] - b[m]) < 0 for m, sign in signs):
        return False
    return any(sign * (a[m] - b[m]) > 0 for m, sign in signs)


def join_front(
    front: dict[str, dict[str, float]],
    label: str,
    figures: dict[str, float],
    objectives: Sequence[tuple[str, str]],
) -> bool:
    """Put `label` (its mean `figures`) on `front` unless a member dominates it, and drop the
    members it dominates; True when it joined.

    >>> front = {"a": {"acc": 0.8}}
    >>> join_front(front, "b", {"acc": 0.9}, [("acc", "max")]), sorted(front)
    (True, ['b'])
    """
    if any(dominates(other, figures, objectives) for other in front.values()):
        return False
    for other in [k for k, v in front.items() if dominates(figures, v, objectives)]:
        del front[other]
    front[label] = figures
    return True
