"""What a trial's records say it was trained and evaluated with.

`engine.config.effective_settings` on hand-made configs; the MLflow writer's two steps (the
settings that apply when a trial starts, the test-time pick when it ends, also for a trial
a resume adopts) on a real SQLite store; and a small real sweep whose every run's params
are read back and compared with the configs its per-seed results were produced with (the
config saved in each seed's final model), with the report's and `select`'s settings of
the chosen model.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from runner import SMALL_SET, moonsweep

from engine.config import TrainConfig, effective_settings, load_config
from engine.test_time import SETTINGS, variant_name
from sweep.naming import VOTING_TAG
from sweep.records import picked_config, trial_settings
from sweep.spaces import load_space
from sweep.state import child_runs, load_run_json, load_state
from sweep.stores import ensure_experiment, mlflow_client
from sweep.tracking import MlflowTracking


def _leaves(cfg: TrainConfig) -> dict[str, Any]:
    """Every leaf of a config by dotted name, walked field by field (not by the engine)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for name in type(node).model_fields:
            value = getattr(node, name)
            if hasattr(type(value), "model_fields"):
                walk(value, f"{prefix}{name}.")
            else:
                out[prefix + name] = value

    walk(cfg, "")
    return out


def _keys(settings: dict[str, Any], section: str) -> set[str]:
    return {k for k in settings if k.startswith(section + ".")}


# -- effective_settings on hand-made configs ----------------------------------------------------


def test_the_default_config_drops_only_what_it_never_reads() -> None:
    cfg = load_config("default")  # MOON auto-tuned, RigL, voting on weights, msp, cosine
    settings = effective_settings(cfg)
    leaves = _leaves(cfg)
    assert set(leaves) - set(settings) == {"moon.alpha", "eval.dice_percentile"}
    for key, value in settings.items():  # the config's values, as JSON
        expected = leaves[key]
        assert value == (list(expected) if isinstance(expected, list) else expected), key
    assert list(settings) == [k for k in leaves if k in settings]  # the config's order


def test_moon_off_keeps_only_moon_enabled() -> None:
    settings = effective_settings(load_config("default", ["moon.enabled=false"]))
    assert _keys(settings, "moon") == {"moon.enabled"} and settings["moon.enabled"] is False
    assert "unknown" not in settings["eval.scores"]  # no unknown output without MOON


def test_auto_alpha_keeps_its_schedule_and_drops_the_fixed_alpha() -> None:
    settings = effective_settings(load_config("default", ["moon.alpha_mode=auto"]))
    assert _keys(settings, "moon") == {
        "moon.enabled",
        "moon.warmup_epochs",
        "moon.init_factor",
        "moon.alpha_final",
        "moon.alpha_mode",
        "moon.ema_momentum",
    }


def test_fixed_alpha_keeps_its_alpha_and_the_warmup() -> None:
    cfg = load_config(
        "default", ["moon.alpha_mode=fixed", "moon.alpha=0.3", "moon.warmup_epochs=4"]
    )
    settings = effective_settings(cfg)
    # A fixed alpha starts after the warm-up too (engine/moon.py: alpha is None before it).
    assert _keys(settings, "moon") == {
        "moon.enabled",
        "moon.warmup_epochs",
        "moon.alpha_mode",
        "moon.alpha",
    }
    assert settings["moon.alpha"] == 0.3 and settings["moon.warmup_epochs"] == 4


def test_dense_keeps_only_the_method_and_a_static_mask_no_updates() -> None:
    dense = effective_settings(load_config("default", ["sparsity.method=dense"]))
    assert _keys(dense, "sparsity") == {"sparsity.method"} and dense["sparsity.method"] == "dense"
    static = effective_settings(load_config("default", ["sparsity.method=static"]))
    assert _keys(static, "sparsity") == {"sparsity.method", "sparsity.density", "sparsity.init"}
    moving = effective_settings(load_config("default", ["sparsity.method=set"]))
    assert len(_keys(moving, "sparsity")) == 6


