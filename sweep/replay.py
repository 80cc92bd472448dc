"""Re-train one recorded trial with the engine alone (no Ray), to check or reproduce it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.config import ConfigError, validate_config
from engine.train import train
from sweep.naming import engine_metrics
from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, TrialRow, load_run_json, trial_rows
from sweep.stats import aggregate
from sweep.stores import mlflow_client


def find_trial(state: SweepState, key: str) -> TrialRow:
    """A trial by Ray trial id, MLflow run id, or Optuna number (`#3` or `3`)."""
    rows = trial_rows(state)
    number = key.lstrip("#")
    for row in rows:
        if key in (row["trial"], row["mlflow_run_id"]) or (
            number.isdigit() and row["arm"] == SEARCH_ARM and row["optuna"] == int(number)
        ):
            return row
    raise ConfigError(
        f"no trial {key!r} in sweep {state.name}; give a Ray trial id, an MLflow run id or an "
        f"Optuna trial number (see `moonsweep status {state.name}`)"
    )


def retrain(
    state: SweepState,
    run_id: str,
    seeds: Sequence[int] | None = None,
    on_seed: Callable[[int], None] | None = None,
) -> list[dict[str, float]]:
    """Re-train a recorded trial (its MLflow run's `trial.json`) with the engine alone.

    `seeds` None repeats the recorded seeds; otherwise the trial's config is trained on
    each given seed instead (same split, same settings). `on_seed(seed)` is called before
    each training. Returns each seed's final metrics, in order.
    """
    record = load_run_json(mlflow_client(state.tracking_uri), run_id, "trial.json")
    configs = [validate_config(c) for c in record["configs"]]
    if seeds is not None:
        configs = [configs[0].model_copy(update={"seed": int(seed)}) for seed in seeds]
    torch.set_num_threads(max(1, int(state.space.get("resources", {}).get("cpu", 1))))
    per_seed = []
    for cfg in configs:
        if on_seed is not None:
            on_seed(cfg.seed)
        per_seed.append(train(cfg).metrics)
    return per_seed


def replay(state: SweepState, key: str) -> tuple[TrialRow, dict[str, float], dict[str, float]]:
    """Returns (trial row, recorded final metrics, replayed metrics)."""
    row = find_trial(state, key)
    replayed = aggregate(retrain(state, row["mlflow_run_id"]))
    run = mlflow_client(state.tracking_uri).get_run(row["mlflow_run_id"])
    recorded = engine_metrics(run.data.metrics)
    return row, recorded, replayed
