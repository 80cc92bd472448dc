"""Seed racing and test-time variants in real sweeps: a hopeless trial stops after its race
seeds and is never a candidate; every searched trial keeps its rule's test-time pick; a
killed and resumed sweep with racing ends with the stores of a clean run."""

from __future__ import annotations

import json
import math
import re
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import optuna
import pytest
from chaos import (
    audit,
    child_runs,
    kill_driver,
    optuna_trials,
    run_cli,
    start_driver,
    stop_group,
    trial_checkpoints,
    wait_until,
)
from scipy import stats

from sweep.levels import compare_levels
from sweep.racing import (
    Limit,
    pooled_sd,
    raced_by,
    reference_spread,
    spread_pairs,
    trial_spread,
)
from sweep.search import SweepSearcher
from sweep.selection import select
from sweep.spaces import SEARCH_ARM, arm_label, load_space
from sweep.state import load_run_json, load_state, trial_rows
from sweep.stores import mlflow_client

pytestmark = pytest.mark.slow

EPOCHS, SEEDS, RACE = 6, [0, 1, 2], 2
# A learning rate of 1e-4 leaves a trial near chance: dominated by the level's arms on
# every objective after its race seeds. Random sampler seed 1 draws 0.12, 1e-4, 0.12.
# alpha 0.2: the trial's spread comes from the one full-seed trial before it paired with an
# arm, df 2 on 3 seeds, and at 0.05 / 4 references t(0.9875, 2) = 6.2 leaves 2 race seeds
# unable to tell it from the arms (0.2 / 4: t = 2.9, about the margin the old pooling's
# df 12 gave at 0.05; the lr 0.12 trials are kept by as much).
ALPHA = 0.2
SPACE = f"""
base: default
set:
  epochs: {EPOCHS}
  voting.epochs: 2
  moon.warmup_epochs: 2
  model.width: 64
  sparsity.update_interval: 5
  sparsity.method: rigl
levels: [0.1]
parameters:
  optim.lr: {{distribution: categorical, choices: [0.0001, 0.12]}}
  moon.init_factor: {{distribution: log_uniform, low: 1, high: 256}}
objectives:
  - {{metric: val/auroc_near, direction: maximize}}
  - {{metric: val/accuracy, direction: maximize}}
test_time:
  voting.mode: [weights, predictions]
  eval.primary: [msp, energy, dice]
  eval.dice_percentile: [70, 90]
  pick: {{metric: val/auroc_near, direction: maximize}}
race: {{seeds: {RACE}, alpha: {ALPHA}}}
sampler: {{name: random, seed: 1}}
seeds: {SEEDS}
budget: {{trials: 3, max_concurrent: 1}}   # one at a time: every arm is a reference in time
early_stopping: null
report_every: 3
"""
RACE_LINE = f"race: {{seeds: {RACE}, alpha: {ALPHA}}}"
# At 0.05: the limit alone stops the lr 1e-4 trial (tests below).
LIMITS_RACE_LINE = f"race: {{seeds: {RACE}, alpha: 0.05, constraints: true}}"
assert RACE_LINE in SPACE
VARIANTS = [
    f"{mode}/{score}"
    for mode in ("weights", "predictions")
    for score in ("msp", "energy", "dice@70", "dice@90")
]