def test_voting_off_keeps_only_the_mode() -> None:
    off = effective_settings(load_config("default", ["voting.mode=off"]))
    assert _keys(off, "voting") == {"voting.mode"} and off["voting.mode"] == "off"
    on = effective_settings(load_config("default", ["voting.mode=predictions"]))
    assert _keys(on, "voting") == {"voting.mode", "voting.epochs", "voting.snapshots_per_epoch"}


def test_the_dice_percentile_goes_with_the_dice_score_only() -> None:
    dice = effective_settings(
        load_config("default", ["eval.primary=dice", "eval.dice_percentile=70"])
    )
    assert dice["eval.primary"] == "dice" and dice["eval.dice_percentile"] == 70.0
    for score in ("msp", "energy", "max_logit"):
        other = effective_settings(load_config("default", [f"eval.primary={score}"]))
        assert other["eval.primary"] == score and "eval.dice_percentile" not in other


def test_a_constant_rate_and_no_momentum_drop_what_they_make_inert() -> None:
    cfg = load_config("default", ["optim.schedule=constant", "optim.momentum=0"])
    settings = effective_settings(cfg)
    assert _keys(settings, "optim") == {
        "optim.lr",
        "optim.momentum",
        "optim.weight_decay",
        "optim.schedule",
    }


def test_trial_settings_apply_the_pick_and_leave_the_grid_out_without_one() -> None:
    cfg = load_config("default", ["moon.enabled=false", "voting.mode=off"])
    configs = [cfg.model_copy(update={"seed": s}) for s in (3, 4)]
    start = trial_settings(configs, grid=True)
    assert not set(start) & set(SETTINGS) and start["seed"] == "3,4"
    # A trial that does not vote keeps "off"; its pick names no voting mode.
    ended = trial_settings(configs, True, json.dumps({"eval.primary": "energy"}))
    assert {k: ended[k] for k in SETTINGS if k in ended} == {
        "voting.mode": "off",
        "eval.primary": "energy",
    }
    assert trial_settings(configs, grid=False)["eval.primary"] == "msp"
    assert picked_config(cfg, None) is cfg


# -- the MLflow writer: at the start, at the end, and for an adopted trial -----------------------


def _store(tmp_path: Path) -> tuple[str, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = ensure_experiment(client, "e", (tmp_path / "a").as_uri(), {})
    return uri, experiment, client.create_run(experiment).info.run_id


SEARCHED = {
    "arm": "search",
    "level": 0.05,
    "optuna_trial": 0,
    "params": {"sparsity.density": 0.05, "moon.alpha_mode": "fixed", "moon.alpha": 0.5},
}


def _ended(pick: str, settings: dict[str, Any]) -> dict[str, Any]:
    """A finished searched trial's result as Ray holds it (sweep.trial.reported)."""
    return {
        "final": 1,
        "epoch": 2,
        "val/auroc_near": 0.9,
        "history": [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}],
        "test_time_pick": pick,
        "test_time_settings": json.dumps(settings),
    }


def test_the_grid_keys_wait_for_the_pick_also_for_an_adopted_trial(tmp_path: Path) -> None:
    uri, experiment, parent = _store(tmp_path)
    space = load_space("default")  # searched trials evaluate a test-time grid
    tracking = MlflowTracking(uri, experiment, parent, space)
    assert tracking._write(tracking._run_for, ("t1", SEARCHED))
    client = mlflow_client(uri)
    [run] = client.search_runs([experiment], filter_string="tags.`ray.trial_id` = 't1'")
    started = run.data.params
    assert not set(started) & set(SETTINGS)  # unknown until the pick
    assert VOTING_TAG not in run.data.tags
    assert started["moon.alpha"] == "0.5" and "moon.init_factor" not in started
    assert started["searched.moon.alpha"] == "0.5" and started["seed"] == "0,1,2,3,4"

    # The driver dies; the resumed one adopts the trial from its final checkpoint
    # (sweep.adoption): a fresh writer records its end.
    picked = {"eval.primary": "dice", "eval.dice_percentile": 70.0, "voting.mode": "predictions"}
    adopter = MlflowTracking(uri, experiment, parent, space)
    assert adopter.record_end("t1", SEARCHED, _ended("predictions/dice@70", picked), None)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert {k: run.data.params[k] for k in SETTINGS} == {
        "eval.primary": "dice",
        "eval.dice_percentile": "70.0",
        "voting.mode": "predictions",
    }
    assert run.data.tags[VOTING_TAG] == "predictions"
    assert run.data.tags["moonsweep.test_time"] == "predictions/dice@70"
    expected = trial_settings(space.arm_configs(SEARCHED), True, json.dumps(picked))
    params = {k: v for k, v in run.data.params.items() if not k.startswith("searched.")}
    assert params == {k: str(v) for k, v in expected.items()}
    # Written again (a spool sent twice, a second resume): the same, no error.
    assert MlflowTracking(uri, experiment, parent, space).record_end(
        "t1", SEARCHED, _ended("predictions/dice@70", picked), None
    )


