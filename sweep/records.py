"""What a trial was trained and evaluated with, as its records say it: its MLflow params
(written by `sweep.tracking`) and the settings the report and `moonsweep select` show.

A trial's settings are the effective settings of its training config
(`engine.config.effective_settings`: only those that apply, so no MOON alpha for an arm
without MOON and no DICE percentile for another score) and its seeds. A trial with a
test-time grid (the space's `test_time`, engine/test_time.py) has the grid's settings
(`SETTINGS`: voting mode, primary score, DICE percentile) decided after training, by the
variant its rule picks on validation; the trial records that pick as `test_time_settings`
in its final metrics (a JSON object). MLflow params cannot change once logged, so a run's
params are written in two steps: `start_settings` when the trial starts (the grid's keys
left out), `picked_settings` when it ends; together they are `trial_settings`.

Example:
    >>> from engine.config import load_config
    >>> cfg = load_config("default", ["moon.alpha_mode=fixed", "eval.primary=msp"])
    >>> start = start_settings([cfg], grid=True)
    >>> "eval.primary" in start, "voting.mode" in start, start["seed"]
    (False, False, '0')
    >>> picked_settings([cfg], '{"eval.primary": "dice", "eval.dice_percentile": 70.0, '
    ...                 '"voting.mode": "predictions"}')
    {'voting.mode': 'predictions', 'eval.primary': 'dice', 'eval.dice_percentile': 70.0}
    >>> picked_settings([cfg], None)
    {}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow.exceptions import MlflowException

from engine.config import (
    TrainConfig,
    apply_overrides,
    effective_settings,
    format_value,
    validate_config,
)
from engine.test_time import SETTINGS
from sweep.naming import FINAL_DIR
from sweep.state import SweepState, load_run_json
from sweep.stores import mlflow_client

__all__ = [
    "SETTINGS",
    "RecordedSettings",
    "picked_config",
    "picked_settings",
    "run_settings",
    "start_settings",
    "trial_settings",
]


def picked_config(cfg: TrainConfig, recorded: str | None) -> TrainConfig:
    """`cfg` with the test-time settings `recorded` (a trial's `test_time_settings`, a JSON
    object of dotted settings) applied; `cfg` itself when none is recorded."""
    if not recorded:
        return cfg
    data = cfg.model_dump(mode="json")
    picked = json.loads(recorded)
    apply_overrides(data, [f"{k}={format_value(v)}" for k, v in picked.items()])
    return validate_config(data)


def trial_settings(
    configs: Sequence[TrainConfig], grid: bool, recorded: str | None = None
) -> dict[str, Any]:
    """Every setting a trial's runs were trained and evaluated with: the effective settings
    of its first seed's config (with the test-time pick `recorded` applied), `seed` the
    seeds trained (`0,1,2`). With a `grid` and no pick recorded (not yet, or never: a failed
    trial, an older record), the grid's keys are left out: nothing says what they were."""
    first = picked_config(configs[0], recorded if grid else None)
    settings = effective_settings(first)
    settings["seed"] = ",".join(str(c.seed) for c in configs)
    if grid and not recorded:
        settings = {k: v for k, v in settings.items() if k not in SETTINGS}
    return settings


def start_settings(configs: Sequence[TrainConfig], grid: bool) -> dict[str, Any]:
    """What a trial's run logs as params when it starts: `trial_settings` without the
    grid's keys (its pick is not known yet)."""
    return trial_settings(configs, grid)


def picked_settings(configs: Sequence[TrainConfig], recorded: str | None) -> dict[str, Any]:
    """What a trial with a test-time grid logs as params when it ends: the grid's keys
    (`SETTINGS`) that apply to its config with the pick `recorded`; {} without a pick."""
    if not recorded:
        return {}
    settings = trial_settings(configs, grid=True, recorded=recorded)
    return {k: v for k, v in settings.items() if k in SETTINGS}


@dataclass
class RecordedSettings:
    """A trial's settings as its records give them (`run_settings`)."""

    settings: dict[str, Any]  # `trial_settings`: every setting that applies, in config order
    picked: list[str] = field(default_factory=list)  # those its test-time grid picked
    pick: str | None = None  # the variant kept (`engine.test_time.Variant.name`)
    rule: str | None = None  # the rule that kept it, e.g. `maximize val/auroc_near`


def run_settings(state: SweepState, run_id: str) -> RecordedSettings:
    """A trial's settings (`trial_settings`) from its run's records, `trial.json` (the
    configs and the grid) and `final/metrics.json` (the pick), whatever its params say
    (those of sweeps recorded before the params followed the pick do not); `picked` the
    keys its test-time grid picked on validation ([] without a grid or a pick)."""
    client = mlflow_client(state.tracking_uri)
    described = load_run_json(client, run_id, "trial.json")
    configs = [validate_config(c) for c in described["configs"]]
    grid = described.get("test_time") is not None
    final: dict[str, Any] = {}
    if grid:
        try:
            final = load_run_json(client, run_id, f"{FINAL_DIR}/metrics.json")
        except (OSError, MlflowException):  # not finished: no pick to read
            final = {}
    recorded = final.get("test_time_settings")
    settings = trial_settings(configs, grid, recorded)
    picked = [k for k in settings if k in SETTINGS] if grid and recorded else []
    return RecordedSettings(
        settings, picked, final.get("test_time_pick"), final.get("test_time_rule")
    )
