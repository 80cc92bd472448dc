"""Experiment comparison (issue 16) on three small real sweeps in one work dir (embedded Ray,
MLflow and Optuna on SQLite, tiny real trainings): `a` (RigL, levels 0.1 and 0.2), `b` (the
same space with `--set sparsity.method=set`) and `c` (other objectives, one level, another
data split). `moonsweep compare`'s deltas follow from both stores' per-seed records, its
reference point holds every feasible trial, what it cannot compare it says; the runs read
well in the MLflow UI (seen in Chromium) and the compare page renders."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from playwright.sync_api import sync_playwright
from runner import SMALL_SET, moonsweep
from scipy import stats

from engine.arms import arm_overrides
from sweep import plots
from sweep.compare import COMPARE_EXPERIMENT, REFERENCE_MARGIN, compare_sweeps, comparison_markdown
from sweep.levels import SEARCHED
from sweep.naming import (
    BEST_AT_LEVEL_TAG,
    CHOSEN_TAG,
    EXPERIMENT_KIND_TAG,
    FRONT_TAG,
    GROUPS,
    MODEL_TRAINING,
    VOTING_TAG,
    experiment_url,
    kept_voting,
    mlflow_metric,
    run_name,
    trial_tags,
)
from sweep.spaces import load_space, with_settings
from sweep.state import PARENT_TAG, load_run_json, load_state, trial_rows
from sweep.status import leaders
from sweep.ui import mlflow_command

pytestmark = pytest.mark.slow
# In-process reads download artifacts: no progress bar per file (the CLI sets the same).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SEEDS = [0, 1]
SPACE = (
    SMALL_SET
    + """  sparsity.method: rigl
levels: [0.1, 0.2]
parameters:
  sparsity.density: {distribution: categorical, choices: [0.1, 0.2]}
  moon.alpha_mode: {distribution: categorical, choices: [auto, fixed]}
  moon.init_factor: {distribution: log_uniform, low: 1, high: 256, when: {moon.alpha_mode: auto}}
  moon.alpha: {distribution: log_uniform, low: 0.01, high: 10, when: {moon.alpha_mode: fixed}}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
  - {metric: val/ece, direction: minimize}
  - {metric: density, direction: minimize}
constraints:
  - {metric: val/accuracy, op: ">=", baseline: dense, offset: -0.9}
sampler: {name: random, seed: 3}  # trial 0 at level 0.2, trial 1 at 0.1 (SET collapses at 0.05)
seeds: [0, 1]
budget: {trials: 2, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
)
# Other objectives (fpr95_near in, accuracy and ece out), one level, another data split.
OTHER = (
    SMALL_SET
    + """  sparsity.method: rigl
  data.split_seed: 1
levels: [0.2]
parameters:
  sparsity.density: {distribution: categorical, choices: [0.2]}
  moon.alpha_mode: {distribution: categorical, choices: [auto, fixed]}
  moon.init_factor: {distribution: log_uniform, low: 1, high: 256, when: {moon.alpha_mode: auto}}
  moon.alpha: {distribution: log_uniform, low: 0.01, high: 10, when: {moon.alpha_mode: fixed}}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/fpr95_near, direction: minimize}
  - {metric: density, direction: minimize}
constraints:
  - {metric: val/accuracy, op: ">=", baseline: dense, offset: -0.9}
sampler: {name: random, seed: 3}
seeds: [0, 1]
budget: {trials: 2, max_concurrent: 2}
early_stopping: null
report_every: 3
"""
)
ARMS = (SEARCHED, "moon_auto", "sparse", "sparse+voting", "dense")
CHROMIUM = "/usr/bin/chromium"
UI_SHOT = Path("/tmp/compare-mlflow-ui.png")
PAGE_SHOT = Path("/tmp/compare-page.png")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("compare")
    (root / "space.yaml").write_text(SPACE)
    (root / "other.yaml").write_text(OTHER)
    workdir = root / "w"
    space, other = str(root / "space.yaml"), str(root / "other.yaml")
    for name, args in (
        ("a", ["--space", space]),
        ("b", ["--space", space, "--set", "sparsity.method=set"]),
        ("c", ["--space", other]),
    ):
        run = moonsweep("run", *args, "--workdir", str(workdir), "--name", name)
        assert run.returncode == 0, run.stderr[-3000:]
    states = {n: load_state(n, workdir)[0] for n in "abc"}
    client = MlflowClient(states["a"].tracking_uri)  # one store for the three
    return {"workdir": workdir, "states": states, "client": client, "root": root}