def test_raced_by_against_a_hand_computed_case() -> None:
    refs = {
        "a": {0: {"m": 0.90, "n": 0.5}, 1: {"m": 0.92, "n": 0.6}, 2: {"m": 0.91, "n": 0.5}},
        "b": {0: {"m": 0.88, "n": 0.4}, 1: {"m": 0.93, "n": 0.6}, 2: {"m": 0.90, "n": 0.55}},
    }
    # No full-seed searched trial (no `spread`): the references' one disjoint pair (a, b),
    # df 2, its sd widened by 1 / 0.7.
    d = np.array([0.90 - 0.88, 0.92 - 0.93, 0.91 - 0.90])
    sd, df = reference_spread(refs, "m")
    assert df == 2 and sd == pytest.approx(np.std(d, ddof=1) / 0.7)  # 0.0153 / 0.7 = 0.0218
    trial = {0: {"m": 0.70, "n": 0.1}, 1: {"m": 0.71, "n": 0.1}}
    # By hand: trial - a on m is -0.20, -0.21; bound = mean + t(1 - 0.05/2, 2) * sd / sqrt(2)
    # = -0.205 + 4.303 * 0.0218 / 1.414 = -0.139; on n (differences 0.1, 0, -0.05: sd
    # 0.0764 / 0.7 = 0.109) -0.45 + 4.303 * 0.109 / 1.414 = -0.118.
    bound = -0.205 + stats.t.ppf(1 - 0.025, 2) * sd / math.sqrt(2)
    sd_n, _ = reference_spread(refs, "n")
    assert sd_n == pytest.approx(np.std([0.1, 0.0, -0.05], ddof=1) / 0.7)
    bound_n = -0.45 + stats.t.ppf(1 - 0.025, 2) * sd_n / math.sqrt(2)
    assert bound == pytest.approx(-0.1386, abs=1e-4) and bound_n == pytest.approx(-0.1180, abs=1e-4)
    assert raced_by(trial, refs, [("m", "max"), ("n", "max")], alpha=0.05) == "a"
    # Better than every reference on n (a minimized objective here): not dominated.
    assert raced_by(trial, refs, [("m", "max"), ("n", "min")], alpha=0.05) is None
    # Within noise of the references: kept.
    close = {0: {"m": 0.89, "n": 0.5}, 1: {"m": 0.92, "n": 0.6}}
    assert raced_by(close, refs, [("m", "max"), ("n", "max")], alpha=0.05) is None
    # A reference lacking a race seed cannot judge; with none left, nothing is decided.
    assert raced_by({5: {"m": 0.1, "n": 0.1}}, refs, [("m", "max")], alpha=0.05) is None


def test_raced_by_with_the_trials_spread_against_a_hand_computed_case() -> None:
    """The spread a trial carries (searched trial vs arm, its own df) decides where the
    widened references' spread would not."""
    refs = {
        "a": {0: {"m": 0.90, "n": 0.5}, 1: {"m": 0.92, "n": 0.6}, 2: {"m": 0.91, "n": 0.5}},
        "b": {0: {"m": 0.88, "n": 0.4}, 1: {"m": 0.93, "n": 0.6}, 2: {"m": 0.90, "n": 0.55}},
    }
    trial = {0: {"m": 0.85, "n": 0.1}, 1: {"m": 0.86, "n": 0.1}}
    objectives = [("m", "max"), ("n", "max")]
    # Widened (sd 0.0218, df 2): on m, trial - a is -0.05, -0.06 and trial - b -0.03, -0.07,
    # -0.055 + 4.303 * 0.0218 / 1.414 = +0.011 and -0.05 + 0.066 = +0.016: neither below zero.
    assert raced_by(trial, refs, objectives, alpha=0.05) is None
    # With sd 0.02 on df 12: t(0.975, 12) = 2.179, m: -0.055 + 2.179 * 0.02 / 1.414 = -0.024;
    # n (sd 0.05): -0.45 + 2.179 * 0.05 / 1.414 = -0.373. Dominated by a.
    t12 = stats.t.ppf(0.975, 12)
    assert -0.055 + t12 * 0.02 / math.sqrt(2) == pytest.approx(-0.0242, abs=1e-4)
    spread = {"m": [0.02, 12], "n": [0.05, 12]}
    assert raced_by(trial, refs, objectives, alpha=0.05, spread=spread) == "a"
    # A metric the spread lacks (or with df 0) takes the widened references' own: kept.
    assert raced_by(trial, refs, objectives, alpha=0.05, spread={"n": [0.05, 12]}) is None
    assert raced_by(trial, refs, objectives, 0.05, spread={**spread, "m": [0.02, 0]}) is None


