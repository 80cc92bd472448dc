"""Re-train one recorded trial with the engine alone (no Ray), to check or reproduce it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.config import ConfigError, validate_config
from engine.test_time import TestTime, collected_modes, pick, variant_name, variants
from engine.train import Run, TrainResult, train
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
    """Each seed's final metrics of a re-trained recorded trial (`retrain_trial`)."""
    return retrain_trial(state, run_id, seeds, on_seed)[1]


def retrain_trial(
    state: SweepState,
    run_id: str,
    seeds: Sequence[int] | None = None,
    on_seed: Callable[[int], None] | None = None,
    repick: bool = False,
) -> tuple[str | None, list[dict[str, float]]]:
    """Re-train a recorded trial (its MLflow run's `trial.json`) with the engine alone.

    `seeds` None repeats the recorded seeds; otherwise the trial's config is trained on
    each given seed instead (same split, same settings). `on_seed(seed)` is called before
    each training. Returns the test-time variant kept (None without a grid) and each seed's
    final metrics, in order. A trial with a test-time grid is evaluated in every variant and
    keeps the one it kept when recorded (its `moonsweep.test_time` tag), or with `repick`
    the one its rule picks again.
    """
    client = mlflow_client(state.tracking_uri)
    record = load_run_json(client, run_id, "trial.json")
    configs = [validate_config(c) for c in record["configs"]]
    if seeds is not None:
        configs = [configs[0].model_copy(update={"seed": int(seed)}) for seed in seeds]
    torch.set_num_threads(max(1, int(state.space.get("resources", {}).get("cpu", 1))))
    test_time = TestTime.model_validate(record["test_time"]) if record.get("test_time") else None
    per_seed: list[list[TrainResult]] = []
    for cfg in configs:
        if on_seed is not None:
            on_seed(cfg.seed)
        if test_time is None:
            per_seed.append([train(cfg)])
            continue
        run = Run(cfg, voting_modes=collected_modes(cfg, test_time))
        while not run.done:
            run.train_epoch()
        per_seed.append(variants(run, test_time))
    names = [variant_name(r.config) for r in per_seed[0]]
    chosen = 0
    if test_time is not None:
        kept = client.get_run(run_id).data.tags.get("moonsweep.test_time")
        if repick or kept not in names:
            means = [aggregate([seed[i].metrics for seed in per_seed]) for i in range(len(names))]
            chosen = pick(means, test_time.pick)
        else:
            chosen = names.index(kept)
    kept_name = names[chosen] if test_time is not None else None
    results = [seed[chosen] for seed in per_seed]
    return kept_name, [dict(r.metrics) for r in results]


def replay(state: SweepState, key: str) -> tuple[TrialRow, dict[str, float], dict[str, float]]:
    """Returns (trial row, recorded final metrics, replayed metrics); a trial with a
    test-time grid picks its variant again by its rule (`test_time_pick` in both)."""
    row = find_trial(state, key)
    kept, per_seed = retrain_trial(state, row["mlflow_run_id"], repick=True)
    replayed: dict = aggregate(per_seed)
    run = mlflow_client(state.tracking_uri).get_run(row["mlflow_run_id"])
    recorded: dict = engine_metrics(run.data.metrics)
    if kept is not None:
        recorded["test_time_pick"] = run.data.tags.get("moonsweep.test_time", "")
        replayed["test_time_pick"] = kept
    return row, recorded, replayed
