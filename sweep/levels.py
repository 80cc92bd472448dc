"""The sweep's answer per density level: the best searched trial against the arms there.

At each level of a space with `levels`, every arm (engine/arms.py) was trained at exactly
that density with the sweep's sparse method, seeds and split. `compare_levels` puts the
best searched trial of the level (feasible under the space's constraints, best on the first
objective's validation figure) beside `moon_auto`, `sparse`, `sparse+voting` and `dense`,
each at the test-time variant its rule picked on validation (`moon_auto (published)` beside
them: MOON with msp, as in the paper), each figure as its mean and 95% t-interval over the
seeds. The paired (same seed) contrasts answer "does searching beat MOON's auto-tuning?"
(searched - moon_auto), "does MOON beat plain sparse training?" (moon_auto - sparse),
"which piece does the work?" (sparse+voting - sparse, moon_auto - sparse+voting) and "what is
the score choice worth?" (picked - msp, the same trained models); every contrast compares
the two trainings at one shared test-time setting (sweep/contrasts.py), or says it cannot.

A star means Holm's correction over the whole table (every level, contrast and metric of
the test part; the validation part is its own family) leaves p < 0.05. The figures are the
test split's (validation chose the best searched trial and every variant, so validation
figures are biased upward); until `moonsweep confirm` re-trains the level on fresh seeds,
the searched row is "selected on these seeds".

Example:
    >>> from sweep.levels import compare_levels, levels_markdown  # doctest: +SKIP
    >>> print(levels_markdown(compare_levels(state)))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.test_time import PickRule, TestTime
from sweep.contrasts import (
    SAME_MODELS,
    UNMATCHED,
    Match,
    Variants,
    differences,
    match,
    msp_of,
    split_name,
)
from sweep.failures import COLLAPSED
from sweep.selection import sweep_constraints
from sweep.spaces import SEARCH_ARM
from sweep.state import (
    SeedRecords,
    SweepState,
    TrialRow,
    confirm_seeds,
    confirmed_records,
    seed_records,
    trial_rows,
)
from sweep.stats import Interval, Paired, correct, number, paired_test, t_interval
from sweep.stores import mlflow_client

SEARCHED = "searched"  # the best searched trial of a level, as an arm of its table
PUBLISHED = "moon_auto (published)"  # MOON at the setting the paper publishes (msp)
ARM_ORDER = (SEARCHED, "moon_auto", PUBLISHED, "sparse", "sparse+voting", "dense")
# (minuend, subtrahend) of each paired difference between two trainings, in table order.
DELTAS = (
    (SEARCHED, "moon_auto"),
    ("moon_auto", "sparse"),
    (SEARCHED, "sparse"),
    ("sparse+voting", "sparse"),
    ("moon_auto", "sparse+voting"),
)
# Whose score choice gets its own contrast (picked variant - msp, same trained models).
SCORE_CHOICE = (SEARCHED, "moon_auto")
HOLM = "Holm's step-down correction"


@dataclass
class LevelArm:
    """One arm at one level: its trial, the test-time variant its row shows and that
    variant's figures over the seeds (`records`: every variant's, per seed)."""

    arm: str
    trial: str  # Ray trial id
    run_id: str  # MLflow run id
    optuna: int  # Optuna trial number (-1 for a baseline)
    variant: str
    per_seed: dict[int, dict[str, float]] = field(repr=False)
    figures: dict[str, Interval] = field(default_factory=dict)
    records: SeedRecords | None = field(default=None, repr=False)


@dataclass
class Contrast:
    """A paired difference of two rows of a level (`mine - theirs`) at one `Match`."""

    mine: str
    theirs: str
    match: Match
    figures: dict[str, Paired]

    @property
    def setting(self) -> str:
        return self.match.setting

    def as_dict(self) -> dict[str, Any]:
        return {
            "mine": self.mine,
            "theirs": self.theirs,
            "variants": [self.match.mine, self.match.theirs],
            "kind": self.match.kind,
            "setting": self.setting,
        }


@dataclass
class Level:
    """The comparison at one density level."""

    density: float
    arms: dict[str, LevelArm]
    # "searched - moon_auto" -> the contrast (its figures: metric -> paired difference)
    contrasts: dict[str, Contrast]
    note: str = ""  # why an arm is missing (nothing feasible, not finished)
    searched_trials: int = 0  # searched trials at this level that ran to the end
    confirmed: list[int] = field(default_factory=list)  # fresh seeds (`moonsweep confirm`)
    verdicts: list[str] = field(default_factory=list)

    @property
    def deltas(self) -> dict[str, dict[str, Paired]]:
        """Each contrast's figures by name."""
        return {name: c.figures for name, c in self.contrasts.items()}

    @property
    def seeds_text(self) -> str:
        """Where its figures come from: the sweep's own seeds or confirmation seeds."""
        if self.confirmed:
            return f"confirmed on seeds {seeds_range(self.confirmed)}"
        return "selected on these seeds"

    def as_dict(self) -> dict[str, Any]:
        return {
            "density": self.density,
            "arms": {
                name: {
                    "trial": a.trial,
                    "mlflow_run_id": a.run_id,
                    "optuna": a.optuna,
                    "variant": a.variant,
                    "seeds": sorted(a.per_seed),
                    "figures": {m: i.as_dict() for m, i in a.figures.items()},
                }
                for name, a in self.arms.items()
            },
            "deltas": {k: {m: i.as_dict() for m, i in v.items()} for k, v in self.deltas.items()},
            "contrasts": {k: c.as_dict() for k, c in self.contrasts.items()},
            "note": self.note,
            "searched_trials": self.searched_trials,
            "confirmed_seeds": self.confirmed,
            "seeds_text": self.seeds_text,
            "verdicts": self.verdicts,
            "correction": HOLM,
        }


