"""Re-train one recorded trial with the engine alone (no Ray), to check or reproduce it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from engine.config import ConfigError, validate_config
from engine.train import train
from sweep.orchestrator import SweepState
from sweep.status import trial_rows
from sweep.trial import aggregate


def find_trial(state: SweepState, key: str) -> dict[str, Any]:
    """A trial by Ray trial id, MLflow run id, or Optuna number (`#3` or `3`)."""
    rows = trial_rows(state)
    number = key.lstrip("#")
    for row in rows:
        if key in (row["trial"], row["mlflow_run_id"]) or (
            number.isdigit() and row["arm"] == "search" and row["optuna"] == int(number)
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
    from mlflow.tracking import MlflowClient

    record = load_run_json(MlflowClient(state.tracking_uri), run_id, "trial.json")
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


def replay(
    state: SweepState, key: str
) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """Returns (trial row, recorded final metrics, replayed metrics)."""
    from mlflow.tracking import MlflowClient

    row = find_trial(state, key)
    replayed = aggregate(retrain(state, row["mlflow_run_id"]))
    recorded = MlflowClient(state.tracking_uri).get_run(row["mlflow_run_id"]).data.metrics
    return row, recorded, replayed


def load_run_json(client: Any, run_id: str, path: str) -> dict[str, Any]:
    """A JSON artifact of an MLflow run, e.g. `trial.json` or `final/metrics-seed0.json`."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, path, tmp)
        with open(local) as handle:
            return json.load(handle)


def seed_metrics(state: SweepState, run_id: str) -> dict[int, dict[str, float]]:
    """The per-seed final metrics a trial logged (`final/metrics-seed<s>.json`), by seed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state.tracking_uri)
    return {
        int(seed): load_run_json(client, run_id, f"final/metrics-seed{seed}.json")
        for seed in state.space["seeds"]
    }
