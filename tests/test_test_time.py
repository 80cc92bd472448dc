"""Test-time variants: one training gives every voting mode, score and DICE percentile, each
with exactly the figures of a training with that setting."""

from __future__ import annotations

import math

import pytest

from engine.config import load_config
from engine.test_time import (
    PickRule,
    TestTime,
    collected_modes,
    kept_settings,
    pick,
    variant_figures,
    variants,
)
from engine.train import Run, train

GRID = {
    "voting.mode": ["weights", "predictions"],
    "eval.primary": ["msp", "energy", "dice"],
    "eval.dice_percentile": [70, 90],
}


def _same(a: dict[str, float], b: dict[str, float]) -> list[str]:
    assert list(a) == list(b)
    return [k for k in a if not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))]


@pytest.fixture(scope="module")
def trained():
    cfg = load_config("default", ["epochs=7", "voting.epochs=2", "voting.mode=weights"])
    grid = TestTime.model_validate(GRID)
    run = Run(cfg, voting_modes=collected_modes(cfg, grid))
    while not run.done:
        run.train_epoch()
    return cfg, grid, variants(run, grid)


def test_grid_names_and_settings(trained) -> None:
    _, _, results = trained
    names = [
        f"{r.config.voting.mode}/{r.config.eval.primary}@{r.config.eval.dice_percentile}"
        for r in results
    ]
    assert names == [
        "weights/msp@90.0", "weights/energy@90.0", "weights/dice@70.0", "weights/dice@90.0",
        "predictions/msp@90.0", "predictions/energy@90.0", "predictions/dice@70.0",
        "predictions/dice@90.0",
    ]  # fmt: skip


@pytest.mark.parametrize("index", [0, 2, 5, 6])
def test_variant_equals_a_training_with_its_setting(trained, index: int) -> None:
    _, _, results = trained
    variant = results[index]
    again = train(variant.config)  # same seed, CPU: bit for bit
    # Every figure, test parts included, in the order a training gives them.
    assert _same(variant.metrics, again.metrics) == []
    assert len(variant.models) == len(again.models)
    kept = variant_figures(variant.metrics)
    assert kept["auroc_near"] == again.metrics["auroc_near"] and "energy/auroc_near" not in kept
    settings = kept_settings(variant.config)
    assert settings["eval.primary"] == variant.config.eval.primary
    assert ("eval.dice_percentile" in settings) == (variant.config.eval.primary == "dice")


def test_primary_score_renames_figures(trained) -> None:
    _, _, results = trained
    msp, energy = results[0].metrics, results[1].metrics
    assert msp["val/energy/auroc_near"] == energy["val/auroc_near"]
    assert energy["val/msp/auroc_near"] == msp["val/auroc_near"]
    assert msp["val/accuracy"] == energy["val/accuracy"]  # the score changes OOD figures only
    dice70, dice90 = results[2].metrics, results[3].metrics
    assert dice70["val/accuracy"] == dice90["val/accuracy"]
    assert dice70["val/auroc_near"] != dice90["val/auroc_near"]


def test_pick_by_rule() -> None:
    means = [{"val/ece": 0.05}, {"val/ece": math.nan}, {"val/ece": 0.03}, {"val/ece": 0.03}]
    assert pick(means, PickRule(metric="val/ece", direction="minimize")) == 2  # first of a tie
    assert pick(means, PickRule(metric="val/ece", direction="maximize")) == 0  # NaN never kept
    assert pick([{"val/ece": math.nan}], PickRule(metric="val/ece")) == 0


def test_no_voting_and_no_grid() -> None:
    cfg = load_config("default", ["epochs=7", "voting.mode=off"])
    grid = TestTime.model_validate({"eval.primary": ["unknown", "msp"]})
    assert collected_modes(cfg, grid) is None
    names = [v.name for v in grid.grid(False, list(cfg.eval.scores), 90.0)]
    assert names == ["unknown", "msp"]
    no_moon = load_config("default", ["epochs=7", "voting.epochs=2", "moon.enabled=false"])
    assert [v.name for v in grid.grid(True, list(no_moon.eval.scores), 90.0)] == [
        "weights/msp",
        "predictions/msp",
    ]