def seeds_range(seeds: Sequence[int]) -> str:
    """Seeds in words: `5-9` for a run of consecutive seeds, else a list.

    >>> seeds_range([5, 6, 7, 8, 9]), seeds_range([1, 3])
    ('5-9', '1, 3')
    """
    ordered = sorted(seeds)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def level_metrics(state: SweepState) -> list[str]:
    """The objectives (density aside) as test figures, then as validation figures."""
    names = [o["metric"] for o in state.space["objectives"] if o["metric"] != "density"]
    test = [n.removeprefix("val/") for n in names]
    return [*test, *(f"val/{n}" for n in test)]


def pick_rule(state: SweepState) -> PickRule:
    """The rule a sweep's test-time grid picks by (the default rule without a grid)."""
    grid = state.space.get("test_time")
    return TestTime.model_validate(grid).pick if grid else PickRule()


def best_searched(
    state: SweepState, rows: Sequence[TrialRow], level: float
) -> tuple[TrialRow | None, str]:
    """The level's best searched trial that ran to the end and meets the space's own
    constraints, by the first objective (validation); or None and why."""
    searched = [r for r in rows if r["arm"] == SEARCH_ARM and r["level"] == level]
    done = [r for r in searched if r["state"] == "done"]
    if not done:
        if any(r["state"] == COLLAPSED for r in searched):
            return None, f"every searched trial at density {level:g} that ran to the end collapsed"
        return None, f"no searched trial at density {level:g} ran to the end"
    baselines = [r for r in rows if r["arm"] != SEARCH_ARM and r["state"] == "done"]
    constraints, _ = sweep_constraints(state, baselines)
    feasible = [r for r in done if all(c.holds(r) for c in constraints)]
    if not feasible:
        shown = ", ".join(map(str, constraints))
        return None, f"no searched trial at density {level:g} meets {shown}"
    first = state.space["objectives"][0]
    sign = 1.0 if first["direction"] == "maximize" else -1.0

    def score(row: TrialRow) -> float:
        value = number(row.get(first["metric"]))
        return -math.inf if value is None else sign * value

    return max(feasible, key=score), ""


RecordsReader = Callable[[SweepState, str], SeedRecords]


