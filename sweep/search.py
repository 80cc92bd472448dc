"""The sweep's searcher: baseline arms first (outside Optuna's budget), then Optuna.

Wraps Ray's `OptunaSearch` (ask/tell against a persistent Optuna storage) and adds what a
MOON sweep needs around it: the baseline arms run first on the same seeds, constraints that
may refer to a baseline's result, early-stopped trials recorded as COMPLETE with the
objectives of their last report (user attrs `early_stopped`, `stopped_at_epoch`; a
multi-objective study must not hold PRUNED trials, optuna#5260, and TPE learns from
COMPLETE trials only), and every Optuna trial tagged with its Ray trial id.

Failures (`sweep.failures`): a trial that diverged, was refused (ConfigError) or collapsed
to chance accuracy is the settings' fault, so it is told as COMPLETE with the constraint
`trains` violated, which Optuna's TPE, NSGA-II and GP samplers learn from (see
`make_sampler`); one that failed for another reason (out of memory, a bug, a lost worker)
is FAIL, which they ignore. Either way the user attrs `fail_reason` and `failure` say why.
"""

from __future__ import annotations

import json
import math
import pickle
import threading
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from engine.config import ConfigError
from engine.sparse_methods import DENSE
from sweep.failures import (
    COLLAPSED,
    CONFIG_FAULTS,
    RAY,
    TRAINS,
    failure_of,
    reason_of,
    stand_in,
)
from sweep.naming import read_adopted
from sweep.racing import Limit, join_front, mean_figures, pooled_sd, trial_spread
from sweep.spaces import SEARCH_ARM, Objective, SearchSpace, SpaceConstraint, arm_label
from sweep.stats import number
from sweep.stores import (
    adopt_searcher_trial,
    make_storage,
    searcher_study,
    searcher_trial,
    storage_trial_id,
)

_LOCK = type(threading.Lock())


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Ray pickles the searcher with the Tuner's state and in
    its own checkpoints, and from Optuna 5.1 the GA samplers hold a `threading.Lock` (their
    generation cache's), which pickle refuses. Locks are left out of the pickled state and
    new ones made on unpickling; everything else (the RNG, the cache) is kept as it was."""

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCK)}
        state["_unpickled_locks"] = [k for k, v in self.__dict__.items() if isinstance(v, _LOCK)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop("_unpickled_locks", [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The space's sampler; constraints reach it through `Trial.set_constraint`.

    What each does with an infeasible COMPLETE trial (a diverged, refused or collapsed one:
    `trains` violated), read in Optuna 5.0's source:
    - TPE (`_tpe/sampler.py`, `_split_trials`): infeasible trials go to the "above" (bad)
      group, ranked by total violation, and enter "below" only when too few feasible trials
      fill it; so their region gets a low l(x)/g(x). FAIL trials are not read at all.
    - NSGA-II (`nsgaii/_constraints_evaluation.py`): constrained domination; every feasible
      trial dominates an infeasible one, so infeasible trials rank last and are not chosen
      as parents while feasible ones fill the population.
    - GP (`_gp/sampler.py`): one GP per constraint, its probability of feasibility
      multiplies the acquisition (LogCEHVI); the objectives' GPs see the trial's values too,
      hence the chance-level stand-ins of a trial without figures (`sweep.failures`). Every
      COMPLETE trial must carry the same constraints, in the same order (`_tell`).
    NSGA-II and GP search the parameters every trial has (Optuna's intersection search
    space); a conditional parameter (`when:`) is sampled at random by them.
    """
    s = space.sampler
    if s.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=s.seed,
            n_startup_trials=s.startup_trials,
            multivariate=s.multivariate,
            group=s.multivariate,
        )
    if s.name == "nsga2":
        # Its generations are `startup_trials` trials: the default 50 would leave a sweep of
        # a few dozen trials in the random first generation (bench/search.py).
        return NSGAIISampler(seed=s.seed, population_size=max(2, s.startup_trials))
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup_trials)
    return optuna.samplers.RandomSampler(seed=s.seed)


