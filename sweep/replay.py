"""Re-train one recorded trial with the engine alone (no Ray), to check or reproduce it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.config import ConfigError, TrainConfig, validate_config
from engine.test_time import (
    TestTime,
    collected_modes,
    pick,
    variant_figures,
    variant_name,
    variants,
)
from engine.train import Run, TrainResult, train
from sweep.naming import engine_metrics
from sweep.spaces import SEARCH_ARM
from sweep.state import SweepState, TrialRow, load_run_json, seed_records, trial_rows
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
    configs, test_time = _recorded(state, run_id, seeds)
    per_seed: list[list[TrainResult]] = []
    for cfg in configs:
        if on_seed is not None:
            on_seed(cfg.seed)
        per_seed.append(_evaluated(cfg, test_time))
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


def _recorded(
    state: SweepState, run_id: str, seeds: Sequence[int] | None
) -> tuple[list[TrainConfig], TestTime | None]:
    """A recorded trial's configs (one per seed: the recorded seeds, or `seeds`) and its
    test-time grid (None without one); sets torch's threads to the space's CPUs per trial."""
    record = load_run_json(mlflow_client(state.tracking_uri), run_id, "trial.json")
    configs = [validate_config(c) for c in record["configs"]]
    if seeds is not None:
        configs = [configs[0].model_copy(update={"seed": int(seed)}) for seed in seeds]
    torch.set_num_threads(max(1, int(state.space.get("resources", {}).get("cpu", 1))))
    test_time = TestTime.model_validate(record["test_time"]) if record.get("test_time") else None
    return configs, test_time


def _evaluated(cfg: TrainConfig, test_time: TestTime | None) -> list[TrainResult]:
    """One seed trained: its one result, or one per test-time variant in grid order."""
    if test_time is None:
        return [train(cfg)]
    run = Run(cfg, voting_modes=collected_modes(cfg, test_time))
    while not run.done:
        run.train_epoch()
    return variants(run, test_time)


@dataclass
class SeedVariants:
    """One seed of a re-trained trial, as a sweep's trial keeps it (sweep/trial.py): the
    kept variant's every figure (`final/metrics-seed<s>.json`) and each variant's
    `variant_figures` with the kept (`picked`) and the config's (`published`) names
    (`final/variants-seed<s>.json`). A trial without a test-time grid has one variant,
    named by its config (`engine.test_time.variant_name`)."""

    seed: int
    picked: str
    published: str
    metrics: dict[str, float]
    variants: dict[str, dict[str, float]]

    def variants_record(self) -> dict[str, Any]:
        """The `variants-seed<s>.json` record: {"picked", "published", "variants"}."""
        return {"picked": self.picked, "published": self.published, "variants": self.variants}


def retrain_seeds(
    state: SweepState,
    run_id: str,
    seeds: Sequence[int],
    on_seed: Callable[[int], None] | None = None,
) -> Iterator[SeedVariants]:
    """Re-train a recorded trial's config on each of `seeds`, one seed at a time (lazily:
    each is trained when asked for), keeping every test-time variant.

    The kept variant is the one the trial kept when recorded (its `moonsweep.test_time`
    tag, else its `final/variants-seed<s>.json` pick), not a new pick on these seeds: a
    seed's figures are then those of the same model choice. `on_seed(seed)` is called
    before each training.
    """
    configs, test_time = _recorded(state, run_id, seeds)
    published = variant_name(configs[0])
    kept: str | None = None
    if test_time is not None:
        kept = (
            mlflow_client(state.tracking_uri).get_run(run_id).data.tags.get("moonsweep.test_time")
        )
    for cfg in configs:
        if on_seed is not None:
            on_seed(cfg.seed)
        results = _evaluated(cfg, test_time)
        names = [variant_name(r.config) for r in results]
        if kept not in names:
            kept = _recorded_pick(state, run_id, names)
        chosen = names.index(kept)
        yield SeedVariants(
            seed=cfg.seed,
            picked=names[chosen],
            published=published,
            metrics=dict(results[chosen].metrics),
            variants={n: variant_figures(r.metrics) for n, r in zip(names, results, strict=True)},
        )


def _recorded_pick(state: SweepState, run_id: str, names: list[str]) -> str:
    """The variant a trial kept, from its per-seed records (a run without the tag); its
    one variant without a grid."""
    if len(names) == 1:
        return names[0]
    picked = seed_records(state, run_id).picked
    if picked not in names:
        raise ConfigError(
            f"run {run_id} records no kept test-time variant among {', '.join(names)}; "
            "it cannot be re-trained as kept"
        )
    return picked


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