def compare_levels(
    state: SweepState,
    rows: Sequence[TrialRow] | None = None,
    read_records: RecordsReader | None = None,
) -> list[Level]:
    """One `Level` per density level of the sweep's space (none without levels), Holm's
    correction run over all of them (test and validation parts apart)."""
    levels = [float(d) for d in state.space.get("levels") or []]
    if not levels:
        return []
    rows = trial_rows(state, all_metrics=True) if rows is None else rows
    read: dict[str, SeedRecords] = {}
    reader = read_records or _reader(state)

    def read_once(state: SweepState, run_id: str) -> SeedRecords:
        # `dense` stands in every level's table: its per-seed files are downloaded once.
        if run_id not in read:
            read[run_id] = reader(state, run_id)
        return read[run_id]

    out = []
    for level in levels:
        best, note = best_searched(state, rows, level)
        out.append(_level(state, rows, level, best, note, read_once))
    _finish(state, out)
    return out


def level_comparison(
    state: SweepState,
    rows: Sequence[TrialRow],
    level: float,
    searched: TrialRow | None,
    note: str = "",
    read_records: RecordsReader | None = None,
) -> Level:
    """`searched` (e.g. the model `select` chose) beside the arms trained at `level`; Holm's
    correction over this one level's table."""
    out = _level(state, rows, level, searched, note, read_records or _reader(state))
    _finish(state, [out])
    return out


def _reader(state: SweepState) -> RecordsReader:
    """The confirmation seeds' records where `moonsweep confirm` has recorded them (the
    confirmation seeds read once), else the sweep's own."""
    seeds = confirm_seeds(state)
    if not seeds:
        return seed_records
    return lambda state, run_id: (
        confirmed_records(state, run_id, seeds) or seed_records(state, run_id)
    )


def _level(
    state: SweepState,
    rows: Sequence[TrialRow],
    level: float,
    searched: TrialRow | None,
    note: str,
    read: RecordsReader,
) -> Level:
    chosen: dict[str, TrialRow] = {} if searched is None else {SEARCHED: searched}
    for row in rows:
        if row["arm"] != SEARCH_ARM and row["state"] == "done":
            if row["level"] == level or (row["arm"] == "dense" and row["level"] is None):
                chosen[row["arm"]] = row
    metrics = level_metrics(state)
    records_of = {name: read(state, row["mlflow_run_id"]) for name, row in chosen.items()}
    own = {int(s) for s in state.space.get("seeds", [])}
    fresh = [bool(r.variants) and not set(r.variants) & own for r in records_of.values()]
    if any(fresh) and not all(fresh):  # a confirmation cut short: every row on its own seeds
        records_of = {n: seed_records(state, row["mlflow_run_id"]) for n, row in chosen.items()}
    # The confirmation seeds, when every row's figures come from seeds the sweep did not train.
    confirmed = (
        sorted({s for r in records_of.values() for s in r.variants}) if fresh and all(fresh) else []
    )
    arms: dict[str, LevelArm] = {}
    for name, row in chosen.items():
        records = records_of[name]
        arms[name] = _arm(name, row, records, records.picked, metrics)
        # MOON as published beside its pick, where a grid gave it a choice.
        if (
            name == "moon_auto"
            and len(_names(records)) > 1
            and records.published in _names(records)
        ):
            arms[PUBLISHED] = _arm(PUBLISHED, row, records, records.published, metrics)
    ordered = {n: arms[n] for n in [*ARM_ORDER, *sorted(arms)] if n in arms}
    searched_done = sum(
        1 for r in rows if r["arm"] == SEARCH_ARM and r["level"] == level and r["state"] == "done"
    )
    return Level(
        level,
        ordered,
        _contrasts(ordered, metrics, pick_rule(state)),
        note,
        searched_done,
        confirmed=confirmed,
    )


def _names(records: SeedRecords) -> list[str]:
    seeds = list(records.variants.values())
    return list(seeds[0]) if seeds else []


