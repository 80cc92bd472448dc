"""What a sweep's report shows, gathered from its stores (no Ray) and from the chosen model.

`gather(state)` reads the trials (MLflow), chooses a model (`sweep.selection.select`),
compares it seed by seed with the arms (engine/arms.py: moon_auto, sparse, sparse+voting,
dense; those of its own density level when the space has levels) (`sweep.stats`), puts the
best searched trial of every level beside the arms trained there (`sweep.levels`), reads
MOON's alpha per epoch, Optuna's importances, and re-evaluates the
chosen model's checkpoint with the engine's own evaluation (`engine.evaluate.evaluate`) plus
its per-sample outputs for the reliability diagram and the ROC curves. `sweep.render` turns
the result into figures and HTML.

Example:
    >>> from sweep.gather import gather  # doctest: +SKIP
    >>> gathered = gather(state)  # doctest: +SKIP
    >>> gathered.table["test"]["dense"]["accuracy"]  # doctest: +SKIP
    {'mean': 0.91, 'low': 0.89, 'high': 0.93, 'n': 2}
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from optuna.study import StudyDirection

from engine.arms import ALIASES
from engine.checkpoint import load_checkpoint
from engine.config import ConfigError, TrainConfig, validate_config
from engine.data import load_suite
from engine.evaluate import evaluate, score_inputs
from engine.predict import Predictor
from engine.scores import compute_score, mean_probs
from engine.test_time import PickRule
from sweep.contrasts import differences, match
from sweep.levels import Level, compare_levels, pick_rule
from sweep.naming import FINAL_DIR
from sweep.selection import Selection, select
from sweep.spaces import SEARCH_ARM
from sweep.state import (
    SeedRecords,
    SweepState,
    TrialRow,
    finished_study,
    seed_records,
    trial_rows,
)
from sweep.stats import Interval, Paired, arm_table, correct, paired_test
from sweep.stores import mlflow_client

Row = Mapping[str, Any]
Progress = Callable[[str], None]
# The comparison table's figures, as the engine names them on the test parts.
TABLE_METRICS = ("accuracy", "auroc_near", "auroc_far", "ece", "fpr95_near")
# (key, label) of the compared arms: baselines by arm name (engine/arms.py), "chosen" the
# selected trial.
ARMS = (
    ("moon_auto", "moon_auto (MOON as published, auto-tuned)"),
    ("chosen", "best searched"),
    ("sparse", "sparse (no MOON, no voting)"),
    ("sparse+voting", "sparse+voting (voting alone)"),
    ("dense", "dense"),
)
PARTS = (("test", ""), ("val", "val/"))  # (part, the prefix of its metric names)


@dataclass
class Outputs:
    """One part (val or test) of the chosen model's outputs on the suite, re-evaluated."""

    confidence: np.ndarray  # max probability over all outputs, ID samples
    correct: np.ndarray  # argmax over all outputs equals the label
    ece: float
    roc: dict[str, tuple[np.ndarray, np.ndarray]]  # OOD set -> (labels, scores), ID = 1
    auroc: dict[str, float]


@dataclass
class Reevaluation:
    """The chosen model's checkpoint of one seed, evaluated again."""

    seed: int
    config: TrainConfig
    parts: dict[str, Outputs]  # "val", "test"

    def figures(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ece": {p: o.ece for p, o in self.parts.items()},
            "accuracy": {p: float(o.correct.mean()) for p, o in self.parts.items()},
            "auroc": {p: o.auroc for p, o in self.parts.items()},
        }


@dataclass
class Gathered:
    """Everything the report shows, as numbers and rows."""

    state: SweepState
    all_rows: list[TrialRow]
    rows: list[TrialRow]  # the finished trials
    selection: Selection | None
    notes: list[str]  # why the choice was made without the space's constraints, or not at all
    arm_rows: dict[str, TrialRow | None]  # ARMS key -> its trial
    table: dict[str, dict[str, dict[str, Any]]]  # part -> arm -> metric -> interval
    deltas: dict[str, dict[str, dict[str, Any]]]  # part -> arm -> metric -> paired difference
    alpha: dict[str, list[tuple[int, float]]]  # row_label -> (epoch, alpha)
    reevaluated: Reevaluation | None
    study: optuna.Study | None  # trials that ran to the end only
    levels: list[Level] = field(default_factory=list)  # per density level, if the space has any
    importances: dict[str, dict[str, float]] = field(default_factory=dict)
    no_importances: str = ""  # why there are none
    delta_settings: dict[str, str] = field(default_factory=dict)  # arm -> shared setting

    @property
    def chosen(self) -> TrialRow | None:
        return self.selection.chosen if self.selection is not None else None

    @property
    def reasons(self) -> list[str]:
        return (self.selection.reasons if self.selection is not None else []) + self.notes

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return [(o["metric"], o["direction"]) for o in self.state.space["objectives"]]

    @property
    def searched(self) -> list[TrialRow]:
        return [r for r in self.rows if r["arm"] == SEARCH_ARM]

    @property
    def complete(self) -> list[optuna.trial.FrozenTrial]:
        trials = self.study.trials if self.study is not None else []
        return [t for t in trials if t.state.name == "COMPLETE"]


