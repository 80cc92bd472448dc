"""Trials that ended after Ray's last save of the experiment: adopted when a sweep resumes.

Ray saves its experiment state (its trials, the searcher's state) every few seconds
(`sweep.orchestrator.save_period`); MLflow and Optuna hear of a trial's end at once. A trial
that started and ended between two saves, in a driver killed before the second, has ended in
MLflow (and, searched, in Optuna) but is unknown to the state `Tuner.restore` reads. Ray would
not know it, the searcher would suggest its arm again, and the finished run would be deleted
as an orphan: finished work lost, then done again under a new id.

So before restoring, `resume` records every such trial (an ended MLflow run whose Ray trial
id the saved state lacks) in `<sweep folder>/adopted.json`, with the result Ray would have
seen (from its `final/metrics.json`, cut by `sweep.trial.reported`). The searcher takes each
as ended (`SweepSearcher.adopt`): a baseline arm is not suggested again, a searched trial
counts against the budget and joins racing's references, and nothing is told to Optuna
twice. The sweep counts adopted trials with Ray's, and their runs are kept as they are.

A trial can also end in its worker (its final checkpoint on storage) while the driver that
dies has not yet handled that end: its MLflow run is still RUNNING and Optuna was told
nothing. Such a trial is adopted too, from its final checkpoint: its run gets the writes
`on_trial_complete` would have made (`MlflowTracking.record_end`) and the searcher tells
Optuna. Not when the checkpoint is incomplete (the worker died while Ray copied it) or
MLflow lacks epochs before the final report's (the driver missed earlier reports too):
then the trial runs anew, as before.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from engine.checkpoint import save_json
from sweep.naming import ADOPTED_FILE, FAIL_REASON_TAG, FAILURE_TAG, FINAL_DIR, read_adopted
from sweep.spaces import SearchSpace
from sweep.state import SweepState, child_runs, load_run_json
from sweep.stores import mlflow_client
from sweep.tracking import MlflowTracking
from sweep.trial import final_checkpoint, final_results, reported

ENDED = ("FINISHED", "FAILED", "KILLED")


def adopt_unrecorded(
    state: SweepState,
    space: SearchSpace,
    folder: Path,
    recorded: set[str],
    tracking: MlflowTracking,
    ray_dir: str,
) -> list[str]:
    """Add to `adopted.json` every ended trial of the sweep whose Ray trial id is not in
    `recorded` (the trials of Ray's saved state); one line per trial adopted.

    `tracking` writes the end of a trial that ended only on storage (in `ray_dir`, Ray's
    experiment folder), after the spool a killed driver left has been sent.
    """
    client = mlflow_client(state.tracking_uri)
    known = read_adopted(folder / ADOPTED_FILE)
    lines = []
    for run in child_runs(client, state):
        trial_id = run.data.tags.get("ray.trial_id")
        if not trial_id or trial_id in recorded or trial_id in known:
            continue
        if run.info.status in ENDED:
            described = load_run_json(client, run.info.run_id, "trial.json")
            result = _ended_result(client, run, space)
            status = run.info.status.lower()
            how = f"ended after Ray's last save of the experiment: kept as it is ({status})"
        else:
            described, result = _finished_on_storage(client, run, space, tracking, ray_dir)
            if result is None:
                continue  # still training when the driver died: its arm or Optuna trial runs anew
            how = (
                "had finished when the driver died, before the driver recorded its end: "
                "recorded now from its final checkpoint"
            )
        known[trial_id] = {
            "arm": described["arm"],
            "level": described["level"],
            "optuna_trial": int(run.data.tags.get("optuna.trial_number", -1)),
            "result": result,
        }
        lines.append(f"trial {trial_id} {how}, not run again")
    if lines:
        save_json(folder / ADOPTED_FILE, known)
    return lines


def _ended_result(client: MlflowClient, run: Run, space: SearchSpace) -> dict[str, Any]:
    """The result Ray would have seen for a run that ended in MLflow."""
    names = {a.path for a in client.list_artifacts(run.info.run_id, FINAL_DIR)}
    if f"{FINAL_DIR}/metrics.json" in names:  # finished, or raced out (KILLED)
        return reported(load_run_json(client, run.info.run_id, f"{FINAL_DIR}/metrics.json"), space)
    if run.info.status == "FAILED":
        return {
            "fail_reason": run.data.tags.get(FAIL_REASON_TAG, "failed"),
            "failure": run.data.tags.get(FAILURE_TAG, ""),
            "epoch": int(run.data.metrics.get("epoch", 0)),
            "val_accuracy": math.nan,
        }
    return {}  # stopped early: told to Optuna already, no reference for racing


def _finished_on_storage(
    client: MlflowClient, run: Run, space: SearchSpace, tracking: MlflowTracking, ray_dir: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(trial.json, the result recorded) for a RUNNING run whose trial left complete final
    results on storage; (.., None) where it did not, or they cannot be recorded whole."""
    try:
        described = load_run_json(client, run.info.run_id, "trial.json")
    except Exception:  # created by a driver killed before it described the run
        return {}, None
    trial_id = run.data.tags["ray.trial_id"]
    checkpoint = final_checkpoint(ray_dir, described["arm"], trial_id)
    if checkpoint is None:
        return described, None
    with checkpoint.as_directory() as directory:
        final = final_results(Path(directory))
    if final is None:
        return described, None
    logged = int(run.data.metrics.get("epoch", 0))
    history = final.get("history") or []
    if history and int(history[0].get("epoch", 0)) > logged + 1:
        return described, None  # epochs between the two that MLflow would never get
    config = {
        "arm": described["arm"],
        "level": described["level"],
        "optuna_trial": int(run.data.tags.get("optuna.trial_number", -1)),
        "params": described.get("params", {}),
    }
    result = reported(final, space)
    if not tracking.record_end(trial_id, config, result, checkpoint):
        return described, None
    return described, result