def _arm(
    name: str, row: TrialRow, records: SeedRecords, variant: str, metrics: Sequence[str]
) -> LevelArm:
    per_seed = {}
    for seed, by_variant in records.variants.items():
        figures = dict(by_variant.get(variant, {}))
        if variant == records.picked:  # the kept variant: every figure the trial logged
            figures = {**records.metrics.get(seed, {}), **figures}
        per_seed[seed] = figures
    figures = {
        m: t_interval([per_seed[s][m] for s in sorted(per_seed) if m in per_seed[s]])
        for m in metrics
        if any(m in v for v in per_seed.values())
    }
    return LevelArm(
        name, row["trial"], row["mlflow_run_id"], row["optuna"], variant, per_seed, figures, records
    )


def _variants(arm: LevelArm) -> Variants:
    return arm.records.variants if arm.records is not None else {}


def _contrasts(
    arms: Mapping[str, LevelArm], metrics: Sequence[str], rule: PickRule
) -> dict[str, Contrast]:
    out: dict[str, Contrast] = {}
    for mine, theirs in DELTAS:
        if mine in arms and theirs in arms:
            a, b = arms[mine], arms[theirs]
            m = match(_variants(a), _variants(b), rule, (a.variant, b.variant))
            out[f"{mine} - {theirs}"] = _contrast(mine, theirs, a, b, m, metrics)
    for name in SCORE_CHOICE:
        arm = arms.get(name)
        if arm is None:
            continue
        msp = msp_of(arm.variant, _names(arm.records) if arm.records else [])
        if msp is not None:
            m = Match(arm.variant, msp, SAME_MODELS)
            label = f"{name}: picked - msp"
            out[label] = _contrast(name, name, arm, arm, m, metrics)
    return out


def _contrast(
    mine: str, theirs: str, a: LevelArm, b: LevelArm, m: Match, metrics: Sequence[str]
) -> Contrast:
    figures = {}
    for metric in metrics:
        _, diffs = differences(_variants(a), _variants(b), m, metric)
        if diffs:
            figures[metric] = paired_test(diffs)
    return Contrast(mine, theirs, m, figures)


def _finish(state: SweepState, levels: Sequence[Level]) -> None:
    """Holm over the test part of every level's contrasts, then over the validation part;
    then each level's verdicts."""
    for val in (False, True):
        correct(
            [
                p
                for lv in levels
                for c in lv.contrasts.values()
                for m, p in c.figures.items()
                if m.startswith("val/") == val
            ]
        )
    objectives = [o for o in state.space["objectives"] if o["metric"] != "density"]
    if objectives:
        first = objectives[0]
        metric = first["metric"].removeprefix("val/")
        for lv in levels:
            lv.verdicts = verdicts(lv, metric, first["direction"] == "maximize")


def delta_text(p: Paired) -> str:
    """A paired difference in points for a sentence: `+1.0 [+0.3, +1.7]`, or `+0.0 on every
    seed` where it has no spread."""
    if not p.spread:
        return f"{100 * p.mean:+.1f} on every seed"
    return f"{100 * p.mean:+.1f} [{100 * p.low:+.1f}, {100 * p.high:+.1f}]"


# Each contrast's verdict: (contrast, what mine is, what theirs is).
VERDICTS = (
    (f"{SEARCHED} - moon_auto", "the best searched setting", "MOON's auto-tuning"),
    ("moon_auto - sparse", "MOON", "plain sparse training"),
    ("sparse+voting - sparse", "voting alone", "plain sparse training"),
)


