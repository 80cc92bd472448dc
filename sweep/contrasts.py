"""Paired contrasts between two trainings at one shared test-time setting.

A trial with a test-time grid (engine/test_time.py) keeps every variant's figures per seed:
`<voting mode>/<score>` (`weights/max_logit`, `predictions/dice@70`) or, for a training that
does not vote, `<score>` (`msp`). Comparing two trainings each at its own pick would mix the
training's effect with the score's (a max_logit pick against an msp arm is mostly the score),
so a contrast takes both sides at one shared setting: the same score (and DICE percentile),
the same voting mode where both vote. Among the shared settings it takes the one the pick
rule prefers on the validation figures of both sides together (the mean of the two sides'
means), so no test figure takes part in the choice.

Where one side votes and the other does not (MOON against plain sparse training), the
setting shares the score and says that the voting mode is one side's only; where nothing is
shared (a trial recorded before the grids), each side keeps its own pick and the contrast says
it is unmatched.

Example:
    >>> a = {0: {"weights/msp": {"val/auroc_near": 0.80, "auroc_near": 0.79},
    ...          "weights/max_logit": {"val/auroc_near": 0.84, "auroc_near": 0.83}},
    ...      1: {"weights/msp": {"val/auroc_near": 0.82, "auroc_near": 0.80},
    ...          "weights/max_logit": {"val/auroc_near": 0.85, "auroc_near": 0.86}}}
    >>> b = {0: {"msp": {"val/auroc_near": 0.78, "auroc_near": 0.77},
    ...          "max_logit": {"val/auroc_near": 0.80, "auroc_near": 0.79}},
    ...      1: {"msp": {"val/auroc_near": 0.79, "auroc_near": 0.78},
    ...          "max_logit": {"val/auroc_near": 0.81, "auroc_near": 0.80}}}
    >>> m = match(a, b, PickRule())
    >>> m.mine, m.theirs, m.kind
    ('weights/max_logit', 'max_logit', 'voting on one side')
    >>> [round(d, 2) for d in differences(a, b, m, "auroc_near")[1]]
    [0.04, 0.06]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.test_time import PickRule, pick
from sweep.state import RECORDED
from sweep.stats import aggregate

# seed -> variant name -> figures (`engine.test_time.variant_figures`)
Variants = Mapping[int, Mapping[str, Mapping[str, float]]]

SAME = "same setting"
ONE_SIDE_VOTES = "voting on one side"
UNMATCHED = "unmatched"
SAME_MODELS = "same trained models"  # two variants of one training (the score choice)


def split_name(name: str) -> tuple[str | None, str]:
    """(voting mode or None, score part) of a variant name.

    >>> split_name("predictions/dice@70"), split_name("msp")
    (('predictions', 'dice@70'), (None, 'msp'))
    """
    mode, _, score = name.rpartition("/")
    return (mode or None), score


@dataclass(frozen=True)
class Match:
    """The variants a contrast compares: `mine` on the first side, `theirs` on the second,
    and how they relate (`SAME`, `ONE_SIDE_VOTES` or `UNMATCHED`)."""

    mine: str
    theirs: str
    kind: str

    @property
    def setting(self) -> str:
        """The setting in words, as the tables print it.

        >>> Match("weights/msp", "weights/msp", SAME).setting
        'at weights/msp'
        >>> Match("weights/msp", "msp", ONE_SIDE_VOTES).setting
        'at msp (weights voting on one side)'
        >>> Match("weights/max_logit", "msp", UNMATCHED).setting
        'unmatched: weights/max_logit vs msp'
        """
        if self.kind == SAME:
            return f"at {self.mine}"
        if self.kind == SAME_MODELS:
            return f"{self.mine} vs {self.theirs} (same trained models)"
        if self.kind == ONE_SIDE_VOTES:
            voted = self.mine if split_name(self.mine)[0] else self.theirs
            mode, score = split_name(voted)
            return f"at {score} ({mode} voting on one side)"
        return f"unmatched: {self.mine} vs {self.theirs}"


def names(variants: Variants) -> list[str]:
    """The variant names every seed has, in the order the first seed lists them."""
    seeds = list(variants.values())
    if not seeds:
        return []
    shared = set.intersection(*(set(v) for v in seeds))
    return [n for n in seeds[0] if n in shared]


def means(variants: Variants, name: str, seeds: Sequence[int] | None = None) -> dict[str, float]:
    """A variant's figures averaged over `seeds` (default: every seed)."""
    chosen = sorted(variants) if seeds is None else seeds
    return aggregate([dict(variants[s][name]) for s in chosen if name in variants[s]])


def candidates(mine: Sequence[str], theirs: Sequence[str]) -> list[Match]:
    """Every pair of variants at one shared setting: the same score part, and the same
    voting mode where both vote (a voting side against one that does not: any mode)."""
    out = []
    for a in mine:
        mode_a, score_a = split_name(a)
        for b in theirs:
            mode_b, score_b = split_name(b)
            if score_a != score_b:
                continue
            if mode_a is not None and mode_b is not None:
                if mode_a == mode_b:
                    out.append(Match(a, b, SAME))
            elif mode_a is None and mode_b is None:
                out.append(Match(a, b, SAME))
            else:
                out.append(Match(a, b, ONE_SIDE_VOTES))
    return out


def match(
    mine: Variants,
    theirs: Variants,
    rule: PickRule,
    picked: tuple[str, str] = ("", ""),
) -> Match:
    """The shared setting of two trainings, picked by `rule` on the validation figures of
    both sides over their common seeds; without one, each side's own pick (`picked`, or its
    first variant) as `UNMATCHED`."""
    seeds = sorted(set(mine) & set(theirs))
    pairs = candidates(names(mine), names(theirs))
    if RECORDED in names(mine) or RECORDED in names(theirs):
        pairs = []  # a trial recorded before variants were kept: its setting is not known
    if not pairs or not seeds:
        a = picked[0] or next(iter(names(mine)), "")
        b = picked[1] or next(iter(names(theirs)), "")
        return Match(a, b, SAME if a == b and a and a != RECORDED else UNMATCHED)
    joint = []
    for pair in pairs:
        a, b = means(mine, pair.mine, seeds), means(theirs, pair.theirs, seeds)
        value = (a.get(rule.metric, float("nan")) + b.get(rule.metric, float("nan"))) / 2
        joint.append({rule.metric: value})
    return pairs[pick(joint, rule)]


def differences(
    mine: Variants, theirs: Variants, m: Match, metric: str
) -> tuple[list[int], list[float]]:
    """(seeds, `mine - theirs` per seed) of one metric at a match, over the common seeds
    where both sides have a finite figure."""
    seeds, diffs = [], []
    for s in sorted(set(mine) & set(theirs)):
        a = mine[s].get(m.mine, {}).get(metric)
        b = theirs[s].get(m.theirs, {}).get(metric)
        if a is None or b is None or a != a or b != b:
            continue
        seeds.append(s)
        diffs.append(float(a) - float(b))
    return seeds, diffs


def msp_of(name: str, available: Sequence[str]) -> str | None:
    """The variant with the same voting mode as `name` and the msp score, if there is one
    (the setting as published, for the score-choice contrast).

    >>> msp_of("predictions/max_logit", ["weights/msp", "predictions/msp"])
    'predictions/msp'
    >>> msp_of("max_logit", ["weights/msp"]) is None
    True
    """
    mode, _ = split_name(name)
    wanted = "msp" if mode is None else f"{mode}/msp"
    return wanted if wanted in available else None
