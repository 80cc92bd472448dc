"""Search spaces: declarative YAML, validated on load, turned into Optuna suggestions.

A space names a base training config (a preset or YAML file), fixed overrides, the
searched parameters (with optional conditions), the objectives, constraints, baseline
arms, seeds, budget, resources and the early-stopping rule.

Example:
    >>> from sweep.spaces import load_space
    >>> space = load_space("default")
    >>> [o.metric for o in space.objectives]
    ['val/auroc_near', 'val/accuracy', 'val/ece', 'density']
    >>> sorted(space.baselines), space.levels
    (['dense', 'moon_auto', 'sparse', 'sparse+voting'], [0.02, 0.05, 0.1, 0.2])
    >>> space.baseline_trials()[:3]
    [('dense', None), ('moon_auto', 0.02), ('sparse', 0.02)]
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.arms import arm_overrides
from engine.config import (
    EPOCH_COUNTED,
    ConfigError,
    TrainConfig,
    apply_overrides,
    check_registered,
    config_error,
    format_value,
    load_yaml,
    resolve_source,
    validate_config,
)
from engine.metrics import OOD_METRICS
from engine.scores import scores
from engine.sparse_methods import DENSE
from engine.test_time import TestTime
from sweep.constraints import Constraint
from sweep.racing import Race

SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

# The arms every comparison needs (engine/arms.py says what each is): MOON as published,
# plain sparse training, voting alone, and dense; the sparse ones at every density level.
DEFAULT_BASELINES: dict[str, dict[str, Any]] = {
    arm: arm_overrides(arm) for arm in ("moon_auto", "sparse", "sparse+voting", "dense")
}

# The arm of the trials Optuna suggests (the others are the baselines, by name).
SEARCH_ARM = "search"
# The figures `moonsweep status` shows per trial (sweep.state reads them back).
KEY_METRICS = ("val/accuracy", "val/auroc_near", "val/auroc_far", "val/ece", "density")


# What a sweep may decide on (objectives, constraints, early stopping, the test-time pick):
# validation figures only, so that test figures never take part in a choice. Figures
# are named as engine/evaluate.py names them: `val/` then a classification figure, or
# `[<score>/]<OOD metric>` with `_<group>` (a group mean) or `/<set>` (one OOD set).
CLASSIFICATION = ("accuracy", "known_accuracy", "ece", "nll", "brier")
OOD_GROUPS = ("near", "far")
VALIDATION_FIGURES = (
    f"val/<{'|'.join(CLASSIFICATION)}>, val/[<score>/]<{'|'.join(OOD_METRICS)}>"
    f"_<{'|'.join(OOD_GROUPS)}> or .../<OOD set> (<score>: {'|'.join(scores.names())})"
)
# Early stopping decides on a key of every report Ray gets (sweep/trial.py): the current
# weights' validation accuracy. The `val/...` figures are in searched trials' reports from
# the grace epoch on only, and Ray refuses a report without the scheduler's metric.
EARLY_STOPPING_METRICS = ("val_accuracy",)
TEST_SPLIT = "a test-split figure (test figures never take part in a choice)"


def is_validation_figure(name: str) -> bool:
    """Whether `name` is a validation figure the engine records (any OOD set name passes:
    the sets are known only once the data is loaded).

    >>> [is_validation_figure(n) for n in ("val/auroc_near", "val/energy/fpr95/photos")]
    [True, True]
    >>> [is_validation_figure(n) for n in ("auroc_near", "val/auroc_nera", "val/msp/accuracy")]
    [False, False, False]
    """
    core = name.removeprefix("val/").split("/")
    if not name.startswith("val/") or not all(core):
        return False
    if core[0] in scores.names():  # another score's OOD figures (`val/energy/auroc_near`)
        core = core[1:]
        if not core or core[0] in CLASSIFICATION:
            return False
    if len(core) == 2:  # one OOD set's
        return core[0] in OOD_METRICS
    metric, _, group = core[0].rpartition("_")
    group_mean = metric in OOD_METRICS and group in OOD_GROUPS
    return len(core) == 1 and (core[0] in CLASSIFICATION or group_mean)


def metric_problem(name: str, allowed: str, density: bool = False) -> str | None:
    """Why a sweep may not decide on `name`, in words (None: it may); `allowed` says what
    may be named, `density` allows the model's density too.

    >>> print(metric_problem("auroc_near", "allowed: ..."))  # doctest: +NORMALIZE_WHITESPACE
    a test-split figure (test figures never take part in a choice): use val/auroc_near;
    allowed: ...
    >>> metric_problem("val/auroc_nera", "allowed: ..."), metric_problem("density", "", True)
    ('no such validation figure; allowed: ...', None)
    """
    if is_validation_figure(name) or (density and name == "density"):
        return None
    if is_test_figure(name):
        return f"{TEST_SPLIT}: use val/{name.removeprefix('test/')}; {allowed}"
    return f"no such validation figure; {allowed}"


def is_test_figure(name: str) -> bool:
    """Whether `name` is a test-split figure (the engine's unprefixed names; `test/...`
    read as the same)."""
    return is_validation_figure(f"val/{name.removeprefix('test/')}")


def _checked(name: str, allowed: str, density: bool = False) -> str:
    problem = metric_problem(name, allowed, density)
    if problem is not None:
        raise ValueError(problem)
    return name


OBJECTIVE_METRICS = f"objectives and constraints name {VALIDATION_FIGURES}, or density"
PICK_METRICS = f"the test-time pick is on {VALIDATION_FIGURES}"


def arm_label(arm: str, level: float | None) -> str:
    """A baseline trial's name: its arm, and its density level when the space has levels.

    >>> arm_label("dense", None), arm_label("moon_auto", 0.05)
    ('dense', 'moon_auto@0.05')
    """
    return arm if level is None else f"{arm}@{level:g}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Parameter(_Strict):
    distribution: Literal["uniform", "log_uniform", "int", "log_int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: list[Any] | None = None
    # Sampled only when every named earlier parameter has one of the listed values.
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Parameter:
        if self.distribution == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.distribution} needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
        if self.distribution.startswith("log") and self.low <= 0:
            raise ValueError(f"{self.distribution} needs 'low' > 0, got {self.low}")
        return self

    def conditions(self) -> dict[str, list[Any]]:
        return {k: v if isinstance(v, list) else [v] for k, v in (self.when or {}).items()}


class Objective(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"]

    @field_validator("metric")
    @classmethod
    def _validation(cls, name: str) -> str:
        return _checked(name, OBJECTIVE_METRICS, density=True)

    @property
    def mode(self) -> str:
        return "max" if self.direction == "maximize" else "min"


class SpaceConstraint(_Strict):
    """`metric op value`, or `metric op <baseline's metric> + offset`."""

    metric: str
    op: Literal[">=", "<=", ">", "<"]
    value: float | None = None
    baseline: str | None = None
    offset: float = 0.0

    @field_validator("metric")
    @classmethod
    def _validation(cls, name: str) -> str:
        return _checked(name, OBJECTIVE_METRICS, density=True)

    @model_validator(mode="after")
    def _one_reference(self) -> SpaceConstraint:
        if (self.value is None) == (self.baseline is None):
            raise ValueError("give exactly one of 'value' or 'baseline'")
        return self

    @property
    def label(self) -> str:
        ref = f"{self.value}" if self.value is not None else f"{self.baseline}{self.offset:+g}"
        return f"{self.metric}{self.op}{ref}"

    def threshold(self, baselines: dict[str, dict[str, float]]) -> float | None:
        if self.value is not None:
            return self.value
        ref = baselines.get(self.baseline or "", {}).get(self.metric)
        return None if ref is None else ref + self.offset

    def bound(self, baselines: dict[str, dict[str, float]]) -> Constraint | None:
        """As a fixed `Constraint` (None while its baseline's figure is unknown)."""
        threshold = self.threshold(baselines)
        return None if threshold is None else Constraint(self.metric, self.op, threshold)

    def violation(self, value: float, threshold: float) -> float:
        """Optuna's convention: <= 0 is feasible."""
        return threshold - value if self.op in (">=", ">") else value - threshold


class Sampler(_Strict):
    name: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = 0
    startup_trials: int = Field(4, ge=0)
    # TPE only: model the parameters jointly, each group of those that occur together
    # (a `when:` branch) apart (Optuna's multivariate, group TPE).
    multivariate: bool = False

    @model_validator(mode="after")
    def _multivariate_is_tpe(self) -> Sampler:
        if self.multivariate and self.name != "tpe":
            raise ValueError(f"multivariate applies to the tpe sampler only, not {self.name}")
        return self


class EarlyStopping(_Strict):
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    reduction_factor: float = Field(2.0, gt=1)

    @field_validator("metric")
    @classmethod
    def _in_every_report(cls, name: str) -> str:
        if name in EARLY_STOPPING_METRICS:
            return name
        allowed = (
            f"early stopping decides on {' or '.join(EARLY_STOPPING_METRICS)} "
            "(the current weights' validation accuracy, in every report)"
        )
        if is_validation_figure(name):
            raise ValueError(
                "not in every report Ray gets (baselines, and searched trials before the "
                f"grace epoch, report no val/... figures); {allowed}"
            )
        if is_test_figure(name):
            raise ValueError(f"{TEST_SPLIT}; {allowed}")
        raise ValueError(f"not a figure the trials report; {allowed}")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _divides_one(self) -> Resources:
        # Fractions that do not divide 1 strand GPU capacity (ray#5902).
        if 0 < self.gpu < 1 and not math.isclose(1 / self.gpu, round(1 / self.gpu)):
            raise ValueError(f"gpu fraction {self.gpu} must divide 1 (e.g. 0.5, 0.25)")
        return self


class Retry(_Strict):
    """Trial faults worth another attempt from the trial's last checkpoint.

    `on` names the faults: `oom` (out of memory, e.g. a GPU shared by several trials),
    `nan` (the loss diverged), `error` (any other exception). Bad configs are never retried.
    """

    attempts: int = Field(0, ge=0, le=10)
    on: list[Literal["oom", "nan", "error"]] = Field(default_factory=lambda: ["oom"])


class Budget(_Strict):
    trials: int = Field(12, ge=1)
    max_concurrent: int = Field(2, ge=1)


class SearchSpace(_Strict):
    description: str = ""
    base: str = "default"
    set: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Parameter]
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[SpaceConstraint] = Field(default_factory=list)
    sampler: Sampler = Field(default_factory=Sampler)
    baselines: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_BASELINES))
    # Densities the sweep compares at: every sparse baseline arm is trained at each, and the
    # searched density is one of them, so each comparison is at exactly equal density.
    levels: list[float] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    budget: Budget = Field(default_factory=Budget)
    resources: Resources = Field(default_factory=Resources)
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping)
    retry: Retry = Field(default_factory=Retry)
    # Settings chosen after training on validation (every trial, arms too; engine/test_time.py)
    # and seed racing (sweep/racing.py); docs/search-spaces.md says what each does.
    test_time: TestTime | None = None
    race: Race | None = None
    # Epochs between reports to Ray, each with a checkpoint. A report is a round trip to the
    # driver, so small trials report every few epochs; every epoch still reaches MLflow.
    report_every: int = Field(1, ge=1)
    # Where the space file lives, to resolve a relative `base`; not part of the YAML.
    source_dir: str | None = Field(default=None, exclude=True)
    _base: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _references(self) -> SearchSpace:
        seen: list[str] = []
        for name, param in self.parameters.items():
            for cond in param.conditions():
                if cond not in seen:
                    raise ValueError(
                        f"parameters.{name}.when: {cond!r} must be a parameter listed before it"
                    )
            seen.append(name)
        for i, con in enumerate(self.constraints):
            if con.baseline is not None and con.baseline not in self.baselines:
                raise ValueError(
                    f"constraints[{i}].baseline: {con.baseline!r} is not a baseline arm; "
                    f"arms: {', '.join(self.baselines)}"
                )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} has duplicates")
        if self.race is not None and self.race.seeds >= len(self.seeds):
            raise ValueError(
                f"race.seeds: {self.race.seeds} must be fewer than the {len(self.seeds)} seeds, "
                "so that a trial can be stopped after them; or drop `race`"
            )
        tt = self.test_time
        if tt is not None:
            problem = metric_problem(tt.pick.metric, PICK_METRICS)
            if problem is not None:
                raise ValueError(
                    f"test_time.pick.metric: {tt.pick.metric!r} is not allowed: {problem}"
                )
            grids = {
                "voting.mode": tt.voting_modes,
                "eval.primary": tt.scores,
                "eval.dice_percentile": tt.dice_percentiles,
            }
            for key, values in grids.items():
                if values and key in self.parameters:
                    raise ValueError(
                        f"parameters.{key}: also in test_time, which evaluates every value "
                        "after one training; search it in one place only"
                    )
        self._check_levels()
        return self

    def _check_levels(self) -> None:
        if not self.levels:
            return
        if any(not 0 < d < 1 for d in self.levels) or len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels: {self.levels}: distinct densities in (0, 1) are allowed")
        self.levels = sorted(self.levels)
        density = self.parameters.get("sparsity.density")
        if density is not None and (
            density.distribution != "categorical"
            or any(c not in self.levels for c in density.choices or [])
        ):
            raise ValueError(
                "parameters.sparsity.density: with levels, search it as "
                f"{{distribution: categorical, choices: {self.levels}}} (or a subset), so "
                "every searched trial has arms trained at its exact density"
            )
        for i, con in enumerate(self.constraints):
            if con.baseline is not None and con.baseline not in self.unlevelled_arms():
                raise ValueError(
                    f"constraints[{i}].baseline: {con.baseline!r} is trained at every level; "
                    "with levels, refer to an arm trained once: "
                    + ", ".join(self.unlevelled_arms())
                )

    def unlevelled_arms(self) -> list[str]:
        """Baseline arms trained once, not per level: those without a mask (dense)."""
        return [a for a, o in self.baselines.items() if o.get("sparsity.method") == DENSE]

    def baseline_trials(self) -> list[tuple[str, float | None]]:
        """(arm, density level) of every baseline trial: the unlevelled arms once (level
        None), then each sparse arm at each level (None for all without levels)."""
        once = [(arm, None) for arm in self.unlevelled_arms()]
        sparse = [arm for arm in self.baselines if arm not in self.unlevelled_arms()]
        if not self.levels:
            return once + [(arm, None) for arm in sparse]
        return once + [(arm, level) for level in self.levels for arm in sparse]

    def level_of(self, params: dict[str, Any]) -> float | None:
        """The density level of a searched trial with `params` (None without levels)."""
        if not self.levels:
            return None
        if "sparsity.density" in params:
            return float(params["sparsity.density"])
        return self.trial_config({}, self.seeds[0]).sparsity.density

    # -- configs -------------------------------------------------------------------------------
    def base_data(self) -> dict[str, Any]:
        """The base config with the fixed overrides, as a fresh nested dict (read once)."""
        if self._base is None:
            base = self.base
            if self.source_dir and (Path(self.source_dir) / base).is_file():
                base = str(Path(self.source_dir) / base)
            data = resolve_source(base)
            overrides = [f"{k}={format_value(v)}" for k, v in self.set.items()]
            self._base = apply_overrides(data, overrides)
        return copy.deepcopy(self._base)

    def trial_config(
        self, params: dict[str, Any], seed: int, extra: dict[str, Any] | None = None
    ) -> TrainConfig:
        """The resolved training config of one trial and seed."""
        data = self.base_data()
        items = {**params, **(extra or {}), "seed": seed}
        apply_overrides(data, [f"{k}={format_value(v)}" for k, v in items.items()])
        return validate_config(data)

    def arm_configs(self, config: dict[str, Any]) -> list[TrainConfig]:
        """The resolved training config of each seed of a trial (`config` as the searcher
        suggests it: its `arm`, and the searched `params` of a SEARCH_ARM trial)."""
        arm, level = config["arm"], config.get("level")
        extra = dict(self.baselines.get(arm, {})) if arm != SEARCH_ARM else {}
        if level is not None and arm != SEARCH_ARM:
            extra["sparsity.density"] = level
        return [self.trial_config(config.get("params", {}), seed, extra) for seed in self.seeds]

    def decision_metrics(self) -> set[str]:
        """The figures a sweep decides on: objectives, constraints, the early-stopping
        metric, and those the status table shows (KEY_METRICS)."""
        names = {o.metric for o in self.objectives} | {c.metric for c in self.constraints}
        if self.early_stopping is not None:
            names.add(self.early_stopping.metric)
        return names | set(KEY_METRICS)

    def race_objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) of the objectives racing compares on: all but density."""
        return [(o.metric, o.mode) for o in self.objectives if o.metric != "density"]

    def test_time_for(self, config: dict[str, Any]) -> TestTime | None:
        """The test-time grid of a trial: the same for every arm, so that a contrast can take
        both sides at one shared setting (sweep/contrasts.py)."""
        return self.test_time

    @property
    def epochs(self) -> int:
        return self.trial_config({}, self.seeds[0]).epochs

    def grace_epochs(self) -> int:
        """Epochs before any early-stopping decision: the mask must have frozen first."""
        cfg = self.trial_config({}, self.seeds[0])
        end = cfg.sparsity.end_fraction
        param = self.parameters.get("sparsity.end_fraction")
        if param is not None and param.high is not None:
            end = param.high
        return min(cfg.epochs, math.ceil(end * cfg.epochs) + 1)

    def check(self) -> None:
        """Validate that the base, every baseline and the space's extreme points make configs."""
        try:
            base = self.trial_config({}, self.seeds[0])
            check_registered(base)
        except ConfigError as exc:
            raise ConfigError(f"set: {exc}") from None
        missing = [
            s
            for s in (self.test_time.scores if self.test_time else [])
            if s not in base.eval.scores
        ]
        if missing:
            raise ConfigError(
                f"test_time.eval.primary: {', '.join(missing)} not computed by the trials; "
                f"eval.scores: {', '.join(base.eval.scores)}"
            )
        for arm, level in self.baseline_trials():
            try:
                check_registered(self.arm_configs({"arm": arm, "level": level})[0])
            except ConfigError as exc:
                at = "" if level is None else f" at level {level}"
                raise ConfigError(f"baselines.{arm}{at}: {exc}") from None
        if self.levels and "sparsity.density" not in self.parameters:
            base = self.trial_config({}, self.seeds[0]).sparsity.density
            if base not in self.levels:
                raise ConfigError(
                    f"levels: searched trials train at the base density {base}, which is not "
                    f"one of the levels {self.levels}; add it, or search sparsity.density"
                )
        corner: dict[str, Any] = {}
        for name, param in self.parameters.items():
            corner[name] = param.choices[0] if param.choices else _cast(param, param.low)
            try:
                check_registered(self.trial_config(corner, self.seeds[0]))
            except ConfigError as exc:
                raise ConfigError(f"parameters.{name}: {exc}") from None
        for name, param in self.parameters.items():
            for value in param.choices or [_cast(param, param.low), _cast(param, param.high)]:
                try:
                    check_registered(self.trial_config({**corner, name: value}, self.seeds[0]))
                except ConfigError as exc:
                    raise ConfigError(f"parameters.{name}: value {value!r}: {exc}") from None

    # -- Optuna ------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: ask an Optuna trial for every active parameter."""
        chosen: dict[str, Any] = {}
        for name, p in self.parameters.items():
            if any(chosen.get(k, _MISSING) not in allowed for k, allowed in p.conditions().items()):
                continue
            if p.distribution == "categorical":
                chosen[name] = trial.suggest_categorical(name, p.choices)
            elif p.distribution in ("int", "log_int"):
                chosen[name] = trial.suggest_int(
                    name, int(p.low), int(p.high), log=p.distribution == "log_int"
                )
            else:
                chosen[name] = trial.suggest_float(
                    name, p.low, p.high, log=p.distribution == "log_uniform", step=p.step
                )
        return chosen


