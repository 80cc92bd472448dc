"""Tags that say what a finished sweep found, on its trials' MLflow runs, for the UI's
filters and groups (`tags.moonsweep.front = 'true'`, group by `moonsweep.best_at_level`).

- `moonsweep.front`: a searched trial on Optuna's Pareto front of the trials that ran to
  the end, constraints met (`sweep.status.leaders`: what `run` and `status` list);
- `moonsweep.best_at_level`: the best searched trial of its density level
  (`sweep.levels.best_searched`: what the per-level tables compare);
- `moonsweep.chosen`: what `moonsweep select` chose last (one run at a time);

and the experiment's `mlflow.experimentKind` (`mark_experiment`).

Searched trials get `true` or `false`; baselines are not candidates and get neither.

Example:
    >>> from sweep.marks import mark_findings  # doctest: +SKIP
    >>> mark_findings(state, compare_levels(state))  # doctest: +SKIP
    {'front': 3, 'best_at_level': 4}
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow.entities import RunTag

from sweep.levels import SEARCHED, Level
from sweep.naming import ARM_TAG, BEST_AT_LEVEL_TAG, CHOSEN_TAG, EXPERIMENT_TAGS, FRONT_TAG, flag
from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, child_runs
from sweep.status import leaders
from sweep.stores import mlflow_client


def mark_experiment(state: SweepState) -> None:
    """Tag the sweep's experiment as model training (`sweep.naming.EXPERIMENT_TAGS`), so the
    MLflow UI opens it on its runs; for sweeps started before the tag, on resume and `ui`."""
    client = mlflow_client(state.tracking_uri)
    for key, value in EXPERIMENT_TAGS.items():
        client.set_experiment_tag(state.experiment_id, key, value)


def mark_findings(state: SweepState, levels: Sequence[Level]) -> dict[str, int]:
    """Tag every searched trial's run with `moonsweep.front` and `moonsweep.best_at_level`;
    returns how many got `true` of each. Only runs whose tags change are written (a run
    starts with both `false`), so marking a sweep of thousands costs a few writes."""
    try:
        front = {row["trial"] for row in leaders(state)}
    except KeyError:  # no study: the sweep never asked Optuna for a trial
        front = set()
    best = {lv.arms[SEARCHED].run_id for lv in levels if SEARCHED in lv.arms}
    client = mlflow_client(state.tracking_uri)
    counts = {"front": 0, "best_at_level": 0}
    for run in child_runs(client, state, f"tags.`{ARM_TAG}` = '{SEARCH_ARM}'"):
        tags = run.data.tags
        on_front = tags.get("ray.trial_id") in front
        at_level = run.info.run_id in best
        counts["front"] += on_front
        counts["best_at_level"] += at_level
        wanted = {FRONT_TAG: flag(on_front), BEST_AT_LEVEL_TAG: flag(at_level)}
        changed = [RunTag(k, v) for k, v in wanted.items() if tags.get(k) != v]
        if changed:
            client.log_batch(run.info.run_id, tags=changed)
    return counts


def mark_chosen(state: SweepState, run_id: str) -> None:
    """Tag `run_id` as the chosen model (`moonsweep.chosen = true`) and take the tag off the
    run an earlier `select` chose."""
    client = mlflow_client(state.tracking_uri)
    earlier = child_runs(client, state, f"tags.`{CHOSEN_TAG}` = 'true'")
    for run in earlier:
        if run.info.run_id != run_id:
            client.delete_tag(run.info.run_id, CHOSEN_TAG)
    client.set_tag(run_id, CHOSEN_TAG, flag(True))
