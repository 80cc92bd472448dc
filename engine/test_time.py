"""Test-time settings: chosen after one training, on the validation parts.

The voting mode (how the last epochs' snapshots are folded; docs/method.md), the
OOD score and DICE's percentile change nothing in training, so one training gives
every combination of a grid. `variants` evaluates them all from one `Run` (the network's
outputs once per voting mode, every score and percentile from them); `pick` chooses one by a
rule on the validation figures only, the same way wherever it runs (a sweep's trial, an arm,
`moonsweep replay`). Every variant keeps its test figures too, so that a comparison can put
two trainings side by side at one shared setting (sweep/levels.py); they never take part in
a choice. A variant's figures equal those of a training with its settings
(tests/test_test_time.py); `variant_figures` is the compact per-seed record a sweep keeps
of each.

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
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.config import ScoreName, TrainConfig, apply_overrides, format_value, validate_config
from engine.evaluate import evaluation
from engine.train import Run, TrainResult
from engine.voting import VOTING_MODES

# The training settings a test-time grid replaces (a space must not also search them).
SETTINGS = ("voting.mode", "eval.primary", "eval.dice_percentile")


class PickRule(BaseModel):
    """Which variant a trial keeps: the best mean over seeds of one validation metric
    (`val/...`: a space naming any other is refused on load, sweep/spaces.py; one that no
    variant has is a `PickError` in `pick`)."""

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


def variant_of(cfg: TrainConfig) -> Variant:
    """The variant a config is: its voting mode (None when off), primary score, percentile."""
    return Variant(
        None if cfg.voting.mode == "off" else cfg.voting.mode,
        cfg.eval.primary,
        cfg.eval.dice_percentile,
        dice=cfg.eval.primary == "dice",
    )


def variant_name(cfg: TrainConfig) -> str:
    """The name of the variant a config is (as `Variant.name`): `predictions/dice@70`."""
    return variant_of(cfg).name


def kept_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The test-time settings a config was evaluated with, those that apply only: no voting
    mode without voting, no DICE percentile for another score.

    >>> from engine.config import load_config
    >>> kept_settings(load_config("default", ["eval.primary=max_logit"]))
    {'eval.primary': 'max_logit', 'voting.mode': 'weights'}
    """
    settings = variant_of(cfg).settings()
    if cfg.eval.primary != "dice":
        del settings["eval.dice_percentile"]
    return settings


def collected_modes(cfg: TrainConfig, test_time: TestTime | None) -> tuple[str, ...] | None:
    """The voting modes a `Run` of `cfg` must collect for `test_time` (None: the config's)."""
    if test_time is None or cfg.voting.mode == "off" or not test_time.voting_modes:
        return None
    return tuple(test_time.voting_modes)


def variants(run: Run, test_time: TestTime) -> list[TrainResult]:
    """Every variant of a finished run, in grid order, with every figure (test, validation,
    density: those of a training with its settings); each result's config is the variant's.

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
            models, run.suite, cfg, run.masks, dice_percentiles=percentiles
        )
        for variant in (v for v in grid if v.voting_mode == mode):
            metrics = figures.metrics(variant.score, variant.dice_percentile)
            results.append(
                TrainResult(variant.config(cfg), metrics, run.history, models, run.masks, run.suite)
            )
    return results


def variant_figures(metrics: dict[str, float]) -> dict[str, float]:
    """The figures of one variant a sweep keeps per seed: those of its own score (test and
    validation, group means and not per OOD set), its classification figures and density;
    the other scores' copies and per-layer densities are left out (they are other variants').

    >>> variant_figures({"auroc_near": 0.9, "energy/auroc_near": 0.8, "val/ece": 0.1,
    ...                  "auroc/photos": 0.7, "density": 0.05, "density/head.weight": 0.2})
    {'auroc_near': 0.9, 'val/ece': 0.1, 'density': 0.05}
    """
    return {k: v for k, v in metrics.items() if "/" not in k.removeprefix("val/")}


class PickError(ValueError):
    """A pick rule on a metric that no variant has (misspelt, or a figure these trainings
    do not compute): there is nothing to choose by, so no variant is kept."""


def pick(means: list[dict[str, float]], rule: PickRule) -> int:
    """The index of the variant `rule` keeps among per-variant figures (means over seeds);
    the first on a tie, a NaN (or a variant without the metric) never kept unless all are.
    A metric that no variant has is a `PickError`, not the first variant.

    >>> try:
    ...     pick([{"val/auroc_near": 0.8, "auroc_near": 0.7}], PickRule(metric="val/auroc_nera"))
    ... except PickError as exc:
    ...     print(exc)
    pick rule maximize val/auroc_nera: no variant has it; they have val/auroc_near
    """
    if not any(rule.metric in figures for figures in means):
        # The headline validation figures, as a hint (not every OOD set's and score's).
        have = sorted({k for f in means for k in f if k.startswith("val/") and k.count("/") == 1})
        raise PickError(
            f"pick rule {rule.describe()}: no variant has it; "
            f"they have {', '.join(have) or 'no validation figures'}"
        )
    sign = 1.0 if rule.direction == "maximize" else -1.0

    def key(i: int) -> float:
        value = float(means[i].get(rule.metric, math.nan))
        return -math.inf if math.isnan(value) else sign * value

    best = 0
    for i in range(1, len(means)):
        if key(i) > key(best):
            best = i
    return best