class SweepSearcher(Searcher):
    """Suggests the baseline arms first, then asks Optuna for `budget.trials`.

    The search does not wait for the baselines to finish (an idle slot would also lose
    Ray's reused worker); a searched trial that finishes before the baseline one of its
    constraints refers to is told to Optuna when that baseline has finished.
    """

    def __init__(
        self,
        space: SearchSpace,
        storage_url: str,
        study_name: str,
        adopted_file: str | None = None,
    ) -> None:
        super().__init__()
        self.space = space
        # Trials a killed driver saw end after Ray's last save (sweep.adoption), read again
        # on every restore: the saved state this searcher is restored from predates them.
        self.adopted_file = adopted_file
        # (arm, density level) of each baseline trial still to suggest.
        self.pending_arms: list[tuple[str, float | None]] = space.baseline_trials()
        self.trial_arm: dict[str, str] = {}  # Ray trial id -> SEARCH_ARM or arm_label()
        self.baseline_results: dict[str, dict[str, float]] = {}
        self.failed_arms: set[str] = set()
        self.fail_reasons: dict[str, str] = {}
        self.chance_accuracy: float | None = None  # the suite's, from any report carrying it
        self.suggested = 0
        self.deferred: dict[str, dict] = {}  # finished trials waiting for a baseline
        # Racing's references per density level: label -> per-seed validation figures, and
        # the figures its feasibility is judged on (sweep/racing.py).
        self.race_pool: dict[str, dict[str, dict[str, Any]]] = {}
        self.race_front: dict[str, dict[str, dict[str, float]]] = {}  # level -> label -> means
        self.trial_level: dict[str, float | None] = {}
        self.storage = make_storage(storage_url)
        self.optuna = OptunaSearch(
            space=space.suggest,
            metric=[o.metric for o in space.objectives],
            mode=[o.mode for o in space.objectives],
            sampler=make_sampler(space),
            storage=self.storage,
            study_name=study_name,
        )
        self.adopt_recorded()

    @property
    def study(self) -> optuna.Study:
        return searcher_study(self.optuna)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return True  # objectives come from the space, not from TuneConfig

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.pending_arms:
            arm, level = self.pending_arms.pop(0)
            self.trial_arm[trial_id] = arm_label(arm, level)
            self.trial_level[trial_id] = level
            return {"arm": arm, "level": level, "params": {}, "optuna_trial": -1}
        if self.suggested >= self.space.budget.trials:
            return Searcher.FINISHED
        params = self.optuna.suggest(trial_id)
        ot_trial = searcher_trial(self.optuna, trial_id)
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        self.trial_arm[trial_id] = SEARCH_ARM
        self.suggested += 1
        level = self.space.level_of(params)
        self.trial_level[trial_id] = level
        config: dict[str, Any] = {
            "arm": SEARCH_ARM,
            "level": level,
            "params": params,
            "optuna_trial": ot_trial.number,
        }
        if self.space.race is not None:
            # Fixed now and kept in the trial's config: a resumed trial races as it did.
            config["references"] = self.references(level)
            config["spread"] = self.spread(level)
            config["limits"] = [limit.model_dump() for limit in self.limits(level)]
        return config

    def limits(self, level: float | None) -> list[Limit]:
        """The space's constraints as racing tests them at `level` (`sweep.racing.Limit`):
        those whose threshold is known now, with the seed-to-seed spread of their metric
        over the configs that ran every seed there; none unless the race asks for them."""
        if self.space.race is None or not self.space.race.constraints:
            return []
        pool = getattr(self, "race_pool", {}).get(_level_key(level), {})
        per_config = {label: entry["seeds"] for label, entry in pool.items()}
        out = []
        for con in self.space.constraints:
            binds, threshold = self._threshold(con)
            if not binds or threshold is None:
                continue  # no limit until its threshold is known
            sd, df = pooled_sd(per_config, con.metric)
            out.append(
                Limit(
                    label=f"{con.metric}{con.op}{threshold:.4g}",
                    metric=con.metric,
                    op=con.op,
                    threshold=threshold,
                    sd=sd if df else None,
                    df=df,
                )
            )
        return out

    def references(self, level: float | None) -> dict[str, dict[int, dict[str, float]]]:
        """What racing compares a trial at `level` against: the level's feasible arms and the
        searched trials on its front (`sweep.racing.join_front`; constraints with a
        reference not yet known leave a candidate out)."""
        key = _level_key(level)
        pool = getattr(self, "race_pool", {}).get(key, {})
        arms = {
            label: entry["seeds"]
            for label, entry in pool.items()
            if not label.startswith(SEARCH_ARM) and self._feasible(entry)
        }
        return {**arms, **{label: pool[label]["seeds"] for label in self._front(key)}}

    def spread(self, level: float | None) -> dict[str, list[float]]:
        """metric -> [sd, df] of a paired difference between a searched trial and an arm at
        `level` (`sweep.racing.trial_spread`): the level's searched trials that ran every
        seed, earliest Optuna trial first, each paired with one of its arms (feasible or not:
        this is seed noise), so it holds one entry per objective however long the sweep
        runs. A metric without such a pair is left out: racing then widens the references'
        own spread."""
        pool = getattr(self, "race_pool", {}).get(_level_key(level), {})
        full = {
            label: entry["seeds"]
            for label, entry in pool.items()
            if set(self.space.seeds) <= set(entry["seeds"])
        }
        searched = sorted((label for label in full if label.startswith(SEARCH_ARM)), key=_number)
        arms = {label: seeds for label, seeds in full.items() if not label.startswith(SEARCH_ARM)}
        out = {}
        for metric, _ in self.space.race_objectives():
            sd, df = trial_spread({label: full[label] for label in searched}, arms, metric)
            if df:
                out[metric] = [sd, df]
        return out

    def _front(self, key: str) -> dict[str, dict[str, float]]:
        """The level's front of feasible searched trials (label -> mean figures), built
        again from the pool after a baseline's result changed what is feasible."""
        fronts = self.__dict__.setdefault("race_front", {})  # absent in a pre-front pickle
        if key not in fronts:
            fronts[key] = {}
            for label in getattr(self, "race_pool", {}).get(key, {}):
                if label.startswith(SEARCH_ARM):
                    self._join(key, label)
        return fronts[key]

    def _join(self, key: str, label: str) -> None:
        entry = self.race_pool[key][label]
        figures = mean_figures(entry["seeds"], self.space.race_objectives())
        if figures is not None and self._feasible(entry):
            join_front(self._front(key), label, figures, self.space.race_objectives())

    def _threshold(self, con: SpaceConstraint) -> tuple[bool, float | None]:
        """(binds, threshold): the one rule for what a constraint means now. One whose
        baseline failed never binds (there is nothing to be within an offset of); one whose
        baseline has not finished binds, with its threshold not known yet (None). What each
        caller does with an unknown threshold is its own: not yet feasible as a racing
        reference, no violation told to Optuna, no limit in a race."""
        if con.baseline is not None and con.baseline in self.failed_arms:
            return False, None
        return True, con.threshold(self.baseline_results)

    def _feasible(self, entry: dict[str, Any]) -> bool:
        for con in self.space.constraints:
            binds, threshold = self._threshold(con)
            if not binds:
                continue
            value = entry["values"].get(con.metric)
            if threshold is None or value is None or con.violation(value, threshold) > 0:
                return False
        return True

    def _pool(self, trial_id: str, label: str, result: dict) -> None:
        """Keep a trial that ran every seed as a racing reference at its level."""
        if self.space.race is None or "seed_values" not in result or result.get("raced_out"):
            return
        # The objectives it races on, and the constraints' metrics for the limits' spread
        # when the race tests them (the pool travels in the searcher's saved state).
        metrics = [m for m, _ in self.space.race_objectives()]
        if self.space.race.constraints:
            metrics += [c.metric for c in self.space.constraints if c.metric not in metrics]
        per_seed = json.loads(result["seed_values"])
        seeds = {int(s): {m: v[m] for m in metrics if m in v} for s, v in per_seed.items()}
        values = {con.metric: result.get(con.metric) for con in self.space.constraints}
        level = _level_key(self.trial_level.get(trial_id))
        self.race_pool.setdefault(level, {})[label] = {"seeds": seeds, "values": values}
        if label.startswith(SEARCH_ARM):
            self._join(level, label)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if "fail_reason" in result:
            self.fail_reasons[trial_id] = str(result["fail_reason"])
        self.chance_accuracy = number(result.get("chance_accuracy")) or self.chance_accuracy

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        arm = self.trial_arm.get(trial_id)
        if arm is None:
            return
        finished = bool(result) and result.get("final") == 1 and "fail_reason" not in result
        stopped = not finished and not error and self._stopped_with_objectives(result)
        if finished and failure_of(result) != COLLAPSED:  # a collapsed trial is no reference
            label = (
                arm
                if arm != SEARCH_ARM
                else f"{SEARCH_ARM} #{searcher_trial(self.optuna, trial_id).number}"
            )
            self._pool(trial_id, label, result)
        if arm != SEARCH_ARM:
            if finished:
                self.baseline_results[arm] = {
                    o.metric: result[o.metric] for o in self.space.objectives
                }
                for con in self.space.constraints:
                    self.baseline_results[arm][con.metric] = result.get(con.metric)
            else:
                self.failed_arms.add(arm)
            self.race_front = {}  # what is feasible may have changed: built again when asked
            if self._references_ready():
                for waiting in list(self.deferred):
                    self._tell(waiting, self.deferred.pop(waiting))
            return
        ot_trial = searcher_trial(self.optuna, trial_id)
        if self.storage.get_trial(storage_trial_id(ot_trial)).state.is_finished():
            return  # told before the driver died, after its last save: tell nothing twice
        for key in ("epochs_trained", "test_time_pick", "test_time_rule", "raced_by"):
            if result and key in result:
                ot_trial.set_user_attr(key, result[key])
        if finished and result.get("raced_out"):
            ot_trial.set_user_attr("raced_out", True)  # an estimate from its race seeds
        kind = RAY if error else failure_of(result)
        if stopped:
            # Its last report's figures (current weights, before voting) stand for the trial.
            ot_trial.set_user_attr("early_stopped", True)
            ot_trial.set_user_attr("stopped_at_epoch", int(result["epoch"]))
        elif not finished:
            reason = self.fail_reasons.get(trial_id) or (
                "ray error" if error else "stopped early by the scheduler"
            )
            ot_trial.set_user_attr("fail_reason", reason)
            if kind:
                ot_trial.set_user_attr("failure", kind)
            if kind not in CONFIG_FAULTS:
                # Not the settings' fault (out of memory, a bug, a lost worker): FAIL, which
                # the samplers ignore, so the region is not held against.
                self.optuna.on_trial_complete(trial_id, result=None, error=True)
                return
            result = self._stand_in(ot_trial, result or {})
        elif kind == COLLAPSED:
            ot_trial.set_user_attr("fail_reason", reason_of(result))
            ot_trial.set_user_attr("failure", kind)
            result = self._stand_in(ot_trial, result)  # its own figures, where finite
        if not self._references_ready():
            # A constraint needs a baseline still running: tell Optuna once it has finished.
            self.deferred[trial_id] = result
            return
        self._tell(trial_id, result)

    def _stopped_with_objectives(self, result: dict | None) -> bool:
        """A result the scheduler stopped on that carries every objective, finite."""
        if not result or "fail_reason" in result or "epoch" not in result:
            return False
        values = [result.get(o.metric) for o in self.space.objectives]
        return all(isinstance(v, int | float) and math.isfinite(v) for v in values)

    def _references_ready(self) -> bool:
        return all(
            con.baseline is None
            or con.baseline in self.baseline_results
            or con.baseline in self.failed_arms
            for con in self.space.constraints
        )

    def _stand_in(self, trial: optuna.Trial, result: dict) -> dict:
        """`result` with a value for every objective it lacks (or holds as NaN): the chance
        level (`sweep.failures.stand_in`), the configured density, else the worst value the
        sweep has seen for that objective."""
        chance = number(result.get("chance_accuracy")) or self.chance_accuracy
        out = dict(result)
        for index, objective in enumerate(self.space.objectives):
            if number(result.get(objective.metric)) is not None:
                continue
            value = None if chance is None else stand_in(objective.metric, chance)
            if value is None and objective.metric == "density":
                value = self._configured_density(trial.params)
            out[objective.metric] = value if value is not None else self._worst(index, objective)
        return out

    def _configured_density(self, params: dict[str, Any]) -> float | None:
        try:
            cfg = self.space.trial_config(params, self.space.seeds[0])
        except ConfigError:  # the settings a refused trial was refused for
            return None
        return 1.0 if cfg.sparsity.method == DENSE else cfg.sparsity.density

    def _worst(self, index: int, objective: Objective) -> float:
        """The worst value of `objective` (the study's `index`-th) among the baselines and
        complete trials so far (0 when there is none: a refused trial before anything else
        ended)."""
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        seen = [r.get(objective.metric) for r in self.baseline_results.values()]
        seen += [t.values[index] for t in complete]
        values = [v for v in map(number, seen) if v is not None]
        if not values:
            return 0.0
        return min(values) if objective.direction == "maximize" else max(values)

    def _tell(self, trial_id: str, result: dict) -> None:
        ot_trial = searcher_trial(self.optuna, trial_id)
        for con in self.space.constraints:
            binds, threshold = self._threshold(con)
            value = number(result.get(con.metric))
            known = binds and threshold is not None and value is not None
            violation = con.violation(value, threshold) if known else 0.0
            ot_trial.set_constraint(con.label, violation)
        # On every trial told COMPLETE, always after the space's own: GPSampler reads the
        # constraints by position and refuses trials with a different number of them
        # (`_get_constraint_vals_and_feasibility`).
        ot_trial.set_constraint(TRAINS, 1.0 if failure_of(result) in CONFIG_FAULTS else 0.0)
        self.optuna.on_trial_complete(trial_id, result=result)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
        self.adopt_recorded()

    def adopt_recorded(self) -> None:
        """`adopt` each trial of the adopted-trials file this searcher does not know yet."""
        # `adopted_file` is absent in an older sweep's pickle.
        for trial_id, entry in read_adopted(getattr(self, "adopted_file", None)).items():
            if trial_id not in self.trial_arm:
                self.adopt(trial_id, entry)

    def adopt(self, trial_id: str, entry: dict[str, Any]) -> None:
        """Take a trial that ended unknown to Ray's saved state as suggested and ended:
        `entry` holds its `arm`, `level`, `optuna_trial` number and final `result`."""
        arm, level = entry["arm"], entry["level"]
        if arm == SEARCH_ARM:
            number = int(entry["optuna_trial"])
            frozen = self.study.get_trials(deepcopy=False)[number]
            trial = optuna.Trial(self.study, storage_trial_id(frozen))
            adopt_searcher_trial(self.optuna, trial_id, trial)
            self.suggested += 1
            self.trial_arm[trial_id] = SEARCH_ARM
        else:
            for pending in self.pending_arms:
                if arm_label(*pending) == arm_label(arm, level):
                    self.pending_arms.remove(pending)
                    break
            self.trial_arm[trial_id] = arm_label(arm, level)
        self.trial_level[trial_id] = level
        self.on_trial_complete(trial_id, entry["result"])


def _level_key(level: float | None) -> str:
    return "none" if level is None else f"{level:g}"


def _number(label: str) -> int:
    """The Optuna trial number in a searched trial's racing label (`search #12`)."""
    return int(label.rsplit("#", 1)[-1])


class SearchOnlyASHA(ASHAScheduler):
    """ASHA that never stops a baseline arm and ignores failure reports."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial.config.get("arm") != SEARCH_ARM or "fail_reason" in result:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if trial.config.get("arm") != SEARCH_ARM or "fail_reason" in result:
            # ASHA records a completed trial in every rung it passed: a baseline's final
            # figures would set the cutoff that searched trials meet at an earlier epoch.
            self.on_trial_remove(tune_controller, trial)
            return
        super().on_trial_complete(tune_controller, trial, result)


def make_scheduler(space: SearchSpace) -> TrialScheduler | None:
    rule = space.early_stopping
    if rule is None:
        return None
    return SearchOnlyASHA(
        time_attr="epoch",  # reports come every `report_every` epochs
        metric=rule.metric,
        mode=rule.mode,
        max_t=space.epochs,
        grace_period=space.grace_epochs(),
        reduction_factor=rule.reduction_factor,
    )
