"""Failures the sampler learns from: a diverged, refused or collapsed trial reaches Optuna
as COMPLETE with the constraint `trains` violated, keeps its reason in every store, and is
never a candidate, a leader or on a front.

The searcher is driven directly (its `suggest` / `on_trial_result` / `on_trial_complete` are
what Ray Tune calls) against a real SQLite Optuna storage; one small real sweep (Ray,
MLflow, training) has a trial that diverges and one that collapses.

Only names that exist before this change are imported, and the failure kinds are written
out (`"nan"`, `"collapsed"`, `"trains"`): the region test also runs against the code before
it, where it fails (its numbers: docs/search-spaces.md#failures-the-sampler-learns-from).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray.tune import ExperimentAnalysis
from runner import SMALL_SET, moonsweep

from sweep.hypervolume import hypervolume_history, nadir
from sweep.levels import compare_levels
from sweep.search import SweepSearcher
from sweep.selection import pareto_front, select
from sweep.spaces import SearchSpace, load_space
from sweep.state import SweepState, finished_study, load_state, trial_rows
from sweep.status import leaders

CHANCE = 1 / 6  # the digits suite: six known classes
DIVERGED = {
    "fail_reason": "TrainingDiverged: loss is nan at epoch 3",
    "failure": "nan",
    "epoch": 2,
    "val_accuracy": math.nan,
    "chance_accuracy": CHANCE,
}
BASELINE = {
    "final": 1,
    "val/auroc_near": 0.7,
    "val/accuracy": 0.95,  # dense: the default space's constraint asks for >= 0.90
    "val/ece": 0.05,
    "density": 0.1,
    "chance_accuracy": CHANCE,
}


def _space(unconditional: bool = False, **changes: object) -> SearchSpace:
    """The default space on MOON.md's wide ranges (alpha_final 0.1-100, a fixed alpha
    0.01-10, as paper-cifar10 searches; the default caps them below where its model
    diverges), with `section__field=value` changes; `unconditional`: MOON's final alpha
    searched in every trial (auto mode), as NSGA-II and GP search parameters."""
    base = load_space("default")
    data = base.model_dump()
    data["parameters"]["moon.alpha_final"]["high"] = 100.0
    data["parameters"]["moon.alpha"]["high"] = 10.0
    for key, value in changes.items():
        section, _, field = key.partition("__")
        data[section][field] = value
    if unconditional:
        for name in ("moon.alpha_mode", "moon.init_factor", "moon.alpha"):
            del data["parameters"][name]
        data["parameters"]["moon.alpha_final"]["when"] = None
    return SearchSpace.model_validate({**data, "source_dir": base.source_dir})


def _searcher(tmp_path: Path, space: SearchSpace) -> SweepSearcher:
    searcher = SweepSearcher(space, f"sqlite:///{tmp_path / 'optuna.db'}", "s")
    n = 0
    while searcher.pending_arms:  # the baselines, all finished
        searcher.suggest(f"b{n}")
        searcher.on_trial_result(f"b{n}", BASELINE)
        searcher.on_trial_complete(f"b{n}", BASELINE)
        n += 1
    return searcher


def _tell(searcher: SweepSearcher, trial_id: str, result: dict) -> None:
    searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


# -- the sampler -------------------------------------------------------------------------------


def _strength(params: dict) -> tuple[float, float, float]:
    """(log10 alpha, log10 of where it diverges, log10 of the range's low end)."""
    if params.get("moon.alpha_mode") == "fixed":
        return math.log10(params["moon.alpha"]), math.log10(3), -2.0
    return math.log10(params["moon.alpha_final"]), math.log10(40), -1.0


def _diverges(params: dict) -> bool:
    strength, edge, _ = _strength(params)
    return strength > edge


def _finished(params: dict) -> dict:
    """Figures that get better the stronger MOON's pull, up to where training diverges: the
    best trials lie at the edge of the region, where a sampler that ignores the failures
    keeps drawing."""
    strength, edge, low = _strength(params)
    x = (strength - low) / (edge - low)
    return {
        "final": 1,
        "epoch": 30,
        "chance_accuracy": CHANCE,
        "val/auroc_near": 0.70 + 0.12 * x + 0.002 * params["voting.epochs"],
        "val/accuracy": 0.93 - 0.01 * x,
        "val/ece": 0.05 + 0.01 * (1 - x),
        "density": params["sparsity.density"],
    }


def _drive(searcher: SweepSearcher, trials: int) -> list[bool]:
    """Whether each searched trial's settings lie in the diverging region."""
    inside = []
    for n in range(trials):
        params = searcher.suggest(f"t{n}")["params"]
        inside.append(_diverges(params))
        _tell(searcher, f"t{n}", DIVERGED if _diverges(params) else _finished(params))
    return inside


def test_tpe_stays_out_of_a_diverging_region(tmp_path: Path) -> None:
    """The default space's sampler (TPE, seed 0, 6 startup trials), 30 searched trials;
    training diverges at a fixed alpha above 3 or a final alpha above 40 (as in issue 14's
    default sweep). Random search draws there 15% of the time. Measured after the startup
    trials (24): 6 inside; 22 when diverged trials were FAIL (TPE does not read those)."""
    space = _space(budget__trials=30)
    searcher = _searcher(tmp_path, space)
    inside = _drive(searcher, space.budget.trials)
    after_startup = inside[space.sampler.startup_trials :]
    assert sum(after_startup) <= 8, f"{sum(after_startup)} of {len(after_startup)} inside"

    trials = searcher.study.get_trials(deepcopy=False)
    diverged = [t for t in trials if _diverges(t.params)]
    assert len(diverged) == sum(inside) and len(trials) == 30
    constraint = "val/accuracy>=dense-0.05"
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        if t in diverged:
            # Chance-level stand-ins: AUROC 0.5, accuracy 1/6, ECE 1 - 1/6, its own density.
            expected = [0.5, CHANCE, 1 - CHANCE, t.params["sparsity.density"]]
            assert t.values == pytest.approx(expected)
            assert t.constraints == {constraint: pytest.approx(0.90 - CHANCE), "trains": 1.0}
            assert t.user_attrs["failure"] == "nan"
            assert t.user_attrs["fail_reason"] == DIVERGED["fail_reason"]
        else:
            assert t.constraints["trains"] == 0.0 and "failure" not in t.user_attrs
    assert not {t.number for t in diverged} & {t.number for t in searcher.study.best_trials}


def test_nsga2_stays_out_of_a_diverging_region(tmp_path: Path) -> None:
    """NSGA-II (generations of 6) on the default space with MOON's final alpha searched in
    every trial (NSGA-II samples a conditional parameter at random): after the first
    generation, at most 2 of 24 proposals above 40 (measured: 0; with FAIL, too: its
    children come from complete trials only)."""
    space = _space(unconditional=True, budget__trials=30, sampler__name="nsga2")
    inside = _drive(_searcher(tmp_path, space), space.budget.trials)
    assert sum(inside[6:]) <= 2, f"{sum(inside[6:])} of 24 inside"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.constraints["trains"] for t in study.trials] == [float(i) for i in inside]


