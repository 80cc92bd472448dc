"""A sweep's searched trials as records (budget, flags, objectives) and their hypervolume.

Shared by `bench/search.py` and `bench/sweep.py`. A record is one searched Optuna trial:
its state and objectives, whether it is feasible, its issue-14 flags (`early_stopped`,
`raced_out`, `fail_reason`), the epochs x seeds it trained (`budget`, and where that figure
comes from) and whether the hypervolume counts it (`counted`: a finished, feasible model,
neither raced out nor failed). Hypervolumes are computed from records alone, so a saved JSON
file gives the same figures as the run that wrote it.

Example:
    >>> sweeps = [{"trials": [record_of(0, [0.9, 0.1]), record_of(1, [0.5, 0.5])]},
    ...           {"trials": [record_of(0, [0.7, 0.3])]}]
    >>> add_histories(sweeps, ["maximize", "minimize"], margin=0.0)  # the nadir
    [0.5, 0.5]
    >>> [round(v, 6) for v in add_histories(sweeps, ["maximize", "minimize"], margin=0.1)]
    [0.46, 0.54]
    >>> round(sweeps[0]["trials"][1]["volume_after"], 6)  # (0.9 - 0.46) x (0.54 - 0.1)
    0.1936
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep.hypervolume import feasible, hypervolume_history, nadir, volume_after
from sweep.spaces import SEARCH_ARM, SearchSpace
from sweep.state import load_state, trial_rows
from sweep.stores import make_storage

# Of each objective's range: how far beyond the nadir the reference point lies.
REFERENCE_MARGIN = 0.1


def trial_cost(
    trial: optuna.trial.FrozenTrial, epochs: int, seeds: int, last_epoch: float | None
) -> tuple[int, str]:
    """(epochs x seeds the trial trained, where that figure comes from).

    The trial's user attr `epochs_trained` when it has one; else epochs x seeds for a trial
    run to the end, `stopped_at_epoch` x seeds for an early-stopped one, and the last epoch
    MLflow logged (`last_epoch`; every seed trains in lockstep) x seeds for a failed one."""
    attrs = trial.user_attrs
    if "epochs_trained" in attrs:
        return int(attrs["epochs_trained"]), "epochs_trained"
    if attrs.get("early_stopped"):
        return int(attrs["stopped_at_epoch"]) * seeds, "stopped_at_epoch x seeds"
    if trial.state == optuna.trial.TrialState.COMPLETE and not attrs.get("fail_reason"):
        return epochs * seeds, "epochs x seeds"
    return int(last_epoch or 0) * seeds, "last epoch x seeds"


def trial_record(
    trial: optuna.trial.FrozenTrial, epochs: int, seeds: int, last_epoch: float | None
) -> dict[str, Any]:
    """One searched trial's figures, as the JSON files keep them."""
    attrs = trial.user_attrs
    cost, source = trial_cost(trial, epochs, seeds, last_epoch)
    complete = trial.state == optuna.trial.TrialState.COMPLETE
    record = {
        "optuna": trial.number,
        "state": trial.state.name,
        "values": list(trial.values) if complete else None,
        "feasible": complete and feasible(trial),
        "early_stopped": bool(attrs.get("early_stopped", False)),
        "raced_out": bool(attrs.get("raced_out", False)),
        "fail_reason": str(attrs.get("fail_reason", "")),
        "budget": cost,
        "budget_from": source,
    }
    # Early-stopped and raced-out trials are COMPLETE for the sampler with figures of an
    # unfinished model; failed ones may be COMPLETE with a violated constraint.
    record["counted"] = bool(
        record["feasible"]
        and not record["early_stopped"]
        and not record["raced_out"]
        and not record["fail_reason"]
    )
    return record


