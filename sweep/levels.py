"""The sweep's answer per density level: the best searched trial against the arms there.

At each level of a space with `levels`, every arm (engine/arms.py) was trained at exactly
that density with the sweep's sparse method, seeds and split. `compare_levels` puts the
best searched trial of the level (feasible under the space's constraints, best on the first
objective's validation figure) beside `moon_auto`, `sparse`, `sparse+voting` and `dense`:
each figure as its mean and 95% t-interval over the seeds, and the paired (same seed)
differences that answer "does searching beat MOON's auto-tuning?" (searched - moon_auto),
"does MOON beat plain sparse training?" (moon_auto - sparse) and "which piece does the work?"
(sparse+voting - sparse, moon_auto - sparse+voting).

The figures are the test split's (validation chose the best searched trial, so its
validation figures are biased upward); the validation ones are kept beside them.

Example:
    >>> from sweep.levels import compare_levels, levels_markdown  # doctest: +SKIP
    >>> print(levels_markdown(compare_levels(state)))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sweep.failures import COLLAPSED
from sweep.selection import sweep_constraints
from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, TrialRow, seed_metrics, trial_rows
from sweep.stats import Interval, number, paired_deltas, t_interval
from sweep.stores import mlflow_client

SEARCHED = "searched"  # the best searched trial of a level, as an arm of its table
ARM_ORDER = (SEARCHED, "moon_auto", "sparse", "sparse+voting", "dense")
# (minuend, subtrahend) of each paired difference, in the order the tables show them.
DELTAS = (
    (SEARCHED, "moon_auto"),
    ("moon_auto", "sparse"),
    (SEARCHED, "sparse"),
    ("sparse+voting", "sparse"),
    ("moon_auto", "sparse+voting"),
)


@dataclass
class LevelArm:
    """One arm at one level: its trial and its figures over the seeds."""

    arm: str
    trial: str  # Ray trial id
    run_id: str  # MLflow run id
    optuna: int  # Optuna trial number (-1 for a baseline)
    per_seed: dict[int, dict[str, float]] = field(repr=False)
    figures: dict[str, Interval] = field(default_factory=dict)


@dataclass
class Level:
    """The comparison at one density level."""

    density: float
    arms: dict[str, LevelArm]
    # "searched - moon_auto" -> metric -> interval of the paired differences
    deltas: dict[str, dict[str, Interval]]
    note: str = ""  # why an arm is missing (nothing feasible, not finished)

    def as_dict(self) -> dict[str, Any]:
        return {
            "density": self.density,
            "arms": {
                name: {
                    "trial": a.trial,
                    "mlflow_run_id": a.run_id,
                    "optuna": a.optuna,
                    "seeds": sorted(a.per_seed),
                    "figures": {m: i.as_dict() for m, i in a.figures.items()},
                }
                for name, a in self.arms.items()
            },
            "deltas": {k: {m: i.as_dict() for m, i in v.items()} for k, v in self.deltas.items()},
            "note": self.note,
        }


def level_metrics(state: SweepState) -> list[str]:
    """The objectives (density aside) as test figures, then as validation figures."""
    names = [o["metric"] for o in state.space["objectives"] if o["metric"] != "density"]
    test = [n.removeprefix("val/") for n in names]
    return [*test, *(f"val/{n}" for n in test)]


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


PerSeedReader = Callable[[SweepState, str], dict[int, dict[str, float]]]


def compare_levels(
    state: SweepState,
    rows: Sequence[TrialRow] | None = None,
    read_seeds: PerSeedReader = seed_metrics,
) -> list[Level]:
    """One `Level` per density level of the sweep's space (none without levels)."""
    levels = [float(d) for d in state.space.get("levels") or []]
    if not levels:
        return []
    rows = trial_rows(state, all_metrics=True) if rows is None else rows
    read: dict[str, dict[int, dict[str, float]]] = {}

    def read_once(state: SweepState, run_id: str) -> dict[int, dict[str, float]]:
        # `dense` stands in every level's table: its per-seed files are downloaded once.
        if run_id not in read:
            read[run_id] = read_seeds(state, run_id)
        return read[run_id]

    out = []
    for level in levels:
        best, note = best_searched(state, rows, level)
        out.append(level_comparison(state, rows, level, best, note, read_once))
    return out


def level_comparison(
    state: SweepState,
    rows: Sequence[TrialRow],
    level: float,
    searched: TrialRow | None,
    note: str = "",
    read_seeds: PerSeedReader = seed_metrics,
) -> Level:
    """`searched` (e.g. the model `select` chose) beside the arms trained at `level`."""
    chosen: dict[str, TrialRow] = {} if searched is None else {SEARCHED: searched}
    for row in rows:
        if row["arm"] != SEARCH_ARM and row["state"] == "done":
            if row["level"] == level or (row["arm"] == "dense" and row["level"] is None):
                chosen[row["arm"]] = row
    metrics = level_metrics(state)
    arms = {name: _arm(state, name, row, metrics, read_seeds) for name, row in chosen.items()}
    ordered = {n: arms[n] for n in [*ARM_ORDER, *sorted(arms)] if n in arms}
    return Level(level, ordered, _deltas(ordered, metrics), note)