# -- what reaches Optuna, by kind --------------------------------------------------------------

SMALL = (
    SMALL_SET
    + """parameters:
  sparsity.density: {distribution: categorical, choices: [0.05, 0.2]}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 10}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
  - {metric: val/ece, direction: minimize}
  - {metric: density, direction: minimize}
baselines: {dense: {sparsity.method: dense, moon.enabled: false, voting.mode: "off"}}
budget: {trials: 7}
"""
)


def test_each_kind_reaches_optuna_as_its_fault_says(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SMALL)
    searcher = _searcher(tmp_path, load_space(tmp_path / "space.yaml"))
    params = [searcher.suggest(f"t{n}")["params"] for n in range(7)]
    ok = {"final": 1, "val/auroc_near": 0.8, "val/accuracy": 0.9, "val/ece": 0.04}
    collapsed = {
        **ok,
        "val/accuracy": 0.2,
        "val/ece": math.nan,  # no figure of its own: a stand-in
        "density": 0.05,
        "chance_accuracy": CHANCE,
        "failure": "collapsed",
        "collapse_reason": "collapsed: val/accuracy 0.2 <= 0.25 (chance 0.1667 plus 0.1 ...)",
    }
    refused = {"fail_reason": "ConfigError: moon.warmup_epochs ...", "failure": "config"}
    oom = {"fail_reason": "OutOfMemoryError: CUDA out of memory", "failure": "oom"}
    _tell(searcher, "t0", {**ok, "density": 0.2})
    _tell(searcher, "t1", DIVERGED)
    _tell(searcher, "t2", collapsed)
    _tell(searcher, "t3", refused)  # no chance_accuracy: the one seen before stands
    _tell(searcher, "t4", oom)
    searcher.on_trial_complete("t5", None, error=True)  # Ray lost the worker
    _tell(searcher, "t6", {"fail_reason": "RuntimeError: x"})  # an older report: no kind
    trials = searcher.study.get_trials(deepcopy=False)
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert [t.state for t in trials] == [complete] * 4 + [fail] * 3
    assert [t.constraints for t in trials[:4]] == [
        {"trains": 0.0},
        {"trains": 1.0},
        {"trains": 1.0},
        {"trains": 1.0},
    ]
    density = [p["sparsity.density"] for p in params]
    assert trials[1].values == pytest.approx([0.5, CHANCE, 1 - CHANCE, density[1]])
    assert trials[2].values == pytest.approx([0.8, 0.2, 1 - CHANCE, 0.05])  # its own, but ECE
    # The refused one had no chance level of its own: the one seen before stands for it.
    assert trials[3].values == pytest.approx([0.5, CHANCE, 1 - CHANCE, density[3]])
    attrs = [t.user_attrs for t in trials]
    kinds = [a.get("failure") for a in attrs]
    assert kinds == [None, "nan", "collapsed", "config", "oom", "ray", None]
    assert [a.get("fail_reason", "")[:12] for a in attrs] == [
        "",
        "TrainingDive",
        "collapsed: v",
        "ConfigError:",
        "OutOfMemoryE",
        "ray error",
        "RuntimeError",
    ]
    assert searcher.study.best_trials == [trials[0]]


