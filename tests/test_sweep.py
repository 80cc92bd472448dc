"""Sweeps with real Ray (embedded), real MLflow and Optuna on SQLite, tiny real trainings.

Each sweep runs the `moonsweep` command in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from runner import SMALL_SET, moonsweep

pytestmark = pytest.mark.slow

SPACE = SMALL_SET + """parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 10}
  optim.lr: {distribution: categorical, choices: [0.1, LR]}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
sampler: {name: random, seed: 3}
# Three arms of the space's own (the default is engine/arms.py's four): these tests are about
# the sweep's mechanics, counted with three baselines.
baselines:
  moon_auto: {moon.enabled: true, moon.alpha_mode: auto}
  no_moon: {moon.enabled: false}
  dense: {sparsity.method: dense, moon.enabled: false}
seeds: [0, 1]
budget: {trials: TRIALS, max_concurrent: 2}
early_stopping: null
report_every: 2
"""


def write_space(path: Path, trials: int, bad_lr: float, concurrent: int = 2) -> Path:
    text = SPACE.replace("TRIALS", str(trials)).replace("LR", repr(bad_lr))
    path.write_text(text.replace("max_concurrent: 2", f"max_concurrent: {concurrent}"))
    return path


def children(workdir: Path, name: str) -> tuple[dict, list]:
    state = json.loads((workdir / name / "sweep.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs(
        [state["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'",
    )
    return state, runs


def study(workdir: Path, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


@pytest.fixture(scope="module")
def nan_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    # lr 1e9 diverges at once: the random sampler (seed 3) draws it for some trials.
    root = tmp_path_factory.mktemp("sweep")
    space = write_space(root / "space.yaml", trials=4, bad_lr=1e9)
    proc = moonsweep("run", "--space", str(space), "--workdir", str(root / "w"), "--name", "t")
    return root / "w", proc


def test_sweep_runs_and_reports(nan_sweep) -> None:
    workdir, proc = nan_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep t finished: 7 trials" in proc.stdout
    assert "leading trials" in proc.stdout
    assert str(workdir / "t") in proc.stdout
    for name in ("mlflow.db", "optuna.db", "t/sweep.json", "t/space.yaml", "t/ray"):
        assert (workdir / name).exists(), name
    # One compact progress line per finished trial, not pages of Ray logs.
    progress = [ln for ln in proc.stderr.splitlines() if ln.startswith("[moonsweep]")]
    assert len(progress) == 7
    assert "7/7 trials" in progress[-1]


def test_one_parent_one_child_per_trial(nan_sweep) -> None:
    workdir, _ = nan_sweep
    state, runs = children(workdir, "t")
    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.tags["moonsweep.sweep"] == "t"
    assert parent.info.status == "FINISHED"
    assert "version.torch" in parent.data.tags
    assert len(runs) == 3 + 4
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
    ray_ids = [r.data.tags["ray.trial_id"] for r in runs]
    assert len(set(ray_ids)) == len(runs)
    arms = sorted(r.data.tags["moonsweep.arm"] for r in runs)
    assert arms == ["dense", "moon_auto", "no_moon", "search", "search", "search", "search"]
    numbers = sorted(
        int(r.data.tags["optuna.trial_number"])
        for r in runs
        if r.data.tags["moonsweep.arm"] == "search"
    )
    assert numbers == [0, 1, 2, 3]
    # Baselines and searched trials train the same seeds; the full config is in the params.
    assert {r.data.params["seed"] for r in runs} == {"0,1"}
    assert all(r.data.tags["moonsweep.seeds"] == "0,1" for r in runs)
    dense = next(r for r in runs if r.data.tags["moonsweep.arm"] == "dense")
    assert dense.data.params["sparsity.method"] == "dense"
    assert dense.data.params["moon.enabled"] == "False"
    assert dense.data.metrics["density"] == 1.0


def test_optuna_matches_finished_trials(nan_sweep) -> None:
    workdir, _ = nan_sweep
    _, runs = children(workdir, "t")
    trials = study(workdir, "t").get_trials(deepcopy=False)
    search = [r for r in runs if r.data.tags["moonsweep.arm"] == "search"]
    assert len(trials) == len(search) == 4
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in search}
    for t in trials:
        run = by_number[t.number]
        assert t.user_attrs["ray_trial_id"] == run.data.tags["ray.trial_id"]
        # A diverged trial is COMPLETE too, for the sampler to learn from, with `trains`
        # violated; its run is FAILED (no model).
        assert t.state == optuna.trial.TrialState.COMPLETE
        if t.constraints["trains"] == 0.0:
            assert run.info.status == "FINISHED"
            assert t.values[0] == pytest.approx(run.data.metrics["val/auroc_near"])
        else:
            assert t.constraints["trains"] == 1.0 and t.user_attrs["failure"] == "nan"
            assert run.info.status == "FAILED"
            assert t.values[0] == 0.5  # chance-level stand-in AUROC


def test_nan_trial_is_recorded_failed_and_sweep_finishes(nan_sweep) -> None:
    workdir, _ = nan_sweep
    state, runs = children(workdir, "t")
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert failed, "the sampler drew no diverging lr: change the sampler seed"
    for run in failed:
        assert run.data.params["optim.lr"] == "1000000000.0"
        assert "TrainingDiverged" in run.data.tags["moonsweep.fail_reason"]
    failed_trials = [t for t in study(workdir, "t").trials if t.constraints["trains"] > 0]
    assert len(failed_trials) == len(failed)
    assert all("TrainingDiverged" in t.user_attrs["fail_reason"] for t in failed_trials)
    assert all(run.data.tags["moonsweep.failure"] == "nan" for run in failed)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 7 - len(failed)
    client = MlflowClient(state["tracking_uri"])
    for run in finished:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]  # per epoch, the last with the final
        files = {a.path for a in client.list_artifacts(run.info.run_id, "final")}
        assert {"final/metrics.json", "final/model-seed0.pt", "final/model-seed1.pt"} <= files
        for name in ("val/auroc_near", "std/val/auroc_near", "accuracy", "density"):
            assert name in run.data.metrics


def test_status_table_and_json(nan_sweep) -> None:
    workdir, _ = nan_sweep
    proc = moonsweep("status", "t", "--workdir", str(workdir), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["trials"]
    assert len(rows) == 7
    assert {r["state"] for r in rows} <= {"done", "failed"}
    table = moonsweep("status", "t", "--workdir", str(workdir))
    assert table.returncode == 0
    assert "mlflow_run_id" in table.stdout
    assert len(table.stdout.strip().splitlines()) == 2 + 7


def test_status_into_a_closed_pipe_ends_without_a_crash_report(nan_sweep) -> None:
    # `moonsweep status t | head -1`: the reader is gone before the table is written.
    workdir, _ = nan_sweep
    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "wb") as gone:
        proc = moonsweep("status", "t", "--workdir", str(workdir), stdout=gone)
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert not list(workdir.rglob("crash-*.log"))


def test_replay_gives_the_same_metrics(nan_sweep) -> None:
    workdir, _ = nan_sweep
    state, runs = children(workdir, "t")
    done = next(
        r for r in runs if r.data.tags["moonsweep.arm"] == "search" and r.info.status == "FINISHED"
    )
    proc = moonsweep("replay", "t", done.data.tags["ray.trial_id"], "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    replayed = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("accuracy", "val/auroc_near", "auroc_far", "ece", "std/val/accuracy"):
        assert replayed[name] == pytest.approx(done.data.metrics[name], abs=1e-6)


def test_bad_space_and_names_exit_2(tmp_path: Path, nan_sweep) -> None:
    workdir, _ = nan_sweep
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        SPACE.replace("TRIALS", "4")
        .replace("LR", "0.2")
        .replace("log_uniform, low: 0.05", "log_uniform, low: -1")
    )
    proc = moonsweep("run", "--space", str(bad), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert "parameters.sparsity.density" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()
    again = moonsweep(
        "run", "--space", str(bad.parent / "none.yaml"), "--workdir", str(tmp_path / "w")
    )
    assert again.returncode == 2 and "does not exist" in again.stderr
    exists = moonsweep("run", "--space", "default", "--workdir", str(workdir), "--name", "t")
    assert exists.returncode == 2 and "moonsweep resume t" in exists.stderr
    missing = moonsweep("resume", "nope", "--workdir", str(workdir))
    assert missing.returncode == 2 and "no sweep named 'nope'" in missing.stderr


def test_interrupted_sweep_resumes_only_the_rest(tmp_path: Path) -> None:
    # One trial at a time: after the baselines and one searched trial have finished (seen in
    # MLflow, which lags Ray by a few seconds) seven trials are still to come, so the Ctrl-C
    # lands in the middle of the sweep, not after its end.
    space = write_space(tmp_path / "space.yaml", trials=8, bad_lr=0.05, concurrent=1)
    workdir = tmp_path / "w"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sweep.cli",
            "run",
            "--space",
            str(space),
            "--workdir",
            str(workdir),
            "--name",
            "r",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    finished_before: dict[str, int] = {}
    while time.monotonic() < deadline:  # wait for the baselines and one searched trial
        time.sleep(2)
        if (workdir / "r" / "sweep.json").exists():
            _, runs = children(workdir, "r")
            finished_before = {
                r.data.tags["ray.trial_id"]: r.info.end_time
                for r in runs
                if r.info.status == "FINISHED"
            }
            if len(finished_before) >= 4:
                break
    assert len(finished_before) >= 4, "the sweep did not get far enough to be interrupted"
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out[-2000:] + err[-2000:]
    assert "moonsweep resume r" in err
    state = json.loads((workdir / "r" / "sweep.json").read_text())
    assert state["status"] == "interrupted"
    _, runs = children(workdir, "r")
    finished_before = {
        r.data.tags["ray.trial_id"]: r.info.end_time for r in runs if r.info.status == "FINISHED"
    }
    assert 4 <= len(finished_before) < 3 + 8

    proc = moonsweep("resume", "r", "--workdir", str(workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, runs = children(workdir, "r")
    assert state["status"] == "finished"
    ray_ids = [r.data.tags["ray.trial_id"] for r in runs]
    assert len(runs) == 3 + 8 == len(set(ray_ids))  # no duplicate runs
    assert all(r.info.status == "FINISHED" for r in runs)
    ends = {r.data.tags["ray.trial_id"]: r.info.end_time for r in runs}
    for trial_id, end in finished_before.items():  # finished work was not run again
        assert ends[trial_id] == end
    client = MlflowClient(state["tracking_uri"])
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert steps == [1, 2, 3, 4, 5, 6]
    trials = study(workdir, "r").trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(8))


ASHA_SPACE = """
base: default
set: {epochs: 8, voting.epochs: 2, moon.warmup_epochs: 2, model.width: 64,
      sparsity.update_interval: 5, sparsity.end_fraction: 0.5}