def _arm(
    state: SweepState, name: str, row: TrialRow, metrics: Sequence[str], read: PerSeedReader
) -> LevelArm:
    per_seed = read(state, row["mlflow_run_id"])
    figures = {
        m: t_interval([per_seed[s][m] for s in sorted(per_seed) if m in per_seed[s]])
        for m in metrics
        if any(m in v for v in per_seed.values())
    }
    return LevelArm(name, row["trial"], row["mlflow_run_id"], row["optuna"], per_seed, figures)


def _deltas(arms: Mapping[str, LevelArm], metrics: Sequence[str]) -> dict[str, dict[str, Interval]]:
    out: dict[str, dict[str, Interval]] = {}
    for mine, theirs in DELTAS:
        if mine in arms and theirs in arms:
            per_metric = {}
            for m in metrics:
                _, diffs = paired_deltas(arms[mine].per_seed, arms[theirs].per_seed, m)
                if diffs:
                    per_metric[m] = t_interval(diffs)
            out[f"{mine} - {theirs}"] = per_metric
    return out


def points_cell(interval: Interval | None, signed: bool = False) -> str:
    """A table cell in points (x100, one decimal): `mean [low, high]`; a `signed` (paired
    delta) cell gets a * where its interval excludes 0; `-` when missing."""
    if interval is None:
        return "-"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    mean = fmt.format(100 * interval.mean)
    if interval.n < 2 or interval.low != interval.low:  # one seed: no interval
        return mean
    shown = "*" if signed and (interval.low > 0 or interval.high < 0) else ""
    return f"{mean}{shown} [{fmt.format(100 * interval.low)}, {fmt.format(100 * interval.high)}]"


def levels_markdown(levels: Sequence[Level], part: str = "test") -> str:
    """The per-level tables as markdown: figures in points (x100), mean [95% interval] over
    seeds; paired deltas marked * where the interval excludes 0."""
    if not levels:
        return ""
    val = part == "val"
    lines: list[str] = []
    for lv in levels:
        metrics = [m for m in _metrics_of(lv) if m.startswith("val/") == val]
        seeds = max((len(a.per_seed) for a in lv.arms.values()), default=0)
        lines += [
            f"density {lv.density:g} ({part} split, {seeds} paired seeds, points x100; "
            "higher is better but for ece and fpr95):",
            "",
            "| arm | trial | " + " | ".join(metrics) + " |",
            "|---|---|" + "---:|" * len(metrics),
        ]
        for name, arm in lv.arms.items():
            trial = f"optuna {arm.optuna}" if arm.optuna >= 0 else arm.trial
            cells = [points_cell(arm.figures.get(m)) for m in metrics]
            lines.append(f"| {name} | {trial} | " + " | ".join(cells) + " |")
        for pair, per_metric in lv.deltas.items():
            cells = [points_cell(per_metric.get(m), signed=True) for m in metrics]
            lines.append(f"| {pair} | paired | " + " | ".join(cells) + " |")
        if lv.note:
            lines.append(f"\n{lv.note}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _metrics_of(level: Level) -> list[str]:
    seen: dict[str, None] = {}
    for arm in level.arms.values():
        seen.update(dict.fromkeys(arm.figures))
    return list(seen)


def levels_table(levels: Sequence[Level]) -> dict[str, list[Any]]:
    """The per-level figures as columns (one row per level and arm, then per delta): the
    shape `mlflow.log_table` takes, so the MLflow UI shows it as a table."""
    columns: dict[str, list[Any]] = {"density": [], "row": [], "kind": [], "n": []}
    metrics: list[str] = []
    for lv in levels:
        for m in _metrics_of(lv):
            if m not in metrics:
                metrics.append(m)
    for m in metrics:
        columns.update({m: [], f"{m} low": [], f"{m} high": []})
    entries: list[tuple[float, str, str, dict[str, Interval]]] = []
    for lv in levels:
        entries += [(lv.density, n, "arm", a.figures) for n, a in lv.arms.items()]
        entries += [(lv.density, pair, "paired delta", d) for pair, d in lv.deltas.items()]
    for density, name, kind, figures in entries:
        columns["density"].append(density)
        columns["row"].append(name)
        columns["kind"].append(kind)
        columns["n"].append(max((i.n for i in figures.values()), default=0))
        for m in metrics:
            i = figures.get(m)
            columns[m].append(None if i is None else i.mean)
            columns[f"{m} low"].append(None if i is None else i.low)
            columns[f"{m} high"].append(None if i is None else i.high)
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