def row_label(row: Row) -> str:
    """A baseline by its arm, a searched trial by Optuna number and Ray id."""
    if row["arm"] != SEARCH_ARM:
        return row["arm"]
    return f"#{row['optuna']} {row['trial']}"


def choose(
    state: SweepState, rows: Sequence[TrialRow] | None = None
) -> tuple[Selection | None, list[str]]:
    """`sweep.selection.select` with the space's constraints; without them when no trial
    meets them (the notes say so); None when nothing can be chosen."""
    try:
        return select(state, rows=rows), []
    except ConfigError as exc:
        first = str(exc)
    try:
        selection = select(state, sweep_constraints_too=False, rows=rows)
    except ConfigError as exc:
        return None, [first, str(exc)]
    return selection, [f"{first}; chosen without the space's constraints instead"]


def arms_of(rows: Sequence[TrialRow], chosen: TrialRow | None) -> dict[str, TrialRow | None]:
    """The finished baseline trial of each of ARMS (old names mapped to the new), at the
    chosen trial's density level when the space has levels, and the chosen trial itself."""
    level = chosen.get("level") if chosen is not None else None
    by_arm: dict[str, TrialRow] = {}
    for row in rows:
        if row["arm"] != SEARCH_ARM and row["level"] in (None, level):
            by_arm[ALIASES.get(row["arm"], row["arm"])] = row
    arm_rows: dict[str, TrialRow | None] = {key: by_arm.get(key) for key, _ in ARMS}
    arm_rows["chosen"] = chosen
    return arm_rows