# -- one real sweep: a trial diverges, one collapses -------------------------------------------

SWEEP = (
    SMALL_SET
    + """levels: [0.001, 0.3]
parameters:
  sparsity.density: {distribution: categorical, choices: [0.001, 0.3]}
  optim.lr: {distribution: categorical, choices: [0.1, 1000000000.0]}
objectives:
  - {metric: val/accuracy, direction: maximize}
  - {metric: density, direction: minimize}
# Seed 0 draws (0.3, 0.1): trains; (0.3, 1e9): diverges at once; (0.001, 0.1): four weights
# of 4096 in the first layer leave the validation accuracy at chance (about 0.17).
sampler: {name: random, seed: 0}
baselines: {dense: {sparsity.method: dense, moon.enabled: false, voting.mode: "off"}}
seeds: [0]
budget: {trials: 3, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepState, Path]:
    root = tmp_path_factory.mktemp("failures")
    (root / "space.yaml").write_text(SWEEP)
    proc: subprocess.CompletedProcess = moonsweep(
        "run", "--space", str(root / "space.yaml"), "--workdir", str(root / "w"), "--name", "f"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 collapsed" in proc.stderr  # the live line counts it apart
    state, folder = load_state("f", root / "w")
    return state, folder


def _by_case(state: SweepState) -> dict[str, dict]:
    """The searched trials' rows by what their settings do."""
    study = optuna.load_study(study_name=state.name, storage=state.storage_url)
    case = {(0.3, 0.1): "trains", (0.3, 1e9): "diverges", (0.001, 0.1): "collapses"}
    rows = [r for r in trial_rows(state, all_metrics=True) if r["arm"] == "search"]
    return {case[(r["level"], study.trials[r["optuna"]].params["optim.lr"])]: r for r in rows}


@pytest.mark.slow
def test_the_reason_is_in_every_store(swept) -> None:
    state, folder = swept
    rows = _by_case(state)
    assert sorted(rows) == ["collapses", "diverges", "trains"]
    client = MlflowClient(state.tracking_uri)
    runs = {case: client.get_run(row["mlflow_run_id"]) for case, row in rows.items()}
    study = optuna.load_study(study_name="f", storage=state.storage_url)
    trials = {case: study.trials[row["optuna"]] for case, row in rows.items()}
    ray = {t.trial_id: t.last_result for t in ExperimentAnalysis(str(folder / "ray")).trials}
    results = {case: ray[row["trial"]] for case, row in rows.items()}

    # Diverged: FAILED in MLflow (no model), COMPLETE and infeasible in Optuna.
    reason = runs["diverges"].data.tags["moonsweep.fail_reason"]
    assert reason.startswith("TrainingDiverged: loss is ")
    assert runs["diverges"].info.status == "FAILED"
    assert runs["diverges"].data.tags["moonsweep.failure"] == "nan"
    assert trials["diverges"].state == optuna.trial.TrialState.COMPLETE
    assert trials["diverges"].user_attrs["fail_reason"] == reason
    assert trials["diverges"].user_attrs["failure"] == "nan"
    assert trials["diverges"].constraints == {"trains": 1.0}
    assert trials["diverges"].values == pytest.approx([CHANCE, 0.3])  # chance; its density
    assert results["diverges"]["fail_reason"] == reason
    assert results["diverges"]["failure"] == "nan"
    assert rows["diverges"]["state"] == "failed" and rows["diverges"]["failure"] == "nan"

    # Collapsed: FINISHED with its model, flagged; its own figures in Optuna, infeasible.
    accuracy = runs["collapses"].data.metrics["val/accuracy"]
    assert accuracy <= 0.25  # chance 1/6 plus a tenth of the way to 1
    assert runs["collapses"].data.metrics["chance_accuracy"] == pytest.approx(CHANCE)
    assert runs["collapses"].info.status == "FINISHED"
    assert runs["collapses"].data.tags["moonsweep.failure"] == "collapsed"
    reason = runs["collapses"].data.tags["moonsweep.fail_reason"]
    assert reason.startswith(f"collapsed: val/accuracy {accuracy:.4g} <= 0.25 (chance 0.1667")
    assert trials["collapses"].user_attrs["fail_reason"] == reason
    assert trials["collapses"].user_attrs["failure"] == "collapsed"
    assert trials["collapses"].constraints == {"trains": 1.0}
    density = runs["collapses"].data.metrics["density"]  # achieved, a hair under its level
    assert density < 0.001
    assert trials["collapses"].values == pytest.approx([accuracy, density])
    assert results["collapses"]["failure"] == "collapsed"
    assert results["collapses"]["collapse_reason"] == reason
    assert rows["collapses"]["state"] == "collapsed"

    # Trained: nothing of the sort anywhere.
    assert "moonsweep.failure" not in runs["trains"].data.tags
    assert trials["trains"].constraints == {"trains": 0.0}
    assert "failure" not in trials["trains"].user_attrs and "failure" not in results["trains"]
    assert rows["trains"]["state"] == "done"


@pytest.mark.slow
def test_a_collapsed_trial_is_never_a_candidate_nor_on_a_front(swept) -> None:
    state, _ = swept
    rows = _by_case(state)
    objectives = [("val/accuracy", "maximize"), ("density", "minimize")]
    # By its figures alone it would be on the front: the sparsest trial by far.
    raw = pareto_front([rows["trains"], rows["collapses"]], objectives)
    assert rows["collapses"] in raw
    selection = select(state)
    ids = {
        "collapses": rows["collapses"]["mlflow_run_id"],
        "trains": rows["trains"]["mlflow_run_id"],
    }
    for group in (selection.pareto, selection.feasible, selection.candidates):
        assert [r["mlflow_run_id"] for r in group] == [ids["trains"]]
    assert selection.chosen["mlflow_run_id"] == ids["trains"]
    assert [r["optuna"] for r in leaders(state)] == [rows["trains"]["optuna"]]
    client = MlflowClient(state.tracking_uri)
    for case, on in (("trains", "true"), ("collapses", "false"), ("diverges", "false")):
        tags = client.get_run(rows[case]["mlflow_run_id"]).data.tags  # what the UI filters on
        assert (tags["moonsweep.front"], tags["moonsweep.best_at_level"]) == (on, on), case
    sparse, dense = compare_levels(state)
    assert sparse.density == 0.001 and "searched" not in sparse.arms
    assert "collapsed" in sparse.note
    assert dense.arms["searched"].run_id == ids["trains"]
    # The hypervolume counts the trained trial only: the same as a study holding it alone.
    study = finished_study(state)
    assert study is not None
    reference = nadir([study])
    assert reference == pytest.approx([rows["trains"]["val/accuracy"], 0.3])
    _, volumes = hypervolume_history(study, reference)
    assert volumes[-1] == 0.0  # one trial on the reference point adds no volume
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.number for t in complete] == [rows["trains"]["optuna"]]
