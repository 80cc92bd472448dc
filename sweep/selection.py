"""Choosing a model from a finished sweep: Pareto front, constraints, preferred metric.

Only validation figures decide (`val/...` metrics, computed on the validation parts of the
ID and OOD data) plus the achieved `density`; the test figures stay for the report.

Metric names are MLflow's (`val/accuracy`, `val/auroc_near`, `val/energy/fpr95_far`,
`density`, `std/val/accuracy`, ...). A short name without `val/` means its validation
figure: `accuracy` is `val/accuracy`, `ece` is `val/ece`.

Example:
    >>> from sweep.selection import parse_constraint, pareto_front
    >>> c = parse_constraint("accuracy>=0.95", ["val/accuracy", "density"])
    >>> c.metric, c.op, c.value
    ('val/accuracy', '>=', 0.95)
    >>> c.holds({"val/accuracy": 0.97}), c.holds({"val/accuracy": float("nan")})
    (True, False)
    >>> rows = [{"a": 1, "b": 3}, {"a": 2, "b": 2}, {"a": 1, "b": 2}]
    >>> pareto_front(rows, [("a", "maximize"), ("b", "maximize")])
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 2}]
    >>> # select(state, ["accuracy>=0.95", "density<=0.1"], prefer="auroc_near")
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.config import ConfigError
from engine.config import format_value as setting_text
from sweep.constraints import OPS, Constraint
from sweep.records import RecordedSettings
from sweep.replay import retrain
from sweep.spaces import SEARCH_ARM, SpaceConstraint
from sweep.state import SweepState, TrialRow, seed_metrics, trial_rows
from sweep.stats import number, paired_deltas, t_interval
from sweep.status import format_value

Row = dict[str, Any]
# Metrics where lower is better, by their name without prefixes (`val/`, a score's name).
LOWER_IS_BETTER = ("ece", "nll", "brier", "fpr95", "density")
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(>=|<=|==|>|<)\s*([^\s<>=]+)\s*$")


def selectable_metrics(rows: Sequence[Row]) -> list[str]:
    """The metrics selection may use: validation figures and density, present in `rows`."""
    names = {
        key
        for row in rows
        for key, value in row.items()
        if number(value) is not None
        and (key.startswith(("val/", "std/val/")) or key == "density" or key.startswith("density/"))
    }
    return sorted(names)


def resolve_metric(name: str, metrics: Collection[str]) -> str:
    """The full metric name for `name` (exact, or `val/<name>`); ConfigError if unknown."""
    name = name.strip()
    for candidate in (name, f"val/{name}"):
        if candidate in metrics:
            return candidate
    core = sorted(m for m in metrics if m.count("/") <= 1 and not m.startswith("std/"))
    more = len(metrics) - len(core)
    rest = (
        f" and {more} more: per OOD set val/auroc/<set>, other scores val/<score>/<metric>, "
        f"spreads over seeds std/val/<metric>"
        if more
        else ""
    )
    raise ConfigError(
        f"unknown metric {name!r}; selection uses validation figures and density only; "
        f"allowed: {', '.join(core) or 'none recorded'}{rest} (a name without 'val/' means "
        f"its validation figure: accuracy = val/accuracy)"
    )


def parse_constraint(expr: str, metrics: Collection[str]) -> Constraint:
    """Parse `METRIC OP VALUE` (OP one of >=, <=, >, <, ==; VALUE a finite number).

    Raises ConfigError naming what is wrong and what is allowed.
    """
    match = _CONSTRAINT.match(expr)
    if match is None:
        raise ConfigError(
            f"constraint {expr!r} is not METRIC OP VALUE with OP one of "
            f"{', '.join(OPS)} (e.g. accuracy>=0.95, density<=0.1)"
        )
    name, op, text = match.groups()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"constraint {expr!r}: {text!r} is not a finite number")
    return Constraint(resolve_metric(name, metrics), op, value)


def direction_of(metric: str, objectives: Sequence[tuple[str, str]] = ()) -> str:
    """`maximize` or `minimize`: the objective's direction, else by the metric's name
    (lower is better for ece, nll, brier, fpr95, density and every `std/` spread)."""
    for name, direction in objectives:
        if name == metric:
            return direction
    base = metric.rsplit("/", 1)[-1]
    lower = metric.startswith("std/") or base.startswith(LOWER_IS_BETTER)
    return "minimize" if lower else "maximize"


def pareto_front(rows: list[Row], objectives: list[tuple[str, str]]) -> list[Row]:
    """The rows no other row dominates (at least as good in every objective, better in
    one); rows lacking a finite value for an objective are left out. Order is kept."""
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    for metric, direction in objectives:
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"objective {metric}: direction must be maximize or minimize")
    usable = [r for r in rows if all(number(r.get(m)) is not None for m, _ in objectives)]
    if not usable:
        return []
    # Oriented so that larger is better in every column.
    sign = np.array([1.0 if d == "maximize" else -1.0 for _, d in objectives])
    values = np.array([[number(r[m]) for m, _ in objectives] for r in usable]) * sign
    no_worse = (values[:, None, :] >= values[None, :, :]).all(axis=2)
    better = (values[:, None, :] > values[None, :, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=0)  # [i, j]: row i dominates row j
    return [r for r, d in zip(usable, dominated, strict=True) if not d]


@dataclass
class Selection:
    """The outcome of `select`: the chosen trial's row and how it was reached."""

    chosen: Row
    pareto: list[Row]  # Pareto front of all finished searched trials
    feasible: list[Row]  # finished searched trials meeting every constraint
    candidates: list[Row]  # Pareto front of the feasible trials, best by `prefer` first
    baselines: list[Row]  # finished baseline arms
    objectives: list[tuple[str, str]]
    constraints: list[Constraint]
    prefer: str
    direction: str
    reasons: list[str] = field(default_factory=list)
    confirm_seeds: list[int] = field(default_factory=list)
    # MLflow run id -> that trial's metrics on each confirmation seed (same seeds for all).
    confirmed: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    recorded_seeds: int = 0  # seeds behind each recorded (MLflow) mean
    # Baseline arm -> the chosen trial's paired difference on `prefer` over every shared seed
    # (mean, low, high, n, wins, seeds); filled by the confirmation.
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)

    def confirmed_means(self, row: Row) -> dict[str, float]:
        """A confirmed trial's means over its recorded and its confirmation seeds."""
        new = self.confirmed[row["mlflow_run_id"]]
        n_old, n_new = self.recorded_seeds, len(new)
        out = {}
        for metric, old in _numbers(row).items():
            values = [number(m.get(metric)) for m in new]
            if metric.startswith("std/") or any(v is None for v in values):
                continue
            out[metric] = (old * n_old + sum(values)) / (n_old + n_new)
        return out