def compare_arms(
    per_arm: Mapping[str, SeedRecords], rule: PickRule
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Per part, the TABLE_METRICS of each arm at its kept variant (mean, t-interval over
    seeds), the chosen trial's paired differences against each arm at one shared test-time
    setting (`sweep.contrasts.match`, picked on validation), Holm-corrected over the arms
    and metrics of each part's table, keyed by the metric's test-part name; and each
    difference's setting in words."""
    table: dict[str, Any] = {}
    deltas: dict[str, Any] = {}
    per_seed = {arm: r.metrics for arm, r in per_arm.items()}
    chosen = per_arm.get("chosen")
    matches = {
        arm: match(chosen.variants, r.variants, rule, (chosen.picked, r.picked))
        for arm, r in per_arm.items()
        if chosen is not None and arm != "chosen"
    }
    for part, prefix in PARTS:
        metrics = [prefix + m for m in TABLE_METRICS]
        stats, _ = arm_table(per_seed, metrics)
        table[part] = _plain(stats, prefix)
        paired: dict[str, dict[str, Paired]] = {}
        for arm, m in matches.items():
            paired[arm] = {}
            for metric in metrics:
                _, diffs = differences(chosen.variants, per_arm[arm].variants, m, metric)  # type: ignore[union-attr]
                if diffs:
                    paired[arm][metric] = paired_test(diffs)
        correct([p for figures in paired.values() for p in figures.values()])
        deltas[part] = _plain(paired, prefix)
    return table, deltas, {arm: m.setting for arm, m in matches.items()}


def _plain(stats: dict[str, dict[str, Interval]], prefix: str) -> dict[str, dict[str, Any]]:
    return {
        arm: {m.removeprefix(prefix): v.as_dict() for m, v in figures.items()}
        for arm, figures in stats.items()
    }


# The alpha plot draws at most this many searched trials' schedules (one read each).
ALPHA_LINES = 60


def alpha_rows(
    rows: Sequence[Row], first: Sequence[Row] = (), limit: int = ALPHA_LINES
) -> list[Row]:
    """The trials with MOON on whose alpha schedules are drawn: every arm, then the searched
    trials of `first` (the chosen one, the front), then the others evenly spaced over the
    sweep, `limit` searched ones in all.

        >>> rows = [{"arm": "search", "mlflow_run_id": str(i), "moon.enabled": "True"}
        ...         for i in range(10)]
        >>> [r["mlflow_run_id"] for r in alpha_rows(rows, [rows[7]], limit=3)]
        ['7', '0', '4']
    """
    moon = [r for r in rows if str(r.get("moon.enabled")).lower() == "true"]
    arms = [r for r in moon if r["arm"] != SEARCH_ARM]
    ids = {r["mlflow_run_id"] for r in moon}
    picked: dict[str, Row] = {}
    for row in first:
        if row["mlflow_run_id"] in ids and len(picked) < limit:
            picked.setdefault(row["mlflow_run_id"], row)
    rest = [r for r in moon if r["arm"] == SEARCH_ARM and r["mlflow_run_id"] not in picked]
    room = limit - len(picked)
    if room > 0 and rest:
        step = max(1, len(rest) // room)
        for row in rest[::step][:room]:
            picked[row["mlflow_run_id"]] = row
    return arms + list(picked.values())


def alpha_histories(state: SweepState, rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """MOON's alpha per epoch of each of `rows` with MOON on, by `row_label`."""
    client = mlflow_client(state.tracking_uri)
    out = {}
    for row in rows:
        if str(row.get("moon.enabled")).lower() != "true":
            continue
        history = client.get_metric_history(row["mlflow_run_id"], "alpha")
        out[row_label(row)] = sorted((int(m.step), float(m.value)) for m in history)
    return out


def param_importances(study: optuna.Study, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Optuna's importances (its default evaluator, PED-ANOVA) per objective, keyed by the
    objectives' `names`; a maximised objective is negated (the evaluator takes lower as
    better)."""
    out = {}
    for i, direction in enumerate(study.directions):
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[names[i]] = optuna.importance.get_param_importances(
                study, target=lambda t, i=i, sign=sign: sign * t.values[i]
            )
    return out


# -- the chosen model, re-evaluated ---------------------------------------------------------


def chosen_checkpoint(state: SweepState, row: Row) -> tuple[int, dict[str, Any]]:
    """The first seed's final model of a trial: (seed, checkpoint payload)."""
    seed = int(state.space["seeds"][0])
    client = mlflow_client(state.tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{FINAL_DIR}/model-seed{seed}.pt"
        local = client.download_artifacts(row["mlflow_run_id"], path, tmp)
        return seed, load_checkpoint(local)


@torch.no_grad()
def reevaluate(seed: int, payload: dict[str, Any]) -> Reevaluation:
    """A saved model (a `final/model-seed<s>.pt` payload) on the validation and test parts:
    its figures from the engine's evaluation, its per-sample outputs (confidence, correct,
    the config's primary OOD score) for the plots."""
    cfg = validate_config(payload["config"])
    suite = load_suite(cfg.data)
    predictor = Predictor.from_checkpoint(payload, suite)
    models, dice = predictor.models, predictor.dice
    metrics = evaluate(models, suite, cfg, masks=None)
    k, unknown, score = suite.num_classes, cfg.moon.enabled, cfg.eval.primary
    parts = {}
    for part, prefix in PARTS:
        split = getattr(suite, part)
        id_inputs = score_inputs(models, split.x, k, unknown, dice)
        probs = mean_probs(id_inputs)
        id_scores = compute_score(score, id_inputs).numpy()
        roc = {}
        for ood in suite.ood:
            ood_inputs = score_inputs(models, getattr(ood, part), k, unknown, dice)
            ood_scores = compute_score(score, ood_inputs)
            labels = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
            roc[ood.name] = (labels, np.r_[id_scores, ood_scores.numpy()])
        parts[part] = Outputs(
            confidence=probs.max(dim=1).values.numpy(),
            correct=(probs.argmax(dim=1) == split.y).numpy(),
            ece=metrics[f"{prefix}ece"],
            roc=roc,
            auroc={ood.name: metrics[f"{prefix}auroc/{ood.name}"] for ood in suite.ood},
        )
    return Reevaluation(seed, cfg, parts)


# -- all of it --------------------------------------------------------------------------------


def gather(state: SweepState, progress: Progress = lambda _: None) -> Gathered:
    """Everything the report shows; ConfigError when the sweep has no finished trial."""
    all_rows = trial_rows(state, all_metrics=True)
    rows = [r for r in all_rows if r["state"] == "done"]
    if not rows:
        raise ConfigError(f"sweep {state.name} has no finished trial yet; nothing to report")
    progress(f"{len(rows)} finished trials of {len(all_rows)}; choosing a model")
    selection, notes = choose(state, all_rows)
    chosen = selection.chosen if selection is not None else None

    progress("per-seed figures of the compared arms")
    arm_rows = arms_of(rows, chosen)
    per_arm = {
        k: seed_records(state, r["mlflow_run_id"]) for k, r in arm_rows.items() if r is not None
    }
    table, deltas, delta_settings = compare_arms(per_arm, pick_rule(state))

    levels = compare_levels(state, all_rows)
    if levels:
        progress(f"{len(levels)} density levels: the best searched trial against the arms")

    progress("alpha schedules")
    first = ([chosen] if chosen is not None else []) + (selection.pareto if selection else [])
    alpha = alpha_histories(state, alpha_rows(rows, first))

    reevaluated = None
    if chosen is not None:
        seed, payload = chosen_checkpoint(state, chosen)
        progress(f"re-evaluating the chosen model (seed {seed})")
        reevaluated = reevaluate(seed, payload)

    progress("Optuna: importances and hypervolume")
    gathered = Gathered(
        state,
        all_rows,
        rows,
        selection,
        notes,
        arm_rows,
        table,
        deltas,
        alpha,
        reevaluated,
        study=finished_study(state),  # early-stopped trials hold mid-training figures: not here
        levels=levels,
        delta_settings=delta_settings,
    )
    gathered.no_importances = "fewer than 2 complete Optuna trials"
    if len(gathered.complete) >= 2:
        try:
            names = [m for m, _ in gathered.objectives]
            gathered.importances = param_importances(gathered.study, names)
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varied
            gathered.no_importances = f"no importances: {exc}"
    return gathered
