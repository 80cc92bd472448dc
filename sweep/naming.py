"""How a sweep's runs read in the MLflow UI: the experiment's kind, run names, the tags to
group and filter by, and where each metric sits.

Every name MLflow shows is made here, so the writer (`sweep.tracking`) and every reader
(`sweep.state.trial_rows`, `sweep.replay`) agree:

- the experiment is tagged `mlflow.experimentKind = custom_model_development` (MLflow's
  marker of a model-training experiment), and the links moonsweep prints open its runs
  page in the UI's Model training mode (`experiment_url`: MLflow 3.17 takes the mode from
  the URL or the browser's last choice, GenAI by default, and shows GenAI's overview then);
- a trial's run is named by its arm, its Optuna number (searched trials), its density and
  its key settings: `search#3@0.05 rigl moon:fixed`, `moon_auto@0.05 rigl`, `dense`;
- its tags say the same for grouping: `moonsweep.arm`, `moonsweep.level`,
  `moonsweep.method`, `moonsweep.moon` (auto, fixed or off), `moonsweep.voting` (for a
  test-time voting choice, the mode it kept, set when the trial ends) and
  `moonsweep.test_time` (the test-time variant kept, set when the trial ends); after the
  sweep `moonsweep.front` and `moonsweep.best_at_level`, after `select` `moonsweep.chosen`;
- headline figures keep their short names (`accuracy`, `auroc_near`, `val/ece`, `density`,
  `std/val/accuracy`); the detail ones go under one prefix per kind, which the UI's charts
  put in a section of their own: `sets/` per OOD set (`sets/val/auroc/photos`), `scores/`
  the non-primary OOD scores (`scores/val/energy/auroc_near`), `layers/` density per layer
  (`layers/density/head.weight`). Readers take the prefix off again (`engine_metric`), so
  selection, levels and the report see the engine's names, in old sweeps and new.

Example:
    >>> mlflow_metric("val/auroc/photos"), mlflow_metric("val/energy/auroc_near")
    ('sets/val/auroc/photos', 'scores/val/energy/auroc_near')
    >>> mlflow_metric("val/auroc_near"), mlflow_metric("std/val/accuracy")
    ('val/auroc_near', 'std/val/accuracy')
    >>> engine_metric("sets/val/auroc/photos"), engine_metric("accuracy")
    ('val/auroc/photos', 'accuracy')
    >>> run_name("search", 0.05, 3, "rigl", 0.05, moon_mode="fixed")
    'search#3@0.05 rigl moon:fixed'
    >>> run_name("moon_auto", 0.05, -1, "rigl", 0.05), run_name("dense", None, -1, "dense", 1.0)
    ('moon_auto@0.05 rigl', 'dense')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.checkpoint import load_json
from engine.config import TrainConfig
from engine.metrics import OOD_METRICS
from engine.scores import scores
from engine.test_time import TestTime, collected_modes
from sweep.spaces import SEARCH_ARM

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3.x's value for classic model training (its UI's CUSTOM_MODEL_DEVELOPMENT).
MODEL_TRAINING = "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: MODEL_TRAINING}
# MLflow 3.17's UI takes the experiment's kind from its GenAI / Model training switch (the
# URL's `workflowType`, else the browser's last choice, else GenAI), not from the tag: the
# links moonsweep prints say it.
WORKFLOW = "workflowType=machine_learning"

# Tags of a trial's run (besides the ids: ray.trial_id, optuna.trial_number).
ARM_TAG = "moonsweep.arm"
LEVEL_TAG = "moonsweep.level"
METHOD_TAG = "moonsweep.method"
MOON_TAG = "moonsweep.moon"
VOTING_TAG = "moonsweep.voting"
FAILURE_TAG = "moonsweep.failure"  # why it failed: sweep.failures' kinds
FAIL_REASON_TAG = "moonsweep.fail_reason"  # what it failed on, in words
RACED_TAG = "moonsweep.raced_out"  # raced out by seed racing; the value says by what
FINAL_DIR = "final"  # a finished trial's artifacts: metrics and one model per seed
# A confirmed trial's artifacts (`moonsweep confirm`): per fresh seed, as under FINAL_DIR
# (`metrics-seed<s>.json`, `variants-seed<s>.json`), no models.
CONFIRM_DIR = "confirm"
# On the sweep's parent run: the fresh seeds `moonsweep confirm` trains, comma-separated.
CONFIRM_TAG = "moonsweep.confirm_seeds"
# In a sweep's folder: trials that ended after Ray's last save, kept on resume (sweep.adoption).
ADOPTED_FILE = "adopted.json"
FRONT_TAG = "moonsweep.front"  # on the feasible Pareto front of the finished trials
BEST_AT_LEVEL_TAG = "moonsweep.best_at_level"  # its level's best searched trial
CHOSEN_TAG = "moonsweep.chosen"  # what `moonsweep select` chose last

# The prefixes of the detail metrics: (prefix, what it holds).
SETS, SCORES, LAYERS = "sets", "scores", "layers"
GROUPS = {
    SETS: "per OOD set: sets/[val/][<score>/]<auroc|fpr95|aupr_in|aupr_out>/<set>",
    SCORES: "OOD scores other than the primary one: scores/[val/]<score>/<metric>",
    LAYERS: "density per layer: layers/density/<layer>",
}


def _group(name: str) -> str | None:
    """The detail group of an engine metric name, or None for a headline figure."""
    parts = name.split("/")
    if parts[0] == "std":  # spreads over seeds: kept for the headline figures only
        return None
    core = parts[1:] if parts[0] == "val" else parts
    if core[0] == "density" and len(core) > 1:
        return LAYERS
    scored = core[0] in scores.names()
    if len(core) >= 2 and core[-2] in OOD_METRICS and (len(core) == 2 or scored):
        return SETS
    if len(core) == 2 and scored:
        return SCORES
    return None


def experiment_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs (`ui`: the UI's address, or "" for a
    link within the UI).

    >>> experiment_url("http://127.0.0.1:5000", "3")
    'http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning'
    """
    return f"{ui}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def mlflow_metric(name: str) -> str:
    """The MLflow key of an engine metric: the name itself, or a detail group's prefix first."""
    group = _group(name)
    return name if group is None else f"{group}/{name}"