def test_the_spread_pairs_full_seed_searched_trials_with_arms() -> None:
    """Disjoint pairs in a fixed order, df the sum of each pair's n - 1, by hand."""
    arms = {
        "sparse@0.1": {0: {"m": 0.5}, 1: {"m": 0.6}, 2: {"m": 0.4}},
        "moon_auto@0.1": {0: {"m": 0.7}, 1: {"m": 0.7}, 2: {"m": 0.7}},
        "sparse+voting@0.1": {0: {"m": 0.6}, 1: {"m": 0.6}, 2: {"m": 0.6}},
    }
    searched = {
        "search #2": {0: {"m": 0.8}, 1: {"m": 0.9}, 2: {"m": 1.0}},
        "search #7": {0: {"m": 0.6}, 1: {"m": 0.8}, 2: {"m": 0.6}},
    }
    assert spread_pairs(list(searched), arms) == [
        ("search #2", "moon_auto@0.1"),
        ("search #7", "sparse+voting@0.1"),
    ]
    # Differences 0.1, 0.2, 0.3 (variance 0.01) and 0, 0.2, 0 (variance 0.04 / 3).
    sd, df = trial_spread(searched, arms, "m")
    assert df == 4 and sd == pytest.approx(math.sqrt((0.01 * 2 + 0.04 / 3 * 2) / 4))
    assert trial_spread({}, arms, "m") == (pytest.approx(math.nan, nan_ok=True), 0)


def test_a_missed_limit_races_a_trial_out_against_a_hand_computed_bound() -> None:
    configs = {
        "a": {0: {"acc": 0.80}, 1: {"acc": 0.84}, 2: {"acc": 0.82}},
        "b": {0: {"acc": 0.70}, 1: {"acc": 0.71}, 2: {"acc": 0.69}},
    }
    sd, df = pooled_sd(configs, "acc")
    # By hand: each config's variance (ddof 1) is 4e-4 and 1e-4, df 2 each.
    assert df == 4 and sd == pytest.approx(math.sqrt((4e-4 * 2 + 1e-4 * 2) / 4))
    limit = Limit(label="acc>=0.9", metric="acc", op=">=", threshold=0.9, sd=sd, df=df)
    trial = {0: {"acc": 0.87}, 1: {"acc": 0.88}}
    # margins -0.03, -0.02; bound = -0.025 + t(0.95, 4) * sd / sqrt(2) = -0.0025 < 0.
    bound = -0.025 + stats.t.ppf(0.95, 4) * sd / math.sqrt(2)
    assert bound < 0
    assert raced_by(trial, {}, [("acc", "max")], alpha=0.05, limits=[limit]) == "acc>=0.9"
    # A reference beside it halves the level (Bonferroni): t(0.975, 4) makes the bound
    # positive, and the reference (0.875 on these seeds) does not dominate the trial.
    assert -0.025 + stats.t.ppf(0.975, 4) * sd / math.sqrt(2) > 0
    ref = {"r": {0: {"acc": 0.87}, 1: {"acc": 0.88}}}
    assert raced_by(trial, ref, [("acc", "max")], alpha=0.05, limits=[limit]) is None
    # An upper limit (<=) on the same figures is met: kept.
    upper = limit.model_copy(update={"op": "<=", "label": "acc<=0.9"})
    assert raced_by(trial, {}, [("acc", "max")], alpha=0.05, limits=[upper]) is None
    # No pooled spread: the trial's own (df 1, t(0.95, 1) = 6.3) cannot decide it.
    alone = limit.model_copy(update={"sd": None, "df": 0})
    assert raced_by(trial, {}, [("acc", "max")], alpha=0.05, limits=[alone]) is None
    # A race seed without the metric: nothing to judge.
    assert raced_by({0: {"x": 1.0}}, {}, [("acc", "max")], alpha=0.05, limits=[limit]) is None