def verdicts(level: Level, metric: str, maximize: bool) -> list[str]:
    """The level's answer in words, from the corrected test figures on `metric`: which
    side of each headline contrast is better where Holm's correction shows a difference,
    within noise where it does not.

    >>> lv = Level(0.05, {}, {})
    >>> lv.contrasts["moon_auto - sparse"] = Contrast("moon_auto", "sparse",
    ...     Match("weights/msp", "msp", "voting on one side"),
    ...     {"auroc_near": Paired(0.01, 0.003, 0.017, 5, 0.01, None, 0.02, 1)})
    >>> print(verdicts(lv, "auroc_near", True)[0])  # doctest: +NORMALIZE_WHITESPACE
    0.05: MOON beats plain sparse training by +1.0 [+0.3, +1.7] points auroc_near at msp
    (weights voting on one side); Holm p = 0.02 of 1 (selected on these seeds)
    """
    lines = []
    for name, mine, theirs in VERDICTS:
        contrast = level.contrasts.get(name)
        p = contrast.figures.get(metric) if contrast is not None else None
        if contrast is None or p is None:
            continue
        where = contrast.setting
        if contrast.match.kind == UNMATCHED:
            where += " (not like with like)"
        holm = f"Holm p = {p.p_holm:.2g} of {p.family}" if p.p_holm is not None else "no spread"
        if p.shown:
            better = (p.mean > 0) == maximize
            first, second = (mine, theirs) if better else (theirs, mine)
            # The difference reads from the winner's side.
            shown = delta_text(p if better else Paired(-p.mean, -p.high, -p.low, p.n, p.p_t))
            lines.append(f"{first} beats {second} by {shown} points {metric} {where}; {holm}")
        else:
            lines.append(
                f"{mine} is within noise of {theirs}: {delta_text(p)} points {metric} "
                f"{where}; {holm}"
            )
    for name in SCORE_CHOICE:
        label = next((k for k in level.contrasts if k.startswith(f"{name}: ")), None)
        p = level.contrasts[label].figures.get(metric) if label else None
        if label is None or p is None or not p.spread:
            continue  # the pick is msp itself: nothing to say
        score = split_name(level.contrasts[label].match.mine)[1]
        worth = "is worth" if p.shown else "is within noise:"
        lines.append(
            f"the score choice ({score} over msp) for {name} {worth} {delta_text(p)} points "
            f"{metric}; Holm p = {p.p_holm:.2g} of {p.family}"
        )
    suffix = f" ({level.seeds_text})"
    if level.searched_trials and SEARCHED in level.arms:
        suffix = (
            f" (searched: best of {level.searched_trials} searched trial"
            f"{'s' if level.searched_trials != 1 else ''} here; {level.seeds_text})"
        )
    return [f"{level.density:g}: {line}{suffix}" for line in lines]


def points_cell(interval: Interval | None, signed: bool = False) -> str:
    """A table cell in points (x100, one decimal): `mean [low, high]`; a `signed` paired
    difference gets a * where Holm's correction shows it (`Paired.shown`; a plain interval:
    where it excludes 0: a cross-check, not a test), and no interval where it has no spread;
    `-` when missing.

    >>> points_cell(Paired(0.012, 0.004, 0.02, 5, 0.01, None, 0.03, 4), signed=True)
    '+1.2* [+0.4, +2.0]'
    >>> points_cell(paired_test([0.0, 0.0, 0.0]), signed=True)
    '+0.0'
    """
    if interval is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    mean = fmt.format(100 * interval.mean)
    if interval.n < 2 or interval.low != interval.low:  # one seed or no spread: no interval
        return mean
    if isinstance(interval, Paired):
        star = signed and interval.shown
    else:
        star = signed and (interval.low > 0 or interval.high < 0)
    return (
        f"{mean}{'*' if star else ''} [{fmt.format(100 * interval.low)}, "
        f"{fmt.format(100 * interval.high)}]"
    )


def family_size(levels: Sequence[Level], part: str = "test") -> int:
    """How many comparisons Holm's correction ran over in one part's table."""
    val = part == "val"
    return max(
        (
            p.family
            for lv in levels
            for c in lv.contrasts.values()
            for m, p in c.figures.items()
            if m.startswith("val/") == val
        ),
        default=0,
    )