def engine_metric(key: str) -> str:
    """The engine's name of an MLflow metric key (the inverse of `mlflow_metric`; a key of a
    sweep recorded before the groups is its own name)."""
    group, _, rest = key.partition("/")
    return rest if group in GROUPS and rest else key


def engine_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's MLflow metrics under the engine's names."""
    return {engine_metric(k): v for k, v in metrics.items()}


def moon_mode(cfg: TrainConfig) -> str:
    """`auto` or `fixed` (MOON's alpha), `off` without MOON."""
    return cfg.moon.alpha_mode if cfg.moon.enabled else "off"


def run_name(
    arm: str,
    level: float | None,
    optuna: int,
    method: str,
    density: float,
    moon_mode: str | None = None,
) -> str:
    """A trial's run name: arm (with `#<Optuna number>` for a searched one), `@density`
    (its level, else its target density), sparse method; a searched one adds its MOON mode
    (a baseline's arm already says it)."""
    head = f"search#{optuna}" if arm == SEARCH_ARM else arm
    if method == "dense":
        return head
    at = level if level is not None else density
    name = f"{head}@{at:g} {method}"
    return f"{name} moon:{moon_mode}" if arm == SEARCH_ARM and moon_mode else name


def trial_name(arm: str, level: float | None, optuna: int, cfg: TrainConfig) -> str:
    """`run_name` of a trial from its (first seed's) training config."""
    return run_name(arm, level, optuna, cfg.sparsity.method, cfg.sparsity.density, moon_mode(cfg))


def trial_tags(
    arm: str, level: float | None, cfg: TrainConfig, test_time: TestTime | None = None
) -> dict[str, str]:
    """The tags a trial's run is grouped and filtered by in the MLflow UI, as it starts.

    A trial whose voting mode is a test-time choice (`test_time`) has no `VOTING_TAG` yet:
    it gets the mode it kept when it ends (`kept_voting` of its pick), so that the tag never
    names a mode other than the kept one (one that fails or stops early keeps none).

    >>> from engine.config import load_config
    >>> from engine.test_time import TestTime
    >>> cfg = load_config("default")
    >>> trial_tags("moon_auto", 0.05, cfg)[VOTING_TAG]
    'weights'
    >>> VOTING_TAG in trial_tags("search", 0.05, cfg, TestTime())
    False
    """
    tags = {
        ARM_TAG: arm,
        METHOD_TAG: cfg.sparsity.method,
        MOON_TAG: moon_mode(cfg),
    }
    if not collected_modes(cfg, test_time):  # else decided by the pick
        tags[VOTING_TAG] = cfg.voting.mode
    if level is not None:  # the density level its comparisons are made at
        tags[LEVEL_TAG] = f"{level:g}"
    if arm == SEARCH_ARM:
        # Not on the front until the finished sweep says so (sweep.marks flips the few that
        # are): the end of a sweep of thousands then writes a handful of tags, not thousands.
        tags[FRONT_TAG] = tags[BEST_AT_LEVEL_TAG] = flag(False)
    return tags


def kept_voting(pick: str) -> str:
    """The voting mode of a test-time pick (`engine.test_time.Variant.name`: `<mode>/<score>`,
    or `<score>` without voting).

    >>> kept_voting("predictions/dice@70"), kept_voting("msp")
    ('predictions', 'off')
    """
    mode, slash, _ = pick.partition("/")
    return mode if slash else "off"


def flag(value: bool) -> str:
    """A yes/no tag's value, as the UI's filter takes it: `tags.moonsweep.front = 'true'`."""
    return "true" if value else "false"


def read_adopted(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The trials a resume adopted (`ADOPTED_FILE`, written by sweep.adoption): Ray trial id
    -> its `arm`, `level`, `optuna_trial` number and final `result`; {} if none was."""
    if path is None or not Path(path).is_file():
        return {}
    return load_json(path)