def test_limits_carry_the_constraints_threshold_and_the_levels_spread(tmp_path: Path) -> None:
    """A trial's limits are fixed at its suggestion: the constraint's threshold from the
    baseline's result, the spread of its metric over the configs at the trial's level."""
    constrained = (
        SPACE
        + 'constraints:\n  - {metric: val/accuracy, op: ">=", baseline: dense, offset: -0.05}\n'
    )
    (tmp_path / "off.yaml").write_text(constrained)
    (tmp_path / "space.yaml").write_text(constrained.replace(RACE_LINE, LIMITS_RACE_LINE))
    # Off unless the race asks for them: a cut sweep would lose every searched trial.
    off = SweepSearcher(load_space(str(tmp_path / "off.yaml")), "sqlite://", "off")
    assert off.limits(0.1) == [] and not off.space.race.constraints
    space = load_space(str(tmp_path / "space.yaml"))
    searcher = SweepSearcher(space, f"sqlite:///{tmp_path / 'optuna.db'}", "limits")
    accuracy = {"dense": [0.9, 0.92, 0.94]}
    arms = []
    while searcher.pending_arms:
        arms.append(f"arm{len(arms)}")
        searcher.suggest(arms[-1])
        acc = accuracy.get(searcher.trial_arm[arms[-1]], [0.5, 0.6, 0.7])
        per_seed = {
            s: {"val/auroc_near": 0.5, "val/accuracy": a} for s, a in zip(SEEDS, acc, strict=True)
        }
        result = {"final": 1, "val/auroc_near": 0.5, "val/accuracy": float(np.mean(acc))}
        searcher.on_trial_complete(arms[-1], {**result, "seed_values": json.dumps(per_seed)})
    (limit,) = searcher.suggest("t0")["limits"]
    assert limit["threshold"] == pytest.approx(0.92 - 0.05)
    assert limit["op"] == ">=" and limit["metric"] == "val/accuracy"
    # The level's three sparse arms, each with variance 0.01 over 3 seeds (dense is at no level).
    assert limit["df"] == 6 and limit["sd"] == pytest.approx(0.1)
    assert limit["label"] == "val/accuracy>=0.87"


def test_references_are_the_levels_arms_and_its_front(tmp_path: Path) -> None:
    """A searched trial races against the arms and the front at its level, not against every
    trial that ran there: dominated ones drop out, so a config stays small at any size."""
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(str(tmp_path / "space.yaml"))
    space.budget.trials = 5
    searcher = SweepSearcher(space, f"sqlite:///{tmp_path / 'optuna.db'}", "refs")

    def finish(trial_id: str, near: list[float], acc: list[float]) -> None:
        per_seed = {
            s: {"val/auroc_near": n, "val/accuracy": a}
            for s, n, a in zip(SEEDS, near, acc, strict=True)
        }
        result = {
            "final": 1,
            "val/auroc_near": float(np.mean(near)),
            "val/accuracy": float(np.mean(acc)),
        }
        searcher.on_trial_complete(trial_id, {**result, "seed_values": json.dumps(per_seed)})

    arms = []
    while searcher.pending_arms:
        arms.append(f"arm{len(arms)}")
        config = searcher.suggest(arms[-1])
        finish(arms[-1], [0.5] * 3, [0.5] * 3)
    # Means (auroc_near, accuracy): a (0.9, 0.6) and b (0.6, 0.9) are the front; c (0.8, 0.5)
    # is dominated by a, then d (0.95, 0.95) dominates a, b and c.
    figures = {"a": (0.9, 0.6), "b": (0.6, 0.9), "c": (0.8, 0.5), "d": (0.95, 0.95)}
    numbers = {}
    for name, (near, acc) in list(figures.items())[:3]:
        config = searcher.suggest(name)
        numbers[name] = config["optuna_trial"]
        finish(name, [near] * 3, [acc] * 3)
    config = searcher.suggest("next")
    level_arms = {arm_label(arm, 0.1) for arm in space.baselines if arm != "dense"}
    searched = {f"{SEARCH_ARM} #{numbers[n]}" for n in ("a", "b")}
    assert set(config["references"]) == level_arms | searched
    numbers["d"] = config["optuna_trial"]
    finish("next", [0.95] * 3, [0.95] * 3)
    assert set(searcher.suggest("last")["references"]) == level_arms | {
        f"{SEARCH_ARM} #{numbers['d']}"
    }