def sweep_constraints(state: SweepState, baselines: Sequence[Row]) -> tuple[list[Constraint], str]:
    """The space's own constraints as fixed thresholds (a baseline's figure plus offset)."""
    by_arm = {r["arm"]: r for r in baselines}
    out, missing = [], []
    for raw in state.space.get("constraints", []):
        con = SpaceConstraint.model_validate(raw)
        bound = con.bound({arm: _numbers(row) for arm, row in by_arm.items()})
        if bound is None:
            missing.append(con.label)
        else:
            out.append(bound)
    note = f"; skipped (baseline not finished): {', '.join(missing)}" if missing else ""
    return out, note


def nominal_density(row: Row) -> float:
    """A trial's density level if it has one, else its achieved density."""
    level = row.get("level")
    return float(level if level is not None else row["density"])


def _numbers(row: Row) -> dict[str, float]:
    return {k: v for k, v in row.items() if number(v) is not None}


ProgressFn = Callable[[str], None]


def select(
    state: SweepState,
    constraints: Sequence[str] = (),
    prefer: str | None = None,
    confirm_seeds: int = 0,
    *,
    confirm_top: int = 3,
    sweep_constraints_too: bool = True,
    on_progress: ProgressFn | None = None,
    density_budget: float | None = None,
    rows: Sequence[TrialRow] | None = None,
) -> Selection:
    """Choose a searched trial of a sweep (`rows`: its `trial_rows(state, all_metrics=True)`
    when the caller has read them already; one read of a sweep of thousands takes seconds).

    `density_budget` keeps the trials whose density is at most it: their level where the
    space has levels (an ERK mask's achieved density sits a hair off its level), else the
    achieved density.

    1. Pareto front over the space's objectives among finished searched trials;
    2. constraints (`"accuracy>=0.95"`, ...; plus the space's own unless
       `sweep_constraints_too` is False) keep the feasible trials, whose Pareto front are the
       candidates;
    3. with `confirm_seeds` N, the `confirm_top` best candidates and every baseline arm are
       re-trained on N new seeds (the same seeds for all: paired) and ranked by the mean over
       the recorded and the new seeds;
    4. the best candidate by `prefer` (default: the first objective) is chosen.

    Raises ConfigError for a bad constraint, an unknown metric or nothing to choose from.
    """
    if confirm_seeds < 0:
        raise ConfigError(f"--confirm-seeds must be 0 or more, got {confirm_seeds}")
    every = trial_rows(state, all_metrics=True) if rows is None else rows
    rows = [r for r in every if r["state"] == "done"]
    searched = [r for r in rows if r["arm"] == SEARCH_ARM]
    baselines = [r for r in rows if r["arm"] != SEARCH_ARM]
    objectives = [(o["metric"], o["direction"]) for o in state.space["objectives"]]
    metrics = selectable_metrics(rows)
    parsed = [parse_constraint(expr, metrics) for expr in constraints]
    prefer_metric = resolve_metric(prefer, metrics) if prefer else objectives[0][0]
    direction = direction_of(prefer_metric, objectives)
    if not searched:
        raise ConfigError(f"sweep {state.name} has no finished searched trial to choose from")
    if density_budget is not None:
        within = [r for r in searched if nominal_density(r) <= density_budget]
        if not within:
            least = min(nominal_density(r) for r in searched)
            raise ConfigError(
                f"--density-budget {density_budget:g}: no finished searched trial is that "
                f"sparse; the sparsest has density {least:g}"
            )
        searched = within

    own, note = sweep_constraints(state, baselines) if sweep_constraints_too else ([], "")
    applied = parsed + own
    pareto = pareto_front(searched, objectives)
    feasible = [r for r in searched if all(c.holds(r) for c in applied)]
    if not feasible:
        hint = "; or leave the space's own out with --no-space-constraints" if own else ""
        raise ConfigError(
            f"no finished searched trial of {state.name} meets "
            f"{', '.join(map(str, applied))}; {_closest(searched, applied)}{hint}"
        )
    candidates = pareto_front(feasible, objectives)
    ranked = _ranked(candidates, prefer_metric, direction)
    level = ranked[0].get("level")
    if level is not None:  # compared (and confirmed) against the arms of its own level
        baselines = [b for b in baselines if b.get("level") in (None, level)]
    obj_text = ", ".join(f"{m} ({d[:3]})" for m, d in objectives)
    reasons = [
        f"{len(searched)} finished searched trials; {len(pareto)} on the Pareto front over "
        f"{obj_text}",
        f"constraints {', '.join(map(str, applied)) or 'none'}"
        + (" (the space's own included)" if own else "")
        + f"{note}: {len(feasible)} trials meet them, {len(candidates)} of those on their "
        f"Pareto front",
    ]
    selection = Selection(
        chosen=ranked[0],
        pareto=pareto,
        feasible=feasible,
        candidates=ranked,
        baselines=baselines,
        objectives=objectives,
        constraints=applied,
        prefer=prefer_metric,
        direction=direction,
        reasons=reasons,
    )
    if confirm_seeds:
        _confirm(state, selection, confirm_seeds, confirm_top, on_progress)
    else:
        best = format_value(number(ranked[0].get(prefer_metric)))
        reasons.append(
            f"chosen: trial {_label(ranked[0])}, best {prefer_metric} ({direction}) among the "
            f"candidates: {best}"
        )
        reasons += _against_baselines(selection, ranked[0], _numbers(ranked[0]))
    return selection