_MISSING = object()


def with_settings(space: SearchSpace, overrides: list[str]) -> SearchSpace:
    """The space with `KEY=VALUE` settings (`moonsweep run --set`) fixed for every trial and
    baseline, on top of the space's own `set`; validated like the space itself.

    A setting the space searches or a baseline arm sets is refused (it would be overridden
    in some trials but not in others); so are `seed` (the space's `seeds` are trained) and
    `epochs`, which `--epochs` sets together with the warm-up and voting lengths it bounds.

        >>> space = with_settings(load_space("default"), ["model.width=64"])
        >>> space.set["model.width"], space.trial_config({}, 0).model.width
        (64, 64)
    """
    data = space.model_dump()
    for item in overrides:
        key = item.partition("=")[0].strip()
        value = _lookup(apply_overrides({}, [item]), key)  # unknown keys: ConfigError here
        if key == "epochs":
            raise ConfigError(
                f"--set {item}: give the number of epochs with --epochs {value} "
                "(it also fits the warm-up and voting lengths to it)"
            )
        if key == "seed":
            raise ConfigError(
                f"--set {item}: each trial trains the space's `seeds` {space.seeds}; "
                "edit a copy of the space to change them"
            )
        if key in space.parameters:
            raise ConfigError(
                f"--set {key}: the space searches this setting (parameters.{key}); "
                "a fixed value would replace the search: edit a copy of the space instead"
            )
        # A sparse method for every sparse arm: dense stays dense (its own value wins).
        arms = [
            arm
            for arm, settings in space.baselines.items()
            if key in settings and not (key == "sparsity.method" and settings[key] == DENSE)
        ]
        if arms:
            raise ConfigError(
                f"--set {key}: baseline {arms[0]} sets its own value; "
                "fixed settings may not change what a baseline compares"
            )
        data["set"][key] = value
        try:
            fitted = SearchSpace.model_validate({**data, "source_dir": space.source_dir})
            check_registered(fitted.trial_config({}, space.seeds[0]))
        except (ConfigError, ValidationError) as exc:
            raise ConfigError(f"--set {item}: {_message(exc)}") from None
    fitted = SearchSpace.model_validate({**data, "source_dir": space.source_dir})
    try:
        fitted.check()
    except ConfigError as exc:
        raise ConfigError(f"with --set {' '.join(overrides)}: {exc}") from None
    return fitted