def test_a_trials_spread_pairs_the_levels_full_seed_trials_with_its_arms(tmp_path: Path) -> None:
    """`config["spread"]`, fixed at suggestion: the level's searched trials that ran every
    seed, earliest Optuna trial first whatever order they finished in, each with one arm
    by label; none before the first such trial, and a raced-out trial is never one."""
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(str(tmp_path / "space.yaml"))
    space.budget.trials = 5
    searcher = SweepSearcher(space, f"sqlite:///{tmp_path / 'optuna.db'}", "spread")

    def finish(trial_id: str, near: list[float]) -> None:
        per_seed = {
            s: {"val/auroc_near": n, "val/accuracy": 0.5} for s, n in zip(SEEDS, near, strict=True)
        }
        result = {"final": 1, "val/auroc_near": float(np.mean(near)), "val/accuracy": 0.5}
        searcher.on_trial_complete(trial_id, {**result, "seed_values": json.dumps(per_seed)})

    near = {"moon_auto": [0.7, 0.7, 0.7], "sparse+voting": [0.6, 0.6, 0.6]}
    arms = []
    while searcher.pending_arms:
        arms.append(f"arm{len(arms)}")
        config = searcher.suggest(arms[-1])
        finish(arms[-1], near.get(config["arm"], [0.5, 0.6, 0.4]))
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["spread"] == second["spread"] == {}  # no full-seed searched trial yet
    finish("b", [0.6, 0.8, 0.6])  # Optuna trial 1, finished first
    finish("a", [0.8, 0.9, 1.0])  # trial 0
    # By hand: (#0, moon_auto@0.1) differences 0.1, 0.2, 0.3 (variance 0.01) and (#1,
    # sparse+voting@0.1) 0, 0.2, 0 (variance 0.04 / 3), 2 df each; accuracy differs by 0
    # on every seed (sd 0 on df 4). sparse@0.1 is in no pair.
    spread = searcher.suggest("c")["spread"]
    assert set(spread) == {"val/auroc_near", "val/accuracy"}
    assert spread["val/auroc_near"] == [
        pytest.approx(math.sqrt((0.01 * 2 + 0.04 / 3 * 2) / 4)),
        4,
    ]
    assert spread["val/accuracy"] == [0.0, 4]
    raced = {0: {"val/auroc_near": 0.1, "val/accuracy": 0.1}, 1: {"val/auroc_near": 0.1}}
    searcher.on_trial_complete(
        "c", {"final": 1, "raced_out": 1, "val/auroc_near": 0.1, "val/accuracy": 0.1,
              "seed_values": json.dumps(raced)},
    )  # fmt: skip
    assert searcher.suggest("d")["spread"] == spread


# Monte Carlo of racing at one level under the null: the tested trial, the arms and the
# searched trials all have the same true mean, so every race-out is a false one. Seed noise
# as at a level of the default space (3 arms, 5 seeds, 2 race seeds): a part every config
# shares on a seed (the data order), a part the arms share (one method with a setting or two
# changed) and each config's own, so that two arms differ from seed to seed 0.76 times as
# much as a searched trial and an arm: sqrt(2 OWN^2 / (2 OWN^2 + ARMS_SHARED^2)).
SIM_DRAWS, SIM_ARMS, SIM_SEEDS, SIM_ALPHA = 4000, 3, 5, 0.05
SHARED, ARMS_SHARED, OWN = 2.0, 1.2, 1.0
# One objective: at equal means more objectives only lower the rate (the trial must be
# dominated on all); one is the least favourable case, a trial far worse on all the others.
SIM_OBJECTIVES = [("m", "max")]
# Monte Carlo error allowed on a rate of SIM_ALPHA: 3 standard errors.
SIM_BOUND = SIM_ALPHA + 3 * math.sqrt(SIM_ALPHA * (1 - SIM_ALPHA) / SIM_DRAWS)