def test_a_run_described_before_the_grid_keys_waited_keeps_them(tmp_path: Path) -> None:
    """A sweep recorded by an older moonsweep logged the config's score at the start; a
    resume that ends its trial cannot change it (MLflow keeps a param's first value): the
    end is still written, and the keys it lacked are added."""
    uri, experiment, parent = _store(tmp_path)
    space = load_space("default")
    tracking = MlflowTracking(uri, experiment, parent, space)
    run_id = tracking._run_for("t2", SEARCHED)
    tracking.client.log_param(run_id, "eval.primary", "msp")  # as the old writer did
    picked = {"eval.primary": "max_logit", "voting.mode": "weights"}
    assert tracking.record_end("t2", SEARCHED, _ended("weights/max_logit", picked), None)
    run = mlflow_client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["eval.primary"] == "msp" and run.data.params["voting.mode"] == "weights"
    assert run.data.tags["moonsweep.test_time"] == "weights/max_logit"


# -- a real sweep: every run's params are what its results were produced with -------------------

SPACE = (
    SMALL_SET
    + """  sparsity.density: 0.3
parameters:
  sparsity.method: {distribution: categorical, choices: [rigl, static]}
  moon.alpha_mode: {distribution: categorical, choices: [auto, fixed]}
  moon.alpha_final: {distribution: log_uniform, low: 0.1, high: 3, when: {moon.alpha_mode: auto}}
  moon.alpha: {distribution: log_uniform, low: 0.01, high: 1, when: {moon.alpha_mode: fixed}}
test_time:
  voting.mode: [weights, predictions]
  eval.primary: [msp, max_logit, dice]
  eval.dice_percentile: [70, 90]
objectives:
  - {metric: val/auroc_near, direction: maximize}
  - {metric: val/accuracy, direction: maximize}
sampler: {name: random, seed: 4}
seeds: [0, 1]
budget: {trials: 3, max_concurrent: 2}
early_stopping: null
report_every: 2
"""
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("records")
    (root / "space.yaml").write_text(SPACE)
    workdir = root / "w"
    run = moonsweep(
        "run", "--space", str(root / "space.yaml"), "--workdir", str(workdir), "--name", "rec"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    state, _ = load_state("rec", workdir)
    return {"workdir": workdir, "state": state, "client": mlflow_client(state.tracking_uri)}


def _inapplicable(params: dict[str, str]) -> list[str]:
    """Keys present that the run's own settings make inert (spelled out, not the engine's)."""
    bad = []
    if params["moon.enabled"] == "False":
        bad += [k for k in params if k.startswith("moon.") and k != "moon.enabled"]
    elif params["moon.alpha_mode"] == "auto":
        bad += [k for k in ("moon.alpha",) if k in params]
    else:
        bad += [k for k in ("moon.init_factor", "moon.alpha_final") if k in params]
    if params.get("voting.mode") == "off":
        bad += [k for k in ("voting.epochs", "voting.snapshots_per_epoch") if k in params]
    if params.get("eval.primary") != "dice":
        bad += [k for k in ("eval.dice_percentile",) if k in params]
    if params["sparsity.method"] == "dense":
        bad += [k for k in params if k.startswith("sparsity.") and k != "sparsity.method"]
    if params["sparsity.method"] == "static":
        moving = ("sparsity.update_interval", "sparsity.drop_fraction", "sparsity.end_fraction")
        bad += [k for k in moving if k in params]
    return bad


@pytest.mark.slow
def test_every_run_logs_the_settings_its_results_were_produced_with(swept) -> None:
    state, client = swept["state"], swept["client"]
    runs = child_runs(client, state)
    assert len(runs) == 3 + 4  # searched, and the four default arms
    arms = set()
    for run in runs:
        params, tags = run.data.params, run.data.tags
        arm = tags["moonsweep.arm"]
        arms.add(arm)
        described = load_run_json(client, run.info.run_id, "trial.json")
        seeds = [c["seed"] for c in described["configs"]]
        assert params["seed"] == ",".join(map(str, seeds)) == "0,1"
        grid = described["test_time"] is not None  # searched trials (arms too, if given one)
        assert grid or arm != "search"
        assert not _inapplicable(params), (arm, _inapplicable(params))
        # What each seed's figures were produced with: the config saved in its final model
        # (for a test-time grid, the picked variant's), read back from the artifacts.
        produced = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(
                    run.info.run_id, f"final/model-seed{seed}.pt", tmp
                )
                payload = torch.load(local, weights_only=True)
            produced.append(TrainConfig.model_validate(payload["config"]))
        expected = effective_settings(produced[0])
        assert all(effective_settings(c) == {**expected, "seed": c.seed} for c in produced)
        expected["seed"] = params["seed"]
        logged = {k: v for k, v in params.items() if not k.startswith("searched.")}
        assert logged == {k: str(v) for k, v in expected.items()}, arm
        searched = {k.removeprefix("searched."): v for k, v in params.items() if "searched." in k}
        assert searched == {k: str(v) for k, v in described["params"].items()}
        # The same from the trial.json configs with the recorded pick applied.
        final = load_run_json(client, run.info.run_id, "final/metrics.json")
        configs = [TrainConfig.model_validate(c) for c in described["configs"]]
        recorded = final.get("test_time_settings")
        applied = picked_config(configs[0], recorded) if recorded else configs[0]
        assert effective_settings(applied) == {**expected, "seed": configs[0].seed}
        assert tags[VOTING_TAG] == params["voting.mode"]
        if grid:
            assert recorded is not None
            assert tags["moonsweep.test_time"] == final["test_time_pick"]
            assert final["test_time_pick"] == variant_name(produced[0])
            assert set(SETTINGS) - set(params) == (
                set() if params["eval.primary"] == "dice" else {"eval.dice_percentile"}
            )
    assert arms == {"search", "moon_auto", "sparse", "sparse+voting", "dense"}


def _settings_table(page: str) -> dict[str, str]:
    """The chosen model's settings table of the report page: setting -> value."""
    section = page.split("<h2>The chosen model</h2>", 1)[1].split("<h2>", 1)[0]
    table = section.split("<table class='kv settings'>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", table)
    return dict(rows)


@pytest.mark.slow
def test_the_report_and_select_show_the_chosen_models_settings(swept) -> None:
    workdir, client = swept["workdir"], swept["client"]
    proc = moonsweep("report", "rec", "--workdir", str(workdir), "--no-mlflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = workdir / "rec" / "report"
    summary = json.loads((folder / "report.json").read_text())
    run_id = summary["chosen"]["mlflow_run_id"]
    params = client.get_run(run_id).data.params
    expected = {k: v for k, v in params.items() if not k.startswith("searched.")}
    assert {k: str(v) for k, v in summary["chosen_settings"].items()} == expected
    shown = _settings_table((folder / "report.html").read_text())
    assert shown["eval.primary"] == params["eval.primary"]
    assert shown["voting.mode"] == params["voting.mode"]
    assert shown["moon.warmup_epochs"] == params["moon.warmup_epochs"]
    assert set(shown) == set(expected)
    assert set(summary["chosen_picked"]) == set(SETTINGS) & set(expected)

    proc = moonsweep("select", "rec", "--workdir", str(workdir), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["chosen"]["mlflow_run_id"] == run_id
    assert {k: str(v) for k, v in out["settings"].items()} == expected
    text = moonsweep("select", "rec", "--workdir", str(workdir))
    assert text.returncode == 0, text.stderr[-3000:]
    assert f"primary {params['eval.primary']}*" in text.stdout
    assert f"mode {params['voting.mode']}*" in text.stdout