def on_test_parts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with their objectives' test-part figures as `values` (counted as before
    where a record has them): a searched trial's validation figure for the test-time pick's
    metric is a maximum over the grid, its test figure is not."""
    out = []
    for r in records:
        test = r.get("test_values")
        out.append({**r, "values": test, "counted": r["counted"] and test is not None})
    return out


def record_of(number: int, values: list[float]) -> dict[str, Any]:
    """A counted record with `values` (for examples and tests)."""
    return {"optuna": number, "state": "COMPLETE", "values": values, "feasible": True,
            "early_stopped": False, "raced_out": False, "fail_reason": "", "budget": 1,
            "budget_from": "epochs x seeds", "counted": True}  # fmt: skip


def sweep_records(name: str, workdir: Path) -> tuple[list[dict[str, Any]], int, int]:
    """The searched trials of the finished sweep `name` as records in Optuna's order, and
    the sweep's epochs and seeds per trial."""
    state, folder = load_state(name, workdir)
    space = SearchSpace.model_validate({**state.space, "source_dir": str(folder)})
    epochs, seeds = space.epochs, len(space.seeds)
    rows = {r["optuna"]: r for r in trial_rows(state, all_metrics=True) if r["arm"] == SEARCH_ARM}
    study = optuna.load_study(study_name=name, storage=make_storage(state.storage_url))
    # The objectives on the test parts: `val/auroc_near` -> `auroc_near`, `density` as it is.
    on_test = [o.metric.removeprefix("val/") for o in space.objectives]
    records = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        row = rows.get(t.number, {})
        record = trial_record(t, epochs, seeds, row.get("epochs"))
        values = [row.get(m) for m in on_test]
        record["test_values"] = values if record["values"] and None not in values else None
        records.append(record)
    if [r["optuna"] for r in records] != list(range(len(records))):
        raise RuntimeError(f"sweep {name}: Optuna's trial numbers are not 0..n-1")
    return records, epochs, seeds


def counted_study(records: list[dict[str, Any]], directions: list[str]) -> optuna.Study:
    """An in-memory study of the records, in order, COMPLETE only where counted."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    study = optuna.create_study(directions=directions)
    for t in records:
        if t["counted"]:
            study.add_trial(optuna.trial.create_trial(values=t["values"]))
        else:
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


def reference_point(
    studies: list[optuna.Study], directions: list[str], margin: float
) -> list[float] | None:
    """The nadir of the studies' counted trials (`sweep.hypervolume.nadir`), pushed out by
    `margin` x the range of each objective over them (x its magnitude where they all share
    one value); None when no trial counts.

    With the nadir itself a trial that is the worst on any one objective adds no volume: in
    the default space every trial at the densest level (density is an objective), and in a
    sweep cut short, where only that level passes the accuracy constraint, every trial."""
    try:
        worst = nadir(studies)
    except ValueError:
        return None
    values = [t.values for s in studies for t in s.get_trials(states=(TrialState.COMPLETE,))]
    reference = []
    for i, (w, direction) in enumerate(zip(worst, directions, strict=True)):
        column = [v[i] for v in values]
        spread = (max(column) - min(column)) or abs(w)
        reference.append(w - margin * spread if direction == "maximize" else w + margin * spread)
    return reference


def add_histories(
    sweeps: list[dict[str, Any]], directions: list[str], margin: float
) -> list[float] | None:
    """Give every record of every sweep its `cumulative_budget` and `volume_after` (the
    hypervolume once it and the trials before it have ended), with one reference point for
    all (`reference_point`), returned (None when no trial counts: every volume 0)."""
    studies = [counted_study(s["trials"], directions) for s in sweeps]
    reference = reference_point(studies, directions, margin)
    for sweep, study in zip(sweeps, studies, strict=True):
        numbers, volumes = hypervolume_history(study, reference) if reference else ([], [])
        spent = 0
        for t in sweep["trials"]:
            spent += t["budget"]
            t["cumulative_budget"] = spent
            t["volume_after"] = volume_after(numbers, volumes, t["optuna"])
    return reference


def volume_at(records: list[dict[str, Any]], budget: float) -> float:
    """Hypervolume of the records, in Optuna's order, whose cumulative cost fits `budget`."""
    volume = 0.0
    for t in records:
        if t["cumulative_budget"] > budget:
            break
        volume = t["volume_after"]
    return volume


def final_volume(records: list[dict[str, Any]]) -> float:
    """Hypervolume after every record."""
    return records[-1]["volume_after"] if records else 0.0
