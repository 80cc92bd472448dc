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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from engine.checkpoint import load_json, save_json
from sweep.naming import ADOPTED_FILE, FINAL_DIR
from sweep.spaces import SearchSpace
from sweep.state import SweepState, child_runs, load_run_json
from sweep.stores import mlflow_client
from sweep.trial import reported

ENDED = ("FINISHED", "FAILED", "KILLED")


def adopted(folder: Path) -> dict[str, dict[str, Any]]:
    """The trials adopted so far (Ray trial id -> its arm, level, Optuna number, result)."""
    path = folder / ADOPTED_FILE
    return load_json(path) if path.is_file() else {}


def adopt_unrecorded(
    state: SweepState, space: SearchSpace, folder: Path, recorded: set[str]
) -> list[str]:
    """Add to `adopted.json` every ended trial of the sweep whose Ray trial id is not in
    `recorded` (the trials of Ray's saved state); one line per trial adopted."""
    client = mlflow_client(state.tracking_uri)
    known = adopted(folder)
    lines = []
    for run in child_runs(client, state):
        trial_id = run.data.tags.get("ray.trial_id")
        if not trial_id or trial_id in recorded or trial_id in known:
            continue
        if run.info.status not in ENDED:
            continue  # still running when the driver died: its arm or Optuna trial runs anew
        described = load_run_json(client, run.info.run_id, "trial.json")
        names = {a.path for a in client.list_artifacts(run.info.run_id, FINAL_DIR)}
        if f"{FINAL_DIR}/metrics.json" in names:  # finished, or raced out (KILLED)
            final = load_run_json(client, run.info.run_id, f"{FINAL_DIR}/metrics.json")
            result = reported(final, space)
        elif run.info.status == "FAILED":
            result = {
                "fail_reason": run.data.tags.get("moonsweep.fail_reason", "failed"),
                "failure": run.data.tags.get("moonsweep.failure", ""),
                "epoch": int(run.data.metrics.get("epoch", 0)),
                "val_accuracy": math.nan,
            }
        else:  # stopped early: told to Optuna already, no reference for racing
            result = {}
        known[trial_id] = {
            "arm": described["arm"],
            "level": described["level"],
            "optuna_trial": int(run.data.tags.get("optuna.trial_number", -1)),
            "result": result,
        }
        lines.append(
            f"trial {trial_id} ended after Ray's last save of the experiment: kept as it is "
            f"({run.info.status.lower()}), not run again"
        )
    if lines:
        save_json(folder / ADOPTED_FILE, known)
    return lines