def _ranked(rows: list[Row], metric: str, direction: str) -> list[Row]:
    """Best first by `metric`; rows without a value last."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: Row) -> tuple[bool, float]:
        value = number(row.get(metric))
        return (value is None, sign * value if value is not None else 0.0)

    return sorted(rows, key=key)


def _closest(rows: list[Row], constraints: list[Constraint]) -> str:
    """Which constraint rules out the most trials: a hint at what to relax."""
    failing = {str(c): sum(not c.holds(r) for r in rows) for c in constraints}
    worst = max(failing, key=failing.__getitem__)
    return f"{worst} rules out {failing[worst]} of {len(rows)}"


def _label(row: Row) -> str:
    number_text = f" (optuna #{row['optuna']})" if row.get("optuna", -1) >= 0 else ""
    return f"{row['trial']}{number_text}, run {row['mlflow_run_id']}"


def _against_baselines(selection: Selection, row: Row, figures: dict[str, float]) -> list[str]:
    """One line per baseline: the chosen trial's figures minus the baseline's."""
    shown = list(dict.fromkeys([selection.prefer, *(m for m, _ in selection.objectives)]))
    shown += [m for m in ("density",) if m not in shown]
    lines = []
    for base in selection.baselines:
        base_figures = selection.confirmed_means(base) if selection.confirmed else _numbers(base)
        parts = []
        for metric in shown:
            mine, theirs = figures.get(metric), base_figures.get(metric)
            if mine is None or theirs is None:
                continue
            parts.append(f"{metric} {mine:.4g} vs {theirs:.4g} ({mine - theirs:+.4g})")
        lines.append(f"against baseline {base['arm']}: " + "; ".join(parts))
    return lines


def _confirm(
    state: SweepState,
    selection: Selection,
    n_seeds: int,
    top: int,
    on_progress: ProgressFn | None,
) -> None:
    """Re-train the top candidates and the baselines on the same new seeds, then re-rank."""
    first = max(int(s) for s in state.space.get("seeds", [0])) + 1
    seeds = list(range(first, first + n_seeds))
    arms = selection.candidates[: max(1, top)] + selection.baselines
    total = len(arms) * n_seeds
    done = 0
    for row in arms:

        def progress(seed: int, row: Row = row) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(f"confirm {done}/{total}: {row['arm']} {row['trial']} seed {seed}")

        selection.confirmed[row["mlflow_run_id"]] = retrain(
            state, row["mlflow_run_id"], seeds, on_seed=progress
        )
    selection.confirm_seeds = seeds
    selection.recorded_seeds = len(state.space.get("seeds", [0]))
    metric, direction = selection.prefer, selection.direction
    top_rows = selection.candidates[: max(1, top)]
    means = {r["mlflow_run_id"]: selection.confirmed_means(r) for r in top_rows}
    confirmed = _ranked([{**r, **means[r["mlflow_run_id"]]} for r in top_rows], metric, direction)
    order = [r["mlflow_run_id"] for r in confirmed]
    by_id = {r["mlflow_run_id"]: r for r in top_rows}
    selection.chosen = by_id[order[0]]
    selection.candidates = [by_id[i] for i in order] + selection.candidates[len(top_rows) :]
    chosen_means = means[order[0]]
    selection.reasons.append(
        f"confirmed on seeds {', '.join(map(str, seeds))} (the same for the top "
        f"{len(top_rows)} candidates and the {len(selection.baselines)} baselines); means "
        f"over recorded and new seeds: "
        + "; ".join(
            f"{by_id[i]['trial']} {metric} {format_value(number(means[i].get(metric)))}"
            for i in order
        )
    )
    selection.reasons.append(
        f"chosen: trial {_label(selection.chosen)}, best {metric} ({direction}) over the "
        f"recorded and the confirmation seeds: {format_value(number(chosen_means.get(metric)))}"
    )
    selection.reasons += _against_baselines(selection, selection.chosen, chosen_means)
    selection.reasons += _paired(state, selection, selection.chosen)


def settings_lines(recorded: RecordedSettings) -> list[str]:
    """The chosen trial's settings (`sweep.records.run_settings`) as `moonsweep select`
    prints them: one line per section, `--set` values, `*` on those its test-time grid
    picked on validation.

    >>> recorded = RecordedSettings({"moon.enabled": True, "moon.alpha": 0.5,
    ...     "eval.primary": "dice", "epochs": 30, "seed": "0,1"}, ["eval.primary"],
    ...     "weights/dice@70", "maximize val/auroc_near")
    >>> for line in settings_lines(recorded):
    ...     print(line)
    settings of the chosen trial (those that apply; * picked on validation):
      moon: enabled true, alpha 0.5
      eval: primary dice*
      run: epochs 30, seed 0,1
      test-time variant kept: weights/dice@70 (maximize val/auroc_near)
    """
    picked = set(recorded.picked)
    sections: dict[str, list[str]] = {}
    for key, value in recorded.settings.items():
        section, _, name = key.rpartition(".")
        star = "*" if key in picked else ""
        sections.setdefault(section or "run", []).append(f"{name} {setting_text(value)}{star}")
    marked = "; * picked on validation" if picked else ""
    head = f"settings of the chosen trial (those that apply{marked}):"
    lines = [head, *(f"  {section}: {', '.join(items)}" for section, items in sections.items())]
    if recorded.pick:
        rule = f" ({recorded.rule})" if recorded.rule else ""
        lines.append(f"  test-time variant kept: {recorded.pick}{rule}")
    return lines


def _paired(state: SweepState, selection: Selection, row: Row) -> list[str]:
    """Per baseline: the chosen trial minus the baseline on each shared seed (the recorded
    seeds and the confirmation seeds), its mean and 95% t-interval, and the wins."""
    metric, maximize = selection.prefer, selection.direction == "maximize"

    def per_seed(r: Row) -> dict[int, dict[str, float]]:
        run_id = r["mlflow_run_id"]
        new = dict(zip(selection.confirm_seeds, selection.confirmed[run_id], strict=True))
        return {**seed_metrics(state, run_id), **new}

    mine = per_seed(row)
    lines = []
    for base in selection.baselines:
        seeds, deltas = paired_deltas(mine, per_seed(base), metric)
        if not deltas:
            continue
        interval = t_interval(deltas)
        wins = sum((d > 0) if maximize else (d < 0) for d in deltas)
        selection.paired[base["arm"]] = {**interval.as_dict(), "wins": wins, "seeds": seeds}
        lines.append(
            f"paired over seeds {', '.join(map(str, seeds))}: {metric} minus {base['arm']} "
            f"{interval.mean:+.4g} (95% t-interval {interval.low:+.4g} to {interval.high:+.4g}), "
            f"better on {wins} of {len(deltas)}"
        )
    return lines
