"""Test-time settings: chosen after one training, on the validation parts.

The voting mode (how the last epochs' snapshots are folded, MOON.md section 3), the OOD
score and DICE's percentile (section 6) change nothing in training, so one training gives
every combination of a grid. `variants` evaluates them all from one `Run`, on the validation
parts only; `pick` chooses one by a rule on those figures, the same way wherever it runs (a
sweep's trial, `moonsweep replay`), and `complete` evaluates the test parts of the one kept.
So the test parts are never looked at for a choice, and a trial evaluates them once per seed
instead of once per variant. A completed variant's figures equal those of a training with
its settings (tests/test_test_time.py).

Example:
    >>> grid = TestTime.model_validate(
    ...     {"voting.mode": ["weights", "predictions"], "eval.primary": ["msp", "dice"],
    ...      "eval.dice_percentile": [70, 90]})
    >>> [v.name for v in grid.grid(voting=True, scores=["msp", "dice"], dice_default=90)][:3]
    ['weights/msp', 'weights/dice@70', 'weights/dice@90']
    >>> pick([{"val/auroc_near": 0.8}, {"val/auroc_near": 0.9}], grid.pick)
    1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.config import ScoreName, TrainConfig, apply_overrides, format_value, validate_config
from engine.evaluate import evaluate, evaluation
from engine.train import Run, TrainResult
from engine.voting import VOTING_MODES

# The training settings a test-time grid replaces (a space must not also search them).
SETTINGS = ("voting.mode", "eval.primary", "eval.dice_percentile")


class PickRule(BaseModel):
    """Which variant a trial keeps: the best mean over seeds of one validation metric."""

    model_config = ConfigDict(extra="forbid")
    metric: str = "val/auroc_near"
    direction: Literal["maximize", "minimize"] = "maximize"

    def describe(self) -> str:
        return f"{self.direction} {self.metric}"


class TestTime(BaseModel):
    """A grid of test-time settings (keys named as the training settings they replace) and
    the rule that picks one. An empty list keeps the trained config's setting."""

    __test__ = False  # not a pytest class, whatever its name
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    voting_modes: list[Literal["weights", "predictions"]] = Field(
        default_factory=lambda: list(VOTING_MODES), alias="voting.mode"
    )
    scores: list[ScoreName] = Field(default_factory=list, alias="eval.primary")  # type: ignore[valid-type]
    dice_percentiles: list[float] = Field(default_factory=list, alias="eval.dice_percentile")
    pick: PickRule = Field(default_factory=PickRule)

    def grid(self, voting: bool, scores: list[str], dice_default: float) -> list[Variant]:
        """The variants for a config that votes (`voting`) and computes `scores`; grid scores
        it does not compute are left out. DICE's percentile varies for the DICE score only."""
        modes: list[str | None] = list(self.voting_modes) if voting else [None]
        names = [s for s in self.scores if s in scores] or [scores[0]]
        percentiles = self.dice_percentiles or [dice_default]
        out = []
        for mode in modes:
            for score in names:
                for p in percentiles if score == "dice" else [self.other_percentile(dice_default)]:
                    out.append(Variant(mode, score, float(p), dice=score == "dice"))
        return out

    def other_percentile(self, dice_default: float) -> float:
        """The DICE percentile a non-DICE variant records (its `dice/...` figures)."""
        if not self.dice_percentiles or dice_default in self.dice_percentiles:
            return dice_default
        return self.dice_percentiles[0]


@dataclass(frozen=True)
class Variant:
    """One test-time setting: voting mode (None: no voting), primary score, DICE percentile."""

    voting_mode: str | None
    score: str
    dice_percentile: float
    dice: bool = False

    @property
    def name(self) -> str:
        score = f"dice@{self.dice_percentile:g}" if self.dice else self.score
        return score if self.voting_mode is None else f"{self.voting_mode}/{score}"

    def settings(self) -> dict[str, Any]:
        """The training settings that give this variant's figures."""
        out: dict[str, Any] = {
            "eval.primary": self.score,
            "eval.dice_percentile": self.dice_percentile,
        }
        if self.voting_mode is not None:
            out["voting.mode"] = self.voting_mode
        return out

    def config(self, cfg: TrainConfig) -> TrainConfig:
        """`cfg` with this variant's settings."""
        data = cfg.model_dump(mode="json")
        apply_overrides(data, [f"{k}={format_value(v)}" for k, v in self.settings().items()])
        return validate_config(data)


def variant_name(cfg: TrainConfig) -> str:
    """The name of the variant a config is (as `Variant.name`): `predictions/dice@70`."""
    return Variant(
        None if cfg.voting.mode == "off" else cfg.voting.mode,
        cfg.eval.primary,
        cfg.eval.dice_percentile,
        dice=cfg.eval.primary == "dice",
    ).name


def collected_modes(cfg: TrainConfig, test_time: TestTime | None) -> tuple[str, ...] | None:
    """The voting modes a `Run` of `cfg` must collect for `test_time` (None: the config's)."""
    if test_time is None or cfg.voting.mode == "off" or not test_time.voting_modes:
        return None
    return tuple(test_time.voting_modes)


def variants(run: Run, test_time: TestTime) -> list[TrainResult]:
    """Every variant of a finished run, in grid order, with its validation figures (and
    density); each result's config is the variant's. `complete` adds the test figures.

    The models are folded once per voting mode and their outputs computed once per mode for
    every score and DICE percentile.
    """
    cfg = run.cfg
    grid = test_time.grid(cfg.voting.mode != "off", list(cfg.eval.scores), cfg.eval.dice_percentile)
    percentiles = tuple(dict.fromkeys(v.dice_percentile for v in grid))
    results = []
    for mode in dict.fromkeys(v.voting_mode for v in grid):
        models = run.final_models(mode)
        figures = evaluation(
            models, run.suite, cfg, run.masks, parts=("val",), dice_percentiles=percentiles
        )
        for variant in (v for v in grid if v.voting_mode == mode):
            metrics = figures.metrics(variant.score, variant.dice_percentile)
            results.append(
                TrainResult(variant.config(cfg), metrics, run.history, models, run.masks, run.suite)
            )
    return results


def complete(variant: TrainResult) -> TrainResult:
    """A variant from `variants` with every figure, test parts included: exactly those of a
    training with its settings (in the same order: test, validation, density)."""
    test = evaluate(variant.models, variant.suite, variant.config, variant.masks, parts=("test",))
    # Only the test parts are new: the validation figures and density are the variant's.
    metrics = {**{k: v for k, v in test.items() if k not in variant.metrics}, **variant.metrics}
    return replace(variant, metrics=metrics)


def pick(means: list[dict[str, float]], rule: PickRule) -> int:
    """The index of the variant `rule` keeps among per-variant figures (means over seeds);
    the first on a tie, a NaN never kept unless all are."""
    sign = 1.0 if rule.direction == "maximize" else -1.0

    def key(i: int) -> float:
        value = float(means[i].get(rule.metric, math.nan))
        return -math.inf if math.isnan(value) else sign * value

    best = 0
    for i in range(1, len(means)):
        if key(i) > key(best):
            best = i
    return best