def _old_pooled_spread(references: dict, metric: str) -> tuple[float, int]:
    """The rule before: the spread of a paired difference pooled over every pair of
    references (pairs sharing members), df the sum of each pair's n - 1, not widened."""
    squares, df = 0.0, 0
    for a, b in combinations(references.values(), 2):
        d = [a[s][metric] - b[s][metric] for s in sorted(set(a) & set(b))]
        squares += float(np.var(d, ddof=1)) * (len(d) - 1)
        df += len(d) - 1
    return math.sqrt(squares / df), df


def _false_race_outs(full_seed: int, front: int, seed: int) -> tuple[float, float]:
    """(new rule's, old pooling's) rate of race-outs over SIM_DRAWS levels, each with
    SIM_ARMS arms and `full_seed` searched trials that ran every seed, the first `front` of
    them references too; the trial is tested on its race seeds."""
    rng = np.random.default_rng(seed)
    seeds = list(range(SIM_SEEDS))

    def per_seed(values: np.ndarray) -> dict[int, dict[str, float]]:
        return {s: {"m": float(v)} for s, v in zip(seeds, values, strict=False)}

    new = old = 0
    for _ in range(SIM_DRAWS):
        shared = SHARED * rng.standard_normal(SIM_SEEDS)
        arm_values = shared + ARMS_SHARED * rng.standard_normal(SIM_SEEDS)
        arms = {
            f"arm{i}@0.1": per_seed(arm_values + OWN * rng.standard_normal(SIM_SEEDS))
            for i in range(SIM_ARMS)
        }
        searched = {
            f"{SEARCH_ARM} #{i}": per_seed(shared + OWN * rng.standard_normal(SIM_SEEDS))
            for i in range(full_seed)
        }
        trial = per_seed((shared + OWN * rng.standard_normal(SIM_SEEDS))[:RACE])
        references = {**arms, **dict(list(searched.items())[:front])}
        # As the searcher puts it in the trial's config (SweepSearcher.spread).
        spread = {
            m: [sd, df] for m, _ in SIM_OBJECTIVES for sd, df in [trial_spread(searched, arms, m)]
            if df
        }  # fmt: skip
        new += raced_by(trial, references, SIM_OBJECTIVES, SIM_ALPHA, spread=spread) is not None
        pooled = {m: _old_pooled_spread(references, m) for m, _ in SIM_OBJECTIVES}
        old += raced_by(trial, references, SIM_OBJECTIVES, SIM_ALPHA, spread=pooled) is not None
    return new / SIM_DRAWS, old / SIM_DRAWS


@pytest.mark.parametrize(
    ("full_seed", "front"),
    [(0, 0), (1, 1), (3, 1)],
    ids=["no-full-seed-trial", "one-full-seed-trial", "three-full-seed-trials"],
)
def test_racing_holds_its_error_rate_in_a_simulation(full_seed: int, front: int) -> None:
    """A trial as good as every reference is raced out at most at rate alpha (up to the
    Monte Carlo error): before a full-seed trial exists (the widened references' spread),
    with one (df 4) and from the third on (df 12, every arm in a pair)."""
    new, _ = _false_race_outs(full_seed, front, seed=full_seed)
    assert new <= SIM_BOUND, (new, SIM_BOUND)


def test_the_old_pooling_over_every_pair_of_references_breaks_the_error_rate() -> None:
    """The simulation has the power to see the old rule's fault: pooled over every pair of
    the level's arms (closer to each other than a trial is to them, df counted 12 where 8
    are independent), the same draws race out far more than alpha."""
    new, old = _false_race_outs(0, 0, seed=0)
    assert new <= SIM_BOUND < old, (new, SIM_BOUND, old)


def _sweep(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "space.yaml").write_text(SPACE)
    return root / "space.yaml"