parameters:
  optim.lr: {distribution: log_uniform, low: 0.0005, high: 0.2}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
sampler: {name: random, seed: 1}
seeds: [0]
budget: {trials: 5, max_concurrent: 1}
early_stopping: {metric: val_accuracy, mode: max, reduction_factor: 2}
"""


def test_early_stopping_after_the_mask_freezes(tmp_path: Path) -> None:
    # One trial at a time, so ASHA sees results in a fixed order. Grace: ceil(0.5 * 8) + 1.
    (tmp_path / "space.yaml").write_text(ASHA_SPACE)
    workdir = tmp_path / "w"
    proc = moonsweep(
        "run", "--space", str(tmp_path / "space.yaml"), "--workdir", str(workdir), "--name", "a"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, runs = children(workdir, "a")
    stopped = [r for r in runs if r.info.status == "KILLED"]
    assert stopped, "ASHA stopped no trial: the test no longer exercises early stopping"
    for run in stopped:
        assert run.data.tags["moonsweep.arm"] == "search"  # baselines are never stopped
        assert run.data.tags["moonsweep.stopped_early"] == "true"
        assert 5 <= run.data.metrics["epoch"] < 8  # no decision before the mask froze
    trials = {t.user_attrs["ray_trial_id"]: t for t in study(workdir, "a").trials}
    client = MlflowClient(state["tracking_uri"])
    for run in stopped:
        trial = trials[run.data.tags["ray.trial_id"]]
        # COMPLETE (never PRUNED in a multi-objective study) with its last report's figures.
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.user_attrs["early_stopped"] is True
        epoch = int(run.data.metrics["epoch"])
        assert trial.user_attrs["stopped_at_epoch"] == epoch
        last = [run.data.metrics["val/auroc_near"], run.data.metrics["val/accuracy"]]
        assert trial.values == last and all(math.isfinite(v) for v in last)
        # Evaluated at every report from the grace epoch on (each one a possible decision).
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/auroc_near")]
        assert steps == list(range(5, epoch + 1))
    assert sum(r.info.status == "FINISHED" for r in runs) == len(runs) - len(stopped)
    # The first searched trial meets an empty rung: the baselines' figures set no cutoff.
    assert not min(trials.values(), key=lambda t: t.number).user_attrs.get("early_stopped")
    # The leaders: the Pareto front of the trials that ran to the end, by brute force.
    ended = [t for t in trials.values() if not t.user_attrs.get("early_stopped")]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ended)
    front = {
        t.number
        for t in ended
        if not any(
            all(a >= b for a, b in zip(o.values, t.values, strict=True)) and o.values != t.values
            for o in ended
        )
    }
    from sweep.selection import select
    from sweep.state import load_state
    from sweep.status import leaders

    sweep_state, _ = load_state("a", workdir)
    assert {row["optuna"] for row in leaders(sweep_state)} == front
    # Selection reads MLflow's finished runs: the same front, no stopped trial.
    assert {row["optuna"] for row in select(sweep_state).pareto} == front


def test_internal_error_is_one_line_and_a_crash_report_in_the_sweep_folder(nan_sweep) -> None:
    workdir, _ = nan_sweep
    proc = moonsweep(
        "status", "t", "--workdir", str(workdir), env={"MOONSWEEP_FAILPOINT": "crash@0"}
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    [line] = proc.stderr.strip().splitlines()
    report = Path(line.rsplit(" ", 1)[1])
    assert line.startswith("error: internal error (RuntimeError: ")
    assert report.parent == (workdir / "t").resolve() and report.is_file()
    text = report.read_text()
    assert text.startswith("command: moonsweep status t --workdir")
    assert "Traceback (most recent call last)" in text
    assert 'raise RuntimeError("simulated internal error' in text
    report.unlink()  # the other tests read this sweep's folder
    # The same command without the failpoint still works: nothing was left broken.
    assert moonsweep("status", "t", "--workdir", str(workdir)).returncode == 0


def test_space_with_its_base_file_beside_it_runs_from_another_folder(tmp_path: Path) -> None:
    # The stored space is read beside sweep.json (by every trial, and by resume): a relative
    # `base` must still name the file beside the space file, wherever the command runs.
    from engine.config import PRESET_DIR

    spaces, elsewhere = tmp_path / "spaces", tmp_path / "elsewhere"
    spaces.mkdir()
    elsewhere.mkdir()
    (spaces / "mybase.yaml").write_text((PRESET_DIR / "default.yaml").read_text())
    text = SPACE.replace("base: default", "base: mybase.yaml").replace("TRIALS", "1")
    (spaces / "s.yaml").write_text(text.replace("LR", "0.2").replace("seeds: [0, 1]", "seeds: [0]"))
    proc = moonsweep(
        "run", "--space", str(spaces / "s.yaml"), "--workdir", str(tmp_path / "w"),
        "--name", "b", cwd=elsewhere,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    state, runs = children(tmp_path / "w", "b")
    assert state["space"]["base"] == str((spaces / "mybase.yaml").resolve())
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
