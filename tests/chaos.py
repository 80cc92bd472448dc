"""Crash a real sweep on purpose and audit the three stores afterwards.

Shared by tests/test_reliability.py and bench/reliability.py. A sweep runs as the
`moonsweep` command in its own session (process group), so a killed driver's embedded Ray
processes can be found and cleaned up afterwards:

    driver = start_driver("run", "--space", space, "--workdir", workdir, "--name", "k")
    wait_until(lambda: trial_checkpoints(workdir, "k"), 120, "a first checkpoint")
    before = kill_driver(driver, workdir, "k")     # SIGKILL; what was finished by then
    resume = run_cli("resume", "k", "--workdir", workdir)
    audit(workdir, "k", before, expected=5)        # lost, run twice, duplicates, stale
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sweep.naming import RACED_TAG

# A small sweep: one baseline and a few searched trials, 4 epochs, a report (and a
# checkpoint) after every epoch, one trial at a time so kills land where they are aimed.
SPACE = """
base: default
set: {epochs: 4, voting.epochs: 1, moon.warmup_epochs: 1, model.width: 32,
      sparsity.update_interval: 5}
parameters:
  sparsity.density: {distribution: log_uniform, low: 0.05, high: 0.5}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 10}
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
sampler: {name: random, seed: 5}
baselines: {dense: {sparsity.method: dense, moon.enabled: false}}
seeds: [0]
budget: {trials: TRIALS, max_concurrent: 1}
early_stopping: null
report_every: 1
"""
EPOCHS = 4


def write_space(path: Path, trials: int, extra: str = "") -> Path:
    path.write_text(SPACE.replace("TRIALS", str(trials)) + extra)
    return path


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(extra or {}))
    env.pop("MOONSWEEP_WORKDIR", None)
    return env


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 400
) -> subprocess.CompletedProcess:
    """`moonsweep ARGS` to its end, in its own session; its leftovers are killed after."""
    proc = start_driver(*args, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_driver(
    *args: str | Path, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    """Start `moonsweep ARGS`; with `log`, its output goes there (a pipe nobody reads while
    waiting for something else would fill up and stall the driver)."""
    out = open(log, "a") if log else subprocess.PIPE  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "sweep.cli", *map(str, args)],
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
        env=_env(env),
        start_new_session=True,  # its own process group: the embedded Ray goes with it
    )


def stop_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the driver's process group (Ray's agents outlive it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def group_members(pgid: int) -> list[int]:
    """Processes still in a process group (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the command name (which may hold spaces): state ppid pgrp ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    return members


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


# -- what the stores hold --------------------------------------------------------------------


def state_of(workdir: Path, name: str) -> dict[str, Any]:
    return json.loads((Path(workdir) / name / "sweep.json").read_text())


def child_runs(workdir: Path, name: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    state = state_of(workdir, name)
    return MlflowClient(state["tracking_uri"]).search_runs(
        [state["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'",
    )


def optuna_trials(workdir: Path, name: str) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = state_of(workdir, name)["storage_url"]
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except KeyError:  # killed before the study was created
        return []


def ray_dir(workdir: Path, name: str) -> Path:
    """Ray's experiment folder: in the sweep's folder, or under `--results` on a cluster."""
    from sweep.cluster import experiment_path

    folder = Path(workdir) / name
    results = state_of(workdir, name).get("results") if (folder / "sweep.json").exists() else None
    return Path(experiment_path(results, folder, name))


def trial_checkpoints(workdir: Path, name: str) -> dict[str, list[Path]]:
    """Ray trial id -> its checkpoint folders on storage, oldest first."""
    out: dict[str, list[Path]] = {}
    for trial_dir in ray_dir(workdir, name).glob("*-*"):
        if trial_dir.is_dir():
            trial_id = trial_dir.name.rsplit("-", 1)[1]
            out[trial_id] = sorted(trial_dir.glob("checkpoint_*"))
    return {k: v for k, v in out.items() if v}


def finished_trials(workdir: Path, name: str) -> dict[str, dict[str, Any]]:
    """Trials whose training had ended (a final checkpoint on storage, or an MLflow run that
    `ended_as_it_should`).

    For each: its MLflow end time (None if MLflow had not heard yet) and its newest
    checkpoint index; a trial trained again after a resume writes a newer checkpoint.
    """
    done: dict[str, dict[str, Any]] = {}
    for trial_id, folders in trial_checkpoints(workdir, name).items():
        if (folders[-1] / "final").is_dir():
            done[trial_id] = {"end": None, "checkpoint": folders[-1].name}
    if (Path(workdir) / name / "sweep.json").exists():
        for run in child_runs(workdir, name):
            trial_id = run.data.tags.get("ray.trial_id")
            if ended_as_it_should(run):
                entry = done.setdefault(trial_id, {"end": None, "checkpoint": None})
                entry["end"] = run.info.end_time
    return done


def kill_driver(proc: subprocess.Popen, workdir: Path, name: str) -> dict[str, Any]:
    """SIGKILL the driver alone (as a crash would), then record what had finished.

    The embedded Ray's own processes are left to notice; whatever still lingers after a few
    seconds is counted and then killed with the process group.
    """
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(3)
    lingering = len(group_members(proc.pid))
    stop_group(proc)
    return {"finished": finished_trials(workdir, name), "lingering": lingering}


def ended_as_it_should(run: Any) -> bool:
    """An MLflow run that ended as a trial should: FINISHED, or KILLED by seed racing (a
    raced-out trial's end, tagged `moonsweep.raced_out`; docs/search-spaces.md)."""
    status = run.info.status
    return status == "FINISHED" or (status == "KILLED" and RACED_TAG in run.data.tags)


def audit(workdir: Path, name: str, before: dict[str, dict[str, Any]], expected: int) -> dict:
    """Compare a resumed sweep's stores with what had finished before the kill(s).
    `finished_runs` counts the runs that ended as they should (`ended_as_it_should`)."""
    import optuna

    runs = child_runs(workdir, name)
    per_trial: dict[str, int] = {}
    for run in runs:
        per_trial[run.data.tags.get("ray.trial_id")] = (
            per_trial.get(run.data.tags.get("ray.trial_id"), 0) + 1
        )
    ended = {run.data.tags.get("ray.trial_id"): ended_as_it_should(run) for run in runs}
    ends = {run.data.tags.get("ray.trial_id"): run.info.end_time for run in runs}
    checkpoints = trial_checkpoints(workdir, name)
    lost = [t for t in before if not ended.get(t)]
    twice = [
        t
        for t, seen in before.items()
        if (seen["end"] is not None and ends.get(t) != seen["end"])
        or (
            seen["checkpoint"] is not None
            and checkpoints.get(t)
            and checkpoints[t][-1].name != seen["checkpoint"]
        )
    ]
    trials = optuna_trials(workdir, name)
    stale = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    searched = [r for r in runs if r.data.tags.get("moonsweep.arm") == "search"]
    numbers = {int(r.data.tags["optuna.trial_number"]) for r in searched}
    complete = {t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    return {
        "status": state_of(workdir, name)["status"],
        "runs": len(runs),
        "expected": expected,
        "finished_runs": sum(ended_as_it_should(run) for run in runs),
        "running_runs": sum(run.info.status == "RUNNING" for run in runs),
        "lost": len(lost),
        "run_twice": len(twice),
        "duplicate_runs": sum(n - 1 for n in per_trial.values()) + max(0, len(runs) - expected),
        "stale_optuna": len(stale),
        # Every searched MLflow run is a COMPLETE Optuna trial and the other way round.
        "optuna_mismatch": len(numbers ^ complete),
        "spooled": len(list((Path(workdir) / name / "spool").glob("*.pkl"))),
        # Writes a kill cut short before their rename, left behind (the folder and spool).
        "partial_writes": sum(
            len(list(folder.glob(".*.tmp")))
            for folder in (Path(workdir) / name, Path(workdir) / name / "spool")
        ),
        # Not a count: what assert_clean shows when a count is wrong.
        "children": describe_runs(workdir, name),
    }


def describe_runs(workdir: Path, name: str) -> list[dict[str, Any]]:
    """Each child run as an assertion message needs it: its status and end time, its tags
    (its Ray trial id, Optuna number, arm and moonsweep notes) and its Ray trial's status
    and last result's `final` / `fail_reason`; then Ray trials that have no run."""
    from ray.tune import ExperimentAnalysis

    try:
        ray_trials = {t.trial_id: t for t in ExperimentAnalysis(str(ray_dir(workdir, name))).trials}
    except Exception as exc:  # a sweep killed before Ray saved its experiment
        ray_trials = {}
        missing = f"{type(exc).__name__}: {exc}"
    else:
        missing = None
    out: list[dict[str, Any]] = []
    for run in child_runs(workdir, name):
        tags = run.data.tags
        trial_id = tags.get("ray.trial_id")
        trial = ray_trials.pop(trial_id, None)
        last = dict(trial.last_result or {}) if trial is not None else {}
        out.append(
            {
                "run_id": run.info.run_id,
                "status": run.info.status,
                "end_time": run.info.end_time,
                "ray.trial_id": trial_id,
                "ray_status": trial.status if trial is not None else None,
                "ray_final": last.get("final"),
                "ray_fail_reason": last.get("fail_reason"),
                "checkpoints": [p.name for p in trial_checkpoints(workdir, name).get(trial_id, [])],
                "tags": {
                    k: v
                    for k, v in sorted(tags.items())
                    if not k.startswith("mlflow.") or k == "mlflow.runName"
                },
                "epoch": run.data.metrics.get("epoch"),
            }
        )
    for trial_id, trial in ray_trials.items():
        out.append({"ray.trial_id": trial_id, "ray_status": trial.status, "run_id": None})
    if missing:
        out.append({"ray": missing})
    return out


def counts(report: dict) -> dict:
    """An `audit` without its per-run details: the figures to print or add up."""
    return {k: v for k, v in report.items() if k != "children"}


def assert_clean(report: dict, runs: int) -> None:
    """An `audit` of a sweep resumed to its end with nothing wrong: finished, `runs` MLflow
    child runs all FINISHED, none lost, run twice or duplicated, no stale Optuna trial, the
    Optuna and MLflow records agreeing, nothing left in the spool, no partial write left."""
    clean = {
        "status": "finished",
        "runs": runs,
        "finished_runs": runs,
        "lost": 0,
        "run_twice": 0,
        "duplicate_runs": 0,
        "stale_optuna": 0,
        "optuna_mismatch": 0,
        "spooled": 0,
        "partial_writes": 0,
    }
    wrong = {
        k: f"{report.get(k)!r}, expected {v!r}" for k, v in clean.items() if report.get(k) != v
    }
    if wrong:
        children = "\n".join(f"  {child}" for child in report.get("children", []))
        raise AssertionError(
            f"audit differs: {wrong}\nwhole report: {counts(report)}\nruns:\n{children}"
        )


def _merge(seen: dict, later: dict) -> None:
    """What had finished by any kill: the first end time and checkpoint seen count."""
    for trial_id, entry in later.items():
        first = seen.setdefault(trial_id, dict(entry))
        for key in ("end", "checkpoint"):
            if first[key] is None:
                first[key] = entry[key]


def failpoint(kind: str, folder: Path, times: int = 1) -> dict[str, str]:
    """The environment that arms a test-only failpoint (engine/faults.py) `times` times."""
    return {
        "MOONSWEEP_FAILPOINT": kind,
        "MOONSWEEP_FAILPOINT_TIMES": str(times),
        "MOONSWEEP_FAILPOINT_DIR": str(folder),
    }


def kill_resume_chain(root: Path, trials: int = 4, timeout: float = 300) -> dict[str, Any]:
    """One sweep, SIGKILLed three times and resumed after each, then resumed to its end.

    1. during the first trial (stalled after epoch 2, having checkpointed epoch 1);
    2. between trials (once two trials are FINISHED in MLflow);
    3. while a trial's checkpoint file is being written (paused before its rename).
    """
    space = write_space(root / "space.yaml", trials=trials)
    workdir, log = root / "w", root / "driver.log"
    seen: dict[str, dict[str, Any]] = {}
    kills: list[dict[str, Any]] = []
    first_trial = None
    steps = [
        ("during the first trial", ["run", "--space", space, "--name", "k"], "stall@2"),
        ("between trials", ["resume", "k"], None),
        ("while a checkpoint is written", ["resume", "k"], "pause@2"),
    ]
    for point, args, point_kind in steps:
        folder = root / f"failpoint-{len(kills)}"
        env = failpoint(point_kind, folder) if point_kind else None
        driver = start_driver(*args, "--workdir", workdir, env=env, log=log)
        try:
            if point_kind:
                wait_until(lambda f=folder: (f / "paused").exists(), timeout, point)
            else:
                wait_until(
                    lambda: sum(map(ended_as_it_should, child_runs(workdir, "k"))) >= 2,
                    timeout,
                    point,
                )
            killed = kill_driver(driver, workdir, "k")
        finally:
            stop_group(driver)
        if first_trial is None:
            first_trial = {
                t: [p.name for p in f] for t, f in trial_checkpoints(workdir, "k").items()
            }
        _merge(seen, killed["finished"])
        kills.append({"point": point, "lingering": killed["lingering"], "finished": len(seen)})
    final = run_cli("resume", "k", "--workdir", workdir, timeout=timeout)
    return {
        "workdir": workdir,
        "kills": kills,
        "first_trial": first_trial,
        "final": final,
        "audit": audit(workdir, "k", seen, expected=trials + 1),
    }


# -- the shipped default space ---------------------------------------------------------------

# The user: the default space as shipped, cut only by the command line.
DEFAULT_RUN = ["--space", "default", "--trials", "6", "--epochs", "12"]


def interrupt_and_resume(
    root: Path,
    args: list[str] | None = None,
    sig: int = signal.SIGKILL,
    after: float | None = None,
    timeout: float = 900,
) -> dict[str, Any]:
    """One sweep of the shipped default space (or `args`), its whole process group sent
    `sig` (SIGKILL: a crash; SIGINT: Ctrl-C in a terminal), then resumed twice (to its end,
    then once more: "already finished").

    `after` seconds from the start, or (None) as soon as a first trial has finished. Returns
    whether the signal landed mid-run, the driver's exit code, both resumes and the audit.
    """
    args = [*(args or DEFAULT_RUN)]
    workdir, log = root / "w", root / "driver.log"
    started = time.monotonic()
    driver = start_driver("run", *args, "--workdir", workdir, "--name", "k", log=log)
    try:
        if after is None:
            wait_until(
                lambda: driver.poll() is not None or finished_trials(workdir, "k"),
                timeout,
                "a finished trial",
            )
        else:
            while time.monotonic() - started < after and driver.poll() is None:
                time.sleep(0.2)
        mid_run = driver.poll() is None
        signalled_at = time.monotonic() - started
        if mid_run:
            os.killpg(driver.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.wait(120)  # Ctrl-C: the driver saves its state and exits 130
        before = finished_trials(workdir, "k") if (workdir / "k" / "sweep.json").exists() else {}
    finally:
        stop_group(driver)
    exit_code = driver.returncode
    status = state_of(workdir, "k")["status"] if (workdir / "k" / "sweep.json").exists() else None
    spec = expected_trials(args)
    resume = run_cli("resume", "k", "--workdir", workdir, timeout=timeout)
    again = run_cli("resume", "k", "--workdir", workdir, timeout=timeout)
    return {
        "workdir": workdir,
        "mid_run": mid_run,
        "signalled_at": signalled_at,
        "exit": exit_code,
        "status_after_signal": status,
        "finished_before": len(before),
        "resume": resume,
        "again": again,
        "audit": audit(workdir, "k", before, expected=spec),
    }


def expected_trials(args: list[str]) -> int:
    """Trials a `run` command line gives: `--trials` (or the space's) plus its baselines."""
    from sweep.spaces import load_space

    space = load_space(args[args.index("--space") + 1] if "--space" in args else "default")
    trials = int(args[args.index("--trials") + 1]) if "--trials" in args else space.budget.trials
    return trials + len(space.baseline_trials())