def _message(exc: ConfigError | ValidationError) -> str:
    if isinstance(exc, ValidationError):
        return exc.errors()[0]["msg"].removeprefix("Value error, ")
    return str(exc)


def with_epochs(space: SearchSpace, epochs: int) -> tuple[SearchSpace, list[str]]:
    """The space run for `epochs` epochs, its epoch-counted settings keeping their share.

    With fewer epochs than the space's own, warm-up and voting lengths (fixed values,
    baseline arms and searched ranges) shrink by `epochs / space.epochs`, rounded, kept at
    least 1 if they were, and within what the engine allows (warm-up ends before training
    does); a searched range that shrinks to one value becomes a fixed setting. With more
    epochs they stay as they are. Returns the space and one line per change, or raises
    a ConfigError naming the smallest number of epochs the space allows.

        >>> space, notes = with_epochs(load_space("default"), 5)
        >>> space.epochs, space.trial_config({}, 0).moon.warmup_epochs
        (5, 1)
        >>> notes[0]
        'moon.warmup_epochs: 5 -> 1 in the base config'
    """
    try:
        return _fit_epochs(space, epochs)
    except ConfigError as exc:
        for more in range(epochs + 1, max(space.epochs, epochs) + 1):
            try:
                _fit_epochs(space, more)
            except ConfigError:
                continue
            raise ConfigError(
                f"--epochs {epochs} is too few for this space ({exc}); "
                f"the smallest it allows is --epochs {more}"
            ) from None
        raise ConfigError(f"--epochs {epochs}: {exc}") from None