def levels_markdown(levels: Sequence[Level], part: str = "test") -> str:
    """The per-level tables as markdown: figures in points (x100), mean [95% interval] over
    seeds, each row's test-time variant; paired contrasts at their shared setting, * where
    Holm's correction over the table shows a difference; each level's verdicts (test part)."""
    if not levels:
        return ""
    val = part == "val"
    family = family_size(levels, part)
    lines: list[str] = [
        f"{part} split, points x100, mean [95% t-interval]; higher is better but for ece and "
        f"fpr95; * : shown after {HOLM} over the {family} paired comparisons of this table",
        "",
    ]
    for lv in levels:
        metrics = [m for m in _metrics_of(lv) if m.startswith("val/") == val]
        seeds = max((len(a.per_seed) for a in lv.arms.values()), default=0)
        n = lv.searched_trials
        searched = f", {n} searched trial{'s' if n != 1 else ''} ran here" if n else ""
        lines += [
            f"density {lv.density:g} ({seeds} paired seeds, {lv.seeds_text}{searched}):",
            "",
            "| row | trial | test-time | " + " | ".join(metrics) + " |",
            "|---|---|---|" + "---:|" * len(metrics),
        ]
        for name, arm in lv.arms.items():
            trial = f"optuna {arm.optuna}" if arm.optuna >= 0 else arm.trial
            cells = [points_cell(arm.figures.get(m)) for m in metrics]
            lines.append(f"| {name} | {trial} | {arm.variant} | " + " | ".join(cells) + " |")
        for pair, contrast in lv.contrasts.items():
            cells = [points_cell(contrast.figures.get(m), signed=True) for m in metrics]
            lines.append(f"| {pair} | paired | {contrast.setting} | " + " | ".join(cells) + " |")
        if lv.note:
            lines.append(f"\n{lv.note}")
        if not val and lv.verdicts:
            lines += ["", *(f"- {v}" for v in lv.verdicts)]
        lines.append("")
    return "\n".join(lines).rstrip()


def _metrics_of(level: Level) -> list[str]:
    seen: dict[str, None] = {}
    for arm in level.arms.values():
        seen.update(dict.fromkeys(arm.figures))
    for contrast in level.contrasts.values():
        seen.update(dict.fromkeys(contrast.figures))
    return list(seen)


def levels_table(levels: Sequence[Level]) -> dict[str, list[Any]]:
    """The per-level figures as columns (one row per level and arm, then per contrast): the
    shape `mlflow.log_table` takes, so the MLflow UI shows it as a table."""
    columns: dict[str, list[Any]] = {"density": [], "row": [], "kind": [], "test_time": [], "n": []}
    metrics: list[str] = []
    for lv in levels:
        for m in _metrics_of(lv):
            if m not in metrics:
                metrics.append(m)
    for m in metrics:
        columns.update({m: [], f"{m} low": [], f"{m} high": [], f"{m} p_holm": []})
    entries: list[tuple[float, str, str, str, Mapping[str, Interval]]] = []
    for lv in levels:
        entries += [(lv.density, n, "arm", a.variant, a.figures) for n, a in lv.arms.items()]
        entries += [
            (lv.density, pair, "paired delta", c.setting, c.figures)
            for pair, c in lv.contrasts.items()
        ]
    for density, name, kind, setting, figures in entries:
        columns["density"].append(density)
        columns["row"].append(name)
        columns["kind"].append(kind)
        columns["test_time"].append(setting)
        columns["n"].append(max((i.n for i in figures.values()), default=0))
        for m in metrics:
            i = figures.get(m)
            columns[m].append(None if i is None else i.mean)
            # No interval (one seed, or no spread): empty cells, as MLflow writes NaN anyway.
            columns[f"{m} low"].append(None if i is None or math.isnan(i.low) else i.low)
            columns[f"{m} high"].append(None if i is None or math.isnan(i.high) else i.high)
            columns[f"{m} p_holm"].append(i.p_holm if isinstance(i, Paired) else None)
    return columns


LEVELS_ARTIFACT = "levels/levels.json"


def log_levels(state: SweepState, levels: Sequence[Level]) -> None:
    """Put the per-level answer on the sweep's parent MLflow run: a table the MLflow UI
    shows (`levels/levels.json`) and the same tables as markdown (`levels/levels.md`)."""
    if not levels:
        return
    client = mlflow_client(state.tracking_uri)
    client.log_table(state.parent_run_id, data=levels_table(levels), artifact_file=LEVELS_ARTIFACT)
    text = levels_markdown(levels) + "\n\n" + levels_markdown(levels, part="val") + "\n"
    client.log_text(state.parent_run_id, text, "levels/levels.md")