def _children(client: MlflowClient, state) -> list:
    return client.search_runs(
        [state.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{state.parent_run_id}'"
    )


def _t95(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval, by hand: mean -+ t_{0.975, n-1} * sd / sqrt(n)."""
    n = len(values)
    mean = float(np.mean(values))
    half = stats.t.ppf(0.975, n - 1) * float(np.std(values, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def _cell(mean: float, low: float, high: float, shown: bool = False) -> str:
    if low == high:  # the same difference on every seed: no interval
        return f"{100 * mean:+.1f}"
    star = "*" if shown else ""  # Holm's correction over the table shows it
    return f"{100 * mean:+.1f}{star} [{100 * low:+.1f}, {100 * high:+.1f}]"


# -- the deltas between sweeps ------------------------------------------------------------


def test_deltas_between_sweeps_equal_the_per_seed_differences(swept) -> None:
    client, states = swept["client"], swept["states"]
    comparison = compare_sweeps(["a", "b"], swept["workdir"])
    assert comparison.levels == [0.1, 0.2] and comparison.paired and comparison.seeds == SEEDS
    assert comparison.differs == {"sparsity.method": ["rigl", "set"]}
    metrics = ["auroc_near", "accuracy", "ece", "val/auroc_near", "val/accuracy", "val/ece"]
    assert comparison.metrics == metrics
    # The runs each side compares, found in MLflow by their tags (not by compare's logic).
    runs = {n: _children(client, states[n]) for n in "ab"}
    printed = comparison_markdown(comparison).splitlines()
    checked = 0
    for level in comparison.levels:
        pairs = comparison.deltas[level]
        assert list(pairs) == ["b - a"] and list(pairs["b - a"]) == list(ARMS)
        start = next(i for i, line in enumerate(printed) if line.startswith(f"density {level:g} ("))
        block = printed[start : printed.index("", start + 2)]  # this level's table
        records = {}
        for name in "ab":
            side = next(s for s in comparison.sides if s.name == name)
            arms = side.level(level).arms
            for arm in ARMS:
                run = client.get_run(arms[arm].run_id)
                tags = run.data.tags
                if arm == SEARCHED:
                    assert tags["moonsweep.arm"] == "search"
                    assert tags["moonsweep.best_at_level"] == "true"
                else:
                    [found] = [
                        r
                        for r in runs[name]
                        if r.data.tags["moonsweep.arm"] == arm
                        and r.data.tags.get("moonsweep.level")
                        == (None if arm == "dense" else f"{level:g}")
                    ]
                    assert found.info.run_id == arms[arm].run_id, (name, arm)
                if arm != "dense":
                    method = {"a": "rigl", "b": "set"}[name]
                    assert run.data.params["sparsity.method"] == method
                    assert float(run.data.params["sparsity.density"]) == level
                records[name, arm] = {
                    s: load_run_json(client, run.info.run_id, f"final/metrics-seed{s}.json")
                    for s in SEEDS
                }
        for arm in ARMS:
            for m in metrics:
                diffs = [records["b", arm][s][m] - records["a", arm][s][m] for s in SEEDS]
                mean, low, high = _t95(diffs)
                got = pairs["b - a"][arm][m]
                assert got.n == len(SEEDS)
                assert got.mean == pytest.approx(mean, abs=1e-12), (level, arm, m)
                if np.ptp(diffs) == 0:  # dense, trained alike in both: no spread, no star
                    assert math.isnan(got.low) and got.p_t is None and not got.shown
                else:
                    assert got.low == pytest.approx(low, abs=1e-12)
                    assert got.high == pytest.approx(high, abs=1e-12)
                checked += 1
            # The printed row of this delta (test parts), cell by cell from the records.
            cells = [
                _cell(
                    *_t95([records["b", arm][s][m] - records["a", arm][s][m] for s in SEEDS]),
                    pairs["b - a"][arm][m].shown,
                )
                for m in metrics[:3]
            ]
            # Without a test-time grid each side has its one variant: the same setting.
            setting = comparison.delta_settings[level]["b - a"][arm]
            assert setting == f"at {'msp' if arm in ('sparse', 'dense') else 'weights/msp'}"
            row = f"| b - a | {arm} | paired, 2 seeds, {setting} | " + " | ".join(cells) + " |"
            assert block.count(row) == 1, row
    assert checked == 2 * len(ARMS) * len(metrics)


# -- one reference point --------------------------------------------------------------------


def _brute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Union of the boxes [p, reference] (all minimised), cell by cell on the coordinate grid."""
    axes = [np.unique(np.r_[points[:, d], reference[d]]) for d in range(points.shape[1])]
    total = 0.0
    for cell in np.ndindex(*[len(a) - 1 for a in axes]):
        low = np.array([a[i] for a, i in zip(axes, cell, strict=True)])
        high = np.array([a[i + 1] for a, i in zip(axes, cell, strict=True)])
        if (high <= reference).all() and any((p <= low).all() for p in points):
            total += float(np.prod(high - low))
    return total


def test_shared_reference_point_holds_every_feasible_trial(swept) -> None:
    states = swept["states"]
    comparison = compare_sweeps(["a", "b", "c"], swept["workdir"])
    shared = [("val/auroc_near", "maximize"), ("density", "minimize")]
    assert comparison.objectives == shared
    reference = comparison.reference
    assert reference is not None
    # Every compared study's feasible finished trials, read straight from Optuna's storage.
    values: dict[str, list[list[float]]] = {}
    for name in "abc":
        study = optuna.load_study(study_name=name, storage=states[name].storage_url)
        names = [o["metric"] for o in states[name].space["objectives"]]
        values[name] = [
            [t.values[names.index(m)] for m, _ in shared]
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and all(v <= 0 for v in t.constraints.values())
            and not t.user_attrs.get("early_stopped")
        ]
        assert len(values[name]) == 2, name  # both searched trials of each sweep
    every = np.array([v for vs in values.values() for v in vs])
    for i, (metric, direction) in enumerate(shared):
        low, high = every[:, i].min(), every[:, i].max()
        spread = (high - low) or abs(low) or 1.0
        if direction == "maximize":  # strictly worse than every feasible trial
            assert reference[i] == pytest.approx(low - REFERENCE_MARGIN * spread)
            assert (every[:, i] > reference[i]).all(), metric
        else:
            assert reference[i] == pytest.approx(high + REFERENCE_MARGIN * spread)
            assert (every[:, i] < reference[i]).all(), metric
    # Each sweep's hypervolume under that point, by hand (maximised objectives negated).
    signs = np.array([-1.0 if d == "maximize" else 1.0 for _, d in shared])
    for name in "abc":
        volume = comparison.volumes[name]
        assert (volume.complete, volume.feasible) == (2, 2)
        points = np.array(values[name]) * signs
        expected = _brute_hypervolume(points, np.array(reference) * signs)
        assert expected > 0  # a trial at the worst density still adds volume
        assert volume.hypervolume == pytest.approx(expected, rel=1e-9), name


# -- what cannot be compared ------------------------------------------------------------------


def test_different_objectives_levels_and_data_are_left_out(swept) -> None:
    comparison = compare_sweeps(["a", "c"], swept["workdir"])
    assert comparison.objectives == [("val/auroc_near", "maximize"), ("density", "minimize")]
    assert comparison.metrics == ["auroc_near", "val/auroc_near"]
    assert comparison.levels == [0.2]
    assert not comparison.paired and comparison.deltas == {}
    assert comparison.differs["data.split_seed"] == ["0", "1"]
    assert comparison.left_out == [
        "objective val/accuracy (maximize) of a: not in c, so not in the hypervolume nor the "
        "tables",
        "objective val/ece (minimize) of a: not in c, so not in the hypervolume nor the tables",
        "objective val/fpr95_near (minimize) of c: not in a, so not in the hypervolume nor "
        "the tables",
        "density level 0.1 of a: not in c",
        "paired deltas: the data differ (data.split_seed 0 vs 1); figures side by side only",
    ]
    proc = moonsweep("compare", "a", "c", "--workdir", str(swept["workdir"]), "--no-mlflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "left out:\n" in out
    for line in comparison.left_out:
        assert f"- {line}\n" in out
    assert "density 0.1" not in out and "density 0.2 (test split, not paired" in out
    assert "| c - a |" not in out  # no paired rows
    assert "| sweep | arm | trial | auroc_near |\n" in out  # only the shared figure


# -- the command: page, MLflow run, errors ----------------------------------------------------


def test_compare_writes_the_page_and_an_mlflow_run(swept) -> None:
    workdir, client, states = swept["workdir"], swept["client"], swept["states"]
    proc = moonsweep("compare", "a", "b", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    comparison = compare_sweeps(["a", "b"], workdir)
    assert comparison_markdown(comparison) in proc.stdout
    folder = workdir / "compare" / "a-vs-b"
    assert f"wrote {folder / 'compare.html'}" in proc.stdout
    summary = json.loads((folder / "compare.json").read_text())
    assert summary["hypervolume_reference"] == pytest.approx(comparison.reference)
    assert [s["parent_run_id"] for s in summary["sweeps"]] == [
        states["a"].parent_run_id,
        states["b"].parent_run_id,
    ]
    experiment = client.get_experiment_by_name(COMPARE_EXPERIMENT)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    [run] = client.search_runs([experiment.experiment_id], filter_string="run_name = 'a vs b'")
    run_id = proc.stdout.split("logged to MLflow run ")[1].split()[0]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    for name in "ab":  # the run links each sweep's parent run
        assert tags[f"moonsweep.compare.{name}.parent_run_id"] == states[name].parent_run_id
        assert tags[f"moonsweep.compare.{name}.experiment_id"] == states[name].experiment_id
        link = (
            f"#/experiments/{states[name].experiment_id}/runs/{states[name].parent_run_id}"
            "?workflowType=machine_learning"
        )
        assert f"[{name}]({link})" in tags["mlflow.note.content"]
    for name, volume in comparison.volumes.items():
        assert run.data.metrics[f"hypervolume/{name}"] == pytest.approx(volume.hypervolume)
    files = {a.path for a in client.list_artifacts(run_id, "compare")}
    assert {
        "compare/compare.html",
        "compare/tradeoff.png",
        "compare/compare.json",
        "compare/compare.md",
        "compare/levels.json",
    } <= files
    table = load_run_json(client, run_id, "compare/levels.json")
    rows = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    # Per level: 5 arms of each sweep, then the 5 paired deltas b - a.
    assert len(rows) == 2 * (2 * len(ARMS) + len(ARMS))
    delta = next(
        r for r in rows if r["sweep"] == "b - a" and r["arm"] == "sparse" and r["density"] == 0.2
    )
    want = comparison.deltas[0.2]["b - a"]["sparse"]["auroc_near"]
    assert delta["auroc_near"] == pytest.approx(want.mean, abs=1e-9)
    assert delta["auroc_near low"] == pytest.approx(want.low, abs=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: compare needs at least two sweeps (given none): moonsweep compare A B"),
        (["a"], "error: compare needs at least two sweeps (given only 'a'): moonsweep compare A B"),
        (["a", "nope"], "error: no sweep named 'nope' in {workdir}; sweeps there: a, b, c"),
        (["a", "a"], "error: sweep 'a' is named twice; compare different sweeps"),
    ],
)
def test_compare_mistakes_exit_2(swept, args: list[str], message: str) -> None:
    workdir = swept["workdir"]
    before = sorted(workdir.rglob("compare*"))
    proc = moonsweep("compare", *args, "--workdir", str(workdir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message.format(workdir=workdir)]
    assert proc.stdout == "" and sorted(workdir.rglob("compare*")) == before


def test_tradeoff_plot_draws_every_sweep(swept) -> None:
    comparison = compare_sweeps(["a", "b"], swept["workdir"])
    per_sweep = {s.name: [lv.as_dict() for lv in s.levels] for s in comparison.sides}
    fig = plots.sweeps_tradeoff(per_sweep)
    assert len(fig.axes) == 3
    for ax, metric in zip(fig.axes, plots.TRADEOFF_METRICS, strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        expected = [f"{n}: {arm}" for n in "ab" for arm in ARMS]
        assert list(lines) == expected
        for side in comparison.sides:
            for arm in ARMS[:-1]:
                x, y = lines[f"{side.name}: {arm}"].get_data()
                assert list(x) == [0.1, 0.2]
                assert list(y) == [lv.arms[arm].figures[metric].mean for lv in side.levels]
        assert len(ax.collections) == 2  # one band per sweep: its searched line's


def test_reading_for_compare_needs_no_ray() -> None:
    code = "import sys, sweep.compare\nprint('ray' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    assert out.stdout.strip() == "False"


# -- the runs as the MLflow UI shows them ------------------------------------------------------


def test_runs_are_named_tagged_and_their_metrics_grouped(swept) -> None:
    client, state = swept["client"], swept["states"]["a"]
    assert client.get_experiment(state.experiment_id).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    children = _children(client, state)
    assert len(children) == 2 + 1 + 3 * 2  # searched, dense, three arms at two levels
    front = {r["trial"] for r in leaders(state)}
    names = set()
    for run in children:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        arm = tags["moonsweep.arm"]
        level = float(tags["moonsweep.level"]) if "moonsweep.level" in tags else None
        optuna_number = int(tags["optuna.trial_number"])
        assert run.info.run_name == run_name(
            arm,
            level,
            optuna_number,
            params["sparsity.method"],
            float(params.get("sparsity.density", 1.0)),  # dense has no density setting
            "off" if params["moon.enabled"] == "False" else params["moon.alpha_mode"],
        )
        names.add(run.info.run_name)
        assert tags["moonsweep.method"] == params["sparsity.method"]
        assert tags["moonsweep.voting"] == params["voting.mode"]
        if arm == "search":
            assert run.info.run_name.startswith(f"search#{optuna_number}@{level:g} rigl moon:")
            assert tags[FRONT_TAG] == ("true" if tags["ray.trial_id"] in front else "false")
            assert tags[BEST_AT_LEVEL_TAG] == "true"  # one searched trial per level
        else:
            assert FRONT_TAG not in tags and BEST_AT_LEVEL_TAG not in tags
            if arm != "dense":
                for key, value in arm_overrides(arm, density=level).items():
                    assert params[key] == str(value)
        # No figure lost: every final mean over the seeds is in MLflow, under its group's key.
        means = load_run_json(client, run.info.run_id, "final/metrics.json")
        # (`final` is Ray's flag of a last report, not a figure.)
        numeric = {k: v for k, v in means.items() if isinstance(v, int | float) and k != "final"}
        for key, value in numeric.items():
            assert metrics[mlflow_metric(key)] == pytest.approx(value, abs=1e-12), key
        per_set = [k for k in metrics if k.startswith("sets/")]
        assert "sets/val/auroc/photos" in per_set and "val/auroc/photos" not in metrics
        assert {k.split("/")[0] for k in metrics if "/" in k} <= {*GROUPS, "val", "std"}
        headline = [k for k in metrics if k.split("/")[0] not in GROUPS]
        assert "auroc_near" in headline and "val/ece" in headline and len(headline) < 80
    assert names >= {"dense", "moon_auto@0.1 rigl", "sparse@0.2 rigl", "sparse+voting@0.2 rigl"}
    # Readers see the engine's names again.
    row = next(r for r in trial_rows(state, all_metrics=True) if r["arm"] == "dense")
    assert "val/auroc/photos" in row and "sets/val/auroc/photos" not in row


def test_select_marks_the_chosen_run(swept) -> None:
    workdir, client, state = swept["workdir"], swept["client"], swept["states"]["a"]
    chosen = []
    for prefer in ("auroc_near", "ece"):
        proc = moonsweep("select", "a", "--workdir", str(workdir), "--prefer", prefer, "--json")
        assert proc.returncode == 0, proc.stderr[-3000:]
        chosen.append(json.loads(proc.stdout)["chosen"]["mlflow_run_id"])
        marked = [
            r.info.run_id for r in _children(client, state) if r.data.tags.get(CHOSEN_TAG) == "true"
        ]
        assert marked == [chosen[-1]]  # one at a time: the last choice


def test_a_test_time_voting_choice_is_tagged_as_one() -> None:
    # The default space chooses every voting trial's voting mode after training (arms too:
    # they pick from the same grid): until the pick is known it has no voting tag (set to
    # the kept mode when it ends); a trial that does not vote is tagged off from the start.
    space = load_space("default")
    cfg = space.trial_config({}, 0)
    assert cfg.voting.mode == "weights" and space.test_time is not None
    searched = trial_tags("search", 0.05, cfg, space.test_time_for({"arm": "search"}))
    assert VOTING_TAG not in searched
    for arm in ("moon_auto", "sparse", "sparse+voting"):
        arm_cfg = space.arm_configs({"arm": arm, "level": 0.05})[0]
        grid = space.test_time_for({"arm": arm})
        assert grid is space.test_time
        tags = trial_tags(arm, 0.05, arm_cfg, grid)
        if arm == "sparse":
            assert tags[VOTING_TAG] == arm_cfg.voting.mode == "off"
        else:
            assert VOTING_TAG not in tags and arm_cfg.voting.mode == "weights"
    assert [kept_voting(p) for p in ("weights/msp", "predictions/dice@70", "energy")] == [
        "weights",
        "predictions",
        "off",
    ]


def test_set_gives_the_sparse_arms_a_method_and_dense_stays_dense() -> None:
    space = with_settings(load_space("default"), ["sparsity.method=set"])
    for arm, level in space.baseline_trials():
        cfg = space.arm_configs({"arm": arm, "level": level})[0]
        assert cfg.sparsity.method == ("dense" if arm == "dense" else "set"), arm
    assert space.trial_config({}, 0).sparsity.method == "set"


# -- in a browser ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(pw):
    assert Path(CHROMIUM).exists(), "Chromium missing: run .ci/system-deps.sh (make test does)"
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def test_mlflow_ui_shows_the_runs_grouped_by_arm(swept) -> None:
    client, state = swept["client"], swept["states"]["a"]
    expected = sorted(r.info.run_name for r in _children(client, state))
    port = _free_port()
    log = swept["root"] / "mlflow-ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            mlflow_command(state.tracking_uri, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: its workers stop with it
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert server.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "the MLflow UI did not answer"
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = _chromium(pw)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(120_000)
                page.goto(experiment_url(base, state.experiment_id), wait_until="load")
                page.get_by_text("Group by").first.click()
                menu = page.locator("[role=menu], [role=listbox], [role=dialog]")
                menu.get_by_text("moonsweep.arm", exact=True).first.click()
                page.keyboard.press("Escape")
                page.get_by_text("Group: moon_auto").first.wait_for()
                page.get_by_text(expected[0], exact=True).first.wait_for()
                url = page.url
                table = page.locator("[role=grid]").first.inner_text()
                UI_SHOT.unlink(missing_ok=True)
                page.screenshot(path=str(UI_SHOT))
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert f"/experiments/{state.experiment_id}/runs" in url  # the runs, not GenAI's overview
    assert "workflowType=machine_learning" in url
    lines = table.splitlines()
    for arm, count in (("search", 2), ("moon_auto", 2), ("sparse", 2), ("sparse+voting", 2)):
        assert f"Group: {arm}" in lines, arm
        assert lines[lines.index(f"Group: {arm}") + 1] == str(count)
    assert "Group: dense" in lines
    assert [n for n in expected if n in lines] == expected  # every run, by its name
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{base}/health", timeout=5)
    with Image.open(UI_SHOT) as shot:
        assert shot.size == (1600, 1000)


def test_compare_page_renders_in_chromium(swept) -> None:
    workdir = swept["workdir"]
    proc = moonsweep("compare", "a", "b", "c", "--workdir", str(workdir), "--no-mlflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    page_file = workdir / "compare" / "a-vs-b-vs-c" / "compare.html"
    summary = json.loads((page_file.parent / "compare.json").read_text())
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = _chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(page_file.as_uri(), wait_until="load")
            image = page.evaluate(
                "(() => { const i = document.querySelector('img[alt=\"tradeoff.png\"]');"
                " return [i.complete, i.naturalWidth, i.naturalHeight]; })()"
            )
            headings = page.evaluate(
                "Array.from(document.querySelectorAll('h2, h3')).map(h => h.textContent)"
            )
            left_out = page.evaluate(
                "Array.from(document.querySelectorAll('ul.leftout li')).map(li => li.textContent)"
            )
            tables = page.evaluate(
                "Array.from(document.querySelectorAll('table.level')).map(t =>"
                " Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText)))"
            )
            volumes = page.evaluate(
                "Array.from(document.querySelectorAll('table.hv tr')).map(r =>"
                " Array.from(r.cells).map(c => c.innerText))"
            )
            PAGE_SHOT.unlink(missing_ok=True)
            page.screenshot(path=str(PAGE_SHOT), full_page=True)
            drawn = page.locator("img[alt='tradeoff.png']").screenshot()
        finally:
            browser.close()
    assert errors == []
    assert image[0] and image[1] > 500 and image[2] > 300, image  # one axis: auroc_near
    assert headings[:3] == ["Settings that differ", "Left out", "Trade-off curves"]
    assert "density 0.2, test parts" in headings and "density 0.1, test parts" not in headings
    assert left_out == summary["left_out"] and len(left_out) >= 3
    [test_table, val_table] = tables  # one shared level: its test and validation tables
    assert test_table[0] == ["sweep", "arm", "trial", "auroc_near"]
    assert [r[0] for r in test_table[1:]] == ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    assert [r[0] for r in volumes[1:]] == ["a", "b", "c"]
    with Image.open(io.BytesIO(drawn)) as png:
        pixels = np.asarray(png.convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # a plot, not a blank box
    with Image.open(PAGE_SHOT) as shot:
        assert shot.size[0] == 1280 and shot.size[1] > 900