@pytest.fixture(scope="module")
def raced(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("racing")
    space = _sweep(root)
    done = run_cli("run", "--space", space, "--name", "k", "--workdir", root / "w", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "w"


def _by_lr(workdir: Path) -> dict[int, list[optuna.trial.FrozenTrial]]:
    out: dict[int, list] = {}
    for t in optuna_trials(workdir, "k"):
        out.setdefault(t.number, []).append(t)
    return {n: ts[0] for n, ts in out.items()}


def test_hopeless_trial_raced_out_and_never_a_candidate(raced: Path) -> None:
    trials = _by_lr(raced)
    assert [t.params["optim.lr"] for t in trials.values()] == [0.12, 0.0001, 0.12]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    hopeless = trials[1]
    assert hopeless.user_attrs["raced_out"] is True
    assert hopeless.user_attrs["raced_by"].endswith("@0.1")
    assert hopeless.user_attrs["epochs_trained"] == RACE * EPOCHS
    for n in (0, 2):
        assert "raced_out" not in trials[n].user_attrs
        assert trials[n].user_attrs["epochs_trained"] == len(SEEDS) * EPOCHS
    state, _ = load_state("k", raced)
    rows = {r["optuna"]: r for r in trial_rows(state) if r["arm"] == "search"}
    assert rows[1]["state"] == "raced" and rows[0]["state"] == rows[2]["state"] == "done"
    client = mlflow_client(state.tracking_uri)
    files = {a.path for a in client.list_artifacts(rows[1]["mlflow_run_id"], "final")}
    assert {f"final/metrics-seed{s}.json" for s in SEEDS[:RACE]} <= files
    assert f"final/metrics-seed{SEEDS[-1]}.json" not in files
    selection = select(state)
    seen = [selection.chosen, *selection.pareto, *selection.feasible, *selection.candidates]
    assert rows[1]["mlflow_run_id"] not in {r["mlflow_run_id"] for r in seen}
    assert len(selection.pareto) >= 1  # the others are candidates
    for level in compare_levels(state):
        assert all(a.run_id != rows[1]["mlflow_run_id"] for a in level.arms.values())


def test_every_searched_trial_keeps_its_rules_pick(raced: Path) -> None:
    state, _ = load_state("k", raced)
    client = mlflow_client(state.tracking_uri)
    trials = _by_lr(raced)
    for row in (r for r in trial_rows(state, all_metrics=True) if r["arm"] == "search"):
        table = load_run_json(client, row["mlflow_run_id"], "final/variants.json")
        assert [v["variant"] for v in table] == VARIANTS
        best = max(table, key=lambda v: v["val/auroc_near"])  # first of a tie, as `pick`
        assert [v["variant"] for v in table if v["picked"]] == [best["variant"]]
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["moonsweep.test_time"] == best["variant"]
        assert trials[row["optuna"]].user_attrs["test_time_pick"] == best["variant"]
        for metric in ("val/auroc_near", "val/accuracy", "auroc_near", "ece"):
            assert run.data.metrics[metric] == pytest.approx(best[metric], abs=1e-12)


def test_replay_gives_the_same_pick(raced: Path) -> None:
    out = run_cli("replay", "k", "0", "--workdir", raced, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    pick = _by_lr(raced)[0].user_attrs["test_time_pick"]
    assert f"test-time pick: {pick} (recorded: {pick})" in out.stderr
    worst = float(re.search(r"largest difference (\S+)", out.stderr).group(1))
    assert worst < 1e-9  # the same figures (means over seeds summed in another order)


def test_killed_and_resumed_with_racing_matches_a_clean_run(raced: Path, tmp_path: Path) -> None:
    space, workdir = _sweep(tmp_path), tmp_path / "w"
    driver = start_driver("run", "--space", space, "--name", "k", "--workdir", workdir,
                          log=tmp_path / "driver.log")  # fmt: skip
    try:
        # Killed while the hopeless trial trains its race seeds (the 6th of 7 trials), once
        # it has checkpointed and Ray has saved it (a trial asked for and not yet saved is
        # failed and asked for again, with another draw: tests/test_reliability.py).
        wait_until(
            lambda: (
                (workdir / "k" / "sweep.json").exists()
                and sum(r.info.status == "FINISHED" for r in child_runs(workdir, "k")) >= 5
                and len(trial_checkpoints(workdir, "k")) >= 6
            ),
            600,
            "the sixth trial's first checkpoint",
        )
        time.sleep(3)  # Ray saves its experiment state every second or so
        killed = kill_driver(driver, workdir, "k")
    finally:
        stop_group(driver)
    final = run_cli("resume", "k", "--workdir", workdir, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    runs = child_runs(workdir, "k")
    raced_ids = {r.data.tags["ray.trial_id"] for r in runs if "moonsweep.raced_out" in r.data.tags}
    assert len(raced_ids) == 1
    assert {r.info.status for r in runs if r.data.tags["ray.trial_id"] in raced_ids} == {"KILLED"}
    # A raced trial ends KILLED (not a candidate), wherever the kill landed in its race.
    before = {t: v for t, v in killed["finished"].items() if t not in raced_ids}
    report = audit(workdir, "k", before, expected=7)
    assert report["runs"] == 7 and report["lost"] == 0 and report["run_twice"] == 0
    assert report["duplicate_runs"] == 0 and report["stale_optuna"] == 0
    # Six FINISHED and the raced one KILLED: all seven ended as they should.
    assert report["finished_runs"] == 7 and report["spooled"] == 0
    clean, again = _by_lr(raced), _by_lr(workdir)
    for n, trial in clean.items():
        other = again[n]
        assert other.params == trial.params and other.state == trial.state
        assert other.values == pytest.approx(trial.values, abs=1e-9)
        keep = ("raced_out", "raced_by", "epochs_trained", "test_time_pick")
        assert {k: other.user_attrs.get(k) for k in keep} == {
            k: trial.user_attrs.get(k) for k in keep
        }


# Only the dense arm (at no level) and a constraint on it: at level 0.1 no arm is trained,
# so only the constraint's limit can stop the lr 1e-4 trial (about 0.4 accuracy after 6
# epochs; lr 0.12 about 0.8, dense about 0.96: 0.25 below dense parts them).
OFFSET = -0.25
LIMIT_SPACE = (
    SPACE.replace(RACE_LINE, LIMITS_RACE_LINE)
    + f"""baselines:
  dense: {{sparsity.method: dense, moon.enabled: false, voting.mode: "off"}}
constraints:
  - {{metric: val/accuracy, op: ">=", baseline: dense, offset: {OFFSET}}}
"""
)


def test_a_trial_missing_the_constraint_is_raced_out_by_its_limit(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(LIMIT_SPACE)
    done = run_cli(
        "run", "--space", tmp_path / "space.yaml", "--name", "lim", "--workdir", tmp_path / "w",
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trials = {t.number: t for t in optuna_trials(tmp_path / "w", "lim")}
    assert [trials[n].params["optim.lr"] for n in range(3)] == [0.12, 0.0001, 0.12]
    state, _ = load_state("lim", tmp_path / "w")
    rows = {r["optuna"]: r for r in trial_rows(state) if r["arm"] == SEARCH_ARM}
    dense = next(r for r in trial_rows(state, all_metrics=True) if r["arm"] == "dense")
    hopeless = trials[1]
    assert hopeless.user_attrs["raced_out"] is True
    assert hopeless.user_attrs["epochs_trained"] == RACE * EPOCHS
    # The limit's label carries the threshold the trial was held to: dense's accuracy + OFFSET.
    label = hopeless.user_attrs["raced_by"]
    assert label.startswith("val/accuracy>=")
    assert float(label.removeprefix("val/accuracy>=")) == pytest.approx(
        dense["val/accuracy"] + OFFSET, abs=5e-4
    )
    # Told as infeasible (the sampler learns from it), never a candidate.
    assert hopeless.state == optuna.trial.TrialState.COMPLETE
    assert max(hopeless.constraints.values()) > 0
    assert rows[1]["state"] == "raced"
    for n in (0, 2):
        assert "raced_out" not in trials[n].user_attrs
        assert trials[n].user_attrs["epochs_trained"] == len(SEEDS) * EPOCHS
    selection = select(state)
    seen = [selection.chosen, *selection.pareto, *selection.feasible, *selection.candidates]
    assert rows[1]["mlflow_run_id"] not in {r["mlflow_run_id"] for r in seen if r}