def _fit_epochs(space: SearchSpace, epochs: int) -> tuple[SearchSpace, list[str]]:
    data = space.model_dump()
    data["set"] = {**data["set"], "epochs": epochs}
    ratio = min(1.0, epochs / space.epochs)  # more epochs than the space's: they still fit
    base = space.base_data()
    notes: list[str] = []
    for key, margin in EPOCH_COUNTED.items():
        limit = epochs - margin

        def scaled(value: float, key: str = key, limit: int = limit) -> int:
            floor = 1 if value >= 1 else 0  # a length of 0 (off) stays off, 1+ stays 1+
            if limit < floor:
                raise ConfigError(f"{key} needs at least {floor} but {epochs} epochs allow {limit}")
            return min(max(round(value * ratio), floor), limit)

        value = _lookup(base, key)
        if isinstance(value, int) and scaled(value) != value:
            data["set"][key] = scaled(value)
            notes.append(f"{key}: {value} -> {scaled(value)} in the base config")
        for arm, overrides in data["baselines"].items():
            if isinstance(overrides.get(key), int) and scaled(overrides[key]) != overrides[key]:
                new = scaled(overrides[key])
                notes.append(f"{key}: {overrides[key]} -> {new} in baseline {arm}")
                overrides[key] = new
        param = data["parameters"].get(key)
        if param is None or param["high"] is None:
            continue
        old, gated = f"{param['low']:g}-{param['high']:g}", key in _gating(space)
        low, high = scaled(param["low"]), scaled(param["high"])
        if high > low or gated:
            param["low"], param["high"] = low, max(high, low + 1)
            new = f"{low}-{max(high, low + 1)}"
            if new != old:
                notes.append(f"{key}: searched range {old} -> {new}")
        else:
            del data["parameters"][key]
            data["set"][key] = low
            notes.append(f"{key}: searched range {old} -> fixed at {low}")
    try:
        fitted = SearchSpace.model_validate({**data, "source_dir": space.source_dir})
        fitted.check()
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return fitted, notes


def _gating(space: SearchSpace) -> set[str]:
    """Parameters that another parameter's `when` names (they cannot become fixed)."""
    return {cond for p in space.parameters.values() for cond in p.conditions()}


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _cast(param: Parameter, value: float | None) -> Any:
    return int(value) if param.distribution in ("int", "log_int") else value


def space_names() -> list[str]:
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def load_space(source: str | Path) -> SearchSpace:
    """Load a space by name (`search_spaces/<name>.yaml`) or path; ConfigError if bad."""
    path = Path(source)
    # A folder named like a space (a workdir called `default`) must not hide the space.
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        if str(source) not in space_names():
            raise ConfigError(
                f"no search space file or name {str(source)!r}; spaces: {', '.join(space_names())}"
            )
        path = SPACE_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"search space file {str(path)!r} does not exist")
    try:
        data = load_yaml(path.read_text())
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a search space must be a mapping")
    try:
        space = SearchSpace.model_validate({**data, "source_dir": str(path.parent)})
    except ValidationError as exc:
        raise config_error(exc, f"search space {path.name}: ", "check the spelling") from None
    try:
        space.check()
    except ConfigError as exc:
        raise ConfigError(f"search space {path.name}: {exc}") from None
    return space
